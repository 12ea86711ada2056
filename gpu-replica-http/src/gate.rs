//! The one layer every request passes once routed (its route, the fallback of no route, or
//! the answer to a method the route lacks). It
//!
//! - writes the access log's line ([`Access`]) and counts the request for the metrics (by its
//!   route's pattern);
//! - on the guarded routes, finds who is asking ([`Auth`]) and sends the request on when its
//!   set lives on another node ([`forward`]);
//! - answers `408` past [`crate::REQUEST_TIMEOUT`] (the timer is made only when the request
//!   first has to wait: reads answered from memory never make, arm or drop one), and `500`
//!   in the envelope for a bug of ours that panics, never a dropped connection;
//! - sets the body limit ([`crate::BODY_LIMIT`]).
//!
//! One layer rather than seven: axum copies a route's whole stack of services each time it
//! calls it, so every layer stacked on a route costs every request a copy of what is below
//! it, and a layer around the router costs a second routing. Written out rather than as
//! `from_fn`, a request decided from memory (nearly all: the admin's token, or a user's while
//! the users in memory are known true, on a single host) passes in with no boxed future and
//! no copy of the route; only one that must wait (the users read, another node asked) takes
//! the slower way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::Route;
use gpu_replica_core::Caller;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::access::{Access, Begun};
use crate::auth::{Auth, Decision};
use crate::forward::{self, Forwarder};
use crate::metrics::{method_label, HttpMetrics};
use crate::replies::Replies;

/// What the guarded routes need besides the metrics.
pub(crate) struct Guard {
    /// Who is asking.
    pub auth: Arc<Auth>,
    /// Where a set's requests are served.
    pub forwarder: Forwarder,
    /// The hot reads' kept answers, handed to the handlers.
    pub replies: Arc<Replies>,
}

/// The layer: everything but a guard (`/ping`, the console's files, the nodes' own routes),
/// or everything and a [`Guard`].
#[derive(Clone)]
pub(crate) struct Gate {
    shared: Arc<Shared>,
    guard: Option<Arc<Guard>>,
}

/// What every route's gate shares.
pub(crate) struct Shared {
    /// The access log.
    pub access: Access,
    /// The HTTP metrics.
    pub metrics: Arc<HttpMetrics>,
    /// Longest a request may take.
    pub limit: Duration,
    /// Largest request body.
    pub body_limit: usize,
}

impl Gate {
    /// Lets every request in.
    pub(crate) fn open(shared: Arc<Shared>) -> Gate {
        Gate {
            shared,
            guard: None,
        }
    }

    /// Lets in those `guard` lets in.
    pub(crate) fn guarded(shared: Arc<Shared>, guard: Guard) -> Gate {
        Gate {
            shared,
            guard: Some(Arc::new(guard)),
        }
    }
}

impl Layer<Route> for Gate {
    type Service = Gated;

    fn layer(&self, inner: Route) -> Gated {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service [`Gate`] makes of a route.
#[derive(Clone)]
pub(crate) struct Gated {
    inner: Route,
    gate: Gate,
}

impl Service<Request> for Gated {
    type Response = Response;
    type Error = Infallible;
    type Future = Gone<Passed<RouteFuture<Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let shared = &self.gate.shared;
        let begun = shared.access.begin(&request);
        let route = match request.extensions().get::<MatchedPath>() {
            Some(pattern) => shared.metrics.route(pattern.as_str()),
            None => shared.metrics.unmatched(),
        };
        let method = method_label(request.method());
        let started = begun.as_ref().map_or_else(Instant::now, Begun::started);
        DefaultBodyLimit::max(shared.body_limit).apply(&mut request);
        let inner = &mut self.inner;
        let guard = &self.gate.guard;
        let passed = std::panic::catch_unwind(AssertUnwindSafe(|| match guard {
            None => Passed::Inner {
                inner: inner.call(request),
            },
            Some(guard) => guard.pass(inner, request),
        }))
        .unwrap_or_else(|panic| Passed::Answered {
            answer: Some(crate::envelope::panicked(panic)),
        });
        Gone {
            inner: passed,
            shared: shared.clone(),
            begun,
            route: Some(route),
            method,
            started,
            timer: None,
        }
    }
}

impl Guard {
    /// Hands the handlers who asks, and the kept answers.
    fn let_in(&self, request: &mut Request, caller: Caller) {
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(self.replies.clone());
    }

    /// Lets `request` in to `inner` as its caller, sends it on, or refuses it.
    fn pass(
        self: &Arc<Guard>,
        inner: &mut Route,
        mut request: Request,
    ) -> Passed<RouteFuture<Infallible>> {
        let address = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        match self.auth.decide_now(&request, address) {
            Decision::Pass(caller) => {
                self.let_in(&mut request, caller);
                if forward::served_here(&self.forwarder, &request) {
                    return Passed::Inner {
                        inner: inner.call(request),
                    };
                }
                let guard = self.clone();
                let inner = inner.clone();
                Passed::Later {
                    later: Box::pin(async move {
                        Ok(forward::forward_if_elsewhere(&guard.forwarder, request, &inner).await)
                    }),
                }
            }
            Decision::Refuse(error) => Passed::Answered {
                answer: Some(self.auth.refusal(error, address)),
            },
            Decision::Ask(token) => {
                let guard = self.clone();
                let inner = inner.clone();
                Passed::Later {
                    later: Box::pin(async move {
                        let caller = match guard.auth.decide_later(token).await {
                            Ok(caller) => caller,
                            Err(error) => return Ok(guard.auth.refusal(error, address)),
                        };
                        guard.let_in(&mut request, caller);
                        Ok(if forward::served_here(&guard.forwarder, &request) {
                            forward::serve_here(&inner, request).await
                        } else {
                            forward::forward_if_elsewhere(&guard.forwarder, request, &inner).await
                        })
                    }),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a request let in (the route's), refused (the gate's own), or decided
    /// after waiting.
    #[project = PassedProjection]
    pub(crate) enum Passed<F> {
        /// Let in.
        Inner { #[pin] inner: F },
        /// Refused.
        Answered { answer: Option<Response> },
        /// Decided after waiting (the users read, another node asked).
        Later { later: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> },
    }
}

impl<F> Future for Passed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            PassedProjection::Inner { inner } => inner.poll(cx),
            PassedProjection::Answered { answer } => {
                Poll::Ready(Ok(answer.take().expect("an answer is given once")))
            }
            PassedProjection::Later { later } => later.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer (its route's, `408` past its time, `500` for a panic), logged and
    /// counted when it comes.
    pub(crate) struct Gone<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        begun: Option<Begun>,
        route: Option<Arc<str>>,
        method: &'static str,
        started: Instant,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F> Future for Gone<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let answer = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(Ok(answer))) => answer,
            Ok(Poll::Ready(Err(never))) => match never {},
            Err(panic) => crate::envelope::panicked(panic),
            Ok(Poll::Pending) => {
                // Counted from the first wait: the poll before it took microseconds.
                let limit = this.shared.limit;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(
                        tokio::time::Instant::now() + limit,
                    ))
                });
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                StatusCode::REQUEST_TIMEOUT.into_response()
            }
        };
        let status = answer.status();
        if let Some(route) = this.route.take() {
            this.shared.metrics.observe(
                route,
                this.method,
                status.as_u16(),
                this.started.elapsed(),
            );
        }
        if let Some(begun) = this.begun.take() {
            this.shared.access.end(begun, status);
        }
        Poll::Ready(Ok(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessLog;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> axum::Router {
        let shared = Arc::new(Shared {
            access: Access {
                mode: AccessLog::Off,
                sink: None,
            },
            metrics: Arc::new(HttpMetrics::new("")),
            limit: Duration::from_millis(100),
            body_limit: 16,
        });
        axum::Router::new()
            .route("/quick", get(|| async { "quick" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "slow"
                }),
            )
            .route(
                "/bug",
                get(|| async {
                    tokio::task::yield_now().await;
                    panic!("a bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .route("/echo", axum::routing::post(|body: String| async { body }))
            .layer(Gate::open(shared))
    }

    async fn call(method: &str, path: &str, body: &'static str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .unwrap();
        let answer = app().oneshot(request).await.unwrap();
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 4096)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_request_past_its_time_is_answered_408_and_a_quick_one_passes() {
        assert_eq!(
            call("GET", "/quick", "").await,
            (StatusCode::OK, "quick".into())
        );
        assert_eq!(
            call("GET", "/slow", "").await.0,
            StatusCode::REQUEST_TIMEOUT
        );
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_in_the_envelope() {
        let (status, body) = call("GET", "/bug", "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], 500, "{body}");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused() {
        assert_eq!(
            call("POST", "/echo", "short").await,
            (StatusCode::OK, "short".into())
        );
        assert_eq!(
            call("POST", "/echo", "a body longer than sixteen bytes")
                .await
                .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
