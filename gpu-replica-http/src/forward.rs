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

/// The object a path is about: `{prefix}{name}…`.
fn object_of<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// What decides where a request is served.
enum Subject {
    /// A new set of this many GPUs, perhaps pinned, mounting these bind sources.
    Run(u32, Option<String>, Vec<String>),
    /// A new volume, perhaps pinned to a node.
    NewVolume(Option<String>),
    /// An existing set.
    Set(String),
    /// An existing volume.
    Volume(String),
    /// Anything else: served here.
    Here,
}

impl Subject {
    fn of(method: &Method, path: &str, body: &[u8]) -> Subject {
        let asked = || serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
        let pin = |asked: &serde_json::Value| asked["node"].as_str().map(str::to_string);
        if method == Method::POST && path == "/api/v1/replicaSet" {
            let asked = asked();
            let gpus = asked["gpuCount"].as_f64().unwrap_or(0.0).max(0.0) as u32;
            let sources = asked["binds"]
                .as_array()
                .map(|binds| {
                    binds
                        .iter()
                        .filter_map(|b| b["src"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            return Subject::Run(gpus, pin(&asked), sources);
        }
        if method == Method::POST && path == "/api/v1/volumes" {
            return Subject::NewVolume(pin(&asked()));
        }
        if let Some(name) = object_of(path, "/api/v1/replicaSet/") {
            return Subject::Set(name.to_string());
        }
        if let Some(name) = object_of(path, "/api/v1/volumes/") {
            return Subject::Volume(name.to_string());
        }
        Subject::Here
    }

    /// Where it is served now.
    async fn location(&self, engine: &Engine) -> gpu_replica_core::Result<Location> {
        match self {
            Subject::Run(gpus, pin, sources) => {
                engine
                    .place_with_volumes(*gpus, pin.as_deref(), sources)
                    .await
            }
            Subject::NewVolume(Some(pin)) => engine.place(0, Some(pin)).await,
            Subject::Set(name) => engine.locate(name).await,
            Subject::Volume(name) => engine.locate_volume(name).await,
            Subject::NewVolume(None) | Subject::Here => Ok(Location::Here),
        }
    }
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
    let subject = Subject::of(&parts.method, parts.uri.path(), &bytes);
    // A run placed on a node whose GPUs another run took meanwhile is placed again.
    let attempts = match &subject {
        Subject::Run(_, None, _) => 3,
        _ => 1,
    };
    for attempt in 1..=attempts {
        let response = match subject.location(&engine).await {
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
