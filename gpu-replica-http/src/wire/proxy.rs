//! The web-service proxy's API: links that open a set's services, and the services a set has.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/replicaSet/{name}/open`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct OpenBody {
    /// The port inside the set's container, 1 to 65535.
    #[schema(minimum = 1, maximum = 65535, example = 8888)]
    pub port: u32,
}

/// A link that opens a set's service through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenReply {
    /// Open it in a browser (or `curl -L -c jar`) within a minute, once: it sets the proxy's
    /// cookie for this service and lands on it.
    #[schema(example = "http://127.0.0.1:2380/_gpu-replica/open/lab/8888?ticket=eyJr...")]
    pub url: String,
    /// Where the service is once opened (the link's destination).
    #[schema(example = "http://127.0.0.1:2380/lab/8888/")]
    pub service_url: String,
    /// When the link stops being good, RFC 3339.
    pub expires_at: String,
}

/// A TCP port of a running set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// The port inside the container.
    pub port: u16,
    /// The host port it is published on, if any.
    pub host_port: Option<u16>,
    /// Whether a program listens on it now.
    pub listening: bool,
    /// Whether it answered an HTTP request (a web page to open).
    pub http: bool,
}

/// `GET /api/v1/replicaSet/{name}/services`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServicesReply {
    /// Published and listening ports, ascending.
    pub services: Vec<ServiceView>,
}

impl From<gpu_replica_core::SetService> for ServiceView {
    fn from(s: gpu_replica_core::SetService) -> ServiceView {
        ServiceView {
            port: s.port,
            host_port: s.host_port,
            listening: s.listening,
            http: s.http,
        }
    }
}
