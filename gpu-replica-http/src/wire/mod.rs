//! Request and response bodies exactly as the gpu-docker-api contract spells them, and the
//! conversions from the core's types. Field names are the contract's (camelCase, and Docker's
//! own PascalCase inside `config`/`hostConfig` and the volume `opt`).

use std::collections::BTreeMap;

use gpu_replica_core::model::rfc3339;
use gpu_replica_core::{
    parse_cpus, parse_duration, parse_size, parse_time, Bind, Engine, Error, Event, GpuInfo,
    GpuStatus, Limits, PortStatus, ReplicaSetInfo, Stats, Timers, Version, VolumeInfo,
    VolumeVersion,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

mod nodes;
pub mod paths;
mod proxy;
mod screen;
mod users;

pub use self::nodes::*;
pub use self::proxy::*;
pub use self::screen::*;
pub use self::users::*;

/// A mount: a volume name, or an absolute host path.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindBody {
    /// Volume name (`bar-1`), or an absolute host path the operator allows.
    #[schema(min_length = 1)]
    pub src: String,
    /// Absolute path in the container; not `/`, no `..`.
    #[schema(pattern = r"^(/\.?)*(/([^/]*[^/.][^/]*|\.\.\.+))(/(\.|[^/]*[^/.][^/]*|\.\.\.+)?)*$")]
    pub dest: String,
}

impl From<BindBody> for Bind {
    fn from(b: BindBody) -> Bind {
        Bind {
            src: b.src,
            dest: b.dest,
        }
    }
}

/// `POST /api/v1/replicaSet`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunBody {
    /// A local image; never pulled (Docker's reference grammar).
    #[serde(default)]
    #[schema(
        required = true,
        max_length = 255,
        pattern = r"^((localhost|[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+)(:[0-9]+)?/|[a-zA-Z0-9-]+:[0-9]+/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
    )]
    pub image_name: String,
    /// `[A-Za-z0-9][A-Za-z0-9_.]*`, at most 128; no '-'.
    #[serde(default)]
    #[schema(
        required = true,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.]*$",
        max_length = 128
    )]
    pub replica_set_name: String,
    /// GPUs; 0 = none.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub gpu_count: i64,
    /// Mounts.
    #[serde(default)]
    pub binds: Vec<BindBody>,
    /// `KEY=value`.
    #[serde(default)]
    #[schema(schema_with = env_schema)]
    pub env: Vec<String>,
    /// Command replacing the image's; the first names a program.
    #[serde(default)]
    #[schema(schema_with = argv_schema, nullable)]
    pub cmd: Option<Vec<String>>,
    /// Container ports (`22`, `53/udp`), each published on a host port.
    #[serde(default)]
    #[schema(schema_with = ports_schema)]
    pub container_ports: Vec<String>,
    /// CPU, memory and shm, within the share of `gpuCount` GPUs (beyond the contract).
    #[serde(default)]
    pub resources: Option<ResourcesBody>,
    /// In a cluster, the node to run on (default: placement picks one; beyond the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// CPU, memory and shm asked for; each at most the share of the GPU count, which is also
/// what a field left out gets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesBody {
    /// CPUs, fractions allowed (1.5); more than 0.
    #[serde(default)]
    #[schema(minimum = 0.001, maximum = 4096)]
    pub cpus: Option<f64>,
    /// Memory with KB, MB, GB or TB (`16GB`), at least 6MB (Docker's minimum).
    #[serde(default)]
    #[schema(
        pattern = r"^\s*0*([1-9][0-9]{0,5}\s*[GgTt][Bb]|([6-9]|[1-9][0-9]{1,5})\s*[Mm][Bb]|(614[4-9]|61[5-9][0-9]|6[2-9][0-9]{2}|[7-9][0-9]{3}|[1-9][0-9]{4,5})\s*[Kk][Bb])\s*$"
    )]
    pub memory: Option<String>,
    /// Size of /dev/shm with KB, MB, GB or TB.
    #[serde(default)]
    #[schema(pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$")]
    pub shm_size: Option<String>,
}

impl ResourcesBody {
    /// The core's limits; a malformed number or size is an error.
    pub fn to_limits(&self) -> Result<Limits, Error> {
        Ok(Limits {
            millicpus: self.cpus.map(|c| parse_cpus(&c.to_string())).transpose()?,
            memory: self.memory.as_deref().map(parse_size).transpose()?,
            shm: self.shm_size.as_deref().map(parse_size).transpose()?,
        })
    }
}

/// The limits a container runs with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesView {
    /// CPUs; null = unlimited.
    pub cpus: Option<f64>,
    /// Memory in bytes; null = unlimited.
    pub memory: Option<u64>,
    /// /dev/shm in bytes; null = Docker's 64 MiB.
    pub shm_size: Option<u64>,
}

impl From<Limits> for ResourcesView {
    fn from(l: Limits) -> ResourcesView {
        ResourcesView {
            cpus: l.millicpus.map(|m| m as f64 / 1000.0),
            memory: l.memory,
            shm_size: l.shm,
        }
    }
}

/// `PUT /api/v1/replicaSet/{name}/timers`: both fields replace what was set; null clears.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimersBody {
    /// Stop after the GPUs were idle this long: a whole number with s, m, h or d (`30m`).
    #[serde(default)]
    #[schema(pattern = r"^\s*0*[1-9][0-9]{0,5}[smhd]\s*$")]
    pub idle_stop: Option<String>,
    /// Stop at this time, RFC 3339 (`2026-11-23T08:00:00Z`); it must lie in the future
    /// (a past time is 1000 with HTTP 409).
    #[serde(default)]
    #[schema(
        pattern = r"^\s*[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])\s*$"
    )]
    pub stop_at: Option<String>,
}

impl TimersBody {
    /// The core's timers; malformed durations or times are errors.
    pub fn to_timers(&self) -> Result<Timers, Error> {
        Ok(Timers {
            idle_stop_secs: self.idle_stop.as_deref().map(parse_duration).transpose()?,
            stop_at: self.stop_at.as_deref().map(parse_time).transpose()?,
        })
    }
}

/// Timers of a replicaSet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimersView {
    /// Seconds of GPU idleness after which the set stops; null = no idle timer.
    pub idle_stop_secs: Option<u64>,
    /// When the set stops, RFC 3339; null = no stop time.
    pub stop_at: Option<String>,
}

impl From<&Timers> for TimersView {
    fn from(t: &Timers) -> TimersView {
        TimersView {
            idle_stop_secs: t.idle_stop_secs,
            stop_at: t.stop_at.map(rfc3339),
        }
    }
}

/// `POST /api/v1/replicaSet/{name}/clone`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneBody {
    /// Name of the new replicaSet.
    #[serde(default)]
    #[schema(
        required = true,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.]*$",
        max_length = 128
    )]
    pub name: String,
    /// Version to clone; the current one when left out.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    pub version: Option<i64>,
    /// GPUs of the clone; the cloned version's count when left out.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub gpu_count: Option<i64>,
    /// CPU, memory and shm of the clone.
    #[serde(default)]
    pub resources: Option<ResourcesBody>,
}

/// `?tail=N&follow=true`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct LogsQuery {
    /// Only the last N lines; all when left out.
    #[serde(default)]
    pub tail: Option<u64>,
    /// Keep the response open and stream what the container writes until it stops.
    #[serde(default)]
    pub follow: bool,
}

/// Live figures of the current container and its GPUs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsReply {
    /// The container measured.
    pub container: String,
    /// CPU use in percent of one CPU (200 = two CPUs busy), over about a second.
    pub cpu_percent: f64,
    /// Memory in use, bytes (page cache excluded).
    pub memory_used: u64,
    /// Memory limit, bytes.
    pub memory_limit: u64,
    /// Bytes received.
    pub net_rx: u64,
    /// Bytes sent.
    pub net_tx: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Each GPU the set holds (memory and utilization when NVML knows them).
    pub gpus: Vec<GpuDetail>,
}

impl From<Stats> for StatsReply {
    fn from(s: Stats) -> StatsReply {
        let c = s.container_stats;
        StatsReply {
            container: s.container,
            cpu_percent: (c.cpu_percent * 100.0).round() / 100.0,
            memory_used: c.memory_used,
            memory_limit: c.memory_limit,
            net_rx: c.net_rx,
            net_tx: c.net_tx,
            pids: c.pids,
            gpus: s
                .gpus
                .iter()
                .map(|g: &GpuInfo| {
                    GpuDetail::from(&GpuStatus {
                        gpu: g.clone(),
                        holder: None,
                        node: String::new(),
                    })
                })
                .collect(),
        }
    }
}

/// `?replay=N&follow=false`
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EventsQuery {
    /// Stored events sent first, newest N (default 20; 0 = none; more than are kept is all).
    #[serde(default = "default_replay", deserialize_with = "saturating_count")]
    #[schema(value_type = u64, minimum = 0)]
    pub replay: usize,
    /// Keep the stream open for live events (default true).
    #[serde(default = "default_follow")]
    pub follow: bool,
}

fn default_replay() -> usize {
    20
}

/// A count given as digits, however many: past what fits, it is as many as there are.
fn saturating_count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let text = String::deserialize(deserializer)?;
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!(
            "replay '{text}' is not a count"
        )));
    }
    Ok(digits.parse().unwrap_or(usize::MAX))
}

fn default_follow() -> bool {
    true
}

/// One Server-Sent Event of `GET /api/v1/events`, as a client reads it off the stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SseItem {
    /// `message` for an event (its `data` is an [`EventView`] as JSON); `lagged` when a
    /// slow reader missed events (its `data` is how many: read them back with `Last-Event-ID`).
    pub event: String,
    /// An [`EventView`] as JSON, or for `lagged` the number missed.
    pub data: String,
    /// The event's `seq`; send it back as `Last-Event-ID` to resume after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One lifecycle change, the `data` of a Server-Sent Event (its `id` is `seq`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Increasing number; send it back as `Last-Event-ID` to resume after it.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// run, patch, rollback, restart, stop, pause, continue, delete, clone, timers,
    /// timer.idle, timer.at, volume.create, volume.resize, volume.delete, recovery.
    pub kind: String,
    /// ReplicaSet or volume name (empty for recovery).
    pub target: String,
    /// Who did it (`admin` also for what the server does by itself: timers, recovery).
    #[serde(default)]
    pub actor: String,
    /// Whom the target belongs to.
    #[serde(default)]
    pub owner: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What came of it, or why it failed.
    pub message: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            target: e.target,
            actor: e.actor,
            owner: e.owner,
            ok: e.ok,
            message: e.message,
        }
    }
}

/// `{gpuCount}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuPatch {
    /// New GPU count; 0 = none.
    #[schema(minimum = 0)]
    pub gpu_count: i64,
}

/// `{oldBind, newBind}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePatch {
    /// A bind the current version has.
    pub old_bind: BindBody,
    /// Its replacement.
    pub new_bind: BindBody,
}

/// `PATCH /api/v1/replicaSet/{name}`; `{}` recreates the container as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchBody {
    /// Change the GPU count.
    #[serde(default)]
    pub gpu_patch: Option<GpuPatch>,
    /// Swap one bind.
    #[serde(default)]
    pub volume_patch: Option<VolumePatch>,
    /// Ask for other CPU, memory or shm (beyond the contract).
    #[serde(default)]
    pub resource_patch: Option<ResourcesBody>,
    /// Change the image (beyond the contract): the new version is created from this local
    /// image, with the set's GPUs, ports, volumes, binds and environment, and `keepPaths`
    /// copied from the current container. A rollback returns the old image and filesystem.
    #[serde(default)]
    #[schema(example = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime")]
    pub image_name: Option<String>,
    /// Absolute folders an image change carries, with owners, modes, times and links
    /// (default `["/root"]` and the server's `--keep-path`s); only with `imageName`.
    #[serde(default)]
    pub keep_paths: Option<Vec<String>>,
}

/// `PATCH /api/v1/replicaSet/{name}/rollback`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackBody {
    /// The version to return to.
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    pub version: i64,
}

/// Container ports: 1-65535 with an optional `/tcp`, `/udp` or `/sctp`.
fn ports_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let port = ObjectBuilder::new().schema_type(Type::String).pattern(Some(
        "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/(tcp|udp|sctp))?$",
    ));
    ArrayBuilder::new().items(port).unique_items(true).build()
}

/// `KEY=value` strings.
fn env_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let entry = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[^=]+="));
    ArrayBuilder::new().items(entry).build()
}

/// An argv: at least one string, the first (the program) not empty.
fn argv_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let program = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1));
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String))
        .prefix_items([program])
        .min_items(Some(1))
        .build()
}

/// `POST /api/v1/replicaSet/{name}/execute`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteBody {
    /// argv, run without a shell; the first names a program.
    #[schema(schema_with = argv_schema)]
    pub cmd: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub work_dir: Option<String>,
}

/// `POST /api/v1/replicaSet/{name}/commit`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitBody {
    /// Image name (`repo:tag`, Docker's reference grammar).
    #[schema(
        max_length = 255,
        pattern = r"^((localhost|[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+)(:[0-9]+)?/|[a-zA-Z0-9-]+:[0-9]+/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
    )]
    pub new_image_name: String,
}

/// `POST /api/v1/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeCreateBody {
    /// `[A-Za-z0-9][A-Za-z0-9_.]*`, at most 128; no '-'.
    #[serde(default)]
    #[schema(
        required = true,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.]*$",
        max_length = 128
    )]
    pub name: String,
    /// Whole number above 0 with KB, MB, GB or TB.
    #[serde(default)]
    #[schema(
        required = true,
        pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$"
    )]
    pub size: String,
    /// In a cluster, the node whose Docker holds it (default: the node asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `PATCH /api/v1/volumes/{name}/size`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeSizeBody {
    /// Whole number above 0 with KB, MB, GB or TB.
    #[serde(default)]
    #[schema(
        required = true,
        pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$"
    )]
    pub size: String,
}

/// `?detail=true`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct DetailQuery {
    /// Answer with index, name, memory, utilization and holder of each GPU.
    #[serde(default)]
    pub detail: bool,
}

/// `{name}` of the created container.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunReply {
    /// Container name of version 1, `foo-1`.
    pub name: String,
}

/// `POST /api/v1/replicaSet/{name}/migrate`: move the set to another node of the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateBody {
    /// The node it moves to.
    pub node: String,
    /// GPUs it gets there (default: as many as now).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    pub gpu_count: Option<i64>,
    /// Take the data of its volumes along (required when it mounts volumes).
    #[serde(default)]
    pub move_volumes: bool,
}

/// Where a migrated set lives now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateReply {
    /// Container of the new version, `foo-3`.
    pub container_name: String,
    /// The node it lives on.
    pub node: String,
    /// The new version.
    pub version: u32,
}

/// `{containerName}` of the new version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerNameReply {
    /// Container of the new version, `foo-2`.
    pub container_name: String,
}

/// One version as the contract shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// Version number.
    pub version: u32,
    /// `YYYY-MM-DD HH:MM:SS` UTC.
    pub create_time: String,
    /// Docker's container config (Image, Env, Cmd, ExposedPorts, Tty, …).
    #[schema(value_type = Object)]
    pub config: Value,
    /// Docker's host config (Binds, PortBindings, DeviceRequests, …).
    #[schema(value_type = Object)]
    pub host_config: Value,
    /// Docker's networking config; null when the container joins no network of its own.
    #[schema(value_type = Option<Object>)]
    pub networking_config: Value,
    /// Platform; null: the host's.
    #[schema(value_type = Option<Object>)]
    pub platform: Value,
    /// Container name.
    pub container_name: String,
    /// GPUs of this version (beyond the contract).
    pub gpus: Vec<String>,
    /// CPU, memory and shm limits of this version (beyond the contract).
    pub resources: ResourcesView,
    /// The image this version is made from, as `run` or an image change named it (its files
    /// may carry an earlier version's; beyond the contract).
    #[serde(default)]
    pub image: String,
}

impl VersionView {
    /// The contract's view of `version` of `owner`'s replicaSet `name`.
    pub fn new(engine: &Engine, owner: &str, name: &str, version: &Version) -> VersionView {
        let docker = engine.container_spec(owner, name, version).docker_view();
        VersionView {
            version: version.version,
            create_time: version.created_at.clone(),
            config: docker.config,
            host_config: docker.host_config,
            networking_config: docker.networking_config,
            platform: Value::Null,
            container_name: version.container.clone(),
            gpus: version.gpus.clone(),
            resources: version.limits.into(),
            image: version.spec.image.clone(),
        }
    }
}

/// `{info}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InfoReply {
    /// The current version.
    pub info: VersionView,
    /// running, paused, stopped or exited (beyond the contract).
    pub status: String,
    /// Timers that stop the set (beyond the contract).
    pub timers: TimersView,
    /// The user it belongs to (beyond the contract).
    #[serde(default)]
    pub owner: String,
    /// Its writable layer as last measured; null before the first measurement (beyond the
    /// contract).
    #[serde(default)]
    pub rootfs: Option<RootfsUsageView>,
}

/// What a set's container wrote on top of its image, as last measured.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootfsUsageView {
    /// Bytes written.
    pub bytes: u64,
    /// The limit; null: none.
    pub limit: Option<u64>,
    /// Whether the storage driver enforces the limit (a write past it fails).
    pub enforced: bool,
    /// Over a limit the driver does not enforce: patches and commits are refused (1059).
    pub over: bool,
    /// When it was measured.
    pub measured_at: String,
}

impl From<&gpu_replica_core::RootfsUsage> for RootfsUsageView {
    fn from(u: &gpu_replica_core::RootfsUsage) -> RootfsUsageView {
        RootfsUsageView {
            bytes: u.bytes,
            limit: u.limit,
            enforced: u.enforced,
            over: u.over(),
            measured_at: u.measured_at.clone(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    /// Version number.
    pub version: u32,
    /// When it was created.
    pub create_time: String,
    /// The version as `info` shows it.
    pub status: VersionView,
}

/// `{history}`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryReply {
    /// Every version, newest first.
    pub history: Vec<HistoryItem>,
}

/// `{stdout, exitCode}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteReply {
    /// stdout and stderr as produced.
    pub stdout: String,
    /// The command's exit code (beyond the contract).
    pub exit_code: i64,
}

/// `{imageName}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitReply {
    /// The image written.
    pub image_name: String,
}

/// One replicaSet in `GET /api/v1/replicaSet`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetItem {
    /// Name.
    pub name: String,
    /// running, paused, stopped, or exited (its container stopped or vanished outside the
    /// server and could not be started again; `continue` or a patch runs it again).
    pub status: String,
    /// Current version.
    pub version: u32,
    /// Its container.
    pub container_name: String,
    /// Image the set was created from.
    pub image: String,
    /// GPUs of the current container.
    pub gpus: Vec<String>,
    /// container port → host port.
    pub ports: BTreeMap<String, u16>,
    /// Creation time of the current version.
    pub create_time: String,
    /// The user it belongs to.
    #[serde(default)]
    pub owner: String,
    /// The cluster node it lives on (empty on a single host).
    #[serde(default)]
    pub node: String,
    /// Its timers, when any is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimersView>,
    /// Bytes its container wrote on top of its image, as last measured (absent before the
    /// first measurement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_bytes: Option<u64>,
}

impl From<&ReplicaSetInfo> for ReplicaSetItem {
    fn from(info: &ReplicaSetInfo) -> ReplicaSetItem {
        let status = serde_json::to_value(info.replica_set.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        ReplicaSetItem {
            name: info.replica_set.name.clone(),
            status,
            version: info.version.version,
            container_name: info.version.container.clone(),
            image: info.version.spec.image.clone(),
            gpus: info.replica_set.gpus.clone(),
            ports: info
                .replica_set
                .ports
                .iter()
                .map(|p| (p.container_port.clone(), p.host_port))
                .collect(),
            create_time: info.version.created_at.clone(),
            owner: info.replica_set.owner.clone(),
            node: info.replica_set.node.clone(),
            timers: (!info.replica_set.timers.is_empty())
                .then(|| TimersView::from(&info.replica_set.timers)),
            rootfs_bytes: info.rootfs.as_ref().map(|u| u.bytes),
        }
    }
}

/// `{replicaSets}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetList {
    /// Every replicaSet, by name.
    pub replica_sets: Vec<ReplicaSetItem>,
}

/// `{name, size}` of the new volume version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeReply {
    /// Docker volume name, `bar-1`.
    pub name: String,
    /// Size as written.
    pub size: String,
}

/// Docker's volume create options, as the contract shows them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeOpt {
    /// Volume driver.
    pub driver: String,
    /// `{size}`.
    pub driver_opts: BTreeMap<String, String>,
    /// Docker volume name.
    pub name: String,
}

/// One volume version as the contract shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    /// Version number.
    pub version: u32,
    /// When it was created.
    pub create_time: String,
    /// Docker's create options.
    pub opt: VolumeOpt,
    /// Whether Docker enforces the size (beyond the contract).
    pub size_enforced: bool,
}

impl From<&VolumeVersion> for VolumeView {
    fn from(v: &VolumeVersion) -> VolumeView {
        VolumeView {
            version: v.version,
            create_time: v.created_at.clone(),
            opt: VolumeOpt {
                driver: v.driver.clone(),
                driver_opts: BTreeMap::from([("size".to_string(), v.size.clone())]),
                name: v.docker_name.clone(),
            },
            size_enforced: v.size_enforced,
        }
    }
}

/// `{Info}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeInfoReply {
    /// The current version.
    #[serde(rename = "Info")]
    pub info: VolumeView,
}

/// One volume history entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeHistoryItem {
    /// Version number.
    pub version: u32,
    /// When it was created.
    pub create_time: String,
    /// The version as `info` shows it.
    pub status: VolumeView,
}

/// `{history}`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeHistoryReply {
    /// Every version, newest first.
    pub history: Vec<VolumeHistoryItem>,
}

/// One volume in `GET /api/v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeItem {
    /// Name without version.
    pub name: String,
    /// Current version.
    pub version: u32,
    /// Docker volume of the current version.
    pub docker_name: String,
    /// Size as written.
    pub size: String,
    /// Whether Docker enforces it.
    pub size_enforced: bool,
    /// When the current version was created.
    pub create_time: String,
    /// The user it belongs to.
    #[serde(default)]
    pub owner: String,
    /// The cluster node whose Docker holds it (absent on a single host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl From<&VolumeInfo> for VolumeItem {
    fn from(info: &VolumeInfo) -> VolumeItem {
        VolumeItem {
            name: info.volume.name.clone(),
            version: info.version.version,
            docker_name: info.version.docker_name.clone(),
            size: info.version.size.clone(),
            size_enforced: info.version.size_enforced,
            create_time: info.version.created_at.clone(),
            owner: info.volume.owner.clone(),
            node: info.volume.node.clone(),
        }
    }
}

/// `{volumes}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeList {
    /// Every volume, by name.
    pub volumes: Vec<VolumeItem>,
}

/// `{gpus: {uuid: 0|1}}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuMap {
    /// UUID → 0 free, 1 used.
    pub gpus: BTreeMap<String, u8>,
}

/// One GPU in `?detail=true`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuDetail {
    /// nvidia-smi index.
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Total memory in bytes, when known.
    pub memory_total: Option<u64>,
    /// Memory used in bytes, when known.
    pub memory_used: Option<u64>,
    /// Utilization percent, when known.
    pub utilization: Option<u32>,
    /// The replicaSet holding it.
    pub holder: Option<String>,
    /// The cluster node it is on (empty on a single host).
    #[serde(default)]
    pub node: String,
}

impl From<&GpuStatus> for GpuDetail {
    fn from(s: &GpuStatus) -> GpuDetail {
        GpuDetail {
            index: s.gpu.index,
            uuid: s.gpu.uuid.clone(),
            name: s.gpu.name.clone(),
            memory_total: s.gpu.memory_total,
            memory_used: s.gpu.memory_used,
            utilization: s.gpu.utilization,
            holder: s.holder.clone(),
            node: s.node.clone(),
        }
    }
}

/// What `GET /api/v1/resources/gpus` answers: the map, or the details with `detail=true`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GpuAnswer {
    /// `{gpus: {uuid: 0|1}}`
    Map(GpuMap),
    /// `{gpus: [...]}`
    Details(GpuDetails),
}

/// `{gpus: [...]}` with details.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuDetails {
    /// Every GPU in index order.
    pub gpus: Vec<GpuDetail>,
}

/// Port usage, as the contract spells it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PortUsage {
    /// First port of the range.
    pub start_port: u16,
    /// Last port of the range.
    pub end_port: u16,
    /// Ports not claimed.
    pub available_count: usize,
    /// Claimed ports, each mapped to `{}`.
    #[schema(value_type = Object)]
    pub used_port_set: BTreeMap<String, Value>,
}

impl From<&PortStatus> for PortUsage {
    fn from(s: &PortStatus) -> PortUsage {
        PortUsage {
            start_port: s.range.start,
            end_port: s.range.end,
            available_count: s.available,
            used_port_set: s
                .used
                .iter()
                .map(|p| (p.to_string(), Value::Object(Default::default())))
                .collect(),
        }
    }
}

/// `{ports}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PortsReply {
    /// Port usage (of the node asked, in a cluster).
    pub ports: PortUsage,
    /// In a cluster, every node's port usage (absent on a single host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodePortsView>,
}

/// One node's port usage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePortsView {
    /// The node.
    pub node: String,
    /// First port of its range.
    pub start_port: u16,
    /// Last port of its range.
    pub end_port: u16,
    /// Ports not claimed.
    pub available_count: usize,
    /// Claimed ports, ascending.
    pub used_ports: Vec<u16>,
}

impl PortsReply {
    /// The reply for `status`.
    pub fn of(status: &PortStatus) -> PortsReply {
        PortsReply {
            ports: PortUsage::from(status),
            nodes: status
                .nodes
                .iter()
                .map(|n| NodePortsView {
                    node: n.node.clone(),
                    start_port: n.range.start,
                    end_port: n.range.end,
                    available_count: n.available,
                    used_ports: n.used.clone(),
                })
                .collect(),
        }
    }
}

/// `GET /ping`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pong {
    /// Always "pong".
    pub ping: String,
}

/// What the last start-up recovery did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryView {
    /// Operations a crash left in flight that were finished.
    pub finished: Vec<String>,
    /// Operations that were undone.
    pub undone: Vec<String>,
    /// Containers, images and volumes of ours that no record referred to.
    pub orphans_removed: Vec<String>,
    /// Current containers that are gone or do not start: their sets are shown `exited`
    /// (continue or patch runs them again).
    pub missing: Vec<String>,
    /// Drift the start-up reconcile pass settled (a container started again, a stray claim
    /// released).
    pub reconciled: Vec<String>,
    /// Containers, images and volumes of ours the records never knew (made after the backup
    /// the store was restored from): left alone, never removed.
    #[serde(default)]
    pub unknown: Vec<String>,
    /// The backup the store was restored from, on the first start after a restore.
    #[serde(default)]
    pub restored: Option<String>,
}

/// `GET /api/v1/status`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusReply {
    /// The last recovery; null when the engine has not run one.
    pub recovery: Option<RecoveryView>,
    /// What containers may not do, in force for every new container.
    pub isolation: IsolationView,
    /// The NVIDIA container toolkit the GPUs go through, as the start-up check found it.
    pub toolkit: ToolkitView,
    /// Room on the store's disk and on Docker's data root (each left out when it cannot be
    /// read here: etcd, a Docker on another host).
    #[serde(default)]
    pub disks: Vec<DiskView>,
}

/// The room on a disk the server depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskView {
    /// `store` (the state store's file) or `docker` (Docker's data root).
    pub name: String,
    /// A folder on it.
    pub path: String,
    /// Bytes free.
    pub free_bytes: u64,
    /// Its size in bytes.
    pub total_bytes: u64,
}

/// The NVIDIA container toolkit, checked at start against its published container escapes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolkitView {
    /// Whether containers get their GPUs through it (false for `fake:` GPUs).
    pub used: bool,
    /// Its version; null when unknown (no toolkit binary answered).
    pub version: Option<String>,
    /// The advisories (CVEs) that version is not fixed for.
    pub vulnerable_to: Vec<String>,
    /// Environment variables refused in requests (1000) until it is upgraded.
    pub refused_env: Vec<String>,
}

impl From<&gpu_replica_core::gpu::toolkit::ToolkitReport> for ToolkitView {
    fn from(r: &gpu_replica_core::gpu::toolkit::ToolkitReport) -> ToolkitView {
        ToolkitView {
            used: r.used,
            version: r.version.clone(),
            vulnerable_to: r.vulnerable_to.clone(),
            refused_env: r.refused_env.clone(),
        }
    }
}

/// The walls every new container gets (`--allow-setuid`, `--allow-net-raw`, `--pids-limit`,
/// `--open-files-limit` relax them).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolationView {
    /// `no-new-privileges`: setuid programs gain nothing.
    pub no_new_privileges: bool,
    /// Capabilities dropped from Docker's default set.
    pub dropped_capabilities: Vec<String>,
    /// Processes per container; null: no limit.
    pub pids_limit: Option<u64>,
    /// Open files per process; null: Docker's default.
    pub open_files: Option<u64>,
    /// Always false: no container is privileged or shares a host namespace.
    pub privileged: bool,
    /// Which network sets join.
    pub network: NetworkView,
    /// How far sets' writable layers may grow.
    pub rootfs: RootfsLimitView,
}

/// The limit on sets' writable layers (`--rootfs-size`) and whether the storage driver
/// enforces it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootfsLimitView {
    /// Bytes per set; null: no limit.
    pub size: Option<u64>,
    /// Docker's storage driver (empty until probed).
    pub driver: String,
    /// Whether a write past the limit fails in the container; when not, a set over it gets an
    /// event and its patches and commits are refused until it is under again.
    pub enforced: bool,
    /// Why the driver cannot enforce it, in Docker's words.
    pub reason: Option<String>,
    /// Seconds between two measurements of every set's writable layer.
    pub measure_interval_seconds: u64,
}

/// Where sets' containers are attached (`--network`, `--network-pool`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkView {
    /// `per-owner` (a bridge per owner: other owners' sets are unreachable), `shared` (Docker's
    /// default bridge: no walls), or the name of the operator's network every set joins.
    pub mode: String,
    /// The IPv4 range per-owner networks take their subnets from (per-owner mode only).
    pub pool: Option<String>,
    /// The prefix length of each owner's subnet (per-owner mode only).
    pub subnet_prefix: Option<u8>,
    /// How many owners can have sets on one host at once (per-owner mode only).
    pub owners: Option<u64>,
    /// Whether the host firewall rule that keeps owners' networks apart while Docker rewrites
    /// its own rules is in place (per-owner mode only).
    pub guard: Option<bool>,
    /// Why the guard is not in place, when it is not.
    pub guard_reason: Option<String>,
}

impl IsolationView {
    /// The walls `engine`'s configuration gives new containers.
    pub fn new(engine: &Engine) -> IsolationView {
        let config = engine.config();
        let guard = engine.network_guard();
        let h = &config.hardening;
        let per_owner = config.network.mode == gpu_replica_core::network::NetworkMode::PerOwner;
        let pool = config.network.pool;
        IsolationView {
            no_new_privileges: h.no_new_privileges,
            dropped_capabilities: h.drop_capabilities.clone(),
            pids_limit: h.pids_limit,
            open_files: h.open_files,
            privileged: false,
            network: NetworkView {
                mode: config.network.mode.to_string(),
                pool: per_owner.then(|| pool.to_string()),
                subnet_prefix: per_owner.then(|| pool.subnet_prefix()),
                owners: per_owner.then(|| pool.capacity()),
                guard: per_owner.then(|| guard.is_some_and(|g| g.installed)),
                guard_reason: guard.and_then(|g| g.reason.clone()),
            },
            rootfs: {
                let support = engine.rootfs_support();
                RootfsLimitView {
                    size: config.rootfs.size,
                    driver: support.map(|s| s.driver.clone()).unwrap_or_default(),
                    enforced: support.is_some_and(|s| s.enforced),
                    reason: support.and_then(|s| s.reason.clone()),
                    measure_interval_seconds: config.rootfs.measure_interval.as_secs(),
                }
            },
        }
    }
}

impl From<gpu_replica_core::Recovery> for RecoveryView {
    fn from(r: gpu_replica_core::Recovery) -> RecoveryView {
        RecoveryView {
            finished: r.finished,
            undone: r.undone,
            orphans_removed: r.orphans_removed,
            missing: r.missing,
            reconciled: r.reconciled,
            unknown: r.unknown,
            restored: r.restored,
        }
    }
}

/// What to open, in the query string.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// The program and its arguments as a JSON array, `["top","-d","1"]`; left out: `bash` if
    /// the image has it, else `sh`.
    pub cmd: Option<String>,
    /// `KEY=value` entries as a JSON array, on top of the container's environment.
    pub env: Option<String>,
    /// Whether the program gets a terminal (default true); without one, plain pipes.
    pub tty: Option<bool>,
    /// Terminal rows (default 24).
    pub rows: Option<u16>,
    /// Terminal columns (default 80).
    pub cols: Option<u16>,
    /// Working directory, absolute (default: the container's).
    pub work_dir: Option<String>,
    /// User to run as, `name` or `uid[:gid]` (default: the container's).
    pub user: Option<String>,
}

/// A control message on the terminal's WebSocket, as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TerminalMessage {
    /// From the client: the terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// From the client: no more input.
    Eof,
    /// From the server, last: the program's exit code (-1 when Docker did not say).
    Exit {
        /// The exit code.
        code: i64,
    },
}

impl From<gpu_replica_core::DiskSpace> for DiskView {
    fn from(d: gpu_replica_core::DiskSpace) -> DiskView {
        DiskView {
            name: d.name,
            path: d.path,
            free_bytes: d.free_bytes,
            total_bytes: d.total_bytes,
        }
    }
}
