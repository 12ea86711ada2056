//! Test scaffolding shared by every test in the workspace (feature `testkit`): the tiny busybox
//! image, the etcd the test script started, and names that never collide.
//!
//! Tests that need Docker or etcd fail (never skip) when they are missing: the messages here
//! say how to get them (`scripts/test.sh` brings both up).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;

use crate::runtime::DockerRuntime;
use crate::sched::PortRange;
use crate::ContainerRuntime;

/// The test image, imported from Debian's static busybox.
pub const TEST_IMAGE: &str = "gpu-replica-test/busybox:latest";
/// Label on everything tests create, so `scripts/test.sh` can sweep what a crash left behind.
pub const TEST_LABEL: &str = "io.gpu-replica.test";
/// A file that comes with the test image.
pub const IMAGE_FILE: &str = "/etc/from-image";

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "rm",
    "mkdir",
    "sleep",
    "env",
    "dd",
    "head",
    "wc",
    "test",
    "true",
    "sync",
    "httpd",
    "nc",
    "touch",
    "du",
    "sha256sum",
    "cp",
];

/// Labels every test object carries.
pub fn test_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(TEST_LABEL.to_string(), "1".to_string())])
}

/// Where the test image has the workspace's WebSocket echo server (`gpu-replica-wsecho`).
pub const WSECHO: &str = "/bin/ws-echo";

/// The workspace's `gpu-replica-wsecho`, built static (it runs in an image without a libc):
/// `$GPU_REPLICA_WSECHO` if set, else built once into `target/wsecho` (its own target
/// directory, so a test never waits on the build that runs it).
pub fn wsecho_binary() -> std::io::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("GPU_REPLICA_WSECHO") {
        return Ok(path.into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let dir = root.join("target/wsecho");
    let binary = dir.join(&target).join("release/gpu-replica-wsecho");
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "gpu-replica-wsecho",
                "--target",
            ])
            .arg(&target)
            .arg("--target-dir")
            .arg(&dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "building gpu-replica-wsecho failed ({status})"
            )));
        }
        *built = true;
    }
    Ok(binary)
}

/// A root filesystem tar: busybox, links for its applets, [`WSECHO`], /tmp, /root and
/// [`IMAGE_FILE`]. `extra` adds a file of that many bytes at `/opt/blob` (for images that
/// carry weight).
pub fn busybox_rootfs(extra: usize) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_path_with_name(BUSYBOX, "bin/busybox")?;
    tar.append_path_with_name(wsecho_binary()?, &WSECHO[1..])?;
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    for dir in ["tmp", "root", "etc", "opt", "var/www"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        tar.append_data(&mut header, dir, std::io::empty())?;
    }
    let mut file = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, data)
    };
    file(&IMAGE_FILE[1..], b"shipped with the image\n")?;
    file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")?;
    if extra > 0 {
        // Incompressible-ish bytes, so the layer really weighs `extra`.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let blob: Vec<u8> = (0..extra)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        file("opt/blob", &blob)?;
    }
    tar.into_inner()
}

/// Imports `image` from [`busybox_rootfs`] unless it is present.
pub async fn ensure_image(docker: &DockerRuntime, image: &str, extra: usize) -> crate::Result<()> {
    if docker.inspect_image(image).await?.is_some() {
        return Ok(());
    }
    let tar = busybox_rootfs(extra)
        .map_err(|e| crate::Error::Docker(format!("{BUSYBOX}: {e} (install busybox-static)")))?;
    let changes = vec![
        "CMD [\"/bin/sh\"]".to_string(),
        "ENV PATH=/bin".to_string(),
        "ENV NVIDIA_VISIBLE_DEVICES=all".to_string(),
        format!("LABEL {TEST_LABEL}=1"),
    ];
    let body = futures_util::stream::iter([Ok(Bytes::from(tar))]);
    docker.import_image(body, image, changes).await
}

/// Connects to Docker and makes sure [`TEST_IMAGE`] exists; panics with a hint otherwise.
pub async fn docker() -> DockerRuntime {
    let docker = DockerRuntime::connect()
        .await
        .unwrap_or_else(|e| panic!("these tests need a Docker engine ({e}); run scripts/test.sh"));
    let docker = docker.with_helper_image(TEST_IMAGE);
    // Tests run in parallel: import once, or concurrent imports leave dangling copies.
    static IMPORTED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    IMPORTED
        .get_or_init(|| async {
            ensure_image(&docker, TEST_IMAGE, 0)
                .await
                .unwrap_or_else(|e| panic!("cannot import the test image: {e}"))
        })
        .await;
    docker
}

/// The etcd endpoints `scripts/test.sh` exported in `GPU_REPLICA_TEST_ETCD`; panics without.
pub fn etcd_endpoints() -> Vec<String> {
    let endpoints = std::env::var("GPU_REPLICA_TEST_ETCD").unwrap_or_else(|_| {
        panic!("GPU_REPLICA_TEST_ETCD is not set: these tests need etcd; run scripts/test.sh")
    });
    endpoints.split(',').map(str::to_string).collect()
}

/// A name no other test of this run uses: `{prefix}{pid}x{n}`, valid for replicaSets and volumes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port range of its own for each engine a test builds, so parallel tests never race for
/// host ports. Ranges are 40 ports wide, from 41000 up; the process id spreads test binaries.
pub fn port_range() -> PortRange {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 200;
    let start = 41000 + (std::process::id() as u16 % 3) * 8000 + slot * 40;
    PortRange {
        start,
        end: start + 39,
    }
}

/// A store for a test, which can be opened again to check that state survives a new engine.
pub enum TestStore {
    /// One in-memory store (opening it again gives the same one).
    Memory(std::sync::Arc<crate::MemoryStore>),
    /// A redb file in the temp folder, removed on drop.
    Redb(std::path::PathBuf),
    /// The test etcd, under a prefix of this store's own.
    #[cfg(feature = "etcd")]
    Etcd(String),
}

impl TestStore {
    /// A fresh in-memory store.
    pub fn memory() -> TestStore {
        TestStore::Memory(Default::default())
    }

    /// A fresh redb file.
    pub fn redb() -> TestStore {
        let path = std::env::temp_dir().join(format!("{}.redb", unique_name("gpu_replica_test_")));
        TestStore::Redb(path)
    }

    /// A fresh prefix on the test etcd.
    #[cfg(feature = "etcd")]
    pub fn etcd() -> TestStore {
        TestStore::Etcd(format!("{}/", unique_name("gpu_replica_test_")))
    }

    /// Opens the store (again). A redb file can be open only once: drop the engine that held
    /// it before opening it again.
    pub async fn open(&self) -> std::sync::Arc<dyn crate::StateStore> {
        match self {
            TestStore::Memory(store) => store.clone(),
            TestStore::Redb(path) => std::sync::Arc::new(
                crate::RedbStore::open(path).unwrap_or_else(|e| panic!("redb: {e}")),
            ),
            #[cfg(feature = "etcd")]
            TestStore::Etcd(prefix) => std::sync::Arc::new(
                crate::EtcdStore::connect(&etcd_endpoints(), prefix)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach the test etcd: {e}")),
            ),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let TestStore::Redb(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Engine settings for tests: env attach (fake GPUs are visible as UUIDs), no stop grace (the
/// test image's `sh` ignores SIGTERM), a port range of its own, test labels.
pub fn config() -> crate::EngineConfig {
    crate::EngineConfig {
        port_range: port_range(),
        gpu_attach: crate::GpuAttach::Env,
        stop_timeout: std::time::Duration::ZERO,
        labels: test_labels(),
        network: crate::network::NetworkPolicy {
            guard: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An engine on the real Docker engine with `gpus` fake GPUs.
pub async fn engine(
    store: std::sync::Arc<dyn crate::StateStore>,
    gpus: u32,
    config: crate::EngineConfig,
) -> crate::Engine {
    crate::Engine::new(
        std::sync::Arc::new(docker().await),
        store,
        std::sync::Arc::new(crate::StaticInventory::fake(gpus)),
        config,
    )
}

/// Runs `script` with `sh -c` in the current container of `name`; returns (output, exit code).
pub async fn sh(engine: &crate::Engine, name: &str, script: &str) -> (String, i64) {
    let argv = ["sh", "-c", script].map(str::to_string);
    let out = engine
        .exec(name, &argv, None)
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    (out.output, out.exit_code)
}

/// An etcd of a test's own (the `etcd` binary from Debian's etcd-server), for tests that stop
/// and start it; killed on drop.
pub struct EtcdProcess {
    child: Option<std::process::Child>,
    data_dir: std::path::PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Extra flags (TLS files), kept across restarts.
    extra: Vec<String>,
    /// Whether clients speak TLS to it.
    tls: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl EtcdProcess {
    /// Starts etcd on free loopback ports with a fresh data dir; panics if it cannot.
    pub fn start() -> EtcdProcess {
        EtcdProcess::start_with(Vec::new(), false)
    }

    /// Serving clients over TLS only: `cert` and `key` (PEM) are its own, and with
    /// `client_ca` it requires client certificates signed by that CA.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> EtcdProcess {
        let mut extra = vec![
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
        ];
        if let Some(ca) = client_ca {
            extra.push("--client-cert-auth".into());
            extra.push(format!("--trusted-ca-file={}", ca.display()));
        }
        EtcdProcess::start_with(extra, true)
    }

    fn start_with(extra: Vec<String>, tls: bool) -> EtcdProcess {
        let data_dir = std::env::temp_dir().join(unique_name("gpu_replica_etcd_"));
        let mut etcd = EtcdProcess {
            child: None,
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
            extra,
            tls,
        };
        etcd.resume();
        etcd
    }

    /// The client endpoint, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT`, as `--store etcd://…` takes it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Turns on authentication with user `root` (role root) and `password`.
    #[cfg(feature = "etcd")]
    pub async fn enable_auth(&self, password: &str) {
        let client = etcd_client::Client::connect([self.endpoint()], None)
            .await
            .unwrap_or_else(|e| panic!("etcd: {e}"));
        let mut auth = client.auth_client();
        auth.user_add("root", password, None)
            .await
            .unwrap_or_else(|e| panic!("etcd user add: {e}"));
        auth.user_grant_role("root", "root")
            .await
            .unwrap_or_else(|e| panic!("etcd grant: {e}"));
        auth.auth_enable()
            .await
            .unwrap_or_else(|e| panic!("etcd auth enable: {e}"));
    }

    /// Kills etcd (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data; waits until it answers.
    pub fn resume(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(&self.extra)
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); install etcd-server or run scripts/test.sh")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("etcd did not come up on {}", self.endpoint());
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A Docker daemon of a test's own: its own data root, exec root, socket and config, inside its
/// own network namespace (a second daemon in the host's namespace deletes the host's `docker0`
/// when it exits). Entered with `nsenter --net=…`, not `ip netns exec` (which remounts /sys,
/// and dockerd then fails with "Devices cgroup isn't mounted"). Needs root; panics otherwise.
pub struct PrivateDockerd {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    netns: String,
    /// Its data root (under `dir`, or on a file system of the test's).
    root: std::path::PathBuf,
}

impl PrivateDockerd {
    /// Starts the daemon with the host daemon's storage driver; waits until it answers.
    pub fn start() -> PrivateDockerd {
        PrivateDockerd::start_nth(0)
    }

    /// The `nth` daemon of this test process (several nodes of a cluster, each with its own).
    pub fn start_nth(nth: u32) -> PrivateDockerd {
        PrivateDockerd::start_with(nth, None)
    }

    /// A daemon whose data root is on `fs` (a size-enforcing file system), with the storage
    /// driver that enforces sizes there.
    pub fn start_on(fs: &QuotaFs) -> PrivateDockerd {
        PrivateDockerd::start_with(90, Some(fs))
    }

    fn start_with(nth: u32, fs: Option<&QuotaFs>) -> PrivateDockerd {
        // Short paths: containerd's sockets live under the exec root (108-byte limit).
        let tag = (std::process::id() % 100_000) * 100 + nth % 100;
        let dir = std::path::PathBuf::from(format!("/tmp/grd{tag}"));
        let netns = format!("grtest{tag}");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let driver = match fs {
            Some(fs) => fs.driver().to_string(),
            None => std::process::Command::new("docker")
                .args(["info", "--format", "{{.Driver}}"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "vfs".into()),
        };
        let root = match fs {
            Some(fs) => fs.mountpoint.join("docker"),
            None => dir.join("root"),
        };
        std::fs::write(
            dir.join("daemon.json"),
            format!("{{\"storage-driver\": \"{driver}\"}}"),
        )
        .unwrap();
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &netns])
            .output();
        let added = std::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap_or_else(|e| panic!("cannot run ip ({e}); install iproute2"));
        assert!(added.success(), "ip netns add {netns} failed (needs root)");
        let mut daemon = PrivateDockerd {
            child: None,
            dir,
            netns,
            root,
        };
        daemon.resume();
        daemon
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> String {
        self.dir.join("docker.sock").display().to_string()
    }

    /// Stops the daemon (SIGTERM, as an operator or a package upgrade would) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same data; waits until it answers.
    pub fn resume(&mut self) {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg(format!("--data-root={}", self.root.display()))
            .arg(format!("--exec-root={}", d.join("x").display()))
            .arg(format!("--pidfile={}", d.join("pid").display()))
            .arg(format!("--host=unix://{}", self.socket()))
            .arg(format!("--config-file={}", d.join("daemon.json").display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter dockerd ({e})"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let up = std::process::Command::new("docker")
                .args(["-H", &format!("unix://{}", self.socket()), "version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default();
        panic!("private dockerd did not come up:\n{log}");
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small file system on a loop device on which Docker's storage driver enforces a size per
/// container: XFS mounted with `pquota` (overlay2) where the kernel has XFS quotas, else btrfs
/// with quotas on (the btrfs driver). Made by the test (Debian's `xfsprogs`, `btrfs-progs`);
/// unmounted and freed on drop. Needs root; panics when neither can be made, with why.
pub struct QuotaFs {
    image: std::path::PathBuf,
    /// Where it is mounted.
    pub mountpoint: std::path::PathBuf,
    loop_device: String,
    /// `xfs` or `btrfs`; `plain` for [`QuotaFs::plain`].
    pub kind: &'static str,
    /// Why XFS with project quotas could not be used, when btrfs was.
    pub xfs_refused: Option<String>,
}

impl QuotaFs {
    /// Makes and mounts one of `megabytes` MB.
    pub fn make(megabytes: u64) -> QuotaFs {
        let tag = std::process::id() % 100_000;
        let base = std::path::PathBuf::from(format!("/tmp/grq{tag}"));
        let _ = std::fs::create_dir_all(&base);
        let run = |program: &str, args: &[&str]| -> Result<String, String> {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let attempt = |kind: &'static str| -> Result<QuotaFs, String> {
            let image = base.join(format!("{kind}.img"));
            let mountpoint = base.join(kind);
            let _ = std::fs::create_dir_all(&mountpoint);
            let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
            file.set_len(megabytes << 20).map_err(|e| e.to_string())?;
            let image_path = image.display().to_string();
            match kind {
                "xfs" => run("mkfs.xfs", &["-q", "-f", &image_path])?,
                _ => run("mkfs.btrfs", &["-q", "-f", &image_path])?,
            };
            let loop_device = run("losetup", &["-f", "--show", &image_path])?;
            let fs = QuotaFs {
                image,
                mountpoint: mountpoint.clone(),
                loop_device: loop_device.clone(),
                kind,
                xfs_refused: None,
            };
            let point = mountpoint.display().to_string();
            match kind {
                "xfs" => run("mount", &["-o", "pquota", &loop_device, &point])?,
                _ => {
                    run("mount", &[&loop_device, &point])?;
                    run("btrfs", &["quota", "enable", &point])?
                }
            };
            Ok(fs)
        };
        let xfs_refused = match attempt("xfs") {
            Ok(fs) => return fs,
            // The kernel says why in its log ("quota support not available in this kernel").
            Err(e) => {
                let said = run("dmesg", &[]).unwrap_or_default();
                match said.lines().rev().find(|l| l.contains("XFS")) {
                    Some(line) => format!("{e}; the kernel: {}", line.trim()),
                    None => e,
                }
            }
        };
        match attempt("btrfs") {
            Ok(mut fs) => {
                fs.xfs_refused = Some(xfs_refused);
                fs
            }
            Err(e) => panic!(
                "no size-enforcing file system could be made: xfs with pquota ({xfs_refused}); \
                 btrfs with quotas ({e}); install xfsprogs and btrfs-progs, run as root"
            ),
        }
    }

    /// A plain XFS of `megabytes` MB on a loop device (no quotas; Docker's `vfs` driver on it):
    /// a small disk whose free space statvfs tells exactly. Panics when it cannot be made.
    pub fn plain(megabytes: u64) -> QuotaFs {
        let tag = std::process::id() % 100_000;
        let base = std::path::PathBuf::from(format!("/tmp/grp{tag}"));
        let image = base.join("plain.img");
        let mountpoint = base.join("plain");
        std::fs::create_dir_all(&mountpoint).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(megabytes << 20).unwrap();
        let run = |program: &str, args: &[&str]| -> String {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let image_path = image.display().to_string();
        run("mkfs.xfs", &["-q", "-f", &image_path]);
        let loop_device = run("losetup", &["-f", "--show", &image_path]);
        let fs = QuotaFs {
            image,
            mountpoint: mountpoint.clone(),
            loop_device: loop_device.clone(),
            kind: "plain",
            xfs_refused: None,
        };
        run("mount", &[&loop_device, &mountpoint.display().to_string()]);
        fs
    }

    /// The storage driver that enforces sizes on it (`vfs` on a [`QuotaFs::plain`] one).
    pub fn driver(&self) -> &'static str {
        match self.kind {
            "xfs" => "overlay2",
            "btrfs" => "btrfs",
            _ => "vfs",
        }
    }
}

impl Drop for QuotaFs {
    fn drop(&mut self) {
        let point = self.mountpoint.display().to_string();
        let _ = std::process::Command::new("umount").arg(&point).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.loop_device])
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// `GET /index.html` over HTTP/1.0 on a host port of 127.0.0.1; the whole answer, or what
/// arrived before the connection closed.
pub async fn http_get(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("host port {port} refuses connections: {e}"));
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let _ = stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap_or_default()
}

/// A 3-member (or n-member) etcd cluster on loopback ports, each member its own data dir;
/// members can be stopped and started again. Killed on drop.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    initial: String,
    token: String,
}

struct EtcdMember {
    name: String,
    child: Option<std::process::Child>,
    data_dir: std::path::PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each answers.
    pub fn start(size: usize) -> EtcdCluster {
        let token = unique_name("cluster");
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                child: None,
                data_dir: std::env::temp_dir().join(unique_name("gpu_replica_etcdm_")),
                client_port: free_port(),
                peer_port: free_port(),
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial,
            token,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait(i);
        }
        cluster
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`, as `--store etcd://…` takes it.
    pub fn host_ports(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` (as a crash would).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data; waits until it answers.
    pub fn resume_member(&mut self, i: usize) {
        self.spawn(i);
        self.wait(i);
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let state = if m.data_dir.join("member").exists() {
            "existing"
        } else {
            "new"
        };
        let child = std::process::Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial])
            .args([
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                &self.token,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({e}); install etcd-server"));
        self.members[i].child = Some(child);
    }

    fn wait(&self, i: usize) {
        let port = self.members[i].client_port;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("etcd member {i} did not come up");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
            let _ = std::fs::remove_dir_all(&self.members[i].data_dir);
        }
    }
}
