//! The operations, one file per family, each a method of [`crate::Engine`]: they validate,
//! take the set's lock, settle what an interrupted operation left ([`crate::supervise`]), then
//! run the steps of [`crate::steps`] over the records and claims of [`crate::engine`].

pub(crate) mod backup;
pub(crate) mod clone;
pub(crate) mod drain;
pub(crate) mod files;
pub(crate) mod metrics;
pub(crate) mod migrate;
pub(crate) mod nodes;
pub(crate) mod observe;
pub(crate) mod proxy;
pub(crate) mod read;
pub(crate) mod resources;
pub(crate) mod run;
pub(crate) mod screen;
pub(crate) mod shell;
pub(crate) mod sshkeys;
pub(crate) mod state;
pub(crate) mod timers;
pub(crate) mod usage;
pub(crate) mod users;
pub(crate) mod version;
pub(crate) mod volume;

use std::sync::Arc;

use crate::engine::events::Event;
use crate::engine::Clock;
use crate::engine::{Caller, Context, EngineConfig, Recovery};
use crate::error::Result;
use crate::gpu::GpuInventory;
use crate::model::Version;
use crate::runtime::{ContainerRuntime, ContainerSpec};
use crate::store::StateStore;
use crate::supervise::reconcile::Reconciled;

/// Manages versioned GPU containers and volumes, acting for one [`Caller`].
///
/// [`Engine::new`] gives the operator's engine (the built-in administrator, who sees and may
/// do everything); [`Engine::as_caller`] gives a handle on the same state acting for someone
/// else, who then sees and acts on their own replicaSets and volumes only, within their quota.
/// Handles are cheap to make and to clone: they share everything but the caller.
///
/// Its methods are the operations (one file of this folder per family); what they stand on is
/// its context (`crate::engine`), which cannot name them.
#[derive(Clone)]
pub struct Engine {
    pub(crate) ctx: Context,
}

impl Engine {
    /// An engine over a container runtime, a state store and a GPU inventory; nothing runs in
    /// the background (see [`Engine::builder`] for a started one).
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<dyn StateStore>,
        inventory: Arc<dyn GpuInventory>,
        config: EngineConfig,
    ) -> Engine {
        Engine {
            ctx: Context::new(runtime, store, inventory, config),
        }
    }

    /// The same engine reading GPU-time from `clock` (a test scripts a timeline with
    /// [`crate::ManualClock`]). Call it before sharing the engine.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            ctx: self.ctx.with_clock(clock),
        }
    }

    /// A handle on this engine acting for `caller`: an admin sees everything, a user only
    /// their own replicaSets and volumes (others' answer as missing) within their quota.
    pub fn as_caller(&self, caller: Caller) -> Engine {
        Engine {
            ctx: self.ctx.as_caller(caller),
        }
    }

    /// Who this handle acts for.
    pub fn caller(&self) -> &Caller {
        &self.ctx.caller
    }

    /// This engine's node name, empty on a single host.
    pub fn node_name(&self) -> &str {
        self.ctx.node_name()
    }

    /// Tells long-lived readers (followed logs, event streams) to end, so a server can shut
    /// down gracefully; operations are not affected.
    pub fn close(&self) {
        self.ctx.close()
    }

    /// Resolves once [`Engine::close`] was called.
    pub async fn closed(&self) {
        self.ctx.closed().await
    }

    /// What the last [`Engine::recover`] finished, undid, removed and found missing; `None`
    /// before it ran, and for callers who are not admins (it names everyone's sets).
    pub fn last_recovery(&self) -> Option<Recovery> {
        self.ctx.last_recovery()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        self.ctx.config()
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        self.ctx.runtime()
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        self.ctx.store()
    }

    /// The GPU inventory.
    pub fn inventory(&self) -> &Arc<dyn GpuInventory> {
        self.ctx.inventory()
    }

    /// Every event as it happens (the caller filters what it may see).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.ctx.subscribe()
    }

    /// What the start-up check found of the NVIDIA container toolkit (`None` before
    /// [`Engine::builder`]'s start ran it).
    pub fn toolkit(&self) -> Option<&crate::gpu::toolkit::ToolkitReport> {
        self.ctx.shared.toolkit.get()
    }

    /// What the start-up probe found of the storage driver's size limits (`None`: no
    /// `rootfs.size` configured, or before start).
    pub fn rootfs_support(&self) -> Option<&crate::runtime::RootfsSupport> {
        self.ctx.shared.rootfs_support.get()
    }

    /// One measurement of every set's writable layer on this node (the engine runs one each
    /// `rootfs.measure_interval` after [`Engine::builder`]'s start); what it told of, a line
    /// each.
    pub async fn measure_rootfs(&self) -> Result<Vec<String>> {
        self.ctx.measure_rootfs().await
    }

    /// What the start-up step made of the host firewall guard between owners' networks, or
    /// why it is not in place (`None`: another network mode, or before start).
    pub fn network_guard(&self) -> Option<&crate::network::Guard> {
        self.ctx.shared.network_guard.get()
    }

    /// Whether this caller may see `event`: an admin sees all, a user those of their objects.
    pub fn sees(&self, event: &Event) -> bool {
        self.ctx.sees(event)
    }

    /// Stored events this caller sees, oldest first: the newest `last`, only those after
    /// `after` when given.
    pub async fn events(&self, last: usize, after: Option<u64>) -> Result<Vec<Event>> {
        self.ctx.events(last, after).await
    }

    /// What Docker is asked to create for `version` of `owner`'s set `name`.
    pub fn container_spec(&self, owner: &str, name: &str, version: &Version) -> ContainerSpec {
        self.ctx.container_spec(owner, name, version)
    }

    /// Finishes or undoes what a crash left in flight, removes orphans, reconciles; see
    /// `supervise/recovery.rs`. Call it before taking requests ([`Engine::builder`] does).
    pub async fn recover(&self) -> Result<Recovery> {
        self.ctx.recover().await
    }

    /// One reconcile pass over every set and claim of this node.
    pub async fn reconcile(&self) -> Result<Reconciled> {
        self.ctx.reconcile().await
    }

    /// One reconcile pass over set `name`.
    pub async fn reconcile_set(&self, name: &str) -> Result<Reconciled> {
        self.ctx.reconcile_set(name).await
    }

    /// Runs the reconciler in the background until the engine is closed or dropped.
    pub fn spawn_reconciler(&self) -> tokio::task::JoinHandle<()> {
        self.ctx.spawn_reconciler()
    }
}
