//! `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes), encoded by
//! `prometheus-client`: the engine's figures ([`Engine::collect_metrics`]: DCGM's GPU names,
//! claims, sets, ports, operations, recoveries, reconciles) and the HTTP layer's own, requests
//! by route, method and status with their latency. For admins, or the read-only metrics token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderValue, Method};
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
    route: Arc<str>,
    method: &'static str,
    status: u16,
    node: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    method: &'static str,
    node: Arc<str>,
}

/// Request latencies: 1 ms to ~65 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The HTTP layer's counters.
pub(crate) struct HttpMetrics {
    node: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Each route pattern's label (`{name}` as `:name`), made once.
    routes: RwLock<HashMap<String, Arc<str>>>,
    unmatched: Arc<str>,
}

impl HttpMetrics {
    pub(crate) fn new(node: &str) -> HttpMetrics {
        HttpMetrics {
            node: node.into(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            routes: RwLock::default(),
            unmatched: "unmatched".into(),
        }
    }

    /// Counts a request of `route` and `method` answered `status` after `took`.
    pub(crate) fn observe(
        &self,
        route: Arc<str>,
        method: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
                node: self.node.clone(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route,
                method,
                node: self.node.clone(),
            })
            .observe(took.as_secs_f64());
    }

    /// The label of requests that matched no route.
    pub(crate) fn unmatched(&self) -> Arc<str> {
        self.unmatched.clone()
    }

    /// The label of route pattern `pattern`.
    pub(crate) fn route(&self, pattern: &str) -> Arc<str> {
        if let Some(label) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(pattern)
        {
            return label.clone();
        }
        // `/api/v1/replicaSet/:name`: braces in a label value trip simple parsers.
        let label: Arc<str> = pattern.replace('{', ":").replace('}', "").into();
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pattern.to_string(), label.clone());
        label
    }
}

/// A method as a label: the standard ones by name, any other as `OTHER` (a client's made-up
/// methods would make the series endless).
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
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
