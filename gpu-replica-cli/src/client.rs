//! A small HTTP client for the server's envelope `{code, msg, data}`.

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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

/// A client for one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:2378`).
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one request with the token, if any; the answer as it comes.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Transport(format!("bad request to {url}: {e}")))?;
        self.http
            .request(request)
            .await
            .map_err(|e| ClientError::Transport(format!("cannot reach {}: {e}", self.base)))
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
