//! `/api/v1/volumes…`

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use gpu_replica_core::VolumeInfo;

use super::Reply;
use crate::auth::Acting;
use crate::envelope::{ok, Body};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply, NoData};
use crate::wire::{
    OwnerQuery, VolumeCreateBody, VolumeHistoryItem, VolumeHistoryReply, VolumeInfoReply,
    VolumeItem, VolumeList, VolumeReply, VolumeSizeBody, VolumeView,
};

fn reply(info: VolumeInfo) -> VolumeReply {
    VolumeReply {
        name: info.version.docker_name,
        size: info.version.size,
    }
}

/// Create volume `{name}-1`.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volume", request_body = VolumeCreateBody,
    responses((status = 200, body = Envelope<VolumeReply>), (status = "4XX", body = ErrorReply, description = "1000, 1024, 1026, 1029, 1031, 1032"), (status = "5XX", body = ErrorReply, description = "1023")))]
pub async fn create(
    Acting(engine): Acting,
    Body(body): Body<VolumeCreateBody>,
) -> Reply<VolumeReply> {
    Ok(ok(reply(
        engine.create_volume(&body.name, &body.size).await?,
    )))
}

/// Every volume.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volume",
    params(("owner" = Option<String>, Query, description = "Only this user's volumes (a user sees only their own anyway)")),
    responses((status = 200, body = Envelope<VolumeList>)))]
pub async fn list(
    Acting(engine): Acting,
    query: Result<Query<OwnerQuery>, QueryRejection>,
) -> Reply<VolumeList> {
    let Query(query) = query?;
    let all = engine.list_volumes_of(query.owner.as_deref()).await?;
    Ok(ok(VolumeList {
        volumes: all.iter().map(VolumeItem::from).collect(),
    }))
}

/// Resize: a new version with the data, users moved onto it.
#[utoipa::path(patch, path = "/api/v1/volumes/{name}/size", tag = "volume", request_body = VolumeSizeBody,
    params(("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = Envelope<VolumeReply>), (status = "4XX", body = ErrorReply, description = "1000, 1028, 1029, 1030, 1033"), (status = "5XX", body = ErrorReply, description = "1035")))]
pub async fn resize(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<VolumeSizeBody>,
) -> Reply<VolumeReply> {
    Ok(ok(reply(engine.resize_volume(&name, &body.size).await?)))
}

/// Delete the volume (refused while mounted).
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", tag = "volume",
    params(("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1025, 1033")))]
pub async fn delete(Acting(engine): Acting, Path(name): Path<String>) -> Reply<()> {
    engine.delete_volume(&name).await?;
    Ok(ok(()))
}

/// The current version.
#[utoipa::path(get, path = "/api/v1/volumes/{name}", tag = "volume",
    params(("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = Envelope<VolumeInfoReply>), (status = "4XX", body = ErrorReply, description = "1033")))]
pub async fn info(Acting(engine): Acting, Path(name): Path<String>) -> Reply<VolumeInfoReply> {
    let info = engine.volume_info(&name).await?;
    Ok(ok(VolumeInfoReply {
        info: VolumeView::from(&info.version),
    }))
}

/// Every version, newest first.
#[utoipa::path(get, path = "/api/v1/volumes/{name}/history", tag = "volume",
    params(("name" = String, Path, description = "Volume name")),
    responses((status = 200, body = Envelope<VolumeHistoryReply>), (status = "4XX", body = ErrorReply, description = "1033"), (status = "5XX", body = ErrorReply, description = "1034")))]
pub async fn history(
    Acting(engine): Acting,
    Path(name): Path<String>,
) -> Reply<VolumeHistoryReply> {
    let versions = engine.volume_history(&name).await?;
    let history = versions
        .iter()
        .map(|v| VolumeHistoryItem {
            version: v.version,
            create_time: v.created_at.clone(),
            status: VolumeView::from(v),
        })
        .collect();
    Ok(ok(VolumeHistoryReply { history }))
}
