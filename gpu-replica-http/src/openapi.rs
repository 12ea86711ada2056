//! `GET /openapi.json`, generated from the handlers and wire types, with every error code.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{self, events, instance, replicaset, resources, volume};
use crate::wire;

/// The OpenAPI document of this server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gpu-replica",
        description = "Versioned GPU containers over Docker; a drop-in for gpu-docker-api.\n\nEvery answer is `{code, msg, data}`. Codes: 200 Success, 1000 invalid params, 1001 image name empty, 1002 container name empty, 1003 name contains '-', 1004 run failed, 1005 delete failed, 1006 execute failed, 1007 patch failed, 1008 already exists, 1009 no need to patch, 1010 stop failed, 1011 restart failed, 1012 gpu count < 0, 1013 not enough GPUs, 1014 not enough ports, 1015 commit failed, 1016 not found, 1017 history failed, 1018 pause failed, 1019 continue failed, 1020 version < 0, 1021 rollback failed, 1022 no need to roll back, 1023 volume create failed, 1024 volume name empty, 1025 volume delete failed, 1026 volume exists, 1027 volume name must contain version, 1028 same size, 1029 size unit not KB/MB/GB/TB, 1030 used bytes exceed the new size, 1031 volume name contains '-', 1032 volume name begins with '/', 1033 volume not found, 1034 volume history failed, 1035 volume resize failed, 1036 image not present locally, 1037 bind refused by host-path policy, 1038 GPU inventory failure, 1039 Docker failure, 1040 state store failure, 1041 Docker or the store unreachable (HTTP 503; retry), 1042 missing or wrong bearer token (HTTP 401), 1043 CPU, memory or shm beyond the share of the GPU count, 1044 clone failed, 1045 logs or stats failed, 1046 conflict: another request changed the same records first (HTTP 409; nothing kept, retry), 1047 container not running (HTTP 409).\n\nHTTP status: 400 bad input (the name rules: replicaSet and volume names are `[A-Za-z0-9][A-Za-z0-9_.]*`, at most 128 characters), 404 not found, 409 conflict with the present state or with a concurrent request (execute on a set whose container is not running is 409), 401 bad token, 500 an operation failed through our fault, 503 a dependency (Docker, the store, NVML) is down or failing. A JSON body is read as JSON when the Content-Type is missing, JSON, or `application/x-www-form-urlencoded` (what `curl -d` sends); any other type is 1000."
    ),
    paths(
        routes::ping,
        replicaset::run,
        replicaset::list,
        replicaset::patch,
        replicaset::rollback,
        replicaset::restart,
        replicaset::stop,
        replicaset::pause,
        replicaset::resume,
        replicaset::delete,
        replicaset::execute,
        replicaset::commit,
        replicaset::info,
        replicaset::history,
        volume::create,
        volume::list,
        volume::resize,
        volume::delete,
        volume::info,
        volume::history,
        resources::gpus,
        resources::ports,
        instance::timers,
        instance::set_timers,
        instance::clone,
        instance::logs,
        instance::stats,
        events::events,
    ),
    components(schemas(
        wire::RunBody,
        wire::BindBody,
        wire::PatchBody,
        wire::GpuPatch,
        wire::VolumePatch,
        wire::RollbackBody,
        wire::ExecuteBody,
        wire::CommitBody,
        wire::VolumeCreateBody,
        wire::VolumeSizeBody,
        wire::RunReply,
        wire::ContainerNameReply,
        wire::InfoReply,
        wire::VersionView,
        wire::HistoryReply,
        wire::HistoryItem,
        wire::ExecuteReply,
        wire::CommitReply,
        wire::ReplicaSetList,
        wire::ReplicaSetItem,
        wire::VolumeReply,
        wire::VolumeInfoReply,
        wire::VolumeView,
        wire::VolumeOpt,
        wire::VolumeHistoryReply,
        wire::VolumeHistoryItem,
        wire::VolumeList,
        wire::VolumeItem,
        wire::GpuMap,
        wire::GpuDetails,
        wire::GpuDetail,
        wire::PortsReply,
        wire::PortUsage,
        wire::Pong,
        wire::ResourcesBody,
        wire::ResourcesView,
        wire::TimersBody,
        wire::TimersView,
        wire::CloneBody,
        wire::StatsReply,
        wire::EventView,
    ))
)]
pub struct ApiDoc;

/// Serves the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
