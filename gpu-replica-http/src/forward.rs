//! In a cluster, any node answers for any set: a request about a set that lives on another
//! node, or a run that placement gives to another node, is sent on to that node as it came
//! (method, path, headers with the caller's token, body) and its answer returned as is. The
//! core decides where ([`Engine::locate`], [`Engine::place`]); this only carries the bytes.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::Route;
use gpu_replica_core::cluster::Location;
use gpu_replica_core::{Caller, Engine, Error};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use crate::envelope::ApiError;
use crate::wire::paths;
use crate::wire::{RunBody, VolumeCreateBody};

/// Marks a request one node sent to another: it is served where it arrives, never sent on.
pub const FORWARDED: &str = "x-gpu-replica-forwarded";

type HttpsClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// How a node reaches the others (forwarded requests, migrations): `http://` advertise URLs
/// as they are, `https://` ones with the cluster's CA, presenting this node's certificate
/// when the others require client certificates. Cheap to clone; clones share one
/// configuration, which [`NodeClient::reload`] replaces (a renewed certificate).
#[derive(Clone)]
pub struct NodeClient {
    client: Arc<std::sync::RwLock<HttpsClient>>,
}

impl NodeClient {
    /// Reaches `http://` nodes only (an `https://` one fails its certificate check: no CA).
    pub fn plain() -> NodeClient {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        NodeClient::with_tls(config)
    }

    /// Reaches `https://` nodes with `config` (see [`crate::TlsFiles::node_client_config`]),
    /// and `http://` ones.
    pub fn with_tls(config: rustls::ClientConfig) -> NodeClient {
        NodeClient {
            client: Arc::new(std::sync::RwLock::new(NodeClient::build(config))),
        }
    }

    /// Uses `config` from now on (requests in flight finish with the old one).
    pub fn reload(&self, config: rustls::ClientConfig) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = NodeClient::build(config);
    }

    fn build(config: rustls::ClientConfig) -> HttpsClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // A node that is gone answers nothing: do not wait for the kernel's minutes.
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
    }

    /// Sends `request`; the error in words, every cause included (a certificate problem says
    /// which).
    pub(crate) async fn send(
        &self,
        request: hyper::Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let client = self
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })
    }
}

/// The forwarding layer's state: the engine and the client that reaches the other nodes.
pub struct Forwarder {
    /// The engine, acting for the admin (requests act for their caller).
    pub engine: Arc<Engine>,
    client: NodeClient,
}

impl Forwarder {
    /// A forwarder over `engine`, reaching the other nodes with `client`.
    pub fn new(engine: Arc<Engine>, client: NodeClient) -> Forwarder {
        Forwarder { engine, client }
    }
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
    /// A node's own work (its drain, which it drives).
    Node(String),
    /// Anything else: served here.
    Here,
}

impl Subject {
    /// From the route the request matched (a pattern of [`paths`]), the `{name}` in it, and
    /// the body read as that route's type. A body that does not read is served here, which
    /// refuses it as any node would.
    fn of(method: &Method, route: &str, name: Option<&str>, body: &[u8]) -> Subject {
        let on = |route_of: &str| route.starts_with(route_of);
        match (method, name) {
            (&Method::POST, None) if route == paths::REPLICA_SETS => {
                match serde_json::from_slice::<RunBody>(body) {
                    Ok(run) => Subject::Run(
                        u32::try_from(run.gpu_count).unwrap_or(0),
                        run.node,
                        run.binds.into_iter().map(|b| b.src).collect(),
                    ),
                    Err(_) => Subject::Here,
                }
            }
            (&Method::POST, None) if route == paths::VOLUMES => Subject::NewVolume(
                serde_json::from_slice::<VolumeCreateBody>(body)
                    .ok()
                    .and_then(|v| v.node),
            ),
            (&Method::POST, Some(name)) if route == paths::NODE_DRAIN => {
                Subject::Node(name.to_string())
            }
            (_, Some(name)) if on(paths::REPLICA_SET) => Subject::Set(name.to_string()),
            (_, Some(name)) if on(paths::VOLUME) => Subject::Volume(name.to_string()),
            _ => Subject::Here,
        }
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
            Subject::Node(name) => engine.locate_node(name).await,
            Subject::NewVolume(None) | Subject::Here => Ok(Location::Here),
        }
    }
}

/// Whether `request` is served here whatever its subject: on a single host, a request another
/// node sent, a proxy link (it names the proxy of the node asked, which reaches sets on any
/// node).
pub(crate) fn served_here(forwarder: &Forwarder, request: &Request) -> bool {
    forwarder.engine.node_name().is_empty()
        || request.headers().contains_key(FORWARDED)
        || request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|m| m.as_str() == crate::wire::paths::OPEN)
}

/// Runs `request` on this node's route.
pub(crate) async fn serve_here(route: &Route, request: Request) -> Response {
    match route.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Where a request about a set, a volume or a node is served, and there it is served (a
/// request [`served_here`] is not asked about).
pub(crate) async fn forward_if_elsewhere(
    forwarder: &Forwarder,
    request: Request,
    next: &Route,
) -> Response {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::operator);
    let engine = forwarder.engine.as_caller(caller);
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str());
    // A terminal is a WebSocket held open: its upgrade is sent on, and the two upgraded
    // connections are joined.
    if matched
        .is_some_and(|m| [crate::wire::paths::TERMINAL, crate::wire::paths::SCREEN].contains(&m))
    {
        return tunnel_if_elsewhere(&forwarder.client, &engine, request, next).await;
    }
    let (mut parts, body) = request.into_parts();
    // Routed already (this runs as a route layer): the pattern and its `{name}`.
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let name = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .find(|(key, _)| *key == "name")
            .map(|(_, value)| value.to_string()),
        Err(_) => None,
    };
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
    let subject = Subject::of(&parts.method, &route, name.as_deref(), &bytes);
    // A run placed on a node whose GPUs another run took meanwhile is placed again.
    let attempts = match &subject {
        Subject::Run(_, None, _) => 3,
        _ => 1,
    };
    for attempt in 1..=attempts {
        let response = match subject.location(&engine).await {
            Ok(Location::Here) => {
                serve_here(
                    next,
                    Request::from_parts(parts.clone(), Body::from(bytes.clone())),
                )
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

/// The request as this node sends it on to the node at `url`: the same method, path, query
/// and headers (`Host` too when `keep_host`, so that node's origin check sees what this one
/// saw), marked forwarded, carrying `body`; with the target URL, for the log.
fn onward(
    engine: &Engine,
    parts: &axum::http::request::Parts,
    url: &str,
    keep_host: bool,
    body: Body,
) -> Result<(String, hyper::Request<Body>), Error> {
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
        if keep_host || header != axum::http::header::HOST {
            outgoing = outgoing.header(header, value);
        }
    }
    let from = HeaderValue::from_str(engine.node_name()).unwrap_or(HeaderValue::from_static("?"));
    match outgoing.header(FORWARDED, from).body(body) {
        Ok(request) => Ok((target, request)),
        Err(e) => Err(Error::InvalidParams(e.to_string())),
    }
}

/// Sends the request to node `name` at `url` and returns its answer as it comes.
async fn send_on(
    client: &NodeClient,
    engine: &Engine,
    parts: &axum::http::request::Parts,
    bytes: Bytes,
    name: &str,
    url: &str,
) -> Response {
    let (target, outgoing) = match onward(engine, parts, url, false, Body::from(bytes)) {
        Ok(onward) => onward,
        Err(e) => return ApiError::new(e).into_response(),
    };
    match client.send(outgoing).await {
        Ok(answer) => answer.map(Body::new).into_response(),
        Err(e) => {
            tracing::warn!(node = %name, "forwarding to {target} failed: {e}");
            ApiError::new(Error::Unavailable(format!("node '{name}' at {url}"))).into_response()
        }
    }
}

/// A terminal's WebSocket for a set on another node: the upgrade request is sent on there
/// (its `Host` and `Origin` as they came, so that node's origin check sees what this one
/// would), and once both sides switched protocols the client's connection and the node's are
/// joined byte for byte. A set that is here, or an answer that is no switch (an error), is
/// served as any request.
async fn tunnel_if_elsewhere(
    client: &NodeClient,
    engine: &Engine,
    mut request: Request,
    next: &Route,
) -> Response {
    let name = {
        let (mut parts, body) = request.into_parts();
        let name = match RawPathParams::from_request_parts(&mut parts, &()).await {
            Ok(params) => params
                .iter()
                .find(|(key, _)| *key == "name")
                .map(|(_, value)| value.to_string()),
            Err(_) => None,
        };
        request = Request::from_parts(parts, body);
        name
    };
    let Some(name) = name else {
        return serve_here(next, request).await;
    };
    let (node, url) = match engine.locate(&name).await {
        Ok(Location::Node { name, url }) => (name, url),
        Ok(Location::Here) => return serve_here(next, request).await,
        Err(e) => return ApiError::new(e).into_response(),
    };
    if let Err(e) = crate::routes::terminal::same_origin(request.headers()) {
        return ApiError::new(e).into_response();
    }
    let from_client = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let (target, outgoing) = match onward(engine, &parts, &url, true, Body::empty()) {
        Ok(onward) => onward,
        Err(e) => return ApiError::new(e).into_response(),
    };
    let mut answer = match client.send(outgoing).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(node = %node, "forwarding a terminal to {target} failed: {e}");
            return ApiError::new(Error::Unavailable(format!("node '{node}' at {url}")))
                .into_response();
        }
    };
    if answer.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
        return answer.map(Body::new).into_response();
    }
    let from_node = hyper::upgrade::on(&mut answer);
    tokio::spawn(async move {
        let (Ok(client_side), Ok(node_side)) = (from_client.await, from_node.await) else {
            tracing::debug!("a forwarded terminal did not switch protocols on both sides");
            return;
        };
        let mut client_side = hyper_util::rt::TokioIo::new(client_side);
        let mut node_side = hyper_util::rt::TokioIo::new(node_side);
        let _ = tokio::io::copy_bidirectional(&mut client_side, &mut node_side).await;
    });
    let (head, _) = answer.into_parts();
    Response::from_parts(head, Body::empty())
}
