//! A typed client of the API, for tooling (the `gpu-replica` CLI is one): every route as an
//! async method taking and returning the [`crate::wire`] types, over HTTP, HTTPS (with a CA
//! of one's own and a client certificate) or a Unix socket, with a bearer token. An error
//! answer is [`ClientError::Api`] with the contract's code. Behind the `client` feature, so a
//! server does not build it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gpu_replica_http::client::ClientError> {
//! use gpu_replica_http::client::{Client, ClientTls};
//! use gpu_replica_http::wire::RunBody;
//!
//! let client = Client::new("http://127.0.0.1:2378", None, &ClientTls::default())?;
//! let run = RunBody {
//!     image_name: "ubuntu:22.04".into(),
//!     replica_set_name: "foo".into(),
//!     gpu_count: 1,
//!     ..RunBody::default()
//! };
//! let created = client.run(&run).await?;
//! println!("{} runs", created.name);
//! for set in client.list(None, None).await?.replica_sets {
//!     println!("{} v{} {:?}", set.name, set.version, set.gpus);
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::wire::paths::{self, fill};
use crate::wire::{
    CloneBody, CommitBody, CommitReply, ContainerNameReply, ExecuteBody, ExecuteReply, GpuDetails,
    GpuMap, HistoryReply, InfoReply, KeyAddBody, KeyList, KeyReply, MigrateBody, MigrateReply,
    NodeList, PatchBody, Pong, PortsReply, PurgedReply, QuotaBody, ReplicaSetList, RollbackBody,
    RunBody, RunReply, StatsReply, StatusReply, TimersBody, TimersView, TokenReply, UsageReply,
    UserAddBody, UserList, UserReply, UserTokenReply, VolumeCreateBody, VolumeHistoryReply,
    VolumeInfoReply, VolumeList, VolumeReply, VolumeSizeBody, WhoamiReply,
};

/// What can go wrong talking to the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached or answered garbage.
    Transport(String),
    /// The server answered with an error envelope.
    Api {
        /// Contract code.
        code: u64,
        /// The server's message.
        msg: String,
    },
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The contract's code of an error answer; `None` when the server was not reached.
    pub fn code(&self) -> Option<u64> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            ClientError::Transport(_) => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(msg) => write!(f, "{msg}"),
            ClientError::Api { code, msg } => write!(f, "{msg} (code {code})"),
        }
    }
}

/// How the client checks the server's certificate and proves its own (HTTPS only).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificates (PEM) to trust instead of the system's.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
}

type NetClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;
type UnixClient = hyper_util::client::legacy::Client<hyperlocal::UnixConnector, Full<Bytes>>;

/// What requests travel over.
enum Transport {
    /// HTTP or HTTPS.
    Net(NetClient),
    /// A Unix socket at this path.
    Unix(UnixClient, PathBuf),
}

/// The error an answer that is not a success carries in its envelope.
async fn api_error(response: hyper::Response<hyper::body::Incoming>) -> ClientError {
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return ClientError::Transport(format!("reading the answer: {e}")),
    };
    let envelope: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    ClientError::Api {
        code: envelope.get("code").and_then(Value::as_u64).unwrap_or(0),
        msg: envelope
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string(),
    }
}

/// Every error of a chain, outermost first: a TLS failure says which certificate problem.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Transport(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Transport(format!(
            "{}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn tls_config(tls: &ClientTls) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &tls.cacert {
        Some(path) => {
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Transport(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ClientError::Transport(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Transport(format!("--cert/--key: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ClientError::Transport(
            "--cert and --key go together".into(),
        )),
    }
}

/// An open terminal: a WebSocket to the server ([`Client::terminal`]).
pub type Terminal =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// A client for one server.
pub struct Client {
    base: String,
    token: Option<String>,
    transport: Transport,
    /// Whether it presents a client certificate (a server that wants one may close a TLS 1.3
    /// connection without one only after the handshake, with no reason given).
    client_certificate: bool,
}

impl Client {
    /// The server it talks to, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client for `base`: `http://127.0.0.1:2378`, `https://host:2378`, or `unix:/path`.
    pub fn new(base: &str, token: Option<String>, tls: &ClientTls) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        let transport = match base.strip_prefix("unix:") {
            Some(path) => Transport::Unix(
                builder.build(hyperlocal::UnixConnector),
                PathBuf::from(path),
            ),
            None => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config(tls)?)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Transport::Net(builder.build(connector))
            }
        };
        Ok(Client {
            base,
            token,
            transport,
            client_certificate: tls.cert.is_some(),
        })
    }

    /// Sends one request with the token, if any; the answer as it comes.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Client::send`] with extra headers.
    async fn send_with(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let uri: hyper::Uri = match &self.transport {
            Transport::Unix(_, socket) => hyperlocal::Uri::new(socket, &path).into(),
            Transport::Net(_) => url
                .parse()
                .map_err(|e| ClientError::Transport(format!("bad server address {url}: {e}")))?,
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Transport(format!("bad request to {url}: {e}")))?;
        let response = match &self.transport {
            Transport::Net(http) => http.request(request).await,
            Transport::Unix(http, _) => http.request(request).await,
        };
        response.map_err(|e| {
            let hint = if self.base.starts_with("https://") && !self.client_certificate {
                " (the server may require a client certificate: --cert and --key in the CLI)"
            } else {
                ""
            };
            ClientError::Transport(format!("cannot reach {}: {}{hint}", self.base, chain(&e)))
        })
    }

    /// Opens a WebSocket at `path` over the client's transport (HTTP, HTTPS or the Unix
    /// socket), with the token; an error answer is returned as the envelope's error.
    pub async fn websocket(&self, path: impl Into<String>) -> Result<Terminal, ClientError> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let upgrade = [
            ("connection", "Upgrade".to_string()),
            ("upgrade", "websocket".to_string()),
            ("sec-websocket-version", "13".to_string()),
            ("sec-websocket-key", key),
        ];
        let response = self
            .send_with(Method::GET, path.into(), None, &upgrade)
            .await?;
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            return Err(api_error(response).await);
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| ClientError::Transport(format!("opening the WebSocket: {e}")))?;
        Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await)
    }

    /// Opens a GET whose answer is a stream (logs, events); an error answer is returned as
    /// the envelope's error.
    pub async fn open(
        &self,
        path: impl Into<String>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let response = self.send(Method::GET, path.into(), None).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    /// Sends a request; returns `data` of a successful envelope.
    pub async fn call(
        &self,
        method: Method,
        path: impl Into<String>,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let path = path.into();
        let url = format!("{}{}", self.base, path);
        let response = self.send(method, path, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?
            .to_bytes();
        let envelope: Value = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError::Transport(format!(
                "{url} did not answer with JSON: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        let code = envelope.get("code").and_then(Value::as_u64).unwrap_or(0);
        if code != 200 {
            let msg = envelope
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            return Err(ClientError::Api { code, msg });
        }
        Ok(envelope.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Sends a request with a typed body; decodes `data` of a successful envelope into the
    /// contract's type `T` (an answer that does not fit the contract is an error).
    pub async fn request<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: impl Into<String>,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let path = path.into();
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ClientError::Transport(format!("cannot encode the request: {e}")))?;
        let data = self.call(method, path.clone(), body).await?;
        serde_json::from_value(data).map_err(|e| {
            ClientError::Transport(format!(
                "the answer of {path} does not fit the contract: {e}"
            ))
        })
    }
}

/// A query string of the pairs that have a value (`?a=1&b=x`), values encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", paths::encode(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// Every route of the API, typed: the same names as the operations of `/openapi.json`.
impl Client {
    /// `GET /ping`.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.request(Method::GET, paths::PING, NONE).await
    }

    /// Runs a new replicaSet; its first container's name.
    pub async fn run(&self, body: &RunBody) -> Result<RunReply, ClientError> {
        self.request(Method::POST, paths::REPLICA_SETS, Some(body))
            .await
    }

    /// Every replicaSet the token reaches; an admin may narrow it to one owner or node.
    pub async fn list(
        &self,
        owner: Option<&str>,
        node: Option<&str>,
    ) -> Result<ReplicaSetList, ClientError> {
        let q = query(&[
            ("owner", owner.map(str::to_string)),
            ("node", node.map(str::to_string)),
        ]);
        self.request(Method::GET, format!("{}{q}", paths::REPLICA_SETS), NONE)
            .await
    }

    /// The current version of a replicaSet.
    pub async fn info(&self, name: &str) -> Result<InfoReply, ClientError> {
        self.request(Method::GET, fill(paths::REPLICA_SET, name), NONE)
            .await
    }

    /// Every version, newest first.
    pub async fn history(&self, name: &str) -> Result<HistoryReply, ClientError> {
        self.request(Method::GET, fill(paths::HISTORY, name), NONE)
            .await
    }

    /// A new version with another GPU count, a bind swapped or other resources.
    pub async fn patch(
        &self,
        name: &str,
        body: &PatchBody,
    ) -> Result<ContainerNameReply, ClientError> {
        self.request(Method::PATCH, fill(paths::REPLICA_SET, name), Some(body))
            .await
    }

    /// A new version with the spec and filesystem of `version`.
    pub async fn rollback(
        &self,
        name: &str,
        version: i64,
    ) -> Result<ContainerNameReply, ClientError> {
        let body = RollbackBody { version };
        self.request(Method::PATCH, fill(paths::ROLLBACK, name), Some(&body))
            .await
    }

    /// A new version with the same spec, its GPUs claimed again.
    pub async fn restart(&self, name: &str) -> Result<ContainerNameReply, ClientError> {
        self.request(Method::PATCH, fill(paths::RESTART, name), NONE)
            .await
    }

    /// Stops the container and releases its GPUs and ports.
    pub async fn stop(&self, name: &str) -> Result<(), ClientError> {
        self.request(Method::PATCH, fill(paths::STOP, name), NONE)
            .await
    }

    /// Stops the container, keeping its GPUs and ports.
    pub async fn pause(&self, name: &str) -> Result<(), ClientError> {
        self.request(Method::PATCH, fill(paths::PAUSE, name), NONE)
            .await
    }

    /// Starts the current container again (the contract's "continue").
    pub async fn resume(&self, name: &str) -> Result<(), ClientError> {
        self.request(Method::PATCH, fill(paths::CONTINUE, name), NONE)
            .await
    }

    /// Deletes a replicaSet with its containers, snapshots and claims.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, fill(paths::REPLICA_SET, name), NONE)
            .await
    }

    /// Runs argv (no shell) in the current container.
    pub async fn execute(
        &self,
        name: &str,
        body: &ExecuteBody,
    ) -> Result<ExecuteReply, ClientError> {
        self.request(Method::POST, fill(paths::EXECUTE, name), Some(body))
            .await
    }

    /// Commits the current container to an image.
    pub async fn commit(&self, name: &str, image: &str) -> Result<CommitReply, ClientError> {
        let body = CommitBody {
            new_image_name: image.to_string(),
        };
        self.request(Method::POST, fill(paths::COMMIT, name), Some(&body))
            .await
    }

    /// Moves a replicaSet to another node of the cluster.
    pub async fn migrate(
        &self,
        name: &str,
        body: &MigrateBody,
    ) -> Result<MigrateReply, ClientError> {
        self.request(Method::POST, fill(paths::MIGRATE, name), Some(body))
            .await
    }

    /// A replicaSet's timers.
    pub async fn timers(&self, name: &str) -> Result<TimersView, ClientError> {
        self.request(Method::GET, fill(paths::TIMERS, name), NONE)
            .await
    }

    /// Sets a replicaSet's timers.
    pub async fn set_timers(
        &self,
        name: &str,
        body: &TimersBody,
    ) -> Result<TimersView, ClientError> {
        self.request(Method::PUT, fill(paths::TIMERS, name), Some(body))
            .await
    }

    /// A new replicaSet from a version of another.
    pub async fn clone_set(&self, name: &str, body: &CloneBody) -> Result<RunReply, ClientError> {
        self.request(Method::POST, fill(paths::CLONE, name), Some(body))
            .await
    }

    /// A link that opens port `port` of the set through the server's web-service proxy.
    pub async fn open_link(
        &self,
        name: &str,
        port: u16,
    ) -> Result<crate::wire::OpenReply, ClientError> {
        let body = crate::wire::OpenBody { port: port.into() };
        self.request(Method::POST, fill(paths::OPEN, name), Some(&body))
            .await
    }

    /// The set's TCP ports: published, listening, answering HTTP.
    pub async fn services(&self, name: &str) -> Result<crate::wire::ServicesReply, ClientError> {
        self.request(Method::GET, fill(paths::SERVICES, name), NONE)
            .await
    }

    /// `GET /api/v1/replicaSet/{name}/terminal`: a program in the set over a WebSocket
    /// (binary messages are its input and output; see the route's documentation).
    pub async fn terminal(
        &self,
        name: &str,
        q: &crate::wire::TerminalQuery,
    ) -> Result<Terminal, ClientError> {
        let q = query(&[
            ("cmd", q.cmd.clone()),
            ("env", q.env.clone()),
            ("tty", q.tty.map(|t| t.to_string())),
            ("rows", q.rows.map(|r| r.to_string())),
            ("cols", q.cols.map(|c| c.to_string())),
            ("workDir", q.work_dir.clone()),
            ("user", q.user.clone()),
        ]);
        self.websocket(format!("{}{q}", fill(paths::TERMINAL, name)))
            .await
    }

    /// `GET /api/v1/replicaSet/{name}/screen`: a web terminal emulated on the server, opened
    /// or attached to again (JSON screen updates from the server; see the route's
    /// documentation).
    pub async fn screen(
        &self,
        name: &str,
        q: &crate::wire::ScreenQuery,
    ) -> Result<Terminal, ClientError> {
        let q = query(&[
            ("session", q.session.clone()),
            ("rows", q.rows.map(|r| r.to_string())),
            ("cols", q.cols.map(|c| c.to_string())),
            ("cmd", q.cmd.clone()),
        ]);
        self.websocket(format!("{}{q}", fill(paths::SCREEN, name)))
            .await
    }

    /// A replicaSet's log as it streams: the last `tail` lines, then new ones if `follow`.
    pub async fn logs(
        &self,
        name: &str,
        tail: Option<u64>,
        follow: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let q = query(&[
            ("tail", tail.map(|t| t.to_string())),
            ("follow", Some(follow.to_string())),
        ]);
        self.open(format!("{}{q}", fill(paths::LOGS, name))).await
    }

    /// CPU, memory, network and GPU figures of the current container.
    pub async fn stats(&self, name: &str) -> Result<StatsReply, ClientError> {
        self.request(Method::GET, fill(paths::STATS, name), NONE)
            .await
    }

    /// The event stream (Server-Sent Events): the newest `replay` events, then live ones if
    /// `follow`.
    pub async fn events(
        &self,
        replay: usize,
        follow: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let q = query(&[
            ("replay", Some(replay.to_string())),
            ("follow", Some(follow.to_string())),
        ]);
        self.open(format!("{}{q}", paths::EVENTS)).await
    }

    /// Creates a volume (`size` as `20GB`; `node` pins it to a node of a cluster).
    pub async fn create_volume(&self, body: &VolumeCreateBody) -> Result<VolumeReply, ClientError> {
        self.request(Method::POST, paths::VOLUMES, Some(body)).await
    }

    /// Every volume the token reaches; an admin may narrow it to one owner.
    pub async fn volumes(&self, owner: Option<&str>) -> Result<VolumeList, ClientError> {
        let q = query(&[("owner", owner.map(str::to_string))]);
        self.request(Method::GET, format!("{}{q}", paths::VOLUMES), NONE)
            .await
    }

    /// A volume's current version.
    pub async fn volume(&self, name: &str) -> Result<VolumeInfoReply, ClientError> {
        self.request(Method::GET, fill(paths::VOLUME, name), NONE)
            .await
    }

    /// A volume's versions, newest first.
    pub async fn volume_history(&self, name: &str) -> Result<VolumeHistoryReply, ClientError> {
        self.request(Method::GET, fill(paths::VOLUME_HISTORY, name), NONE)
            .await
    }

    /// A new version of a volume with another size, its data copied and its users moved.
    pub async fn resize_volume(&self, name: &str, size: &str) -> Result<VolumeReply, ClientError> {
        let body = VolumeSizeBody {
            size: size.to_string(),
        };
        self.request(Method::PATCH, fill(paths::VOLUME_SIZE, name), Some(&body))
            .await
    }

    /// Deletes a volume.
    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, fill(paths::VOLUME, name), NONE)
            .await
    }

    /// Each GPU: 0 free, 1 used (the contract's map).
    pub async fn gpus(&self) -> Result<GpuMap, ClientError> {
        self.request(Method::GET, paths::GPUS, NONE).await
    }

    /// Each GPU with its name, memory, utilization and holder.
    pub async fn gpu_details(&self) -> Result<GpuDetails, ClientError> {
        self.request(Method::GET, format!("{}?detail=true", paths::GPUS), NONE)
            .await
    }

    /// Host ports in use and free (of one node, in a cluster).
    pub async fn ports(&self, node: Option<&str>) -> Result<PortsReply, ClientError> {
        let q = query(&[("node", node.map(str::to_string))]);
        self.request(Method::GET, format!("{}{q}", paths::PORTS), NONE)
            .await
    }

    /// What the last start-up recovery did.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.request(Method::GET, paths::STATUS, NONE).await
    }

    /// A backup of the server's state store (admins only): the file's bytes.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let response = self.open(paths::BACKUP).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("reading the backup: {e}")))?
            .to_bytes();
        Ok(bytes.to_vec())
    }

    /// The nodes of the cluster.
    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.request(Method::GET, paths::NODES, NONE).await
    }

    /// Cordons a node: it takes no new sets.
    pub async fn cordon(&self, node: &str) -> Result<crate::wire::NodeView, ClientError> {
        self.request(Method::PATCH, fill(paths::NODE_CORDON, node), NONE)
            .await
    }

    /// Uncordons a node (cancels its drain).
    pub async fn uncordon(&self, node: &str) -> Result<crate::wire::NodeView, ClientError> {
        self.request(Method::PATCH, fill(paths::NODE_UNCORDON, node), NONE)
            .await
    }

    /// Starts draining a node, `parallel` migrations at once (0: the server's default).
    pub async fn drain(
        &self,
        node: &str,
        parallel: u32,
    ) -> Result<crate::wire::DrainView, ClientError> {
        let parallel = (parallel > 0).then(|| parallel.to_string());
        let path = fill(paths::NODE_DRAIN, node) + &query(&[("parallel", parallel)]);
        self.request(Method::POST, path, NONE).await
    }

    /// A node's drain as it stands.
    pub async fn drain_status(&self, node: &str) -> Result<crate::wire::DrainView, ClientError> {
        self.request(Method::GET, fill(paths::NODE_DRAIN, node), NONE)
            .await
    }

    /// Cancels a node's drain.
    pub async fn cancel_drain(&self, node: &str) -> Result<crate::wire::DrainView, ClientError> {
        self.request(Method::DELETE, fill(paths::NODE_DRAIN, node), NONE)
            .await
    }

    /// Adds a user; the answer carries their token, shown this once.
    pub async fn add_user(&self, body: &UserAddBody) -> Result<UserTokenReply, ClientError> {
        self.request(Method::POST, paths::USERS, Some(body)).await
    }

    /// Every user.
    pub async fn users(&self) -> Result<UserList, ClientError> {
        self.request(Method::GET, paths::USERS, NONE).await
    }

    /// One user.
    pub async fn user(&self, name: &str) -> Result<UserReply, ClientError> {
        self.request(Method::GET, fill(paths::USER, name), NONE)
            .await
    }

    /// Removes a user; with `purge`, their replicaSets and volumes first.
    pub async fn remove_user(&self, name: &str, purge: bool) -> Result<PurgedReply, ClientError> {
        let q = if purge { "?purge=true" } else { "" };
        self.request(
            Method::DELETE,
            format!("{}{q}", fill(paths::USER, name)),
            NONE,
        )
        .await
    }

    /// A new token for a user; the old one stops working.
    pub async fn reset_token(&self, name: &str) -> Result<TokenReply, ClientError> {
        self.request(Method::POST, fill(paths::USER_TOKEN, name), NONE)
            .await
    }

    /// Changes a user's limits.
    pub async fn set_quota(&self, name: &str, body: &QuotaBody) -> Result<UserReply, ClientError> {
        self.request(Method::PATCH, fill(paths::USER_QUOTA, name), Some(body))
            .await
    }

    /// A user's SSH public keys.
    pub async fn ssh_keys(&self, name: &str) -> Result<KeyList, ClientError> {
        self.request(Method::GET, fill(paths::USER_KEYS, name), NONE)
            .await
    }

    /// Adds an SSH public key (one line of a `.pub` file) to a user.
    pub async fn add_ssh_key(&self, name: &str, key: &str) -> Result<KeyReply, ClientError> {
        let body = KeyAddBody {
            key: key.to_string(),
        };
        self.request(Method::POST, fill(paths::USER_KEYS, name), Some(&body))
            .await
    }

    /// Removes a user's SSH public key by its fingerprint (`SHA256:…`).
    pub async fn remove_ssh_key(&self, name: &str, fingerprint: &str) -> Result<(), ClientError> {
        let path =
            fill(paths::USER_KEY, name).replace("{fingerprint}", &paths::encode(fingerprint));
        self.request(Method::DELETE, path, NONE).await
    }

    /// Who the token belongs to, with quota and holdings.
    pub async fn whoami(&self) -> Result<WhoamiReply, ClientError> {
        self.request(Method::GET, paths::WHOAMI, NONE).await
    }

    /// GPU-seconds per user and set over a period (RFC 3339 or epoch seconds).
    pub async fn usage(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        owner: Option<&str>,
    ) -> Result<UsageReply, ClientError> {
        let q = query(&[
            ("from", from.map(str::to_string)),
            ("to", to.map(str::to_string)),
            ("owner", owner.map(str::to_string)),
        ]);
        self.request(Method::GET, format!("{}{q}", paths::USAGE), NONE)
            .await
    }
}

/// No body.
const NONE: Option<&()> = None;
