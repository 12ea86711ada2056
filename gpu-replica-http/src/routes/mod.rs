//! Handlers: extract, call one engine method, map the result.

pub mod events;
pub mod instance;
pub mod nodes;
pub mod replicaset;
pub mod resources;
pub mod screen;
pub mod services;
pub mod terminal;
pub mod users;
pub mod volume;

use axum::http::{StatusCode, Uri};
use axum::Json;
use gpu_replica_core::Error;

use crate::envelope::{ok, ApiError, Envelope};
use crate::wire::Pong;

/// What every handler returns.
pub type Reply<T> = Result<Envelope<T>, ApiError>;

/// Liveness: answers without touching Docker or the store.
#[utoipa::path(get, path = "/ping", tag = "service", responses((status = 200, body = Envelope<Pong>)))]
pub async fn ping() -> Envelope<Pong> {
    ok(Pong {
        ping: "pong".into(),
    })
}

/// Unknown paths still answer in the envelope.
pub async fn not_found(uri: Uri) -> (StatusCode, Json<Envelope<()>>) {
    let error = Error::InvalidParams(format!("no route {}", uri.path()));
    (
        StatusCode::NOT_FOUND,
        Json(Envelope {
            code: error.code(),
            msg: error.to_string(),
            data: None,
        }),
    )
}

/// A known path with the wrong method.
pub async fn method_not_allowed(uri: Uri) -> (StatusCode, Json<Envelope<()>>) {
    let error = Error::InvalidParams(format!("method not allowed on {}", uri.path()));
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(Envelope {
            code: error.code(),
            msg: error.to_string(),
            data: None,
        }),
    )
}
