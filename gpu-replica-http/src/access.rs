//! The access log: one line per request (method, path, status, microseconds), for every
//! request, only the failed ones, or none ([`AccessLog`]). By default a line is a `tracing`
//! event under the target `gpu_replica::access` at `info`; a server that owns its log writer
//! hands lines to an [`AccessSink`] instead, which writes them without `tracing`'s machinery
//! (`gpu-replica serve` does: the same line, a fifth of the cost).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{Method, StatusCode, Uri};

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

/// One answered request, as the access log says it.
#[derive(Debug)]
pub struct AccessLine<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// Its path (percent-encoded as it came; no query).
    pub path: &'a str,
    /// The answer's status.
    pub status: u16,
    /// How long it took to answer (to the answer's head; its body may stream on).
    pub micros: u64,
}

/// Where access lines go when not to `tracing` (see [`crate::RouterOptions::access_sink`]).
/// Called on the request's task: it must not block (append to a buffer another thread
/// writes, say).
pub trait AccessSink: Send + Sync + 'static {
    /// Writes one request's line.
    fn write(&self, line: &AccessLine<'_>);
}

/// The access log as a router serves it: which requests, and where their lines go.
#[derive(Clone)]
pub(crate) struct Access {
    pub mode: AccessLog,
    pub sink: Option<Arc<dyn AccessSink>>,
}

/// What a request's line says besides its answer, taken when it comes in.
pub(crate) struct Begun {
    started: Instant,
    method: Method,
    uri: Uri,
}

impl Begun {
    /// When the request came in.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

impl Access {
    /// Notes `request` for its line (nothing when the log is off). The URI shares the
    /// request's bytes: copying it copies no path.
    pub(crate) fn begin(&self, request: &Request) -> Option<Begun> {
        (self.mode != AccessLog::Off).then(|| Begun {
            started: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
        })
    }

    /// Writes the line of a request answered `status`, if the mode wants it.
    pub(crate) fn end(&self, begun: Begun, status: StatusCode) {
        if self.mode != AccessLog::All && !status.is_client_error() && !status.is_server_error() {
            return;
        }
        let micros = begun.started.elapsed().as_micros() as u64;
        match &self.sink {
            Some(sink) => sink.write(&AccessLine {
                method: &begun.method,
                path: begun.uri.path(),
                status: status.as_u16(),
                micros,
            }),
            None => tracing::info!(
                target: "gpu_replica::access",
                method = %begun.method,
                path = begun.uri.path(),
                status = status.as_u16(),
                micros,
                "request"
            ),
        }
    }
}
