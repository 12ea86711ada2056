//! How the nodes of a cluster reach each other during a migration: [`HttpNodeLink`] sends the
//! source's calls ([`LinkRequest`]) to the target's `/internal/v1/migrations/…` routes, which
//! [`routes`] serves. Those routes take the cluster's secret (kept in etcd, made by the first
//! node that joined), never a user's token: only a node may load images or move a set's data.
//! Archives stream through (no body limit, the handler's deadline instead of the body
//! deadline); nothing is buffered whole.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use futures_util::{StreamExt, TryStreamExt};
use gpu_replica_core::cluster::{ArchiveStream, NodeRecord};
use gpu_replica_core::{Engine, Error, LinkRequest, NodeLink, Operation};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::envelope::{ok, ApiError};
use crate::forward::NodeClient;
use crate::routes::Reply;

/// Where the internal routes live.
pub const INTERNAL: &str = "/internal/v1/migrations";
/// Where a node opens a byte tunnel to a port of one of this node's sets (the web-service
/// proxy of the node a browser reached): `GET {PORTS}/{name}/{port}`, upgraded.
pub const PORTS: &str = "/internal/v1/ports";
/// The protocol that upgrade switches to: bytes as they are.
const TUNNEL: &str = "gpu-replica-tcp";
/// A tunnel with no byte either way this long is closed (beyond any proxy idle timeout).
const TUNNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Sends a migration's calls to the target node over HTTP, authenticated by the cluster's
/// secret.
pub struct HttpNodeLink {
    client: NodeClient,
    secret: String,
}

impl HttpNodeLink {
    /// A link authenticating with `secret` ([`Engine::cluster_secret`]), reaching the nodes
    /// with `client`.
    pub fn new(secret: impl Into<String>, client: NodeClient) -> HttpNodeLink {
        HttpNodeLink {
            client,
            secret: secret.into(),
        }
    }
}

/// `s` with every byte but unreserved ones percent-encoded, for a query value.
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn streamed(archive: ArchiveStream) -> Body {
    Body::from_stream(archive)
}

#[async_trait::async_trait]
impl NodeLink for HttpNodeLink {
    async fn send(&self, to: &NodeRecord, request: LinkRequest) -> gpu_replica_core::Result<()> {
        let (method, path, body) = match request {
            LinkRequest::Receive { set, archive } => (
                Method::PUT,
                format!("{INTERNAL}/{set}/image"),
                streamed(archive),
            ),
            LinkRequest::Files { set, dir, archive } => (
                Method::PUT,
                format!("{INTERNAL}/{set}/files?dir={}", encode_query(&dir)),
                streamed(archive),
            ),
            LinkRequest::Start { set } => (
                Method::POST,
                format!("{INTERNAL}/{set}/start"),
                Body::empty(),
            ),
            LinkRequest::Abort { set } => {
                (Method::DELETE, format!("{INTERNAL}/{set}"), Body::empty())
            }
        };
        let url = format!("{}{path}", to.advertise);
        let request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.secret))
            .body(body)
            .map_err(|e| Error::InvalidParams(format!("{url}: {e}")))?;
        let unreachable = |e: String| {
            tracing::warn!(node = %to.name, "{url}: {e}");
            Error::Unavailable(format!("node '{}' at {}", to.name, to.advertise))
        };
        let answer = self.client.send(request).await.map_err(unreachable)?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), crate::BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return Ok(());
        }
        let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = format!(
            "node '{}' answered {}: {}",
            to.name,
            said["code"].as_u64().unwrap_or(status.as_u16().into()),
            said["msg"].as_str().unwrap_or("(no message)")
        );
        Err(if status.is_client_error() {
            Error::refused(Operation::Migrate, message)
        } else {
            Error::failed(Operation::Migrate, message)
        })
    }
}

/// The internal routes a migration's target serves, behind the cluster's secret.
pub(crate) fn routes(engine: Arc<Engine>) -> Router<Arc<Engine>> {
    Router::new()
        .route(&format!("{INTERNAL}/{{name}}/image"), put(receive))
        .route(&format!("{INTERNAL}/{{name}}/files"), put(files))
        .route(&format!("{INTERNAL}/{{name}}/start"), post(start))
        .route(
            &format!("{INTERNAL}/{{name}}"),
            axum::routing::delete(abort),
        )
        .route(&format!("{PORTS}/{{name}}/{{port}}"), get(tunnel))
        .layer(axum::middleware::from_fn_with_state(engine, from_a_node))
}

/// Lets through only calls carrying the cluster's secret; a server outside a cluster has no
/// such routes.
async fn from_a_node(State(engine): State<Arc<Engine>>, request: Request, next: Next) -> Response {
    let Some(secret) = engine.cluster_secret() else {
        return crate::routes::not_found(request.uri().clone())
            .await
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::auth::Token::new(secret.to_string()).matches(given) {
        let mut response = ApiError::new(Error::Unauthorized).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// The request body as an archive stream; a body cut short fails the stream.
fn archive_of(body: Body) -> ArchiveStream {
    TryStreamExt::map_err(body.into_data_stream(), |e| {
        Error::Unavailable(format!("the sending node (the archive stopped: {e})"))
    })
    .boxed()
}

async fn receive(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    body: Body,
) -> Reply<()> {
    engine.accept_migration(&name, archive_of(body)).await?;
    Ok(ok(()))
}

#[derive(Deserialize)]
struct FilesQuery {
    dir: String,
}

async fn files(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(query): Query<FilesQuery>,
    body: Body,
) -> Reply<()> {
    engine
        .accept_migration_files(&name, &query.dir, archive_of(body))
        .await?;
    Ok(ok(()))
}

async fn start(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Reply<()> {
    engine.complete_migration(&name).await?;
    Ok(ok(()))
}

async fn abort(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Reply<()> {
    engine.abort_migration(&name).await?;
    Ok(ok(()))
}

/// Serves a tunnel to port `port` of set `name` (any user's: the asking node checked who may
/// reach it): once upgraded, the connection carries the port's bytes both ways.
async fn tunnel(
    State(engine): State<Arc<Engine>>,
    Path((name, port)): Path<(String, u16)>,
    mut request: Request,
) -> Response {
    let wants = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(TUNNEL.as_bytes()));
    if !wants {
        return ApiError::new(Error::InvalidParams(format!(
            "a port tunnel is asked with 'Upgrade: {TUNNEL}'"
        )))
        .into_response();
    }
    let stream = match engine.connect_port(&name, port).await {
        Ok(stream) => stream,
        Err(e) => return ApiError::new(e).into_response(),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        // The asking node's proxy ends it when its client goes or goes quiet; a node that
        // vanished is noticed by the same idle limit here.
        let upgraded = hyper_util::rt::TokioIo::new(upgraded);
        crate::pipe::join(upgraded, stream, TUNNEL_IDLE).await;
    });
    let mut response = axum::http::StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(TUNNEL));
    response
}

/// A byte tunnel to port `port` of set `set`, through the node whose API is at `url`
/// (the cluster's secret opens it).
pub(crate) async fn open_port(
    nodes: &NodeClient,
    engine: &Engine,
    url: &str,
    set: &str,
    port: u16,
) -> gpu_replica_core::Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
    let secret = engine
        .cluster_secret()
        .ok_or_else(|| Error::Unavailable("this node has no cluster secret".into()))?;
    let request = hyper::Request::builder()
        .method(Method::GET)
        .uri(format!("{}{PORTS}/{set}/{port}", url.trim_end_matches('/')))
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TUNNEL)
        .body(Body::empty())
        .map_err(|e| Error::InvalidParams(e.to_string()))?;
    let mut answer = nodes
        .send(request)
        .await
        .map_err(|e| Error::Unavailable(format!("the node at {url}: {e}")))?;
    if answer.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
        let body = answer.into_body().collect().await.map(|c| c.to_bytes());
        let text = body
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["msg"].as_str().map(str::to_string))
            .unwrap_or_else(|| "no tunnel".into());
        return Err(Error::Unavailable(format!("the node at {url}: {text}")));
    }
    let upgraded = hyper::upgrade::on(&mut answer)
        .await
        .map_err(|e| Error::Unavailable(format!("the node at {url}: {e}")))?;
    Ok(hyper_util::rt::TokioIo::new(upgraded))
}
