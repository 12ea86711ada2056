//! What every request passes around the router, written out so that a request that is
//! answered in one poll (most are) pays for no timer and no boxing:
//!
//! - [`RequestTimeout`]: the longest a request may take ([`crate::REQUEST_TIMEOUT`]), answered
//!   `408` past it. Unlike tower-http's, its timer is made only when the request first has to
//!   wait: the reads answered from memory never make, arm or drop one.
//! - [`CatchPanic`]: a bug of ours that panics answers `500` in the envelope, never a dropped
//!   connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Answers `408` to requests that take longer than its duration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestTimeout(pub Duration);

impl<S> Layer<S> for RequestTimeout {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            limit: self.0,
        }
    }
}

/// The service [`RequestTimeout`] makes.
#[derive(Clone, Debug)]
pub(crate) struct Timed<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for Timed<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        TimedFuture {
            inner: self.inner.call(request),
            limit: self.limit,
            timer: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, or `408` once its time is up.
    pub(crate) struct TimedFuture<F> {
        #[pin]
        inner: F,
        limit: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, E> Future for TimedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        // Counted from the first wait: the poll before it took microseconds.
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Ok(StatusCode::REQUEST_TIMEOUT.into_response()))
    }
}

/// Turns a handler's panic into the envelope's `500` ([`crate::envelope::panicked`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CatchPanic;

impl<S> Layer<S> for CatchPanic {
    type Service = Caught<S>;

    fn layer(&self, inner: S) -> Caught<S> {
        Caught { inner }
    }
}

/// The service [`CatchPanic`] makes.
#[derive(Clone, Debug)]
pub(crate) struct Caught<S> {
    inner: S,
}

impl<S> Service<Request> for Caught<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CaughtFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(inner) => CaughtFuture::Running { inner },
            Err(panic) => CaughtFuture::Panicked {
                answer: Some(crate::envelope::panicked(panic)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer, or the `500` of a panic.
    #[project = CaughtProjection]
    pub(crate) enum CaughtFuture<F> {
        /// The request is being answered.
        Running { #[pin] inner: F },
        /// It panicked when called.
        Panicked { answer: Option<Response> },
    }
}

impl<F, E> Future for CaughtFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CaughtProjection::Running { inner } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(polled) => polled,
                    Err(panic) => Poll::Ready(Ok(crate::envelope::panicked(panic))),
                }
            }
            CaughtProjection::Panicked { answer } => {
                Poll::Ready(Ok(answer.take().expect("an answer is given once")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_past_its_time_is_answered_408_and_a_quick_one_passes() {
        let app = axum::Router::new()
            .route("/quick", get(|| async { "quick" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "slow"
                }),
            )
            .layer(RequestTimeout(Duration::from_millis(100)));
        let call = |path: &'static str| {
            app.clone()
                .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
        };
        assert_eq!(call("/quick").await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            call("/slow").await.unwrap().status(),
            StatusCode::REQUEST_TIMEOUT
        );
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_in_the_envelope() {
        let app = axum::Router::new()
            .route(
                "/bug",
                get(|| async {
                    tokio::task::yield_now().await;
                    panic!("a bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(CatchPanic);
        let answer = app
            .oneshot(
                Request::get("/bug")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(answer.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 500, "{body}");
    }
}
