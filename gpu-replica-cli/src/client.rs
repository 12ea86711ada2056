//! A small HTTP client for the server's envelope `{code, msg, data}`.

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

/// What can go wrong talking to the server.
#[derive(Debug)]
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

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(msg) => write!(f, "{msg}"),
            ClientError::Api { code, msg } => write!(f, "{msg} (code {code})"),
        }
    }
}

/// How the CLI checks the server's certificate and proves its own (HTTPS only).
#[derive(Debug, Clone, Default)]
pub struct TlsArgs {
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

fn tls_config(tls: &TlsArgs) -> Result<rustls::ClientConfig, ClientError> {
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
    pub fn new(base: &str, token: Option<String>, tls: &TlsArgs) -> Result<Client, ClientError> {
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
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Transport(format!("bad request to {url}: {e}")))?;
        let response = match &self.transport {
            Transport::Net(http) => http.request(request).await,
            Transport::Unix(http, _) => http.request(request).await,
        };
        response.map_err(|e| {
            let hint = if self.base.starts_with("https://") && !self.client_certificate {
                " (if the server requires a client certificate, give --cert and --key)"
            } else {
                ""
            };
            ClientError::Transport(format!("cannot reach {}: {}{hint}", self.base, chain(&e)))
        })
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
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?
            .to_bytes();
        let envelope: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(ClientError::Api {
            code: envelope.get("code").and_then(Value::as_u64).unwrap_or(0),
            msg: envelope
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string(),
        })
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
