//! `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes), encoded by
//! `prometheus-client`: the engine's figures ([`Engine::collect_metrics`]: DCGM's GPU names,
//! claims, sets, ports, operations, recoveries, reconciles) and the HTTP layer's own, requests
//! by route, method and status with their latency. For admins, or the read-only metrics token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpu_replica_core::{Engine, Error};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::auth::Acting;
use crate::envelope::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
    node: String,
}

/// Request latencies: 1 ms to ~65 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The HTTP layer's counters.
pub(crate) struct HttpMetrics {
    node: String,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub(crate) fn new(node: &str) -> HttpMetrics {
        HttpMetrics {
            node: node.to_string(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
        }
    }
}

/// Counts each routed request by its route's pattern (never its path: names would make the
/// series endless), method and status, and observes how long it took.
pub(crate) async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    // `/api/v1/replicaSet/:name`: braces in a label value trip simple parsers.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: response.status().as_u16().to_string(),
            node: metrics.node.clone(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route,
            method,
            node: metrics.node.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub(crate) async fn scrape(Acting(engine): Acting, metrics: Arc<HttpMetrics>) -> Response {
    match render(&engine, &metrics).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(e).into_response(),
    }
}

async fn render(engine: &Engine, metrics: &HttpMetrics) -> Result<String, Error> {
    let mut registry = Registry::default();
    engine.collect_metrics(&mut registry).await?;
    registry.register(
        "gpu_replica_http_requests",
        "HTTP requests by route, method and status",
        metrics.requests.clone(),
    );
    registry.register(
        "gpu_replica_http_request_duration_seconds",
        "How long HTTP requests took, by route and method",
        metrics.latency.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::InvalidParams(format!("encoding the metrics: {e}")))?;
    Ok(text)
}
