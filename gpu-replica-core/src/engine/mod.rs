//! What every operation stands on: the [`Context`] (the three backends, the configuration and
//! the shared state, acting for one caller) with per-object locks and labels (here), typed
//! records ([`records`]), GPU and port claims and the one claim transaction ([`claims`]),
//! callers, users' records and the quota guard ([`access`]), GPU-time ([`accounting`]), the
//! operator's policy ([`policy`]) and the event log ([`events`]). The public [`crate::Engine`]
//! (in `ops/`) holds a context and adds the operations; nothing here can name one.
//!
//! Layers, calls going down only (held by `tests/layers.rs`, for imports and for calls
//! through `Engine`'s methods): `start` → `ops` (one file per operation family) →
//! `supervise` (recovery, reconciliation) → `steps` (the idempotent steps operations and
//! recovery share) → `engine` → the ground: the three backends, the records' types, the node
//! link's types and the metrics' counters.

pub(crate) mod access;
pub(crate) mod accounting;
pub(crate) mod claims;
pub(crate) mod disk;
pub(crate) mod events;
pub(crate) mod network;
pub(crate) mod nudges;
pub(crate) mod policy;
pub(crate) mod records;
pub(crate) mod report;
pub(crate) mod screens;
pub(crate) mod user_cache;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

pub use self::access::{Caller, Holdings, Quota, Role, OPERATOR};
pub use self::accounting::{Clock, ManualClock, SystemClock};
pub use self::report::Recovery;
use crate::engine::events::EventLog;
use crate::gpu::toolkit::ToolkitReport;
use crate::gpu::GpuInventory;
use crate::limits::{ResourcePolicy, RootfsPolicy};
use crate::network::NetworkPolicy;
use crate::runtime::{ContainerRuntime, GpuAttach, Hardening};
use crate::sched::PortRange;
use crate::screen::ScreenPolicy;
use crate::store::StateStore;

pub(crate) use self::policy::check_name;
pub(crate) use self::records::encode;

/// Label carrying the replicaSet name on containers and snapshot images.
pub const LABEL_REPLICA_SET: &str = "io.gpu-replica.replicaset";
/// Label carrying the version number.
pub const LABEL_VERSION: &str = "io.gpu-replica.version";
/// Label carrying the volume name on volumes.
pub const LABEL_VOLUME: &str = "io.gpu-replica.volume";
/// Label carrying the identity of the store that records an object: recovery removes only
/// orphans of its own store, never those of another deployment on the same Docker host.
pub const LABEL_STORE: &str = "io.gpu-replica.store";
/// Label carrying the owner on containers and on per-owner networks.
pub const LABEL_OWNER: &str = "io.gpu-replica.owner";
/// Label carrying, on a container, the name of the network it joins.
pub const LABEL_NETWORK: &str = "io.gpu-replica.network";

/// How the engine behaves; every field has a sensible default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Host ports handed out to container ports.
    pub port_range: PortRange,
    /// How containers get their GPUs.
    pub gpu_attach: GpuAttach,
    /// How long a stop waits before killing (default 10 s).
    pub stop_timeout: Duration,
    /// Snapshots kept per replicaSet, newest first; older ones are pruned (default 10).
    pub keep_snapshots: usize,
    /// Folders an image change carries into the new image when the patch names none
    /// (default `/root`).
    pub keep_paths: Vec<String>,
    /// Disks whose room status and metrics show, by name (`store`, `docker`), each by a
    /// folder on it (default none; `gpu-replica serve` names the store's and Docker's).
    pub disks: Vec<(String, std::path::PathBuf)>,
    /// Where a start that migrates the store to this release's schema first writes a backup of
    /// it (the redb file's folder, say); none written when `None` (default).
    pub backup_dir: Option<std::path::PathBuf>,
    /// A snapshot whose image would have more layers than this is flattened to one layer
    /// (overlay2 allows about 125).
    pub max_layers: usize,
    /// Host folders under which bind sources are allowed (default: none).
    pub allowed_host_paths: Vec<PathBuf>,
    /// Repository for snapshot images: `{repo}/{name}:v{version}`.
    pub snapshot_repo: String,
    /// Extra labels on every container, image and volume the engine creates.
    pub labels: BTreeMap<String, String>,
    /// CPU, memory and shm per GPU, the cardless share, and whether containers get an init.
    pub resources: ResourcePolicy,
    /// How often [`Engine::spawn_timers`] checks the timers (default 15 s).
    pub timer_interval: Duration,
    /// How often [`Engine::spawn_reconciler`] compares every set with Docker, besides
    /// reacting to Docker's events (default 30 s).
    pub reconcile_interval: Duration,
    /// Docker volumes not managed by this engine that binds may mount anyway (default none:
    /// only volumes this engine created).
    pub allowed_volumes: Vec<String>,
    /// What containers may not do (default: least privilege, see [`Hardening`]).
    pub hardening: Hardening,
    /// How far sets' writable layers may grow, and how often they are measured.
    pub rootfs: RootfsPolicy,
    /// Which network sets' containers join (default: one per owner from `10.213.0.0/16`).
    pub network: NetworkPolicy,
    /// This engine's node in a cluster of hosts sharing one etcd (default none: a single host).
    /// Its sets, port claims and reconciliation are its own; see [`Engine::join_cluster`].
    pub node: Option<String>,
    /// How long an unattached web terminal is kept, and how many one user may hold.
    pub screens: ScreenPolicy,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            port_range: PortRange::default(),
            gpu_attach: GpuAttach::default(),
            stop_timeout: Duration::from_secs(10),
            keep_snapshots: 10,
            keep_paths: vec!["/root".to_string()],
            disks: Vec::new(),
            backup_dir: None,
            max_layers: 100,
            allowed_host_paths: Vec::new(),
            snapshot_repo: "gpu-replica".into(),
            labels: BTreeMap::new(),
            resources: ResourcePolicy::default(),
            timer_interval: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(30),
            allowed_volumes: Vec::new(),
            hardening: Hardening::default(),
            network: NetworkPolicy::default(),
            rootfs: RootfsPolicy::default(),
            node: None,
            screens: ScreenPolicy::default(),
        }
    }
}

/// What the operations stand on, acting for one [`Caller`]: the shared state (backends,
/// configuration, locks, event log, counters) and the typed records, claims, quota guard,
/// accounting, events and policy over it. The operations ([`crate::Engine`]) hold one; the
/// steps and the supervisor are its methods, and nothing here can name an operation.
/// Cheap to clone: the state is shared, only the caller differs.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    /// Who the operations are done for.
    pub(crate) caller: Caller,
}

/// A [`Context`] that does not keep the engine alive: a background task holds one and ends
/// once every handle of the engine is gone.
#[derive(Clone)]
pub(crate) struct WeakContext {
    shared: std::sync::Weak<Shared>,
    caller: Caller,
}

impl WeakContext {
    /// The context, while the engine lives.
    pub(crate) fn upgrade(&self) -> Option<Context> {
        Some(Context {
            shared: self.shared.upgrade()?,
            caller: self.caller.clone(),
        })
    }
}

/// What every handle of one engine shares.
pub(crate) struct Shared {
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) inventory: Arc<dyn GpuInventory>,
    pub(crate) config: EngineConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Identity of the store, known once [`Engine::recover`] has run.
    pub(crate) store_id: std::sync::OnceLock<String>,
    /// What the last [`Engine::recover`] did.
    pub(crate) last_recovery: Mutex<Option<Recovery>>,
    /// The event log's live side.
    pub(crate) events: EventLog,
    /// Since when each replicaSet with an idle timer has had all its GPUs idle.
    pub(crate) idle_since: Mutex<HashMap<String, std::time::Instant>>,
    /// Set by [`Engine::close`]: long-lived streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// `info` answers by name, with the store generation they were read at; valid while the
    /// store's generation is unchanged (only for stores that have one).
    pub(crate) info_cache: Mutex<HashMap<String, (u64, crate::model::ReplicaSetInfo)>>,
    /// Sets the reconciler should look at soon.
    pub(crate) nudges: Arc<self::nudges::Nudges>,
    /// Where GPU-time is read from.
    pub(crate) clock: Arc<dyn Clock>,
    /// Eight hex digits telling this engine's records apart from another's.
    pub(crate) instance: String,
    /// How this node reaches the others of its cluster (migration); set once it joined.
    pub(crate) link: std::sync::OnceLock<Arc<dyn crate::cluster::NodeLink>>,
    /// What the nodes of the cluster authenticate their calls to each other with.
    pub(crate) cluster_secret: std::sync::OnceLock<String>,
    /// Counters and histograms for `/metrics`.
    pub(crate) metrics: crate::metrics::EngineMetrics,
    /// What the start-up check found of the NVIDIA container toolkit.
    pub(crate) toolkit: std::sync::OnceLock<ToolkitReport>,
    /// What the start-up step made of the host firewall guard (per-owner mode only).
    pub(crate) network_guard: std::sync::OnceLock<crate::network::Guard>,
    /// What the start-up probe found of the storage driver's size limits.
    pub(crate) rootfs_support: std::sync::OnceLock<crate::runtime::RootfsSupport>,
    /// The web terminals' live sessions.
    pub(crate) screens: Arc<self::screens::Screens>,
    /// The proxy's signing key, once read from the store (or made).
    pub(crate) proxy_key: tokio::sync::OnceCell<[u8; 32]>,
    /// Users and their token hashes for the request path.
    pub(crate) users: self::user_cache::UserCache,
}

impl Context {
    /// An engine over a container runtime, a state store and a GPU inventory.
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<dyn StateStore>,
        inventory: Arc<dyn GpuInventory>,
        config: EngineConfig,
    ) -> Context {
        let shared = Shared {
            runtime,
            store,
            inventory,
            config,
            locks: Mutex::new(HashMap::new()),
            store_id: std::sync::OnceLock::new(),
            last_recovery: Mutex::new(None),
            events: EventLog::default(),
            idle_since: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::Sender::new(false),
            info_cache: Mutex::new(HashMap::new()),
            nudges: Arc::default(),
            clock: Arc::new(SystemClock),
            instance: crate::names::new_id()
                .map(|id| id[..8].to_string())
                .unwrap_or_else(|_| format!("{:08x}", std::process::id())),
            link: std::sync::OnceLock::new(),
            cluster_secret: std::sync::OnceLock::new(),
            metrics: Default::default(),
            toolkit: std::sync::OnceLock::new(),
            network_guard: std::sync::OnceLock::new(),
            rootfs_support: std::sync::OnceLock::new(),
            screens: Arc::default(),
            proxy_key: tokio::sync::OnceCell::new(),
            users: Default::default(),
        };
        Context {
            shared: Arc::new(shared),
            caller: Caller::operator(),
        }
    }

    /// The same engine reading GPU-time from `clock` (a test scripts a timeline with
    /// [`crate::ManualClock`]). Call it before sharing the engine.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Context {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.clock = clock,
            None => panic!("Engine::with_clock must be called before the engine is shared"),
        }
        self
    }

    /// A handle on this engine acting for `caller`: an admin sees everything, a user only
    /// their own replicaSets and volumes (others' answer as missing) within their quota.
    pub fn as_caller(&self, caller: Caller) -> Context {
        Context {
            shared: self.shared.clone(),
            caller,
        }
    }

    /// Checks the NVIDIA container toolkit the GPUs go through (none for synthetic GPUs) and
    /// keeps what it found; an exposed version is logged as a warning naming the advisories.
    pub(crate) fn check_toolkit(&self) -> &ToolkitReport {
        self.shared.toolkit.get_or_init(|| {
            let used = !self.shared.inventory.synthetic();
            let version = used.then(crate::gpu::toolkit::installed_version).flatten();
            let report = crate::gpu::toolkit::report(used, version);
            if !report.vulnerable_to.is_empty() {
                tracing::warn!(
                    "the NVIDIA container toolkit {} is open to {}: upgrade it; until then \
                     requests may not set {}; CDI mode (--gpu-attach cdi) is recommended",
                    report.version.as_deref().unwrap_or("(version unknown)"),
                    report.vulnerable_to.join(", "),
                    report.refused_env.join(", ")
                );
            }
            report
        })
    }

    /// Refuses environment entries the toolkit here is known to honour in an escape.
    pub(crate) fn check_env_for_toolkit(&self, env: &[String]) -> crate::error::Result<()> {
        let Some(report) = self.shared.toolkit.get() else {
            return Ok(());
        };
        for entry in env {
            let key = entry.split('=').next().unwrap_or_default();
            if report.refused_env.iter().any(|r| r == key) {
                return Err(crate::error::Error::InvalidParams(format!(
                    "env {key} is refused on this host: its NVIDIA container toolkit ({}) is \
                     open to {} through it; the operator must upgrade the toolkit first",
                    report.version.as_deref().unwrap_or("version unknown"),
                    report.vulnerable_to.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// This context without keeping the engine alive.
    pub(crate) fn downgrade(&self) -> WeakContext {
        WeakContext {
            shared: Arc::downgrade(&self.shared),
            caller: self.caller.clone(),
        }
    }

    /// This engine's node name, empty on a single host.
    pub fn node_name(&self) -> &str {
        self.shared.config.node.as_deref().unwrap_or("")
    }

    /// Tells long-lived readers (followed logs, event streams) to end, so a server can shut
    /// down gracefully; operations are not affected.
    pub fn close(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Resolves once [`Engine::close`] was called.
    pub async fn closed(&self) {
        let mut watch = self.shared.closing.subscribe();
        // The sender lives in `self`, so this cannot fail while we are borrowed.
        let _ = watch.wait_for(|closing| *closing).await;
    }

    /// A receiver that turns true once [`Engine::close`] was called.
    pub(crate) fn closing_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }

    /// What the last [`Engine::recover`] finished, undid, removed and found missing; `None`
    /// before it ran, and for callers who are not admins (it names everyone's sets).
    pub fn last_recovery(&self) -> Option<Recovery> {
        if !self.caller.is_admin() {
            return None;
        }
        self.shared
            .last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.shared.runtime
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.shared.store
    }

    /// The GPU inventory.
    pub fn inventory(&self) -> &Arc<dyn GpuInventory> {
        &self.shared.inventory
    }

    /// Serializes operations on replicaSet `name` inside this process.
    pub(crate) async fn lock_set(&self, name: &str) -> OwnedMutexGuard<()> {
        self.lock(&format!("rs:{name}")).await
    }

    /// Serializes operations on volume `name` inside this process.
    pub(crate) async fn lock_volume(&self, name: &str) -> OwnedMutexGuard<()> {
        self.lock(&format!("vol:{name}")).await
    }

    /// Serializes operations on one object inside this process; objects differ, operations
    /// run in parallel. Keys are made by [`Engine::lock_set`] and [`Engine::lock_volume`].
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.shared.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Labels for an object of replicaSet `name`, version `version`.
    pub(crate) fn labels(&self, pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        let mut labels = self.shared.config.labels.clone();
        if let Some(id) = self.shared.store_id.get() {
            labels.insert(LABEL_STORE.to_string(), id.clone());
        }
        labels.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        labels
    }
}
