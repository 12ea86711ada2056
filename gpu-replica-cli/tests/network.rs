//! On the network, with real sockets against the real binary: deadlines close silent,
//! dribbling and stalled clients; a flood of unfinished heads larger than the open-files limit
//! leaves the server answering and gives every descriptor back; SIGTERM with slow clients exits
//! within the shutdown timeout while a request in flight finishes; TLS, mutual TLS and a SIGHUP
//! reload with certificates made here; the CLI over https and over a Unix socket; logs fit for
//! files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data_dir, free_port, Authority, BIN};
use gpu_replica_core::testkit::{self, TEST_IMAGE};

/// A server started with `extra` flags; killed on drop.
struct Served {
    child: Child,
    dir: PathBuf,
}

impl Served {
    fn start(dir: &Path, addr: &str, extra: &[&str]) -> Served {
        Served::start_with(dir, addr, extra, None)
    }

    /// With `open_files`, the server starts under that soft and hard limit.
    fn start_with(dir: &Path, addr: &str, extra: &[&str], open_files: Option<u32>) -> Served {
        let range = testkit::port_range();
        let mut command = match open_files {
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    BIN,
                ]);
                c
            }
            None => Command::new(BIN),
        };
        command
            .args([
                "serve",
                "--gpus",
                "fake:2",
                "--gpu-attach",
                "env",
                "--stop-timeout",
                "0",
            ])
            .args(["--addr", addr, "--label", "io.gpu-replica.test=1"])
            .arg("--label")
            .arg(format!("io.gpu-replica.instance={}", dir.display()))
            .arg("--data-dir")
            .arg(dir)
            .args(["--port-range", &format!("{}-{}", range.start, range.end)])
            .args(extra)
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("server.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("server.err")).unwrap(),
            ));
        let served = Served {
            child: command.spawn().unwrap(),
            dir: dir.to_path_buf(),
        };
        served.wait_for_log("listening on");
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn wait_for_log(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.log().contains(line) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no '{line}' in the log: {}\n{}",
            self.log(),
            std::fs::read_to_string(self.dir.join("server.err")).unwrap_or_default()
        );
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The CLI against this server.
    fn cli(&self, server: &str, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["--server", server])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Seconds until the server closes `stream` (reads until EOF or reset); what it sent first.
fn closed_after(mut stream: TcpStream, started: Instant) -> (f64, String) {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    (
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

/// A GET over a fresh connection; the status line's code, 0 when none came back. A
/// server that has closed the connection already (a TLS port answering plain text) may
/// make the write itself fail with a reset or a broken pipe: that is the same answer.
fn get(addr: &str, path: &str) -> u16 {
    let mut stream = connect(addr);
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let (_, answer) = closed_after(stream, Instant::now());
    answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_close_silent_dribbling_stalled_and_idle_connections() {
    testkit::docker().await;
    let dir = data_dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Served::start(
        &dir,
        &addr,
        &[
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
            "--idle-timeout",
            "3s",
        ],
    );
    // Silent: closed at the head deadline.
    let silent = std::thread::spawn({
        let addr = addr.clone();
        move || closed_after(connect(&addr), Instant::now())
    });
    // Dribbled head: a header line every half second, forever; closed at the head deadline.
    let dribbled = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let started = Instant::now();
            let mut stream = connect(&addr);
            let mut line = 0;
            loop {
                let text = if line == 0 {
                    "GET /ping HTTP/1.1\r\n".to_string()
                } else {
                    format!("X-Slow-{line}: y\r\n")
                };
                if stream.write_all(text.as_bytes()).is_err()
                    || started.elapsed() > Duration::from_secs(20)
                {
                    return started.elapsed().as_secs_f64();
                }
                line += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    // Stalled body: 408, then closed.
    let stalled = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut stream = connect(&addr);
            let started = Instant::now();
            stream
                .write_all(b"POST /api/v1/volumes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\"")
                .unwrap();
            closed_after(stream, started)
        }
    });
    // Idle after a request: closed at the idle deadline.
    let idle = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut stream = connect(&addr);
            stream
                .write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut first = [0u8; 512];
            let n = stream.read(&mut first).unwrap();
            assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
            closed_after(stream, Instant::now())
        }
    });
    let (silent, _) = silent.join().unwrap();
    assert!(
        (1.5..8.0).contains(&silent),
        "silent connection closed after {silent} s"
    );
    let dribbled = dribbled.join().unwrap();
    assert!(dribbled < 8.0, "a dribbled head was held {dribbled} s");
    let (stalled, answer) = stalled.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        (1.5..8.0).contains(&stalled),
        "stalled body closed after {stalled} s"
    );
    let (idle, _) = idle.join().unwrap();
    assert!(
        (2.5..9.0).contains(&idle),
        "idle connection closed after {idle} s"
    );
    // The server served others all along.
    assert_eq!(get(&addr, "/ping"), 200);
    assert!(
        !server.log().contains('\u{1b}'),
        "colour codes in a log file"
    );
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_open_files_limit_leaves_the_server_answering() {
    testkit::docker().await;
    // This test holds more than a thousand sockets itself.
    gpu_replica_http::serve::raise_open_files_limit().unwrap();
    let dir = data_dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Served::start_with(&dir, &addr, &["--header-timeout", "3s"], Some(1024));
    assert!(server.log().contains("at most 768"), "{}", server.log());
    assert_eq!(get(&addr, "/ping"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let baseline = server.descriptors();
    // 1,100 connections, each an unfinished head, all held open by us.
    let mut flood = Vec::new();
    for _ in 0..1100 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let _ = stream.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n");
        flood.push(stream);
    }
    // The server still answers: a ping, a list from the store, a volume made through Docker.
    let started = Instant::now();
    assert_eq!(get(&addr, "/ping"), 200);
    assert_eq!(get(&addr, "/api/v1/replicaSet"), 200);
    let name = testkit::unique_name("flood");
    let body = format!("{{\"name\": \"{name}\", \"size\": \"1GB\"}}");
    let mut stream = connect(&addr);
    write!(stream, "POST /api/v1/volumes HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let (_, answer) = closed_after(stream, Instant::now());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(flood);
    // Every descriptor comes back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.descriptors() > baseline + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        server.descriptors() <= baseline + 2,
        "{} descriptors, {baseline} before",
        server.descriptors()
    );
    assert!(
        !server.log().contains("Too many open files"),
        "{}",
        server.log()
    );
    assert_eq!(get(&addr, &format!("/api/v1/volumes/{name}")), 200);
    let mut stream = connect(&addr);
    write!(
        stream,
        "DELETE /api/v1/volumes/{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    closed_after(stream, Instant::now());
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_slow_clients_exits_within_the_shutdown_timeout() {
    testkit::docker().await;
    let dir = data_dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = Served::start(&dir, &addr, &["--shutdown-timeout", "5s"]);
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            let _ = stream.write_all(b"GET /api/v1/replicaSet HTTP/1.1\r\nHost: t\r\n");
            stream
        })
        .collect();
    // A request in flight when the signal comes finishes.
    let name = testkit::unique_name("term");
    let in_flight = std::thread::spawn({
        let addr = addr.clone();
        let name = name.clone();
        move || {
            let body = format!("{{\"imageName\": \"{TEST_IMAGE}\", \"replicaSetName\": \"{name}\", \"gpuCount\": 1}}");
            let mut stream = connect(&addr);
            write!(
                stream,
                "POST /api/v1/replicaSet HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            closed_after(stream, Instant::now()).1
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    let signalled = Instant::now();
    server.signal("TERM");
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(8),
            "still running 8 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight: {answer}"
    );
    drop(slow);
    // The set it made is recorded and runs after a restart.
    let server = Served::start(&dir, &addr, &[]);
    assert_eq!(get(&addr, &format!("/api/v1/replicaSet/{name}")), 200);
    let mut stream = connect(&addr);
    write!(
        stream,
        "DELETE /api/v1/replicaSet/{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    closed_after(stream, Instant::now());
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

/// A kept-alive TLS connection of our own (rustls, trusting `ca`, presenting `client`).
fn tls_stream(
    addr: &str,
    ca: &Path,
    client: (&Path, &Path),
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(client.0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(client.1).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(connection, connect(addr))
}

/// A ping on a kept-alive stream; the status code.
fn ping_on<S: Read + Write>(stream: &mut S) -> u16 {
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("pong") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer)[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_tls_a_sighup_reload_and_the_cli_over_https() {
    testkit::docker().await;
    let dir = data_dir();
    let first = Authority::new("first CA");
    let second = Authority::new("second CA");
    let clients = Authority::new("client CA");
    let first_ca = first.write(&dir.join("first-ca.pem"));
    let second_ca = second.write(&dir.join("second-ca.pem"));
    let client_ca = clients.write(&dir.join("client-ca.pem"));
    let (cert, key) = first.issue(&dir, "server", true);
    let (client_cert, client_key) = clients.issue(&dir, "client", false);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://localhost:{port}");
    let server = Served::start(
        &dir,
        &addr,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
        ],
    );
    assert!(
        server.log().contains("listening on https://"),
        "{}",
        server.log()
    );
    let cli = |args: &[&str]| {
        let out = server.cli(&url, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (cacert, cert_arg, key_arg) = (
        first_ca.to_str().unwrap(),
        client_cert.to_str().unwrap(),
        client_key.to_str().unwrap(),
    );
    // The CLI with the CA and a client certificate.
    let (ok, out) = cli(&[
        "--cacert", cacert, "--cert", cert_arg, "--key", key_arg, "gpus",
    ]);
    assert!(ok, "{out}");
    // Without trusting the CA: the error names the certificate problem.
    let (ok, out) = cli(&["--cert", cert_arg, "--key", key_arg, "gpus"]);
    assert!(!ok && out.contains("UnknownIssuer"), "{out}");
    // Without a client certificate: refused.
    let (ok, out) = cli(&["--cacert", cacert, "gpus"]);
    assert!(!ok && out.to_lowercase().contains("certificate"), "{out}");
    // Plain HTTP on the TLS port gets nowhere.
    assert_ne!(get(&addr, "/ping"), 200);

    // A connection opened before the reload keeps working after it.
    let mut kept = tls_stream(&addr, &first_ca, (&client_cert, &client_key));
    assert_eq!(ping_on(&mut kept), 200);
    let (new_cert, new_key) = second.issue(&dir, "server2", true);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    server.signal("HUP");
    server.wait_for_log("TLS certificate and key reloaded");
    assert_eq!(ping_on(&mut kept), 200);
    // New connections get the new certificate: the old CA no longer vouches for it.
    let (ok, out) = cli(&[
        "--cacert", cacert, "--cert", cert_arg, "--key", key_arg, "gpus",
    ]);
    assert!(!ok && out.contains("UnknownIssuer"), "{out}");
    let (ok, out) = cli(&[
        "--cacert",
        second_ca.to_str().unwrap(),
        "--cert",
        cert_arg,
        "--key",
        key_arg,
        "gpus",
    ]);
    assert!(ok, "{out}");
    // A broken file on reload keeps the certificate in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal("HUP");
    server.wait_for_log("TLS not reloaded");
    let (ok, out) = cli(&[
        "--cacert",
        second_ca.to_str().unwrap(),
        "--cert",
        cert_arg,
        "--key",
        key_arg,
        "gpus",
    ]);
    assert!(ok, "{out}");
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_the_cli_and_replaces_only_a_stale_file() {
    use std::os::unix::fs::PermissionsExt;
    testkit::docker().await;
    let dir = data_dir();
    let socket = dir.join("api.sock");
    let addr = format!("unix:{}", socket.display());
    // A group other than ours may use it (the test runs as root, who may give it away).
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    let (group, gid) = groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a group other than root");
    let mut server = Served::start(&dir, &addr, &["--socket-group", &group]);
    let metadata = std::fs::metadata(&socket).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&metadata), gid);
    let out = server.cli(&addr, &["--json", "gpus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second server on the same socket is refused: something listens there.
    let other = data_dir();
    let out = Command::new(BIN)
        .args(["serve", "--gpus", "none", "--addr", &addr, "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Killed, the server leaves its socket file; the next start replaces it.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(socket.exists());
    let server = Served::start(&dir, &addr, &[]);
    assert!(server.cli(&addr, &["gpus"]).status.success());
    drop(server);
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(other).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_off_loopback_needs_insecure_and_logs_can_be_json() {
    testkit::docker().await;
    let dir = data_dir();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--gpus",
            "none",
            "--addr",
            "0.0.0.0:0",
            "--token",
            "t0ken",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("in clear") && said.contains("--insecure"),
        "{said}"
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Served::start(
        &dir,
        &addr,
        &["--log-format", "json", "--token", "t0ken-secret"],
    );
    assert_eq!(get(&addr, "/ping"), 200);
    let mut stream = connect(&addr);
    stream.write_all(b"GET /api/v1/replicaSet HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer t0ken-secret\r\n\r\n").unwrap();
    closed_after(stream, Instant::now());
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 5, "{log}");
    assert!(!log.contains("t0ken-secret"), "the token is in the log");
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}
