//! In a cluster, any node answers for any set: a request about a set that lives on another
//! node, or a run that placement gives to another node, is sent on to that node as it came
//! (method, path, headers with the caller's token, body) and its answer returned as is. The
//! core decides where ([`Engine::locate`], [`Engine::place`]); this only carries the bytes.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpu_replica_core::cluster::Location;
use gpu_replica_core::{Caller, Engine, Error};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::envelope::ApiError;

/// Marks a request one node sent to another: it is served where it arrives, never sent on.
pub const FORWARDED: &str = "x-gpu-replica-forwarded";

type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// The forwarding layer's state: the engine and one HTTP client for every node.
pub struct Forwarder {
    /// The engine, acting for the admin (requests act for their caller).
    pub engine: Arc<Engine>,
    client: Client,
}

impl Forwarder {
    /// A forwarder over `engine`.
    pub fn new(engine: Arc<Engine>) -> Forwarder {
        Forwarder {
            engine,
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// The set a path is about: `/api/v1/replicaSet/{name}…`.
fn set_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/replicaSet/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Sends the request on when its set (or, for a run, its placement) is on another node.
pub async fn forward_if_elsewhere(
    State(forwarder): State<Arc<Forwarder>>,
    request: Request,
    next: Next,
) -> Response {
    if forwarder.engine.node_name().is_empty() || request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::operator);
    let engine = forwarder.engine.as_caller(caller);
    let path = request.uri().path().to_string();
    let is_run = request.method() == Method::POST && path == "/api/v1/replicaSet";
    let (parts, body) = request.into_parts();
    // Bodies are small (64 KiB at most); a run's says how many GPUs and which node.
    let bytes = match Limited::new(body, crate::BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return ApiError::new(Error::InvalidParams(format!(
                "request body larger than {} bytes, or it did not arrive",
                crate::BODY_LIMIT
            )))
            .into_response()
        }
    };
    let pinned = if is_run {
        let asked: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let gpus = asked["gpuCount"].as_f64().unwrap_or(0.0).max(0.0) as u32;
        Some((gpus, asked["node"].as_str().map(str::to_string)))
    } else {
        None
    };
    // A run placed on a node whose GPUs another run took meanwhile is placed again.
    let attempts = match &pinned {
        Some((_, None)) => 3,
        _ => 1,
    };
    for attempt in 1..=attempts {
        let location = match (&pinned, set_of(&path)) {
            (Some((gpus, pin)), _) => engine.place(*gpus, pin.as_deref()).await,
            (None, Some(name)) => engine.locate(name).await,
            (None, None) => Ok(Location::Here),
        };
        let response = match location {
            Ok(Location::Here) => {
                next.clone()
                    .run(Request::from_parts(
                        parts.clone(),
                        Body::from(bytes.clone()),
                    ))
                    .await
            }
            Ok(Location::Node { name, url }) => {
                send_on(
                    &forwarder.client,
                    &engine,
                    &parts,
                    bytes.clone(),
                    &name,
                    &url,
                )
                .await
            }
            Err(e) => return ApiError::new(e).into_response(),
        };
        if attempt == attempts || response.status() != axum::http::StatusCode::CONFLICT {
            return response;
        }
        let (answer, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let code =
            serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default()["code"].as_u64();
        if code
            != Some(
                Error::NotEnoughGpus {
                    wanted: 0,
                    free: 0,
                    total: 0,
                }
                .code() as u64,
            )
        {
            return Response::from_parts(answer, Body::from(body));
        }
    }
    unreachable!("the last attempt returns")
}

/// Sends the request to node `name` at `url` and returns its answer as it comes.
async fn send_on(
    client: &Client,
    engine: &Engine,
    parts: &axum::http::request::Parts,
    bytes: Bytes,
    name: &str,
    url: &str,
) -> Response {
    let target = format!(
        "{url}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut outgoing = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(&target);
    for (header, value) in &parts.headers {
        if header != axum::http::header::HOST {
            outgoing = outgoing.header(header, value);
        }
    }
    let from = HeaderValue::from_str(engine.node_name()).unwrap_or(HeaderValue::from_static("?"));
    let outgoing = match outgoing.header(FORWARDED, from).body(Full::new(bytes)) {
        Ok(request) => request,
        Err(e) => return ApiError::new(Error::InvalidParams(e.to_string())).into_response(),
    };
    match client.request(outgoing).await {
        Ok(answer) => answer.map(Body::new).into_response(),
        Err(e) => {
            tracing::warn!(node = %name, "forwarding to {target} failed: {e}");
            ApiError::new(Error::Unavailable(format!("node '{name}' at {url}"))).into_response()
        }
    }
}
