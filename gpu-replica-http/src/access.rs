//! The access log: one line per request (method, path, status, microseconds), for every
//! request, only the failed ones, or none ([`AccessLog`]). By default a line is a `tracing`
//! event under the target `gpu_replica::access` at `info`; a server that owns its log writer
//! hands lines to an [`AccessSink`] instead, which writes them without `tracing`'s machinery
//! (`gpu-replica serve` does: the same line, a fifth of the cost).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{Method, Uri};
use axum::response::Response;
use tower::{Layer, Service};

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

/// Writes each request's line once it is answered (a layer of its own, not a `from_fn`: a
/// request pays for no boxed service or future here).
#[derive(Clone)]
pub(crate) struct AccessLayer {
    pub mode: AccessLog,
    pub sink: Option<Arc<dyn AccessSink>>,
}

impl<S> Layer<S> for AccessLayer {
    type Service = Logged<S>;

    fn layer(&self, inner: S) -> Logged<S> {
        Logged {
            inner,
            mode: self.mode,
            sink: self.sink.clone(),
        }
    }
}

/// The service [`AccessLayer`] makes.
#[derive(Clone)]
pub(crate) struct Logged<S> {
    inner: S,
    mode: AccessLog,
    sink: Option<Arc<dyn AccessSink>>,
}

impl<S> Service<Request> for Logged<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The URI shares the request's bytes: copying it copies no path.
        let line = (self.mode != AccessLog::Off).then(|| Line {
            started: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
        });
        LoggedFuture {
            inner: self.inner.call(request),
            mode: self.mode,
            sink: self.sink.clone(),
            line,
        }
    }
}

/// What a request's line says besides its answer.
struct Line {
    started: Instant,
    method: Method,
    uri: Uri,
}

pin_project_lite::pin_project! {
    /// The answer, and its line written when it comes.
    pub(crate) struct LoggedFuture<F> {
        #[pin]
        inner: F,
        mode: AccessLog,
        sink: Option<Arc<dyn AccessSink>>,
        line: Option<Line>,
    }
}

impl<F, E> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(line)) = (&answer, this.line.take()) {
            let status = response.status();
            if *this.mode == AccessLog::All || status.is_client_error() || status.is_server_error()
            {
                let micros = line.started.elapsed().as_micros() as u64;
                match this.sink {
                    Some(sink) => sink.write(&AccessLine {
                        method: &line.method,
                        path: line.uri.path(),
                        status: status.as_u16(),
                        micros,
                    }),
                    None => tracing::info!(
                        target: "gpu_replica::access",
                        method = %line.method,
                        path = line.uri.path(),
                        status = status.as_u16(),
                        micros,
                        "request"
                    ),
                }
            }
        }
        Poll::Ready(answer)
    }
}
