//! `/api/v1/resources…`

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use axum::Extension;

use crate::auth::Acting;
use crate::envelope::{ok, ApiError};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply};
use crate::replies::{answer, Replies};
use crate::wire::{
    DetailQuery, GpuAnswer, GpuDetail, GpuDetails, GpuMap, IsolationView, NodeList, NodeQuery,
    NodeView, PortsReply, RecoveryView, StatusReply, ToolkitView,
};

/// GPU usage: `{uuid: 0|1}`, or every GPU in detail with `?detail=true`.
#[utoipa::path(get, path = "/api/v1/resources/gpus", tag = "resource",
    params(("detail" = Option<bool>, Query, description = "Answer with index, name, memory, utilization and holder")),
    responses((status = 200, body = Envelope<GpuAnswer>, description = "`{gpus: {uuid: 0|1}}`, or with `detail=true` `{gpus: [...]}`"), (status = 400, body = ErrorReply, description = "1000: detail is not true or false"), (status = "5XX", body = ErrorReply, description = "1038")))]
pub async fn gpus(
    Acting(engine): Acting,
    Extension(replies): Extension<Arc<Replies>>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if query.detail {
        // Utilization is live: never kept.
        let status = engine.gpu_status().await?;
        let gpus = status.iter().map(GpuDetail::from).collect();
        return Ok(ok(GpuDetails { gpus }).into_response());
    }
    answer(&replies, &engine, "gpus", async {
        let status = engine.gpu_status().await?;
        let gpus = status
            .iter()
            .map(|s| (s.gpu.uuid.clone(), u8::from(s.holder.is_some())))
            .collect();
        Ok(GpuMap { gpus })
    })
    .await
}

/// Port usage of the configured range; in a cluster, of the node asked (or `?node=`), with
/// every node's in `nodes`.
#[utoipa::path(get, path = "/api/v1/resources/ports", tag = "resource",
    params(("node" = Option<String>, Query, description = "In a cluster, this node's usage at the top level")),
    responses((status = 200, body = Envelope<PortsReply>), (status = 404, body = ErrorReply, description = "1057: no node of that name in the cluster")))]
pub async fn ports(
    Acting(engine): Acting,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let status = engine.port_status_of(query.node.as_deref()).await?;
    Ok(ok(PortsReply::of(&status)).into_response())
}

/// What the start-up recovery finished, undid, removed, and which current containers are gone;
/// the isolation in force for new containers.
#[utoipa::path(get, path = "/api/v1/status", tag = "resource", responses((status = 200, body = Envelope<StatusReply>)))]
pub async fn status(Acting(engine): Acting) -> Response {
    ok(StatusReply {
        recovery: engine.last_recovery().map(RecoveryView::from),
        isolation: IsolationView::new(&engine),
        toolkit: engine.toolkit().map(ToolkitView::from).unwrap_or_default(),
        disks: engine.disks().into_iter().map(Into::into).collect(),
    })
    .into_response()
}

/// A backup of the whole state store at one point in time (admins only): lines of JSON (a
/// header naming the format, schema, time and nodes; one line per record; an end line with
/// the count and a SHA-256), for `gpu-replica restore` on a stopped server.
#[utoipa::path(get, path = "/api/v1/backup", tag = "resource", operation_id = "backup",
    responses((status = 200, content_type = "text/plain", body = String, description = "The backup file: lines of JSON"), (status = 403, body = ErrorReply, description = "1049: only an admin may take a backup"), (status = "5XX", body = ErrorReply, description = "1040: the store could not be read")))]
pub async fn backup(Acting(engine): Acting) -> Result<Response, ApiError> {
    use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
    let bytes = engine.backup().await?;
    Ok((
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"gpu-replica.backup\"",
            ),
            (CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

/// The nodes of the cluster with state and free GPUs (none on a single host).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "resource", responses((status = 200, body = Envelope<NodeList>)))]
pub async fn nodes(Acting(engine): Acting) -> Result<Response, ApiError> {
    let nodes = if engine.node_name().is_empty() {
        Vec::new()
    } else {
        engine.nodes().await?
    };
    Ok(ok(NodeList {
        nodes: nodes.iter().map(NodeView::from).collect(),
    })
    .into_response())
}
