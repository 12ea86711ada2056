//! `GET /openapi.json`, generated from the handlers and wire types, with every error code.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{self, events, instance, replicaset, resources, users, volume};
use crate::wire;

/// The OpenAPI document of this server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gpu-replica",
        description = "Versioned GPU containers over Docker; a drop-in for gpu-docker-api."
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
        replicaset::migrate,
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
        crate::routes::terminal::terminal,
        crate::routes::screen::screen,
        crate::routes::services::open,
        crate::routes::services::services,
        instance::stats,
        events::events,
        resources::status,
        resources::backup,
        users::add,
        users::list,
        users::info,
        users::remove,
        users::reset_token,
        users::quota,
        users::keys,
        users::add_key,
        users::remove_key,
        users::whoami,
        users::usage,
        resources::nodes,
        crate::routes::nodes::cordon,
        crate::routes::nodes::uncordon,
        crate::routes::nodes::drain,
        crate::routes::nodes::drain_status,
        crate::routes::nodes::cancel_drain,
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
        wire::MigrateBody,
        wire::MigrateReply,
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
        wire::GpuAnswer,
        crate::envelope::ErrorReply,
        crate::envelope::NoData,
        wire::GpuDetails,
        wire::GpuDetail,
        wire::PortsReply,
        wire::PortUsage,
        wire::NodePortsView,
        wire::Pong,
        wire::ResourcesBody,
        wire::ResourcesView,
        wire::TimersBody,
        wire::TimersView,
        wire::CloneBody,
        wire::StatsReply,
        wire::EventView,
        wire::SseItem,
        wire::StatusReply,
        wire::RecoveryView,
        wire::IsolationView,
        wire::TerminalMessage,
        wire::OpenBody,
        wire::OpenReply,
        wire::ServiceView,
        wire::ServicesReply,
        wire::ScreenControl,
        wire::ScreenMessage,
        wire::ScreenUpdateView,
        wire::ScreenLineView,
        wire::RunView,
        wire::CursorView,
        wire::NetworkView,
        wire::RootfsLimitView,
        wire::RootfsUsageView,
        wire::ToolkitView,
        wire::DiskView,
        wire::UserAddBody,
        wire::KeyAddBody,
        wire::KeyList,
        wire::KeyReply,
        wire::SshKeyView,
        wire::QuotaBody,
        wire::QuotaView,
        wire::HoldingsView,
        wire::UserView,
        wire::UserReply,
        wire::UserTokenReply,
        wire::TokenReply,
        wire::UserList,
        wire::WhoamiReply,
        wire::UsageReply,
        wire::UserUsageView,
        wire::SetUsageView,
        wire::NodeView,
        wire::NodeList,
        wire::DrainView,
        wire::DrainMovedView,
        wire::DrainFailedView,
    ))
)]
pub struct ApiDoc;

/// The document, its list of codes made from the core's error catalogue.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let codes: Vec<String> = std::iter::once("200 Success".to_string())
        .chain(
            gpu_replica_core::Error::catalogue()
                .into_iter()
                .map(|(code, meaning)| format!("{code} {meaning}")),
        )
        .collect();
    every_operation_may_fail(&mut doc);
    doc.info.description = Some(format!(
        "Versioned GPU containers over Docker; a drop-in for gpu-docker-api.\n\n\
         Every answer is `{{code, msg, data}}`. Codes: {}.\n\n\
         HTTP status: 400 bad input (replicaSet and volume names are `[A-Za-z0-9][A-Za-z0-9_.]*`, \
         at most 128 characters; image names follow Docker's reference grammar), 401 missing or \
         wrong bearer token (the server's own, or a user's `grp-NAME-…`), 403 refused by the \
         operator's policy (1037: a host path or a volume not allowed; 1048: over the user's \
         quota; 1049: admins only), 404 not found (a replicaSet, a volume, or the image: 1036; \
         another user's replicaSet or volume answers exactly as a missing one), 429 too many \
         failed authentications from this address (1050; retry after a second), 409 conflict with the present state or with a \
         concurrent request (1046; execute on a set whose container is not running is 409), \
         500 an operation failed through our fault, 503 a dependency (Docker, the store, NVML) \
         is down or failing (1041). A JSON body is read as JSON when the Content-Type is \
         missing, JSON, or `application/x-www-form-urlencoded` (what `curl -d` sends); any \
         other type is 1000.",
        codes.join(", ")
    ));
    doc
}

/// Every route may answer an error its own list does not name (401 without a token, 429
/// after too many wrong ones, 408 past the time limit, 503 when a dependency is down), always
/// as an [`crate::envelope::ErrorReply`]: each operation declares `4XX` and `5XX`, so a
/// generated client parses those too.
fn every_operation_may_fail(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |what: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorReply")))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            responses.entry("4XX".into()).or_insert_with(|| {
                error("Refused: the code says why (401 and 429 on every route)")
            });
            responses
                .entry("5XX".into())
                .or_insert_with(|| error("Failed: the code says why (1041: a dependency is down)"));
        }
    }
}

/// Serves the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}
