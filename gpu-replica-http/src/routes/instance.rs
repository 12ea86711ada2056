//! Beyond the contract, for rented instances: timers, clone, logs and stats.

use axum::extract::{Path, Query};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use gpu_replica_core::CloneRequest;

use super::Reply;
use crate::auth::Acting;
use crate::envelope::{ok, ApiError, Body};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply};
use crate::wire::{
    CloneBody, LogsQuery, ResourcesBody, RunReply, StatsReply, TimersBody, TimersView,
};

/// The timers of a replicaSet.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/timers", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<TimersView>), (status = "4XX", body = ErrorReply, description = "1016")))]
pub async fn timers(Acting(engine): Acting, Path(name): Path<String>) -> Reply<TimersView> {
    let info = engine.info(&name).await?;
    Ok(ok((&info.replica_set.timers).into()))
}

/// Set the timers: stop after the GPUs were idle a while, and/or at a time. Replaces both;
/// `{}` clears them. A timer stops the set as `stop` does (GPUs and ports released).
#[utoipa::path(put, path = "/api/v1/replicaSet/{name}/timers", tag = "instance", request_body = TimersBody,
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<TimersView>), (status = "4XX", body = ErrorReply, description = "1000, 1016")))]
pub async fn set_timers(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<TimersBody>,
) -> Reply<TimersView> {
    let timers = engine.set_timers(&name, body.to_timers()?).await?;
    Ok(ok((&timers).into()))
}

/// A new replicaSet from a version of this one (its spec and filesystem), with its own name,
/// GPUs and host ports.
#[utoipa::path(post, path = "/api/v1/replicaSet/{name}/clone", tag = "instance", request_body = CloneBody,
    params(("name" = String, Path, description = "ReplicaSet to clone")),
    responses((status = 200, body = Envelope<RunReply>), (status = "4XX", body = ErrorReply, description = "1000, 1002, 1003, 1008, 1012, 1013, 1014, 1016, 1020, 1043, 1044, 1058, 1059"), (status = "5XX", body = ErrorReply, description = "1044")))]
pub async fn clone(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<CloneBody>,
) -> Reply<RunReply> {
    let info = engine
        .clone_set(CloneRequest {
            source: name,
            name: body.name,
            version: body.version,
            gpu_count: body.gpu_count,
            resources: body
                .resources
                .as_ref()
                .map(ResourcesBody::to_limits)
                .transpose()?,
        })
        .await?;
    Ok(ok(RunReply {
        name: info.version.container,
    }))
}

/// The current container's log as plain text; with `follow=true` the response stays open and
/// streams what the container writes until it stops.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/logs", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name"),
        ("tail" = Option<u64>, Query, description = "Only the last N lines"),
        ("follow" = Option<bool>, Query, description = "Stream until the container stops")),
    responses((status = 200, content_type = "text/plain", body = String, description = "The log: stdout and stderr as the container wrote them"), (status = "4XX", body = ErrorReply, description = "1000, 1016"), (status = "5XX", body = ErrorReply, description = "1045")))]
pub async fn logs(
    Acting(engine): Acting,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let stream = engine.logs(&name, query.tail, query.follow).await?;
    let closing = engine.clone();
    let stream = stream.take_until(async move { closing.closed().await });
    let body = axum::body::Body::from_stream(stream.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// CPU, memory, network and processes of the current container, and its GPUs' memory and
/// utilization (measured over about a second).
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/stats", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name")),
    responses((status = 200, body = Envelope<StatsReply>), (status = "4XX", body = ErrorReply, description = "1016, 1045")))]
pub async fn stats(Acting(engine): Acting, Path(name): Path<String>) -> Reply<StatsReply> {
    Ok(ok(engine.stats(&name).await?.into()))
}
