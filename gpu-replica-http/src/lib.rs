//! # gpu-replica-http
//!
//! The HTTP face of gpu-replica: an axum [`Router`] over an `Arc<Engine>` that serves the
//! gpu-docker-api contract under `/api/v1` (same routes, request fields, `{code, msg, data}`
//! envelope and data shapes), plus list endpoints, `GET /ping` and `GET /openapi.json`.
//!
//! Handlers only translate: they extract the request, call one engine method and map the
//! result. Every decision lives in `gpu-replica-core`.
//!
//! ```no_run
//! # async fn demo(engine: std::sync::Arc<gpu_replica_core::Engine>) -> std::io::Result<()> {
//! let app = gpu_replica_http::router(engine);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2378").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod access;
mod auth;
#[cfg(feature = "client")]
pub mod client;
mod envelope;
pub mod forward;
mod gate;
pub mod link;
mod metrics;
mod openapi;
mod pipe;
pub mod proxy;
mod replies;
mod routes;
pub mod serve;
pub mod tls;
mod ui;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, patch, post};
use axum::Router;
use gpu_replica_core::Engine;

pub use crate::access::{AccessLine, AccessLog, AccessSink};
pub use crate::envelope::{ApiError, Envelope};
pub use crate::forward::NodeClient;
pub use crate::link::HttpNodeLink;
pub use crate::openapi::ApiDoc;
pub use crate::proxy::{proxy_router, ProxyAddress, ProxyOptions};
pub use crate::serve::{serve, Listener, ServeOptions};
pub use crate::tls::{ReloadableTls, TlsFiles};

/// Largest request body accepted (the contract's bodies are a few hundred bytes).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take: a patch may stop (grace), commit and start a container.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Every route of the API over `engine`. Until a user is added (`POST /api/v1/users`),
/// requests need no token and act as the admin: bind it to loopback, or use
/// [`router_with_token`]. Once users exist, every route but `/ping` needs a user's token.
///
/// Failed authentications are limited per client address; serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that addresses are known (without
/// it, every client shares one allowance).
pub fn router(engine: Arc<Engine>) -> Router {
    routes(engine, RouterOptions::default())
}

/// Every route of the API over `engine`; all but `/ping` need `Authorization: Bearer <token>`
/// with `token` (the built-in admin) or a user's token.
pub fn router_with_token(engine: Arc<Engine>, token: String) -> Router {
    routes(
        engine,
        RouterOptions {
            token: Some(token),
            ..RouterOptions::default()
        },
    )
}

/// How [`router_with`] serves.
#[derive(Clone)]
pub struct RouterOptions {
    /// The built-in admin's token (as [`router_with_token`]), or none (as [`router`]).
    pub token: Option<String>,
    /// A token that may only read `GET /metrics` (for a Prometheus scraper).
    pub metrics_token: Option<String>,
    /// In a cluster, how requests for other nodes reach them (HTTPS with the cluster's CA,
    /// say).
    pub nodes: NodeClient,
    /// Where this server's web-service proxy ([`proxy_router`]) is reached, for the links
    /// `POST /api/v1/replicaSet/{name}/open` hands out; none: that route is refused.
    pub proxy: Option<ProxyAddress>,
    /// Which requests the access log writes (default: all).
    pub access_log: AccessLog,
    /// Where access lines go: `tracing` (target `gpu_replica::access`, the default), or this.
    pub access_sink: Option<Arc<dyn AccessSink>>,
}

impl Default for RouterOptions {
    fn default() -> RouterOptions {
        RouterOptions {
            token: None,
            metrics_token: None,
            nodes: NodeClient::plain(),
            proxy: None,
            access_log: AccessLog::All,
            access_sink: None,
        }
    }
}

/// Every route of the API over `engine`, the metrics and the web console, served as
/// `options` say.
pub fn router_with(engine: Arc<Engine>, options: RouterOptions) -> Router {
    routes(engine, options)
}

fn routes(engine: Arc<Engine>, options: RouterOptions) -> Router {
    let RouterOptions {
        token,
        metrics_token,
        nodes,
        proxy,
        access_log,
        access_sink,
    } = options;
    let http_metrics = Arc::new(metrics::HttpMetrics::new(engine.node_name()));
    use routes::{events, instance, replicaset as rs, resources, users, volume};
    use wire::paths as p;
    let api = Router::new()
        .route(p::REPLICA_SETS, post(rs::run).get(rs::list))
        .route(
            p::REPLICA_SET,
            patch(rs::patch).get(rs::info).delete(rs::delete),
        )
        .route(p::COMMIT, post(rs::commit))
        .route(p::EXECUTE, post(rs::execute))
        .route(p::ROLLBACK, patch(rs::rollback))
        .route(p::STOP, patch(rs::stop))
        .route(p::PAUSE, patch(rs::pause))
        .route(p::CONTINUE, patch(rs::resume))
        .route(p::RESTART, patch(rs::restart))
        .route(p::HISTORY, get(rs::history))
        .route(p::MIGRATE, post(rs::migrate))
        .route(p::TIMERS, get(instance::timers).put(instance::set_timers))
        .route(p::CLONE, post(instance::clone))
        .route(p::LOGS, get(instance::logs))
        .route(p::STATS, get(instance::stats))
        .route(p::TERMINAL, get(routes::terminal::terminal))
        .route(p::SCREEN, get(routes::screen::screen))
        .route(p::OPEN, {
            let links = routes::services::ProxyLinks(proxy.map(Arc::new));
            post(move |acting, headers, path, body| {
                routes::services::open(acting, links, headers, path, body)
            })
        })
        .route(p::SERVICES, get(routes::services::services))
        .route(p::EVENTS, get(events::events))
        .route(p::VOLUMES, post(volume::create).get(volume::list))
        .route(p::VOLUME, get(volume::info).delete(volume::delete))
        .route(p::VOLUME_SIZE, patch(volume::resize))
        .route(p::VOLUME_HISTORY, get(volume::history))
        .route(p::GPUS, get(resources::gpus))
        .route(p::PORTS, get(resources::ports))
        .route(p::STATUS, get(resources::status))
        .route(p::BACKUP, get(resources::backup))
        .route(p::USERS, post(users::add).get(users::list))
        .route(p::USER, get(users::info).delete(users::remove))
        .route(p::USER_TOKEN, post(users::reset_token))
        .route(p::USER_QUOTA, patch(users::quota))
        .route(p::USER_KEYS, get(users::keys).post(users::add_key))
        .route(p::USER_KEY, delete(users::remove_key))
        .route(p::WHOAMI, get(users::whoami))
        .route(p::NODES, get(resources::nodes))
        .route(p::NODE_CORDON, patch(routes::nodes::cordon))
        .route(p::NODE_UNCORDON, patch(routes::nodes::uncordon))
        .route(
            p::NODE_DRAIN,
            post(routes::nodes::drain)
                .get(routes::nodes::drain_status)
                .delete(routes::nodes::cancel_drain),
        )
        .route(p::USAGE, get(users::usage));
    let scraped = http_metrics.clone();
    let auth = Arc::new(auth::Auth {
        engine: engine.clone(),
        token: token.map(auth::Token::new),
        metrics_token: metrics_token.map(auth::Token::new),
        limiter: auth::FailureLimiter::default(),
    });
    // Once routed, one layer does what every request needs (see `gate`); as `layer`, not
    // `route_layer`, so that a request for no route passes it too (and needs a token).
    let shared = Arc::new(gate::Shared {
        access: access::Access {
            mode: access_log,
            sink: access_sink,
        },
        metrics: http_metrics,
        limit: REQUEST_TIMEOUT,
        body_limit: BODY_LIMIT,
    });
    let guarded = api
        .route("/openapi.json", get(openapi::document))
        .route(
            "/metrics",
            get(move |acting: auth::Acting| metrics::scrape(acting, scraped)),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(gate::Gate::guarded(
            shared.clone(),
            gate::Guard {
                auth: auth.clone(),
                forwarder: forward::Forwarder::new(engine.clone(), nodes),
                // The hot reads' answers, kept while the store is unchanged.
                replies: Arc::new(replies::Replies::default()),
            },
        ));
    Router::new()
        .route(p::PING, get(routes::ping))
        .merge(ui::routes(auth))
        .merge(link::routes(engine.clone()))
        .layer(gate::Gate::open(shared))
        .merge(guarded)
        .with_state(engine)
}

#[cfg(test)]
mod tests {
    /// The HTTP crate speaks the engine's words: what it needs of Docker's world (the node
    /// link's byte stream, say) core names outside its runtime layer.
    #[test]
    fn the_http_crate_never_reaches_into_the_runtime_layer() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        let mut read = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let needle = concat!("gpu_replica_core::", "runtime");
                    assert!(!text.contains(needle), "{} names {needle}", path.display());
                    read += 1;
                }
            }
        }
        assert!(read > 10, "read {read} files");
    }
}
