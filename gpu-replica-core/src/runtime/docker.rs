//! [`ContainerRuntime`] on the Docker Engine API through bollard.
//!
//! Everything goes through the API, never through Docker's data root, so the server may run on
//! another machine or in a container. Volume data moves through the archive API on helper
//! containers that are created but never started, so any local image can serve as their image.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerConfig, ContainerCreateBody, DeviceRequest, EndpointSettings, HostConfig, Ipam,
    IpamConfig, Network, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, EventsOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, RemoveVolumeOptions, ResizeExecOptions, RestartContainerOptions,
    StatsOptions, StopContainerOptions, TagImageOptions, UploadToContainerOptions,
};
use bollard::{body_try_stream, Docker};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

use super::tar_size::TarSizeCounter;
use super::{
    ContainerEvent, ContainerEventStream, ContainerNetwork, ContainerRuntime, ContainerSpec,
    ContainerState, ContainerStats, ExecOutput, ExecRequest, ExecSession, GpuAttach, ImageState,
    LogStream, NetworkCreated, NetworkState, RootfsSupport, VolumeState, HELPER_LABEL,
};
use crate::error::{Error, Result};
use crate::limits::Limits;

/// The image helper containers are created from (never started): an empty filesystem.
pub const HELPER_IMAGE: &str = "gpu-replica/helper:empty";

const SIZE_UNKNOWN: u8 = 0;
const SIZE_ENFORCED: u8 = 1;
const SIZE_IGNORED: u8 = 2;

/// The Docker engine, reached through `DOCKER_HOST` or the local socket.
pub struct DockerRuntime {
    docker: Docker,
    helper_image: Option<String>,
    /// An image with `cp`: volume data is then copied inside Docker at disk speed instead of
    /// streamed through the archive API.
    copy_image: Option<String>,
    /// Whether the local volume driver accepts `size`; detected on the first sized create.
    size_support: AtomicU8,
    /// The storage driver, once asked (a container's size means another thing on some).
    driver: std::sync::OnceLock<String>,
}

fn docker_err(e: BollardError) -> Error {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("is not running") || message.contains("is paused") => {
            Error::NotRunning(message)
        }
        BollardError::DockerResponseServerError { message, .. } => Error::Docker(message),
        // The engine cannot be reached at all (socket gone, connection refused, timeout).
        BollardError::IOError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_) => {
            Error::Unavailable(format!("the Docker engine ({e})"))
        }
        other => Error::Docker(other.to_string()),
    }
}

/// The most a one-shot exec's output is read (the rest is dropped).
const EXEC_OUTPUT_LIMIT: usize = 16 << 20;

type ByteStream = futures_util::stream::BoxStream<'static, Result<Bytes>>;

/// An exec's multiplexed stream as two: standard output (and console) and standard error. A
/// task reads Docker's stream and hands each chunk to its side; each side is read at its
/// own pace up to a few chunks ahead.
fn split_stderr(
    mut output: std::pin::Pin<
        Box<dyn Stream<Item = std::result::Result<LogOutput, BollardError>> + Send>,
    >,
) -> (ByteStream, ByteStream) {
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
    let (err_tx, err_rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
    tokio::spawn(async move {
        while let Some(chunk) = output.next().await {
            let sent = match chunk {
                Ok(LogOutput::StdErr { message }) => err_tx.send(Ok(message)).await.is_ok(),
                Ok(other) => out_tx.send(Ok(other.into_bytes())).await.is_ok(),
                Err(e) => {
                    let _ = out_tx.send(Err(docker_err(e))).await;
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    });
    let stream = |mut rx: tokio::sync::mpsc::Receiver<Result<Bytes>>| -> ByteStream {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    };
    (stream(out_rx), stream(err_rx))
}

/// Go's `os.FileMode` (what Docker's archive stat carries) as a Unix `st_mode`.
fn unix_mode(go: u32) -> u32 {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const PIPE: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHAR: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    let kind = if go & DIR != 0 {
        0o040000
    } else if go & SYMLINK != 0 {
        0o120000
    } else if go & PIPE != 0 {
        0o010000
    } else if go & SOCKET != 0 {
        0o140000
    } else if go & DEVICE != 0 && go & CHAR != 0 {
        0o020000
    } else if go & DEVICE != 0 {
        0o060000
    } else {
        0o100000
    };
    let special = if go & SETUID != 0 { 0o4000 } else { 0 }
        | if go & SETGID != 0 { 0o2000 } else { 0 }
        | if go & STICKY != 0 { 0o1000 } else { 0 };
    kind | special | (go & 0o777)
}

/// Connects to `port` on the loopback of the network namespace at path `namespace`. A socket
/// belongs to the namespace it was made in, so a thread of its own enters the namespace,
/// connects and ends (a thread of a pool must never change namespace).
async fn connect_in_namespace(
    namespace: String,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let connect = || -> std::io::Result<std::net::TcpStream> {
            let namespace = std::fs::File::open(&namespace)?;
            // Never the server's own namespace (the host's loopback is not the set's).
            let (theirs, ours) = (
                namespace.metadata()?,
                std::fs::metadata("/proc/self/ns/net")?,
            );
            if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
                return Err(std::io::Error::other(
                    "the container's network namespace is the server's own",
                ));
            }
            // SAFETY: setns on a namespace file we hold open; it changes only this thread,
            // which ends right after.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // IPv4 loopback first; a program bound to `localhost` may be on `::1` only
            // (Node 17+, Vite).
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            let stream = match std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(10)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(10))
                        .map_err(|_| e)?
                }
                other => other?,
            };
            stream.set_nonblocking(true)?;
            Ok(stream)
        };
        let _ = tx.send(connect());
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended"))??;
    stream.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(stream)
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn to_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn network_state(n: Network) -> NetworkState {
    NetworkState {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        subnets: n
            .ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.subnet)
            .collect(),
        labels: n.labels.unwrap_or_default().into_iter().collect(),
    }
}

fn label_filter(label: &str) -> Option<HashMap<String, Vec<String>>> {
    Some(HashMap::from([(
        "label".to_string(),
        vec![label.to_string()],
    )]))
}

impl DockerRuntime {
    /// Container `name` as inspected, and its state; [`Error::NotRunning`] unless it runs.
    async fn inspect_running(
        &self,
        name: &str,
    ) -> Result<(
        bollard::models::ContainerInspectResponse,
        bollard::models::ContainerState,
    )> {
        let mut found = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(docker_err)?;
        let state = found.state.take().unwrap_or_default();
        if !state.running.unwrap_or(false) {
            return Err(Error::NotRunning(name.to_string()));
        }
        Ok((found, state))
    }

    /// Where the Docker engine keeps images, containers and volumes (`DockerRootDir`): the
    /// disk whose room the server watches beside the store's.
    pub async fn data_root(&self) -> Result<String> {
        let info = self.docker.info().await.map_err(docker_err)?;
        info.docker_root_dir
            .filter(|d| !d.is_empty())
            .ok_or_else(|| Error::Docker("the engine did not say its root directory".into()))
    }

    async fn upload(
        &self,
        name: &str,
        dir: &str,
        archive: super::ImageStream,
        as_user: bool,
    ) -> Result<()> {
        let archive = archive.map_err(|e| std::io::Error::other(e.to_string()));
        let mut options =
            bollard::query_parameters::UploadToContainerOptionsBuilder::new().path(dir);
        if as_user {
            options = options.copy_uidgid("1");
        }
        self.docker
            .upload_to_container(
                name,
                Some(options.build()),
                bollard::body_try_stream(archive),
            )
            .await
            .map_err(docker_err)
    }

    /// Connects with `DOCKER_HOST` (or the local socket) and agrees on an API version the
    /// engine speaks, so older engines (20.10 speaks 1.41) work too.
    pub async fn connect() -> Result<DockerRuntime> {
        let docker = Docker::connect_with_defaults().map_err(docker_err)?;
        DockerRuntime::negotiate(docker).await
    }

    /// Connects to the engine listening on the Unix socket `path` (a second daemon, say).
    pub async fn connect_socket(path: &str) -> Result<DockerRuntime> {
        let docker = Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(docker_err)?;
        DockerRuntime::negotiate(docker).await
    }

    async fn negotiate(docker: Docker) -> Result<DockerRuntime> {
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| Error::Docker(format!("cannot reach the Docker engine: {e}")))?;
        Ok(DockerRuntime {
            docker,
            helper_image: None,
            copy_image: None,
            size_support: AtomicU8::new(SIZE_UNKNOWN),
            driver: std::sync::OnceLock::new(),
        })
    }

    /// Uses `image` for the helper containers that move volume data (default: an empty image
    /// of our own, imported on first use).
    pub fn with_helper_image(mut self, image: impl Into<String>) -> DockerRuntime {
        self.helper_image = Some(image.into());
        self
    }

    /// Copies volume data with `cp -a` in a container of `image` (any image with a `cp`, a
    /// CUDA image for instance) instead of through the archive API: several times faster.
    pub fn with_copy_image(mut self, image: impl Into<String>) -> DockerRuntime {
        self.copy_image = Some(image.into());
        self
    }

    /// Runs `cp -a` from one volume to the other in a container of `image`; waits for it.
    async fn copy_inside(&self, image: &str, from: &str, to: &str) -> Result<()> {
        let name = format!("gpu-replica-helper-copy-{to}");
        self.remove_container(&name).await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["cp".into()]),
            cmd: Some(vec!["-a".into(), "/from/.".into(), "/to/".into()]),
            labels: Some(HashMap::from([(HELPER_LABEL.to_string(), to.to_string())])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{from}:/from:ro"), format!("{to}:/to")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let outcome = async {
            self.docker
                .create_container(Some(options), body)
                .await
                .map_err(docker_err)?;
            self.docker
                .start_container(&name, None)
                .await
                .map_err(docker_err)?;
            let mut wait = self.docker.wait_container(
                &name,
                None::<bollard::query_parameters::WaitContainerOptions>,
            );
            while let Some(status) = wait.next().await {
                match status {
                    Ok(status) if status.status_code == 0 => {}
                    Ok(status) => {
                        return Err(Error::Docker(format!(
                            "cp -a exited with {}",
                            status.status_code
                        )))
                    }
                    Err(BollardError::DockerContainerWaitError { code, error }) => {
                        return Err(Error::Docker(format!("cp -a exited with {code}: {error}")))
                    }
                    Err(e) => return Err(docker_err(e)),
                }
            }
            Ok(())
        }
        .await;
        self.remove_container(&name).await?;
        outcome
    }

    /// Imports a root filesystem tar stream as image `image` (`repo:tag`), applying Dockerfile
    /// `changes` (CMD, ENV, LABEL, …) to its config. This is `docker import`.
    pub async fn import_image<S>(&self, tar: S, image: &str, changes: Vec<String>) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let (repo, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            changes,
            ..Default::default()
        };
        let mut progress =
            self.docker
                .create_image(Some(options), Some(body_try_stream(tar)), None);
        while let Some(item) = progress.next().await {
            item.map_err(docker_err)?;
        }
        Ok(())
    }

    /// Docker's storage driver, asked once.
    async fn driver(&self) -> Result<String> {
        if let Some(driver) = self.driver.get() {
            return Ok(driver.clone());
        }
        let info = self.docker.info().await.map_err(docker_err)?;
        let driver = info.driver.unwrap_or_default();
        Ok(self.driver.get_or_init(|| driver).clone())
    }

    /// The image of helper containers: the configured one, or a tiny image of our own (an empty
    /// filesystem, imported once), so volume data moves even on a host without any image.
    async fn helper_image(&self) -> Result<String> {
        if let Some(image) = &self.helper_image {
            return Ok(image.clone());
        }
        if self.inspect_image(HELPER_IMAGE).await?.is_none() {
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            tar.append_data(&mut header, "data", std::io::empty())
                .map_err(|e| Error::Docker(format!("building the helper image: {e}")))?;
            let bytes = tar
                .into_inner()
                .map_err(|e| Error::Docker(format!("building the helper image: {e}")))?;
            let body = futures_util::stream::iter([Ok(Bytes::from(bytes))]);
            let changes = vec![format!("LABEL {HELPER_LABEL}=image")];
            self.import_image(body, HELPER_IMAGE, changes).await?;
        }
        Ok(HELPER_IMAGE.to_string())
    }

    /// A created, never started container that mounts `volume` at `/data`.
    async fn helper(&self, volume: &str, role: &str) -> Result<String> {
        let name = format!("gpu-replica-helper-{role}-{volume}");
        // A crash may have left one behind.
        self.remove_container(&name).await?;
        let body = ContainerCreateBody {
            image: Some(self.helper_image().await?),
            cmd: Some(vec!["true".into()]),
            labels: Some(HashMap::from([(
                HELPER_LABEL.to_string(),
                volume.to_string(),
            )])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{volume}:/data")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_err)?;
        Ok(name)
    }

    fn archive(&self, container: &str) -> impl Stream<Item = Result<Bytes, BollardError>> {
        self.docker.download_from_container(
            container,
            Some(DownloadFromContainerOptions {
                path: "/data".into(),
            }),
        )
    }
}

/// The Docker create request for `spec`: GPUs by the attach mode, `NVIDIA_VISIBLE_DEVICES`
/// set to the container's own GPUs (`void` when cardless), published ports, binds, Tty and
/// OpenStdin so shell images stay up. Also what the HTTP layer shows as `config`/`hostConfig`.
pub(crate) fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut env = spec.env.clone();
    // The image may say NVIDIA_VISIBLE_DEVICES=all; the container must see only its own.
    let visible = if spec.gpus.is_empty() {
        "void".to_string()
    } else {
        spec.gpus.join(",")
    };
    env.retain(|e| !e.starts_with("NVIDIA_VISIBLE_DEVICES="));
    env.push(format!("NVIDIA_VISIBLE_DEVICES={visible}"));
    env.push("CUDA_DEVICE_ORDER=PCI_BUS_ID".into());
    let device_requests = match (spec.gpu_attach, spec.gpus.is_empty()) {
        (_, true) | (GpuAttach::Env, _) => None,
        (GpuAttach::DeviceRequests, false) => Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(spec.gpus.clone()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]),
        (GpuAttach::Cdi, false) => Some(vec![DeviceRequest {
            driver: Some("cdi".into()),
            device_ids: Some(
                spec.gpus
                    .iter()
                    .map(|u| format!("nvidia.com/gpu={u}"))
                    .collect(),
            ),
            ..Default::default()
        }]),
    };
    let port_bindings = spec
        .ports
        .iter()
        .map(|p| {
            (
                p.container_port.clone(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(p.host_port.to_string()),
                }]),
            )
        })
        .collect::<HashMap<_, _>>();
    let networking_config = spec.network.as_ref().map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            n.name.clone(),
            EndpointSettings {
                aliases: Some(n.aliases.clone()),
                ..Default::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        networking_config,
        env: Some(env),
        cmd: spec.cmd.clone(),
        tty: Some(true),
        open_stdin: Some(true),
        labels: Some(to_map(&spec.labels)),
        exposed_ports: Some(
            spec.ports
                .iter()
                .map(|p| p.container_port.clone())
                .collect(),
        ),
        host_config: Some(HostConfig {
            binds: Some(
                spec.binds
                    .iter()
                    .map(|b| format!("{}:{}", b.src, b.dest))
                    .collect(),
            ),
            port_bindings: Some(port_bindings),
            network_mode: spec.network.as_ref().map(|n| n.name.clone()),
            storage_opt: spec
                .rootfs_size
                .map(|size| HashMap::from([("size".to_string(), size.to_string())])),
            device_requests,
            privileged: Some(false),
            nano_cpus: spec
                .limits
                .millicpus
                .map(|m| to_i64(m.saturating_mul(1_000_000))),
            memory: spec.limits.memory.map(to_i64),
            shm_size: spec.limits.shm.map(to_i64),
            init: spec.init.then_some(true),
            security_opt: spec
                .hardening
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".to_string()]),
            cap_drop: (!spec.hardening.drop_capabilities.is_empty())
                .then(|| spec.hardening.drop_capabilities.clone()),
            pids_limit: spec.hardening.pids_limit.map(to_i64),
            ulimits: spec.hardening.open_files.map(|n| {
                vec![bollard::models::ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(to_i64(n)),
                    hard: Some(to_i64(n)),
                }]
            }),
            // A daemon or host restart brings running sets back by themselves; a stop through
            // the API stays a stop.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// CPU percent the way `docker stats` computes it: the container's share of the host's CPU
/// time between two samples, times the number of CPUs.
fn cpu_percent(stats: &bollard::models::ContainerStatsResponse) -> f64 {
    let (Some(now), Some(before)) = (&stats.cpu_stats, &stats.precpu_stats) else {
        return 0.0;
    };
    let total = |s: &bollard::models::ContainerCpuStats| {
        s.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let container = total(now).saturating_sub(total(before)) as f64;
    let system = now
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(before.system_cpu_usage.unwrap_or(0)) as f64;
    let cpus = f64::from(now.online_cpus.unwrap_or(1).max(1));
    if system > 0.0 {
        container / system * cpus * 100.0
    } else {
        0.0
    }
}

/// `repo:tag` → (`repo`, `tag`), `latest` when no tag is given.
/// The listening ports in `/proc/net/tcp`-format tables: rows whose state is `0A` (LISTEN),
/// their local port (hex after the colon); Docker's DNS server's port is left out.
fn listening_in(tables: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = tables
        .lines()
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            let (address, port) = local.rsplit_once(':')?;
            // Docker's embedded DNS server (127.0.0.11, user-defined networks) is not the
            // container's own.
            if *state != "0A" || address == "0B00007F" {
                return None;
            }
            u16::from_str_radix(port, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn split_reference(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// Dockerfile instructions that rebuild `config` on an imported image.
fn config_changes(config: &ContainerConfig, labels: &BTreeMap<String, String>) -> Vec<String> {
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut changes = Vec::new();
    for env in config.env.iter().flatten() {
        if let Some((key, value)) = env.split_once('=') {
            changes.push(format!("ENV {key}={}", quote(value)));
        }
    }
    if let Some(cmd) = config.cmd.as_ref().filter(|c| !c.is_empty()) {
        changes.push(format!("CMD {}", json(cmd)));
    }
    if let Some(entrypoint) = config.entrypoint.as_ref().filter(|c| !c.is_empty()) {
        changes.push(format!("ENTRYPOINT {}", json(entrypoint)));
    }
    if let Some(dir) = config.working_dir.as_ref().filter(|d| !d.is_empty()) {
        changes.push(format!("WORKDIR {dir}"));
    }
    if let Some(user) = config.user.as_ref().filter(|u| !u.is_empty()) {
        changes.push(format!("USER {user}"));
    }
    for port in config.exposed_ports.iter().flatten() {
        changes.push(format!("EXPOSE {port}"));
    }
    let mut all_labels: BTreeMap<String, String> = config
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    all_labels.extend(labels.clone());
    for (key, value) in all_labels {
        changes.push(format!("LABEL {}={}", quote(&key), quote(&value)));
    }
    changes
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn version(&self) -> Result<String> {
        let version = self.docker.version().await.map_err(docker_err)?;
        Ok(format!(
            "Docker {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let mut body = create_body(spec);
        if let Some(size) = spec.rootfs_size {
            // btrfs, zfs and devicemapper bound the whole root filesystem, image included
            // (overlay2 bounds only what the container writes): the image's size on top.
            if matches!(
                self.driver().await?.as_str(),
                "btrfs" | "zfs" | "devicemapper"
            ) {
                let image = self
                    .docker
                    .inspect_image(&spec.image)
                    .await
                    .map_err(docker_err)?;
                let total = size.saturating_add(image.size.unwrap_or(0).max(0) as u64);
                if let Some(host) = body.host_config.as_mut() {
                    host.storage_opt =
                        Some(HashMap::from([("size".to_string(), total.to_string())]));
                }
            }
        }
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_err)?;
        Ok(created.id)
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(docker_err)
    }

    async fn stop_container(&self, name: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(grace.as_secs().try_into().unwrap_or(i32::MAX)),
            ..Default::default()
        };
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: gone, so not running either.
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn restart_container(&self, name: &str, grace: Duration) -> Result<()> {
        let options = RestartContainerOptions {
            t: Some(grace.as_secs().try_into().unwrap_or(i32::MAX)),
            ..Default::default()
        };
        self.docker
            .restart_container(name, Some(options))
            .await
            .map_err(docker_err)
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(docker_err(e)),
            _ => Ok(()),
        }
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerState>> {
        let found = match self.docker.inspect_container(name, None).await {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(docker_err(e)),
        };
        let state = found.state.unwrap_or_default();
        let config = found.config.unwrap_or_default();
        let host = found.host_config.unwrap_or_default();
        let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64);
        Ok(Some(ContainerState {
            id: found.id.unwrap_or_default(),
            name: found
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            env: config.env.unwrap_or_default(),
            limits: Limits {
                millicpus: positive(host.nano_cpus).map(|n| n / 1_000_000),
                memory: positive(host.memory),
                shm: positive(host.shm_size),
            },
            init: host.init.unwrap_or(false),
            created: found
                .created
                .and_then(|t| {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(0, |t| (t.unix_timestamp_nanos() / 1000) as i64),
        }))
    }

    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>> {
        let options = ListContainersOptions {
            all: true,
            filters: label_filter(label),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err)?;
        Ok(found
            .into_iter()
            .map(|c| {
                // The state word (`running`, `restarting`, `exited`), as inspect gives it.
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                ContainerState {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    image: c.image.unwrap_or_default(),
                    running: state == "running",
                    status: state,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    env: Vec::new(),
                    limits: Limits::default(),
                    init: false,
                    created: c.created.unwrap_or(0).saturating_mul(1_000_000),
                }
            })
            .collect())
    }

    async fn logs(&self, name: &str, tail: Option<u64>, follow: bool) -> Result<LogStream> {
        // Ask for the container first, so a missing one is an error, not an empty stream.
        self.docker
            .inspect_container(name, None)
            .await
            .map_err(docker_err)?;
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        let stream = self
            .docker
            .logs(name, Some(options))
            .map_ok(|chunk| chunk.into_bytes())
            .map_err(docker_err);
        Ok(stream.boxed())
    }

    async fn stats(&self, name: &str) -> Result<ContainerStats> {
        // Not one-shot: Docker waits for a second sample, so the CPU figure covers a real
        // interval (about one second).
        let options = StatsOptions {
            stream: false,
            one_shot: false,
        };
        let stats = self
            .docker
            .stats(name, Some(options))
            .next()
            .await
            .ok_or_else(|| Error::Docker(format!("no statistics for '{name}'")))?
            .map_err(docker_err)?;
        let memory = stats.memory_stats.clone().unwrap_or_default();
        // cgroup v1 counts page cache as usage; `docker stats` leaves it out.
        let cache = memory
            .stats
            .as_ref()
            .and_then(|s| s.get("total_inactive_file").or(s.get("inactive_file")))
            .copied()
            .unwrap_or(0);
        let networks = stats.networks.clone().unwrap_or_default();
        Ok(ContainerStats {
            cpu_percent: cpu_percent(&stats),
            memory_used: memory.usage.unwrap_or(0).saturating_sub(cache),
            memory_limit: memory.limit.unwrap_or(0),
            net_rx: networks.values().filter_map(|n| n.rx_bytes).sum(),
            net_tx: networks.values().filter_map(|n| n.tx_bytes).sum(),
            pids: stats
                .pids_stats
                .as_ref()
                .and_then(|p| p.current)
                .unwrap_or(0),
        })
    }

    async fn exec(
        &self,
        name: &str,
        argv: &[String],
        workdir: Option<String>,
    ) -> Result<ExecOutput> {
        let options = CreateExecOptions {
            cmd: Some(argv.to_vec()),
            working_dir: workdir,
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(name, options)
            .await
            .map_err(docker_err)?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(docker_err)?
        {
            while let Some(chunk) = stream.next().await {
                output.push_str(&String::from_utf8_lossy(
                    &chunk.map_err(docker_err)?.into_bytes(),
                ));
                // A program that writes without end does not fill the server's memory.
                if output.len() > EXEC_OUTPUT_LIMIT {
                    let mut cut = EXEC_OUTPUT_LIMIT;
                    while !output.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    output.truncate(cut);
                    break;
                }
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(docker_err)?;
        Ok(ExecOutput {
            output,
            exit_code: inspected.exit_code.unwrap_or(-1),
        })
    }

    async fn exec_start(&self, name: &str, request: &ExecRequest) -> Result<ExecSession> {
        let config = CreateExecOptions {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(request.tty.is_some()),
            env: (!request.env.is_empty()).then(|| request.env.clone()),
            cmd: Some(request.argv.clone()),
            user: request.user.clone(),
            working_dir: request.workdir.clone(),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(name, config)
            .await
            .map_err(docker_err)?;
        let options = StartExecOptions {
            detach: false,
            tty: request.tty.is_some(),
            output_capacity: None,
        };
        match self
            .docker
            .start_exec(&created.id, Some(options))
            .await
            .map_err(docker_err)?
        {
            StartExecResults::Attached { output, input } => {
                if let Some((rows, cols)) = request.tty {
                    // Before the first byte is drawn; Docker takes it once the exec runs.
                    let _ = self.exec_resize(&created.id, rows, cols).await;
                }
                if request.separate_stderr && request.tty.is_none() {
                    let (output, errors) = split_stderr(output);
                    return Ok(ExecSession {
                        id: created.id,
                        input,
                        output,
                        errors: Some(errors),
                    });
                }
                Ok(ExecSession {
                    id: created.id,
                    input,
                    output: output
                        .map_ok(|chunk| chunk.into_bytes())
                        .map_err(docker_err)
                        .boxed(),
                    errors: None,
                })
            }
            StartExecResults::Detached => Err(Error::Docker(
                "Docker started the exec detached; its streams are not attached".into(),
            )),
        }
    }

    async fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let options = ResizeExecOptions {
            h: i32::from(rows.max(1)),
            w: i32::from(cols.max(1)),
        };
        self.docker
            .resize_exec(id, options)
            .await
            .map_err(docker_err)
    }

    async fn exec_exit_code(&self, id: &str) -> Result<Option<i64>> {
        let inspected = self.docker.inspect_exec(id).await.map_err(docker_err)?;
        Ok(match inspected.running {
            Some(true) => None,
            _ => Some(inspected.exit_code.unwrap_or(-1)),
        })
    }

    async fn exec_pid(&self, id: &str) -> Result<Option<u32>> {
        let inspected = self.docker.inspect_exec(id).await.map_err(docker_err)?;
        Ok(match (inspected.running, inspected.pid) {
            (Some(true), Some(pid)) if pid > 0 => Some(pid as u32),
            _ => None,
        })
    }

    async fn commit(
        &self,
        container: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let (repo, tag) = split_reference(image);
        let changes = labels
            .iter()
            .map(|(k, v)| format!("LABEL {}={}", serde_json::json!(k), serde_json::json!(v)))
            .collect::<Vec<_>>()
            .join("\n");
        let options = CommitContainerOptions {
            container: Some(container.to_string()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            pause: true,
            changes: (!changes.is_empty()).then_some(changes),
            ..Default::default()
        };
        let committed = self
            .docker
            .commit_container(options, ContainerConfig::default())
            .await
            .map_err(docker_err)?;
        Ok(committed.id)
    }

    async fn commit_flattened(
        &self,
        container: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let inspected = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(docker_err)?;
        let changes = config_changes(&inspected.config.unwrap_or_default(), labels);
        let export = self
            .docker
            .export_container(container)
            .map_err(std::io::Error::other);
        self.import_image(export, image, changes).await?;
        let imported = self
            .inspect_image(image)
            .await?
            .ok_or_else(|| Error::Docker(format!("imported image {image} is missing")))?;
        Ok(imported.id)
    }

    async fn save_image(&self, image: &str) -> Result<super::ImageStream> {
        if self.inspect_image(image).await?.is_none() {
            return Err(Error::ImageNotFound(image.to_string()));
        }
        Ok(Box::pin(
            self.docker.export_image(image).map_err(docker_err),
        ))
    }

    async fn load_image(&self, archive: super::ImageStream) -> Result<()> {
        let archive = archive.map_err(|e| std::io::Error::other(e.to_string()));
        let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
            .quiet(true)
            .build();
        let mut progress = self.docker.import_image_stream(options, archive, None);
        while let Some(item) = progress.next().await {
            let info = item.map_err(docker_err)?;
            if let Some(detail) = info.error_detail {
                return Err(Error::Docker(format!(
                    "loading an image: {}",
                    detail.message.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    async fn download_path(&self, name: &str, path: &str) -> Result<super::ImageStream> {
        if self.inspect_container(name).await?.is_none() {
            return Err(Error::Docker(format!("no container '{name}'")));
        }
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        Ok(Box::pin(
            self.docker
                .download_from_container(name, Some(options))
                .map_err(docker_err),
        ))
    }

    async fn upload_path(&self, name: &str, dir: &str, archive: super::ImageStream) -> Result<()> {
        self.upload(name, dir, archive, false).await
    }

    async fn upload_as_user(
        &self,
        name: &str,
        dir: &str,
        archive: super::ImageStream,
    ) -> Result<()> {
        self.upload(name, dir, archive, true).await
    }

    async fn path_stat(&self, name: &str, path: &str) -> Result<Option<super::PathStat>> {
        let options = bollard::query_parameters::ContainerArchiveInfoOptionsBuilder::new()
            .path(path)
            .build();
        match self
            .docker
            .get_container_archive_info(name, Some(options))
            .await
        {
            Ok(stat) => Ok(Some(super::PathStat {
                name: stat.name,
                size: stat.size.max(0) as u64,
                mode: unix_mode(stat.file_mode),
                mtime: stat
                    .modification_time
                    .as_deref()
                    .and_then(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .map(|t| t.unix_timestamp())
                    .unwrap_or(0),
                link_target: stat.link_target,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            // HEAD answers carry no message; a path Docker refuses (not a directory on the
            // way) is as missing.
            Err(BollardError::DockerResponseServerError {
                status_code: 400, ..
            }) => Ok(None),
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn connect_port(&self, name: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let (found, state) = self.inspect_running(name).await?;
        let refused = |e: std::io::Error| {
            Error::Unavailable(format!("nothing answers on port {port} of {name}: {e}"))
        };
        // Docker's own handle on the container's network namespace (it goes with the
        // container, so a stale one cannot name another process's); else its first process's.
        let sandbox = found
            .network_settings
            .as_ref()
            .and_then(|n| n.sandbox_key.clone())
            .filter(|k| !k.is_empty());
        let pid = state.pid.unwrap_or(0);
        let namespace = sandbox.or_else(|| (pid > 0).then(|| format!("/proc/{pid}/ns/net")));
        if let Some(namespace) = namespace {
            match connect_in_namespace(namespace, port).await {
                Ok(stream) => return Ok(stream),
                // Not root: the container's address is the way left.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(refused(e)),
            }
        }
        let address = found
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_values()
            .filter_map(|n| n.ip_address)
            .find(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .ok_or_else(|| Error::Unavailable(format!("{name} has no address to reach")))?;
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((address, port)),
        )
        .await
        .map_err(|_| refused(std::io::ErrorKind::TimedOut.into()))?
        .map_err(refused)
    }

    async fn listening_ports(&self, name: &str) -> Result<Vec<u16>> {
        let (_, state) = self.inspect_running(name).await?;
        // The kernel's socket tables of the container's network namespace, read through its
        // first process on this host; else from inside (needs `cat` in the image).
        let pid = state.pid.unwrap_or(0);
        let mut tables = String::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = tokio::fs::read_to_string(format!("/proc/{pid}/net/{table}")).await {
                tables.push_str(&text);
            }
        }
        if pid <= 0 || tables.is_empty() {
            let argv = ["cat", "/proc/net/tcp", "/proc/net/tcp6"].map(str::to_string);
            tables = self.exec(name, &argv, None).await?.output;
        }
        Ok(listening_in(&tables))
    }

    async fn tag_image(&self, source: &str, target: &str) -> Result<()> {
        let (repo, tag) = split_reference(target);
        let options = TagImageOptions {
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
        };
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(docker_err)
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageState>> {
        let found = match self.docker.inspect_image(image).await {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => return Ok(None),
            // A reference Docker cannot parse (or resolve) names no image it has.
            Err(BollardError::DockerResponseServerError {
                status_code: 400, ..
            }) => return Ok(None),
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.to_ascii_lowercase().contains("no such image") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(docker_err(e)),
        };
        Ok(Some(ImageState {
            id: found.id.unwrap_or_default(),
            tags: found.repo_tags.unwrap_or_default(),
            layers: found
                .root_fs
                .and_then(|r| r.layers)
                .map(|l| l.len())
                .unwrap_or(0),
            labels: found
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }))
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageState>> {
        let options = ListImagesOptions {
            filters: label_filter(label),
            ..Default::default()
        };
        let found = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(docker_err)?;
        Ok(found
            .into_iter()
            .map(|i| ImageState {
                id: i.id,
                tags: i.repo_tags,
                layers: 0,
                labels: i.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        // force on a tag only untags when other tags or children still use the image.
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_image(image, Some(options), None).await {
            Err(e) if !is_not_found(&e) => Err(docker_err(e)),
            _ => Ok(()),
        }
    }

    async fn create_volume(
        &self,
        name: &str,
        size: Option<u64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let request = |size: Option<u64>| VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".into()),
            driver_opts: size.map(|s| HashMap::from([("size".to_string(), s.to_string())])),
            labels: Some(to_map(labels)),
            ..Default::default()
        };
        let sized = size.filter(|_| self.size_support.load(Ordering::Relaxed) != SIZE_IGNORED);
        if sized.is_some() {
            match self.docker.create_volume(request(sized)).await {
                Ok(_) => {
                    self.size_support.store(SIZE_ENFORCED, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(e) if e.to_string().contains("quota") => {
                    tracing::warn!("volume sizes are not enforced on this host: {e}");
                    self.size_support.store(SIZE_IGNORED, Ordering::Relaxed);
                }
                Err(e) => return Err(docker_err(e)),
            }
        }
        self.docker
            .create_volume(request(None))
            .await
            .map_err(docker_err)?;
        Ok(false)
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeState>> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(VolumeState {
                name: v.name,
                driver: v.driver,
                options: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn list_volumes(&self, label: &str) -> Result<Vec<VolumeState>> {
        let options = ListVolumesOptions {
            filters: label_filter(label),
        };
        let found = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(docker_err)?;
        Ok(found
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeState {
                name: v.name,
                driver: v.driver,
                options: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn volume_used_bytes(&self, name: &str) -> Result<u64> {
        let helper = self.helper(name, "measure").await?;
        let mut counter = TarSizeCounter::default();
        let mut archive = self.archive(&helper);
        let mut outcome = Ok(());
        while let Some(chunk) = archive.next().await {
            match chunk {
                Ok(bytes) => counter.feed(&bytes),
                Err(e) => {
                    outcome = Err(docker_err(e));
                    break;
                }
            }
        }
        self.remove_container(&helper).await?;
        outcome.map(|()| counter.total())
    }

    async fn copy_volume(&self, from: &str, to: &str) -> Result<()> {
        if let Some(image) = &self.copy_image {
            return self.copy_inside(image, from, to).await;
        }
        let source = self.helper(from, "from").await?;
        let target = match self.helper(to, "to").await {
            Ok(target) => target,
            Err(e) => {
                self.remove_container(&source).await?;
                return Err(e);
            }
        };
        // The archive of /data holds "data/…"; unpacked at / in the target it lands in /data.
        let stream = self.archive(&source).map_err(std::io::Error::other);
        let outcome = self
            .docker
            .upload_to_container(
                &target,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                body_try_stream(stream),
            )
            .await
            .map_err(docker_err);
        self.remove_container(&source).await?;
        self.remove_container(&target).await?;
        outcome
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Err(e) if !is_not_found(&e) => Err(docker_err(e)),
            _ => Ok(()),
        }
    }

    async fn rootfs_support(&self, size: u64) -> Result<RootfsSupport> {
        let driver = self.driver().await?;
        // Docker says only at create whether the driver takes a size: ask it for a container
        // that is never started.
        let image = self.helper_image().await?;
        let name = format!("gpu-replica-rootfs-probe-{}", std::process::id());
        self.remove_container(&name).await?;
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["true".into()]),
            labels: Some(HashMap::from([(HELPER_LABEL.to_string(), name.clone())])),
            host_config: Some(HostConfig {
                storage_opt: Some(HashMap::from([("size".to_string(), size.to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let made = self.docker.create_container(Some(options), body).await;
        self.remove_container(&name).await?;
        Ok(match made {
            Ok(_) => RootfsSupport {
                driver,
                enforced: true,
                reason: None,
            },
            Err(BollardError::DockerResponseServerError { message, .. }) => RootfsSupport {
                driver,
                enforced: false,
                reason: Some(message),
            },
            Err(e) => return Err(docker_err(e)),
        })
    }

    async fn rootfs_sizes(&self, label: &str) -> Result<BTreeMap<String, u64>> {
        let options = ListContainersOptions {
            all: true,
            size: true,
            filters: label_filter(label),
            ..Default::default()
        };
        Ok(self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err)?
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                Some((name, c.size_rw.unwrap_or(0).max(0) as u64))
            })
            .collect())
    }

    async fn create_network(
        &self,
        name: &str,
        subnet: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<NetworkCreated> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(to_map(labels)),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(made) => Ok(NetworkCreated::Created(made.id)),
            // "Pool overlaps with other one on this address space", or the subnet is in use.
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("overlaps") || message.contains("in use") =>
            {
                Ok(NetworkCreated::SubnetTaken)
            }
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn find_networks(&self, name: &str) -> Result<Vec<NetworkState>> {
        // Docker's name filter matches parts of names: keep the exact ones.
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![name.to_string()],
            )])),
        };
        Ok(self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(docker_err)?
            .into_iter()
            .map(network_state)
            .filter(|n| n.name == name)
            .collect())
    }

    async fn list_networks(&self, label: &str) -> Result<Vec<NetworkState>> {
        let options = ListNetworksOptions {
            filters: label_filter(label),
        };
        Ok(self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(docker_err)?
            .into_iter()
            .map(network_state)
            .collect())
    }

    async fn remove_network(&self, id: &str) -> Result<bool> {
        match self.docker.remove_network(id).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(true),
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("active endpoints") =>
            {
                Ok(false)
            }
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn reattach_network(&self, container: &str, network: &ContainerNetwork) -> Result<()> {
        // A container keeps the ID of the network it was created on; once that network is
        // removed, it starts only after a forced disconnect and a fresh connect by name.
        let disconnect = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        match self
            .docker
            .disconnect_network(&network.name, disconnect)
            .await
        {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("is not connected") =>
            {
                tracing::debug!(%container, "was not on {}", network.name);
            }
            Err(e) => return Err(docker_err(e)),
        }
        let connect = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(network.aliases.clone()),
                ..Default::default()
            }),
        };
        self.docker
            .connect_network(&network.name, connect)
            .await
            .map_err(docker_err)
    }

    async fn container_events(&self, label: &str) -> Result<ContainerEventStream> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![label.to_string()]),
            (
                "event".to_string(),
                ["start", "die", "stop", "destroy"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        // Ask once so an unreachable engine is an error now, not an empty stream.
        self.version().await?;
        let stream = self.docker.events(Some(options)).map(|message| {
            let message = message.map_err(docker_err)?;
            let attributes = message.actor.and_then(|a| a.attributes).unwrap_or_default();
            let container = attributes.get("name").cloned().unwrap_or_default();
            Ok(ContainerEvent {
                container,
                action: message.action.unwrap_or_default(),
                labels: attributes.into_iter().collect(),
            })
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn listening_ports_are_read_from_the_kernels_tables() {
        let tables = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0B00007F:8A41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4 1
";
        assert_eq!(listening_in(tables), vec![80, 8888]);
    }

    use super::*;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("gpu-replica/foo:v3"),
            ("gpu-replica/foo", "v3")
        );
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
    }

    #[test]
    fn each_attach_mode_gives_the_container_its_gpus_only() {
        let mut spec = ContainerSpec {
            name: "foo-1".into(),
            image: "cuda".into(),
            env: vec!["NVIDIA_VISIBLE_DEVICES=all".into()],
            gpus: vec!["GPU-a".into(), "GPU-b".into()],
            ..Default::default()
        };
        let visible = |body: &ContainerCreateBody| {
            body.env
                .iter()
                .flatten()
                .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
                .cloned()
                .collect::<Vec<_>>()
        };
        let requests = |body: ContainerCreateBody| body.host_config.unwrap().device_requests;

        spec.gpu_attach = GpuAttach::DeviceRequests;
        let body = create_body(&spec);
        assert_eq!(visible(&body), vec!["NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b"]);
        let request = &requests(body).unwrap()[0];
        assert_eq!(request.driver.as_deref(), Some("nvidia"));
        assert_eq!(
            request.device_ids,
            Some(vec!["GPU-a".into(), "GPU-b".into()])
        );

        spec.gpu_attach = GpuAttach::Cdi;
        let request = &requests(create_body(&spec)).unwrap()[0];
        assert_eq!(request.driver.as_deref(), Some("cdi"));
        assert_eq!(
            request.device_ids.as_ref().unwrap()[1],
            "nvidia.com/gpu=GPU-b"
        );

        spec.gpu_attach = GpuAttach::Env;
        assert!(requests(create_body(&spec)).is_none());

        spec.gpus.clear();
        spec.gpu_attach = GpuAttach::DeviceRequests;
        let body = create_body(&spec);
        assert_eq!(visible(&body), vec!["NVIDIA_VISIBLE_DEVICES=void"]);
        assert!(body
            .env
            .as_ref()
            .unwrap()
            .contains(&"CUDA_DEVICE_ORDER=PCI_BUS_ID".to_string()));
        assert!(requests(body).is_none());
    }

    #[test]
    fn an_imported_image_gets_the_config_back() {
        let config = ContainerConfig {
            env: Some(vec!["PATH=/bin".into(), "A=b c".into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            working_dir: Some("/root".into()),
            ..Default::default()
        };
        let changes = config_changes(&config, &BTreeMap::from([("k".into(), "v".into())]));
        assert!(changes.contains(&"ENV A=\"b c\"".to_string()));
        assert!(changes.contains(&"CMD [\"/bin/sh\"]".to_string()));
        assert!(changes.contains(&"WORKDIR /root".to_string()));
        assert!(changes.contains(&"LABEL \"k\"=\"v\"".to_string()));
    }
}
