//! `/api/v1/replicaSet…`

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::response::Response;
use axum::Extension;
use gpu_replica_core::{BindSwap, Error, Migration, PatchRequest, ReplicaSetInfo, RunRequest};

use super::Reply;
use crate::auth::Acting;
use crate::envelope::{ok, ApiError, Body};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply, NoData};
use crate::replies::{answer, Replies};
use crate::wire::{
    CommitBody, CommitReply, ContainerNameReply, ExecuteBody, ExecuteReply, HistoryItem,
    HistoryReply, InfoReply, MigrateBody, MigrateReply, OwnerQuery, PatchBody, ReplicaSetItem,
    ReplicaSetList, ResourcesBody, RollbackBody, RootfsUsageView, RunBody, RunReply, VersionView,
};

/// `running`, `paused` or `stopped`.
pub(crate) fn status_word(status: gpu_replica_core::Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn new_version(info: ReplicaSetInfo) -> ContainerNameReply {
    ContainerNameReply {
        container_name: info.version.container,
    }
}

/// Run a new replicaSet: claim GPUs and ports, create and start `{name}-1`.
#[utoipa::path(post, path = "/api/v1/replicaSet", tag = "replicaSet", request_body = RunBody,
    responses((status = 200, body = Envelope<RunReply>), (status = "4XX", body = ErrorReply, description = "1000-1003, 1008, 1012-1014, 1029, 1036, 1037, 1043, 1048, 1054 (pinned node lost), 1057 (pinned node unknown), 1058"), (status = "5XX", body = ErrorReply, description = "1004, 1039, 1040")))]
pub async fn run(Acting(engine): Acting, Body(body): Body<RunBody>) -> Reply<RunReply> {
    let resources = body
        .resources
        .as_ref()
        .map(ResourcesBody::to_limits)
        .transpose()?
        .unwrap_or_default();
    let info = engine
        .run(RunRequest {
            name: body.replica_set_name,
            image: body.image_name,
            gpu_count: body.gpu_count,
            binds: body.binds.into_iter().map(Into::into).collect(),
            env: body.env,
            cmd: body.cmd,
            container_ports: body.container_ports,
            resources,
        })
        .await?;
    Ok(ok(RunReply {
        name: info.version.container,
    }))
}

/// Every replicaSet with status, version, GPUs and ports.
#[utoipa::path(get, path = "/api/v1/replicaSet", tag = "replicaSet",
    params(("owner" = Option<String>, Query, description = "Only this user's sets (a user sees only their own anyway)"),
        ("node" = Option<String>, Query, description = "Only the sets of this cluster node")),
    responses((status = 200, body = Envelope<ReplicaSetList>)))]
pub async fn list(
    Acting(engine): Acting,
    Extension(replies): Extension<Arc<Replies>>,
    query: Result<Query<OwnerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = format!("list\u{0}{:?}\u{0}{:?}", query.owner, query.node);
    answer(&replies, &engine, &request, async {
        let all = engine
            .list_where(query.owner.as_deref(), query.node.as_deref())
            .await?;
        Ok(ReplicaSetList {
            replica_sets: all.iter().map(ReplicaSetItem::from).collect(),
        })
    })
    .await
}

/// New version with another GPU count, one bind swapped, other resources and/or another
/// image (carrying `keepPaths`); `{}` recreates as is.
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}", tag = "replicaSet", request_body = PatchBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<ContainerNameReply>), (status = "4XX", body = ErrorReply, description = "1000 (a bad or missing keepPaths folder), 1001, 1009, 1012, 1013, 1016, 1029, 1036 (no such image), 1037, 1043, 1058, 1059"), (status = "5XX", body = ErrorReply, description = "1007 (a kept folder's copy failed: the set is back on its old version)")))]
pub async fn patch(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<PatchBody>,
) -> Reply<ContainerNameReply> {
    let request = PatchRequest {
        gpu_count: body.gpu_patch.map(|g| g.gpu_count),
        bind: body.volume_patch.map(|v| BindSwap {
            old: v.old_bind.into(),
            new: v.new_bind.into(),
        }),
        resources: body
            .resource_patch
            .as_ref()
            .map(ResourcesBody::to_limits)
            .transpose()?,
        image: body.image_name,
        keep_paths: body.keep_paths,
    };
    Ok(ok(new_version(engine.patch(&name, request).await?)))
}

/// Move the set to another node of the cluster: its filesystem (and with `moveVolumes` its
/// volumes' data) goes there and a new version starts with the target's GPUs and ports; the
/// old container goes once the new one runs. Any failure before leaves the set as it was.
#[utoipa::path(post, path = "/api/v1/replicaSet/{name}/migrate", tag = "replicaSet", request_body = MigrateBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<MigrateReply>), (status = "4XX", body = ErrorReply, description = "1000, 1009, 1013, 1016, 1046, 1047, 1048, 1055 (mounts volumes: send moveVolumes), 1057 (no such node)"), (status = "5XX", body = ErrorReply, description = "1041, 1054, 1056")))]
pub async fn migrate(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<MigrateBody>,
) -> Reply<MigrateReply> {
    let gpu_count = match body.gpu_count {
        Some(count) if count < 0 => return Err(Error::NegativeGpuCount(count).into()),
        Some(count) => Some(
            u32::try_from(count)
                .map_err(|_| Error::InvalidParams(format!("gpuCount {count} is too large")))?,
        ),
        None => None,
    };
    let to = Migration {
        node: body.node,
        gpu_count,
        move_volumes: body.move_volumes,
    };
    let info = engine.migrate(&name, to).await?;
    Ok(ok(MigrateReply {
        container_name: info.version.container,
        node: info.replica_set.node,
        version: info.version.version,
    }))
}

/// New version with the spec and filesystem of an earlier one.
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}/rollback", tag = "replicaSet", request_body = RollbackBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<ContainerNameReply>), (status = "4XX", body = ErrorReply, description = "1000, 1016, 1020, 1021, 1022, 1058, 1059")))]
pub async fn rollback(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<RollbackBody>,
) -> Reply<ContainerNameReply> {
    Ok(ok(new_version(engine.rollback(&name, body.version).await?)))
}

/// New version with the same spec; GPUs claimed again.
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}/restart", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<ContainerNameReply>), (status = "4XX", body = ErrorReply, description = "1013, 1014, 1016"), (status = "5XX", body = ErrorReply, description = "1011")))]
pub async fn restart(
    Acting(engine): Acting,
    Path(name): Path<String>,
) -> Reply<ContainerNameReply> {
    Ok(ok(new_version(engine.restart(&name).await?)))
}

/// Stop the container; release GPUs and ports.
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}/stop", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1016"), (status = "5XX", body = ErrorReply, description = "1010")))]
pub async fn stop(Acting(engine): Acting, Path(name): Path<String>) -> Reply<()> {
    engine.stop(&name).await?;
    Ok(ok(()))
}

/// Stop the container; keep GPUs and ports.
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}/pause", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1016, 1018")))]
pub async fn pause(Acting(engine): Acting, Path(name): Path<String>) -> Reply<()> {
    engine.pause(&name).await?;
    Ok(ok(()))
}

/// Start the current container again (after a stop, with the same GPUs and ports).
#[utoipa::path(patch, path = "/api/v1/replicaSet/{name}/continue", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1016, 1019")))]
pub async fn resume(Acting(engine): Acting, Path(name): Path<String>) -> Reply<()> {
    engine.resume(&name).await?;
    Ok(ok(()))
}

/// Remove containers, records, claims and snapshots.
#[utoipa::path(delete, path = "/api/v1/replicaSet/{name}", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1016"), (status = "5XX", body = ErrorReply, description = "1005")))]
pub async fn delete(Acting(engine): Acting, Path(name): Path<String>) -> Reply<()> {
    engine.delete(&name).await?;
    Ok(ok(()))
}

/// Run argv (no shell) in the current container.
#[utoipa::path(post, path = "/api/v1/replicaSet/{name}/execute", tag = "replicaSet", request_body = ExecuteBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<ExecuteReply>), (status = "4XX", body = ErrorReply, description = "1000, 1006, 1016")))]
pub async fn execute(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<ExecuteBody>,
) -> Reply<ExecuteReply> {
    let out = engine.exec(&name, &body.cmd, body.work_dir).await?;
    Ok(ok(ExecuteReply {
        stdout: out.output,
        exit_code: out.exit_code,
    }))
}

/// Commit the current container to an image.
#[utoipa::path(post, path = "/api/v1/replicaSet/{name}/commit", tag = "replicaSet", request_body = CommitBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<CommitReply>), (status = "4XX", body = ErrorReply, description = "1000, 1016, 1059"), (status = "5XX", body = ErrorReply, description = "1015")))]
pub async fn commit(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<CommitBody>,
) -> Reply<CommitReply> {
    let image_name = engine.commit_image(&name, &body.new_image_name).await?;
    Ok(ok(CommitReply { image_name }))
}

/// The current version, with Docker's config.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<InfoReply>), (status = "4XX", body = ErrorReply, description = "1016")))]
pub async fn info(
    Acting(engine): Acting,
    Extension(replies): Extension<Arc<Replies>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let request = format!("info\u{0}{name}");
    answer(&replies, &engine, &request, async {
        let info = engine.info(&name).await?;
        Ok(InfoReply {
            info: VersionView::new(&engine, &info.replica_set.owner, &name, &info.version),
            status: status_word(info.replica_set.status),
            timers: (&info.replica_set.timers).into(),
            owner: info.replica_set.owner.clone(),
            rootfs: info.rootfs.as_ref().map(RootfsUsageView::from),
        })
    })
    .await
}

/// Every version, newest first.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/history", tag = "replicaSet",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<HistoryReply>), (status = "4XX", body = ErrorReply, description = "1016"), (status = "5XX", body = ErrorReply, description = "1017")))]
pub async fn history(Acting(engine): Acting, Path(name): Path<String>) -> Reply<HistoryReply> {
    let versions = engine.history(&name).await?;
    let owner = engine.info(&name).await?.replica_set.owner;
    let history = versions
        .iter()
        .map(|v| HistoryItem {
            version: v.version,
            create_time: v.created_at.clone(),
            status: VersionView::new(&engine, &owner, &name, v),
        })
        .collect();
    Ok(ok(HistoryReply { history }))
}
