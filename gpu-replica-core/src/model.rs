//! The records the engine persists: replicaSets with their versions, and volumes with theirs.
//!
//! Each is stored as JSON under its own key (see [`crate::keys`]), so one prefix read returns a
//! whole history, whatever its length.

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::runtime::{Bind, PortMapping};

/// Whether a replicaSet's current container runs, and whether it holds its GPUs and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Running; holds its GPUs and ports.
    Running,
    /// Container stopped; still holds its GPUs and ports.
    Paused,
    /// Container stopped; GPUs and ports released.
    Stopped,
    /// Meant to run, but its container exited or vanished outside the engine and could not be
    /// started again; still holds its GPUs and ports. `continue` (which recreates a vanished
    /// container from its version record) or a patch makes it run again.
    Exited,
}

impl Status {
    /// Whether GPU and port claims are held in this state.
    pub fn holds_claims(self) -> bool {
        self != Status::Stopped
    }

    /// Whether the user wants the container running (running, or running until it exited).
    pub fn wants_running(self) -> bool {
        matches!(self, Status::Running | Status::Exited)
    }
}

/// What the user asked a replicaSet to be; each version records its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSetSpec {
    /// The image the first version was created from.
    pub image: String,
    /// Number of GPUs (0 = cardless).
    pub gpu_count: u32,
    /// Volume and host-path mounts.
    pub binds: Vec<Bind>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Command replacing the image's, if any.
    pub cmd: Option<Vec<String>>,
    /// Container ports (`22/tcp`), each published on a host port.
    pub container_ports: Vec<String>,
    /// CPU, memory and shm the user asked for (within the share of the GPU count); fields
    /// not asked for get the share.
    #[serde(default)]
    pub resources: Limits,
}

/// The head record of a replicaSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    /// Name, `[A-Za-z0-9][A-Za-z0-9_.]*`.
    pub name: String,
    /// Immutable id given at run (32 hex digits): snapshot and clone-base images are named by
    /// it, never by the name. Empty in records written before ids existed; see
    /// [`ReplicaSet::image_id`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The user it belongs to (who ran or cloned it); records from before users existed
    /// belong to the built-in admin.
    #[serde(default = "operator")]
    pub owner: String,
    /// The node it lives on in a cluster (empty on a single host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The version whose container is current.
    pub current: u32,
    /// The highest version number ever handed out; never reused.
    pub latest: u32,
    /// Running, paused or stopped.
    pub status: Status,
    /// GPUs of the current container (claimed unless stopped).
    pub gpus: Vec<String>,
    /// Host ports of the current container (claimed unless stopped); kept across versions.
    pub ports: Vec<PortMapping>,
    /// The operation in flight, recorded before Docker is touched; a restarted engine finishes
    /// or undoes it (see [`crate::Engine::recover`]).
    pub pending: Option<Intent>,
    /// When the replicaSet was created, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created_at: String,
    /// Timers that stop the set on their own.
    #[serde(default)]
    pub timers: Timers,
}

/// Timers that stop a replicaSet (releasing its GPUs and ports, as a stop does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timers {
    /// Stop once every GPU of the set has been idle (0 % utilization) this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_secs: Option<u64>,
    /// Stop at this time, in seconds since the Unix epoch; cleared once it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_at: Option<i64>,
}

impl ReplicaSet {
    /// What this set's images are named by: its id, or for a set recorded before ids existed,
    /// its name in hex (injective, valid for Docker).
    pub fn image_id(&self) -> String {
        if self.id.is_empty() {
            crate::names::legacy_id(&self.name)
        } else {
            self.id.clone()
        }
    }
}

impl Timers {
    /// Whether no timer is set.
    pub fn is_empty(&self) -> bool {
        self.idle_stop_secs.is_none() && self.stop_at.is_none()
    }
}

/// An operation in flight on a replicaSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Version 1 is being created and started.
    Run,
    /// Version `version` is being built to replace the current one.
    NewVersion {
        /// The version being built.
        version: u32,
        /// Whether it is to run (false keeps a paused or stopped set as it was).
        run: bool,
        /// GPUs claimed for it that the set did not hold before.
        claimed_gpus: Vec<String>,
        /// Host ports claimed for it that the set did not hold before.
        claimed_ports: Vec<u16>,
        /// GPUs held now and released once the old container is gone.
        released_gpus: Vec<String>,
        /// The volume whose resize this is part of (that resize decides the outcome).
        resize: Option<String>,
        /// Folders still to be copied from the old container into the new one (an image
        /// change); emptied once they are, before the new container starts.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carry: Vec<String>,
    },
    /// The container is being stopped; GPUs and ports go once it is.
    Stop,
    /// The container is being stopped; GPUs and ports stay.
    Pause,
    /// The container is being started again.
    Continue {
        /// Whether claims were taken again (it was stopped) and go back on failure.
        reclaimed: bool,
    },
    /// Everything of the set is being removed.
    Delete,
    /// The set is moving to another node: see [`Moving`].
    Migrate(Moving),
}

/// A migration in flight: the set moves from node `from` to node `to`, where version
/// `version` is built from a snapshot of the current one. Until the target makes it current
/// (one transaction that also moves the set's node), the source may undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    /// The node it lives on now.
    pub from: String,
    /// The node it moves to.
    pub to: String,
    /// The version being built on the target.
    pub version: u32,
    /// GPUs the new version gets.
    pub gpu_count: u32,
    /// Whether the data of its volumes moves too.
    pub move_volumes: bool,
    /// The set's status before: the target ends it the same (a running set runs there).
    pub before: Status,
    /// GPUs the target claimed for it (empty until it has).
    #[serde(default)]
    pub claimed_gpus: Vec<String>,
    /// Host ports the target claimed for it, on the target.
    #[serde(default)]
    pub claimed_ports: Vec<u16>,
}

/// One version of a replicaSet: one container, and later the snapshot of its filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Version number, from 1.
    pub version: u32,
    /// Container name, `{name}-{version}`.
    pub container: String,
    /// The spec this version was created with.
    pub spec: ReplicaSetSpec,
    /// GPUs it was created with.
    pub gpus: Vec<String>,
    /// Host ports it was created with.
    pub ports: Vec<PortMapping>,
    /// The image its container was created from (the user's image or a snapshot).
    pub image: String,
    /// Snapshot image of its filesystem, taken when it was superseded (`None` while current or
    /// once pruned).
    pub snapshot: Option<String>,
    /// CPU, memory and shm limits its container was created with.
    #[serde(default)]
    pub limits: Limits,
    /// When it was created.
    pub created_at: String,
}

/// A replicaSet's head with its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSetInfo {
    /// The head record.
    pub replica_set: ReplicaSet,
    /// The current version.
    pub version: Version,
    /// Its writable layer as last measured (`None` before the first measurement).
    #[serde(default)]
    pub rootfs: Option<RootfsUsage>,
}

/// The size of a set's writable layer (what its container wrote on top of its image), as the
/// periodic measurement found it, against its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootfsUsage {
    /// Bytes written.
    pub bytes: u64,
    /// The limit of this set's writable layer (`None`: none).
    pub limit: Option<u64>,
    /// Whether the storage driver enforces the limit (a write past it fails in the
    /// container); when not, a set over it has its patches and commits refused.
    pub enforced: bool,
    /// When it was measured (RFC 3339).
    pub measured_at: String,
    /// The container measured.
    pub container: String,
}

impl RootfsUsage {
    /// Over a limit the driver does not enforce.
    pub fn over(&self) -> bool {
        !self.enforced && self.limit.is_some_and(|limit| self.bytes > limit)
    }
}

/// The head record of a versioned volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name without version, `[A-Za-z0-9_.]+`.
    pub name: String,
    /// The user it belongs to; records from before users existed belong to the built-in admin.
    #[serde(default = "operator")]
    pub owner: String,
    /// The cluster node whose Docker holds its data (empty on a single host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Current version.
    pub current: u32,
    /// Highest version ever handed out.
    pub latest: u32,
    /// A resize in flight, recorded before Docker is touched.
    #[serde(default)]
    pub pending: Option<VolumeIntent>,
    /// When it was created.
    pub created_at: String,
}

/// A volume resize in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIntent {
    /// The version being made.
    pub version: u32,
    /// ReplicaSets being moved onto it.
    pub users: Vec<String>,
    /// Whether the data copy finished: from then on the resize is finished, never undone.
    pub copied: bool,
}

/// One version of a volume: one Docker volume `{name}-{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeVersion {
    /// Version number, from 1.
    pub version: u32,
    /// Docker volume name, `{name}-{version}`.
    pub docker_name: String,
    /// Size as the user wrote it, `20GB`.
    pub size: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Whether Docker enforces the size (XFS project quotas) or it is only recorded.
    pub size_enforced: bool,
    /// Volume driver.
    pub driver: String,
    /// When it was created.
    pub created_at: String,
}

/// A volume's head with its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The head record.
    pub volume: Volume,
    /// The current version.
    pub version: VolumeVersion,
}

/// One GPU with its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// The GPU.
    pub gpu: crate::gpu::GpuInfo,
    /// The replicaSet holding it, if any.
    pub holder: Option<String>,
    /// The cluster node it is on (empty on a single host).
    #[serde(default)]
    pub node: String,
}

/// Host port usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// The configured range.
    pub range: crate::sched::PortRange,
    /// Claimed ports, ascending.
    pub used: Vec<u16>,
    /// Ports of the range not claimed.
    pub available: usize,
    /// In a cluster, the figures of every node, by name (empty on a single host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodePorts>,
}

/// One cluster node's host ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePorts {
    /// The node.
    pub node: String,
    /// Its range.
    pub range: crate::sched::PortRange,
    /// Its claimed ports, ascending.
    pub used: Vec<u16>,
    /// Ports of its range not claimed.
    pub available: usize,
}

/// The name of the server's built-in administrator: whoever holds the server's own token, and
/// whoever calls an engine that was not given another caller. It owns what it creates and
/// cannot be added as a user. (Records from before users existed belong to it.)
pub const OPERATOR: &str = "admin";

fn operator() -> String {
    OPERATOR.to_string()
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch as RFC 3339, `2026-11-22T14:05:01.123456Z`.
pub fn rfc3339_micros(micros: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Current UTC time as the contract writes it.
pub fn now() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_default()
}
