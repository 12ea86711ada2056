//! The engine: three backends, two schedulers, and the operations of replicaSets and volumes.
//!
//! The operations themselves live in [`crate::replicaset`] and [`crate::volume`]; this file
//! holds what they share: configuration, per-object locks, typed store access and claims.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::events::EventLog;
use crate::gpu::GpuInventory;
use crate::keys;
use crate::limits::ResourcePolicy;
use crate::runtime::{Bind, ContainerRuntime, GpuAttach};
use crate::sched::PortRange;
use crate::store::{StateStore, Txn};

/// Label carrying the replicaSet name on containers and snapshot images.
pub const LABEL_REPLICA_SET: &str = "io.gpu-replica.replicaset";
/// Label carrying the version number.
pub const LABEL_VERSION: &str = "io.gpu-replica.version";
/// Label carrying the volume name on volumes.
pub const LABEL_VOLUME: &str = "io.gpu-replica.volume";
/// Label carrying the identity of the store that records an object: recovery removes only
/// orphans of its own store, never those of another deployment on the same Docker host.
pub const LABEL_STORE: &str = "io.gpu-replica.store";

/// Host paths never mounted, whatever the operator allows.
const FORBIDDEN_HOST_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/var/run/docker.sock",
    "/run/docker.sock",
];

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
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            port_range: PortRange::default(),
            gpu_attach: GpuAttach::default(),
            stop_timeout: Duration::from_secs(10),
            keep_snapshots: 10,
            max_layers: 100,
            allowed_host_paths: Vec::new(),
            snapshot_repo: "gpu-replica".into(),
            labels: BTreeMap::new(),
            resources: ResourcePolicy::default(),
            timer_interval: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(30),
            allowed_volumes: Vec::new(),
        }
    }
}

/// Manages versioned GPU containers and volumes; cheap to share behind an `Arc`.
pub struct Engine {
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) inventory: Arc<dyn GpuInventory>,
    pub(crate) config: EngineConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Identity of the store, known once [`Engine::recover`] has run.
    pub(crate) store_id: std::sync::OnceLock<String>,
    /// What the last [`Engine::recover`] did.
    pub(crate) last_recovery: Mutex<Option<crate::Recovery>>,
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
    pub(crate) nudges: Arc<crate::reconcile::Nudges>,
}

impl Engine {
    /// An engine over a container runtime, a state store and a GPU inventory.
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<dyn StateStore>,
        inventory: Arc<dyn GpuInventory>,
        config: EngineConfig,
    ) -> Engine {
        Engine {
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
        }
    }

    /// Tells long-lived readers (followed logs, event streams) to end, so a server can shut
    /// down gracefully; operations are not affected.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Engine::close`] was called.
    pub async fn closed(&self) {
        let mut watch = self.closing.subscribe();
        // The sender lives in `self`, so this cannot fail while we are borrowed.
        let _ = watch.wait_for(|closing| *closing).await;
    }

    /// A receiver that turns true once [`Engine::close`] was called.
    pub(crate) fn closing_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// What the last [`Engine::recover`] finished, undid, removed and found missing; `None`
    /// before it ran.
    pub fn last_recovery(&self) -> Option<crate::Recovery> {
        self.last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The GPU inventory.
    pub fn inventory(&self) -> &Arc<dyn GpuInventory> {
        &self.inventory
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
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Reads and decodes one record with its revision.
    pub(crate) async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((decode(key, &entry.value)?, entry.revision))),
        }
    }

    /// Reads and decodes every record under `prefix`, in key order.
    pub(crate) async fn read_all<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.store
            .list(prefix)
            .await?
            .iter()
            .map(|e| decode(&e.key, &e.value))
            .collect()
    }

    /// Applies a transaction that must not lose a race (its conditions are only revisions
    /// this caller holds the lock for); a lost race is an error.
    pub(crate) async fn commit(&self, txn: Txn) -> Result<()> {
        if self.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(
                "the records changed under this request (another engine on the same store?)".into(),
            ))
        }
    }

    /// Who holds each GPU, by UUID.
    pub(crate) async fn gpu_holders(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .store
            .list(keys::GPU_CLAIMS)
            .await?
            .into_iter()
            .map(|e| {
                let uuid = e.key[keys::GPU_CLAIMS.len()..].to_string();
                (uuid, String::from_utf8_lossy(&e.value).into_owned())
            })
            .collect())
    }

    /// Who holds each host port.
    pub(crate) async fn port_holders(&self) -> Result<HashMap<u16, String>> {
        Ok(self
            .store
            .list(keys::PORT_CLAIMS)
            .await?
            .into_iter()
            .filter_map(|e| {
                let port = e.key[keys::PORT_CLAIMS.len()..].parse().ok()?;
                Some((port, String::from_utf8_lossy(&e.value).into_owned()))
            })
            .collect())
    }

    /// Labels for an object of replicaSet `name`, version `version`.
    pub(crate) fn labels(&self, pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        let mut labels = self.config.labels.clone();
        if let Some(id) = self.store_id.get() {
            labels.insert(LABEL_STORE.to_string(), id.clone());
        }
        labels.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        labels
    }

    /// Checks one bind and returns it as it will be mounted: destination absolute and not
    /// `/`; a host source resolved (symlinks, `..`) and then under an allowed root and never a
    /// system path; a volume source existing and managed by this engine (or allowed by name).
    pub(crate) async fn check_bind(&self, bind: &Bind) -> Result<Bind> {
        if !bind.dest.starts_with('/') {
            return Err(Error::InvalidParams(format!(
                "bind destination '{}' must be an absolute path",
                bind.dest
            )));
        }
        if Path::new(&bind.dest)
            .components()
            .all(|c| c == Component::RootDir)
        {
            return Err(Error::InvalidParams(
                "a bind cannot be mounted on the root directory '/'".into(),
            ));
        }
        if bind.src.is_empty() {
            return Err(Error::InvalidParams("bind source must not be empty".into()));
        }
        if bind.is_host_path() {
            let resolved = self.check_host_path(&bind.src)?;
            return Ok(Bind {
                src: resolved.to_string_lossy().into_owned(),
                dest: bind.dest.clone(),
            });
        }
        self.check_volume_source(&bind.src).await?;
        Ok(bind.clone())
    }

    /// A volume may be mounted when this engine manages it (the current version of one of its
    /// volumes) or the operator allows it by name; never another application's volume.
    async fn check_volume_source(&self, src: &str) -> Result<()> {
        if self.runtime.inspect_volume(src).await?.is_none() {
            return Err(Error::InvalidParams(format!(
                "volume '{src}' does not exist; create it first (POST /api/v1/volumes)"
            )));
        }
        if self.config.allowed_volumes.iter().any(|v| v == src) {
            return Ok(());
        }
        let managed = match src.rsplit_once('-') {
            Some((base, number)) => match number.parse::<u32>() {
                Ok(number) => self
                    .read::<crate::model::Volume>(&keys::volume(base))
                    .await?
                    .is_some_and(|(v, _)| v.current == number),
                Err(_) => false,
            },
            None => false,
        };
        if !managed {
            return Err(Error::BindRefused(format!(
                "volume '{src}' is not a current volume of this server (create one with POST \
                 /api/v1/volumes and bind its versioned name, e.g. 'data-1'; the operator may \
                 allow other volumes with --allow-volume)"
            )));
        }
        Ok(())
    }

    /// Resolves a host path (symlinks, `.` and `..`) and checks the result against the policy.
    fn check_host_path(&self, src: &str) -> Result<PathBuf> {
        let path = resolve_path(Path::new(src));
        if path.components().all(|c| c == Component::RootDir)
            || FORBIDDEN_HOST_PATHS.iter().any(|f| path.starts_with(f))
        {
            return Err(Error::BindRefused(format!(
                "host path '{src}' is a system path ({})",
                path.display()
            )));
        }
        if !self
            .config
            .allowed_host_paths
            .iter()
            .any(|root| path.starts_with(resolve_path(root)))
        {
            return Err(Error::BindRefused(format!(
                "host path '{src}' ({}) is not under a folder the operator allows (--allow-host-path)",
                path.display()
            )));
        }
        Ok(path)
    }
}

/// `path` with symlinks, `.` and `..` resolved: the longest prefix that exists is resolved by
/// the file system, the rest (which does not exist yet) by its components.
pub(crate) fn resolve_path(path: &Path) -> PathBuf {
    let components: Vec<Component> = path.components().collect();
    for split in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..split].iter().collect();
        if let Ok(mut resolved) = std::fs::canonicalize(&prefix) {
            for component in &components[split..] {
                match component {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(part) => resolved.push(part),
                    _ => {}
                }
            }
            return resolved;
        }
    }
    let mut resolved = PathBuf::from("/");
    for component in components {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(part) => resolved.push(part),
            _ => {}
        }
    }
    resolved
}

/// Checks a replicaSet or volume name (see [`crate::names::check`]).
pub(crate) fn check_name(name: &str, empty: Error, dash: fn(String) -> Error) -> Result<()> {
    crate::names::check(name, empty, dash)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(format!("record {key} is not readable: {e}")))
}

/// GPUs and ports a claim adds to a transaction.
pub(crate) fn claim(txn: Txn, holder: &str, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus.iter().fold(txn, |t, uuid| {
        t.absent(keys::gpu_claim(uuid))
            .put(keys::gpu_claim(uuid), holder.as_bytes().to_vec())
    });
    ports.iter().fold(txn, |t, port| {
        t.absent(keys::port_claim(*port))
            .put(keys::port_claim(*port), holder.as_bytes().to_vec())
    })
}

/// Releases GPUs and ports in a transaction.
pub(crate) fn release(txn: Txn, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus
        .iter()
        .fold(txn, |t, uuid| t.delete(keys::gpu_claim(uuid)));
    ports
        .iter()
        .fold(txn, |t, port| t.delete(keys::port_claim(*port)))
}

/// The set of keys of `holders` not held by `me`.
pub(crate) fn taken_by_others<K: Clone + Eq + std::hash::Hash>(
    holders: &HashMap<K, String>,
    me: &str,
) -> HashSet<K> {
    holders
        .iter()
        .filter(|(_, holder)| holder.as_str() != me)
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::MemoryStore;

    fn engine(config: EngineConfig) -> Engine {
        Engine::new(
            Arc::new(MockContainerRuntime::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::fake(1)),
            config,
        )
    }

    #[tokio::test]
    async fn host_paths_need_an_allowed_root_and_never_a_system_path() {
        let open = engine(EngineConfig {
            allowed_host_paths: vec!["/data".into(), "/".into()],
            ..Default::default()
        });
        let bind = |src: &str| Bind {
            src: src.into(),
            dest: "/mnt".into(),
        };
        assert!(open.check_bind(&bind("/data/x")).await.is_ok());
        for refused in [
            "/",
            "/etc/shadow",
            "/var/run/docker.sock",
            "/proc/1",
            "/data/../etc",
        ] {
            assert_eq!(
                open.check_bind(&bind(refused)).await.unwrap_err().code(),
                1037,
                "{refused}"
            );
        }
        // `..` and symlinks are resolved before the policy is applied.
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("etc-link")).unwrap();
        let sandboxed = engine(EngineConfig {
            allowed_host_paths: vec![allowed.clone()],
            ..Default::default()
        });
        let inside = format!("{}/sub/../data", allowed.display());
        assert_eq!(
            sandboxed.check_bind(&bind(&inside)).await.unwrap().src,
            format!("{}/data", allowed.canonicalize().unwrap().display())
        );
        for escaping in [
            format!("{}/etc-link/passwd", allowed.display()),
            format!("{}/../outside", allowed.display()),
        ] {
            assert_eq!(
                sandboxed
                    .check_bind(&bind(&escaping))
                    .await
                    .unwrap_err()
                    .code(),
                1037,
                "{escaping}"
            );
        }
        let closed = engine(EngineConfig::default());
        assert_eq!(
            closed
                .check_bind(&bind("/data/x"))
                .await
                .unwrap_err()
                .code(),
            1037
        );
        let root = Bind {
            src: "/data/x".into(),
            dest: "/".into(),
        };
        assert_eq!(open.check_bind(&root).await.unwrap_err().code(), 1000);
    }
}
