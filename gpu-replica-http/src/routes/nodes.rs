//! `/api/v1/nodes/{name}/…`: cordoning and draining a node of a cluster (admins).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};

use super::Reply;
use crate::auth::Acting;
use crate::envelope::ok;
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply};
use crate::wire::{DrainQuery, DrainView, NodeView};

/// Cordon a node: placement gives it no new set (a run, clone or volume pinned to it, or a
/// migration to it, is refused with 1064); its sets stay.
#[utoipa::path(patch, path = "/api/v1/nodes/{name}/cordon", tag = "node",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Envelope<NodeView>), (status = "4XX", body = ErrorReply, description = "1000 (not a cluster), 1049 (admins only), 1057 (no such node)")))]
pub async fn cordon(Acting(engine): Acting, Path(name): Path<String>) -> Reply<NodeView> {
    Ok(ok(NodeView::from(&engine.cordon(&name).await?)))
}

/// Uncordon a node: it takes new sets again; a drain under way is cancelled.
#[utoipa::path(patch, path = "/api/v1/nodes/{name}/uncordon", tag = "node",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Envelope<NodeView>), (status = "4XX", body = ErrorReply, description = "1000 (not a cluster), 1049 (admins only), 1057 (no such node)")))]
pub async fn uncordon(Acting(engine): Acting, Path(name): Path<String>) -> Reply<NodeView> {
    Ok(ok(NodeView::from(&engine.uncordon(&name).await?)))
}

/// Drain a node: cordon it and move every set on it (running, paused, stopped; volumes'
/// data along) to other nodes by placement, `parallel` at a time, in the background. Served
/// by that node (any node sends the request there). Answers at once; read the progress with
/// `GET` (each set moved or not is also an event `drain`). A drain already running is
/// answered as it stands.
#[utoipa::path(post, path = "/api/v1/nodes/{name}/drain", tag = "node",
    params(("name" = String, Path, description = "Node name"),
        ("parallel" = Option<u32>, Query, description = "Migrations at once (default 2, at most 16)")),
    responses((status = 200, body = Envelope<DrainView>), (status = "4XX", body = ErrorReply, description = "1000 (not a cluster, or a bad parallel), 1049 (admins only), 1057 (no such node)"), (status = 503, body = ErrorReply, description = "1054: the node is lost")))]
pub async fn drain(
    Acting(engine): Acting,
    Path(name): Path<String>,
    query: Result<Query<DrainQuery>, QueryRejection>,
) -> Reply<DrainView> {
    let Query(query) = query?;
    Ok(ok(DrainView::from(
        &engine.drain(&name, query.parallel).await?,
    )))
}

/// A node's drain: the one under way or the last one (state `none` when never drained), with
/// the sets in flight, moved, and not moved with why.
#[utoipa::path(get, path = "/api/v1/nodes/{name}/drain", tag = "node",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Envelope<DrainView>), (status = "4XX", body = ErrorReply, description = "1000 (not a cluster), 1049 (admins only), 1057 (no such node)")))]
pub async fn drain_status(Acting(engine): Acting, Path(name): Path<String>) -> Reply<DrainView> {
    Ok(ok(DrainView::from(&engine.drain_status(&name).await?)))
}

/// Cancel a node's drain: no new move starts; those in flight finish or are undone, so each
/// set ends on exactly one node. The node stays cordoned. Nothing when no drain runs.
#[utoipa::path(delete, path = "/api/v1/nodes/{name}/drain", tag = "node",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Envelope<DrainView>), (status = "4XX", body = ErrorReply, description = "1000 (not a cluster), 1049 (admins only), 1057 (no such node)")))]
pub async fn cancel_drain(Acting(engine): Acting, Path(name): Path<String>) -> Reply<DrainView> {
    Ok(ok(DrainView::from(&engine.cancel_drain(&name).await?)))
}
