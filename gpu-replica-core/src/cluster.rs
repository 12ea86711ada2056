//! A cluster of GPU hosts on one etcd: each runs an engine next to its own Docker and GPUs,
//! registered as a node. Liveness is an etcd lease, never a protocol of ours.
//!
//! - `nodes/{name}` holds the node's record (advertise URL, GPUs, port range, Docker version);
//!   it stays when the node is lost, so its sets and claims keep their meaning.
//! - `nodes-alive/{name}` is written under a lease of [`NODE_TTL`] that the node renews every
//!   third of it; etcd deletes it when the node stops renewing, and the node is then `lost`.
//!   A node that comes back writes it again under a new lease and reconciles its own sets.
//! - A set records its node; its port claims are the node's (`claims/ports/@{node}/…`), its
//!   GPU claims are by UUID (unique across nodes; fake GPUs carry the node's name).
//! - Placement ([`crate::Engine::place`]) and where a set lives ([`crate::Engine::locate`]) are
//!   decided by `ops/nodes.rs`, which also keeps the lease; the HTTP layer forwards a request
//!   to the node that should serve it.
//!
//! This file holds the types only (records, states, the node link), below the engine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::GpuInfo;
use crate::sched::PortRange;

/// How long a node stays `ready` without renewing its lease.
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// What travels over the node link: a `docker save` archive of a snapshot, or a tar of a
/// volume's files, as a stream of chunks. The same type as the runtime's
/// [`crate::runtime::ImageStream`], named here so that a frontend carrying the link speaks the
/// link's words, never the runtime's.
pub type ArchiveStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>;

/// A node as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Its name, `--node`.
    pub name: String,
    /// Where other nodes reach its API, `http://10.0.0.5:2378`.
    pub advertise: String,
    /// Its GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Host ports it hands out.
    pub port_range: PortRange,
    /// Its Docker engine, in words.
    pub docker: String,
    /// When it (last) joined.
    pub joined_at: String,
    /// Cordoned: placement gives it no new set; the sets on it stay until drained.
    #[serde(default)]
    pub cordoned: bool,
    /// Its last drain, or the one under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// Where a drain of a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// Moving the node's sets away.
    Running,
    /// Every set it found was moved or reported as failed.
    Finished,
    /// Cancelled: no new move starts; those in flight finish or are undone.
    Cancelled,
}

/// A set a drain moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainMoved {
    /// The replicaSet.
    pub set: String,
    /// The node it lives on now.
    pub to: String,
}

/// A set a drain could not move, and why (it stays where it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainFailed {
    /// The replicaSet.
    pub set: String,
    /// The error's contract code.
    pub code: u16,
    /// Why, in words.
    pub reason: String,
}

/// A drain of a node ([`crate::Engine::drain`]), as recorded in the node's record: every node
/// reads its progress, and the drained node resumes it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Running, finished or cancelled.
    pub state: DrainState,
    /// Migrations at once.
    pub parallel: u32,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it finished or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Sets being moved now.
    #[serde(default)]
    pub in_flight: Vec<String>,
    /// Sets moved, in the order they arrived.
    #[serde(default)]
    pub moved: Vec<DrainMoved>,
    /// Sets that could not move, with why.
    #[serde(default)]
    pub failed: Vec<DrainFailed>,
    /// The engine instance running it: another one (after a restart) takes it over.
    pub runner: String,
}

/// Whether a node renews its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Renewing: it serves its sets.
    Ready,
    /// Not renewing: its sets answer [`Error::NodeLost`]; their claims stay held.
    Lost,
}

/// A node with its state and free GPUs (and, in its record, whether it is cordoned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The record.
    pub node: NodeRecord,
    /// Ready or lost.
    pub state: NodeState,
    /// GPUs no set holds.
    pub free_gpus: usize,
    /// Replica sets living on it.
    pub sets: usize,
}

/// Where a request about a set, or a new set, is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// By this engine.
    Here,
    /// By another node, reached at `url`.
    Node {
        /// Its name.
        name: String,
        /// Its advertise URL.
        url: String,
    },
}

/// Where a replicaSet moves: [`crate::Engine::migrate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// The node it moves to.
    pub node: String,
    /// GPUs it gets there (default: as many as now).
    pub gpu_count: Option<u32>,
    /// Whether its volumes' data moves too; without it, a set that mounts volumes is refused
    /// ([`Error::VolumesNotMoved`]).
    pub move_volumes: bool,
}

/// What the source node of a migration asks its target, in order: [`LinkRequest::Receive`],
/// one [`LinkRequest::Files`] per moved volume, [`LinkRequest::Start`]; or
/// [`LinkRequest::Abort`] once something failed.
pub enum LinkRequest {
    /// Claim GPUs and ports for the set's new version, load its filesystem from `archive` (a
    /// `docker save` archive of the snapshot), create its volumes and its container:
    /// [`crate::Engine::accept_migration`].
    Receive {
        /// The replicaSet.
        set: String,
        /// The snapshot image, streamed.
        archive: ArchiveStream,
    },
    /// Extract `archive` (a volume's files) into `dir` of the new container:
    /// [`crate::Engine::accept_migration_files`].
    Files {
        /// The replicaSet.
        set: String,
        /// The directory holding the volume's mount point.
        dir: String,
        /// A tar archive whose top entry is the mount point.
        archive: ArchiveStream,
    },
    /// Start the new version and make it current on the target:
    /// [`crate::Engine::complete_migration`].
    Start {
        /// The replicaSet.
        set: String,
    },
    /// Undo what the target did for the migration: [`crate::Engine::abort_migration`].
    Abort {
        /// The replicaSet.
        set: String,
    },
}

/// How one node of a cluster reaches another during a migration. The HTTP crate implements
/// it over the nodes' advertise URLs; an embedder running several engines in one process
/// may call the target engine directly.
#[async_trait::async_trait]
pub trait NodeLink: Send + Sync {
    /// Sends `request` to node `to` and waits for its answer.
    async fn send(&self, to: &NodeRecord, request: LinkRequest) -> Result<()>;
}
