//! The access log: one line per request under the target `gpu_replica::access` at `info`
//! (method, path, status, microseconds), for every request, only the failed ones, or none
//! ([`AccessLog`]). The line is formatted on the request's task; writing it is the log
//! writer's business (`gpu-replica serve` hands lines to a thread of their own, so a slow
//! terminal or journal never holds a request).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Which requests the access log writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request (the default).
    #[default]
    All,
    /// Only those answered 4xx or 5xx.
    Errors,
    /// None.
    Off,
}

impl std::str::FromStr for AccessLog {
    type Err = String;

    fn from_str(text: &str) -> Result<AccessLog, String> {
        match text {
            "all" | "on" => Ok(AccessLog::All),
            "errors" => Ok(AccessLog::Errors),
            "off" | "none" => Ok(AccessLog::Off),
            other => Err(format!("access log '{other}': all, errors or off")),
        }
    }
}

/// Writes the request's line once it is answered.
pub(crate) async fn log(State(mode): State<AccessLog>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if mode == AccessLog::All || status.is_client_error() || status.is_server_error() {
        tracing::info!(
            target: "gpu_replica::access",
            %method,
            path,
            status = status.as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
    }
    response
}
