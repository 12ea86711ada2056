//! The one layer every routed request passes: it counts the request for the metrics (by its
//! route's pattern), and on the guarded routes finds who is asking ([`Auth`]) and sends the
//! request on when its set lives on another node ([`forward`]).
//!
//! One layer rather than three: axum copies a route's whole stack of services each time it
//! calls it, so every layer stacked on a route costs every request a copy of what is below
//! it. Written out rather than as `from_fn`, a request decided from memory (nearly all: the
//! admin's token, or a user's while the users in memory are known true, on a single host)
//! passes in with no boxed future and no copy of the route; only one that must wait (the
//! users read, another node asked) takes the slower way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::Route;
use tower::{Layer, Service};

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

/// The layer: metrics only (`/ping`, the console's files), or metrics and a [`Guard`].
#[derive(Clone)]
pub(crate) struct Gate {
    metrics: Arc<HttpMetrics>,
    guard: Option<Arc<Guard>>,
}

impl Gate {
    /// Counts requests; lets every one in.
    pub(crate) fn open(metrics: Arc<HttpMetrics>) -> Gate {
        Gate {
            metrics,
            guard: None,
        }
    }

    /// Counts requests; lets in those `guard` lets in.
    pub(crate) fn guarded(metrics: Arc<HttpMetrics>, guard: Guard) -> Gate {
        Gate {
            metrics,
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
    type Future = Counted<Passed<RouteFuture<Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let metrics = &self.gate.metrics;
        let route = match request.extensions().get::<MatchedPath>() {
            Some(pattern) => metrics.route(pattern.as_str()),
            None => metrics.unmatched(),
        };
        let method = method_label(request.method());
        let started = Instant::now();
        let passed = match &self.gate.guard {
            None => Passed::Inner {
                inner: self.inner.call(request),
            },
            Some(guard) => guard.pass(&mut self.inner, request),
        };
        Counted {
            inner: passed,
            metrics: metrics.clone(),
            route: Some(route),
            method,
            started,
        }
    }
}

impl Guard {
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
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(self.replies.clone());
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
                        request.extensions_mut().insert(caller);
                        request.extensions_mut().insert(guard.replies.clone());
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
    /// An answer, counted when it comes.
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        route: Option<Arc<str>>,
        method: &'static str,
        started: Instant,
    }
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(route)) = (&answer, this.route.take()) {
            let status = response.status().as_u16();
            this.metrics
                .observe(route, this.method, status, this.started.elapsed());
        }
        Poll::Ready(answer)
    }
}
