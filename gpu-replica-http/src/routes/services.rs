//! A set's web services (beyond the contract): which ports it serves, and links that open
//! them through the proxy ([`crate::proxy`]).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderMap};
use gpu_replica_core::Error;

use super::Reply;
use crate::auth::Acting;
use crate::envelope::{ok, Body};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply};
use crate::proxy::ProxyAddress;
use crate::wire::{OpenBody, OpenReply, ServicesReply};

/// Where this server's proxy is reached, if it has one.
#[derive(Clone, Default)]
pub(crate) struct ProxyLinks(pub Option<Arc<ProxyAddress>>);

/// A link that opens a port of the set in a browser, through the web-service proxy: good for
/// a minute, once; it sets a cookie for that service alone and lands on it. The link names
/// the proxy of the server asked (in a cluster too: it reaches sets on any node).
#[utoipa::path(post, path = "/api/v1/replicaSet/{name}/open", tag = "instance", operation_id = "open_link", request_body = OpenBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<OpenReply>), (status = "4XX", body = ErrorReply, description = "1000 (a bad port), 1006 (this server runs no proxy), 1016")))]
pub async fn open(
    Acting(engine): Acting,
    links: ProxyLinks,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(body): Body<OpenBody>,
) -> Reply<OpenReply> {
    let port = u16::try_from(body.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::InvalidParams(format!("port {} is not 1 to 65535", body.port)))?;
    let Some(address) = links.0 else {
        // Checked after the set, so another user's set answers as a missing one still.
        engine.proxy_link(&name, port).await?;
        return Err(Error::refused(
            gpu_replica_core::Operation::Exec,
            "this server runs no web-service proxy; start it with --proxy-addr",
        )
        .into());
    };
    let ticket = engine.proxy_link(&name, port).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url = address.link(host, &name, port, &ticket.ticket);
    let service_url = address.service(host, &name, port);
    Ok(ok(OpenReply {
        url,
        service_url,
        expires_at: gpu_replica_core::model::rfc3339(ticket.expires as i64),
    }))
}

/// The set's TCP ports: those published on host ports and those a program listens on, each
/// marked when it answers HTTP (what the console offers to open). The set must be running.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/services", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<ServicesReply>), (status = "4XX", body = ErrorReply, description = "1006 (not running), 1016")))]
pub async fn services(Acting(engine): Acting, Path(name): Path<String>) -> Reply<ServicesReply> {
    let services = engine.set_services(&name).await?;
    Ok(ok(ServicesReply {
        services: services.into_iter().map(Into::into).collect(),
    }))
}
