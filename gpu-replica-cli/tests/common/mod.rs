//! Test scaffolding for the server binary: start, restart and kill `gpu-replica serve`, talk
//! to it over HTTP and through the CLI. Shared by every test file of this crate.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpu_replica_core::testkit;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gpu-replica");

/// A server process on its own data dir and port; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub port_range: String,
    /// Settings given as `GPU_REPLICA_*` environment variables, kept across restarts.
    pub env: Vec<(String, String)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// A server with a host port range of its own, or `port_range` when given.
    pub fn start(data_dir: &Path, port_range: Option<String>) -> Server {
        Server::start_with_env(data_dir, port_range, &[])
    }

    /// Like [`Server::start`], with extra settings as environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        port_range: Option<String>,
        env: &[(&str, &str)],
    ) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let addr = format!("127.0.0.1:{}", free_port());
        let port_range = port_range.unwrap_or_else(|| {
            let range = testkit::port_range();
            format!("{}-{}", range.start, range.end)
        });
        let child = spawn_with(&addr, data_dir, &port_range, None, &env);
        let server = Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            port_range,
            env,
        };
        server.wait_ready();
        server
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if pong(&self.addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server on {} did not come up", self.addr);
    }

    /// SIGTERM, wait for a clean exit, start again on the same data dir and address.
    pub fn restart(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
        self.child = spawn_with(
            &self.addr,
            &self.data_dir,
            &self.port_range,
            None,
            &self.env,
        );
        self.wait_ready();
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.addr, method, path, body)
    }

    /// SIGTERM, then start again with `failpoint` armed.
    pub fn restart_armed(&mut self, failpoint: &str) {
        self.terminate();
        self.child = spawn_with(
            &self.addr,
            &self.data_dir,
            &self.port_range,
            Some(failpoint),
            &self.env,
        );
        self.wait_ready();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    /// Waits for the server to exit by itself (a failpoint); returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the server again (unarmed) after it exited.
    pub fn start_again(&mut self) {
        self.child = spawn_with(
            &self.addr,
            &self.data_dir,
            &self.port_range,
            None,
            &self.env,
        );
        self.wait_ready();
    }

    /// Sends a request whose answer may never come (the server may exit on the way).
    pub fn call_may_fail(&self, method: &str, path: &str, body: Option<Value>) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        if let Ok(mut stream) = TcpStream::connect(&self.addr) {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(request.as_bytes());
            let mut answer = String::new();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
            let _ = stream.read_to_string(&mut answer);
        }
    }

    /// Version numbers of `name`'s history, as the server lists them (newest first).
    pub fn versions(&self, name: &str) -> Vec<i64> {
        let (_, history) = self.call("GET", &format!("/api/v1/replicaSet/{name}/history"), None);
        history["data"]["history"]
            .as_array()
            .unwrap_or_else(|| panic!("no history of {name}: {history}"))
            .iter()
            .map(|h| h["version"].as_i64().unwrap())
            .collect()
    }

    /// The CLI binary against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--server")
            .arg(format!("http://{}", self.addr))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Starts the server binary; `failpoint` arms `GPU_REPLICA_FAILPOINT`; `env` adds settings.
pub fn spawn_with(
    addr: &str,
    data_dir: &Path,
    port_range: &str,
    failpoint: Option<&str>,
    env: &[(String, String)],
) -> Child {
    let mut command = Command::new(BIN);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(failpoint) = failpoint {
        command.env("GPU_REPLICA_FAILPOINT", failpoint);
    }
    command.args(["serve", "--gpus", "fake:4", "--gpu-attach", "env"]);
    if !env.iter().any(|(k, _)| k == "GPU_REPLICA_LOG_LEVEL") {
        command.args(["--log-level", "info"]);
    }
    // No stop grace (the test image's sh ignores SIGTERM), unless the test sets one.
    if !env.iter().any(|(k, _)| k == "GPU_REPLICA_STOP_TIMEOUT") {
        command.args(["--stop-timeout", "0"]);
    }
    command
        .args(["--addr", addr, "--label", "io.gpu-replica.test=1"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--port-range", port_range])
        // Recovery at start removes orphans carrying all of the server's labels: a label of its
        // own keeps it from touching the objects of the tests running beside it.
        .arg("--label")
        .arg(format!("io.gpu-replica.instance={}", data_dir.display()))
        .stdout(
            std::fs::File::create(data_dir.join("server.log"))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .spawn()
        .unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `/ping` answers; a connection refused or reset (the server is still starting) is
/// a no.
fn pong(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /ping HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
        && answer.contains("pong")
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the JSON body.
pub fn http(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let raw = body.map(|b| b.to_string());
    http_raw(addr, method, path, raw.as_deref())
}

pub fn http_raw(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http_typed(addr, method, path, Some("application/json"), body)
}

/// Like [`http_raw`] with this Content-Type header, or none.
pub fn http_typed(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or("");
    let header = content_type
        .map(|t| format!("Content-Type: {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{header}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, payload) = answer.split_once("\r\n\r\n").unwrap();
    (
        status,
        serde_json::from_str(payload).unwrap_or_else(|_| panic!("not JSON: {answer}")),
    )
}

/// One HTTP/1.1 request with a bearer token (when given); returns the status, the headers and
/// the body as text (an event stream is not JSON).
pub fn http_as(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (head, payload) = answer.split_once("\r\n\r\n").unwrap();
    (status, head.to_string(), payload.to_string())
}

/// Asserts that a `GET /api/v1/resources/gpus` answer shows every GPU free.
pub fn assert_all_gpus_free(answer: &Value) {
    let gpus = answer["data"]["gpus"]
        .as_object()
        .unwrap_or_else(|| panic!("not a GPU map: {answer}"));
    assert!(gpus.values().all(|v| v == 0), "{answer}");
}

pub fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique_name("gpu_replica_e2e_"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA, and certificates it signs.
pub struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Authority { key, cert }
    }

    /// Writes `{stem}.pem` and `{stem}.key` signed by this CA; for a server (localhost and
    /// 127.0.0.1) or a client.
    pub fn issue(&self, dir: &Path, stem: &str, server: bool) -> (PathBuf, PathBuf) {
        let usage = if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        };
        self.issue_for(dir, stem, server, vec![usage])
    }

    /// A cluster node's certificate: a server (localhost, 127.0.0.1) that is also a client of
    /// the other nodes.
    pub fn issue_node(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_for(dir, stem, true, usages)
    }

    fn issue_for(
        &self,
        dir: &Path,
        stem: &str,
        server: bool,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (pem, private) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&private, key.serialize_pem()).unwrap();
        (pem, private)
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_path_buf()
    }
}

/// One API call with `token`, its JSON body; the status and the answer (null if not JSON).
pub fn call_as(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, text) = http_as(&server.addr, Some(token), method, path, Some(&body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A finished program's status and both outputs, for an assertion's message.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until `check` holds (polling every 200 ms), or fails with `what`.
pub fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sh -c script` in set `set` through the API's execute, with `token` (none: as the server
/// allows without one): its standard output and exit code (-1 when the call failed).
pub fn sh_in(server: &Server, token: Option<&str>, set: &str, script: &str) -> (String, i64) {
    let body = serde_json::json!({"cmd": ["sh", "-c", script]}).to_string();
    let path = format!("/api/v1/replicaSet/{set}/execute");
    let (_, _, text) = http_as(&server.addr, token, "POST", &path, Some(&body));
    let out: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (
        out["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        out["data"]["exitCode"].as_i64().unwrap_or(-1),
    )
}
