//! The longest a request may take ([`crate::REQUEST_TIMEOUT`]), answered `408` past it. Unlike
//! tower-http's timeout, the timer is made only when the request first has to wait: the reads
//! that most requests are (answered from memory in one poll) never make, arm or drop one.

use std::future::Future;
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_time_is_answered_408_and_a_quick_one_passes() {
        let app = axum::Router::new()
            .route("/quick", get(|| async { "quick" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(11)).await;
                    "slow"
                }),
            )
            .layer(RequestTimeout(Duration::from_secs(10)));
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
}
