//! ReplicaSet operations: run, patch, rollback, restart, stop, pause, continue, delete, exec,
//! commit, info, history, list.
//!
//! Every change of GPUs, mounts or filesystem is a new version, made in three steps:
//! [`Engine::prepare`] claims what the new version needs and records it (before Docker is
//! touched), stops the old container, snapshots its filesystem and creates the new container;
//! [`Engine::activate`] starts it; [`Engine::finish`] removes the old container and makes the new
//! version current. [`Engine::abort`] undoes a prepared version. Volume resize uses the same
//! steps across several replicaSets at once.

use std::collections::HashSet;

use crate::engine::{
    check_name, claim, encode, release, taken_by_others, Engine, LABEL_REPLICA_SET, LABEL_VERSION,
};
use crate::error::{Error, Operation, Result};
use crate::keys;
use crate::model::{now, ReplicaSet, ReplicaSetInfo, ReplicaSetSpec, Status, Version};
use crate::runtime::{Bind, ContainerSpec, ExecOutput, PortMapping};
use crate::sched::{host_port_is_free, pick_gpus, pick_ports};
use crate::store::Txn;

/// A request to run a new replicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRequest {
    /// ReplicaSet name, `[A-Za-z0-9_.]+`.
    pub name: String,
    /// A local image (never pulled).
    pub image: String,
    /// GPUs wanted; 0 = cardless.
    pub gpu_count: i64,
    /// Mounts.
    pub binds: Vec<Bind>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Command replacing the image's.
    pub cmd: Option<Vec<String>>,
    /// Container ports to publish (`22`, `53/udp`).
    pub container_ports: Vec<String>,
}

/// A change to a replicaSet; an empty patch recreates it as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchRequest {
    /// New GPU count.
    pub gpu_count: Option<i64>,
    /// One bind swapped for another.
    pub bind: Option<BindSwap>,
}

/// Replace the mount `old` with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSwap {
    /// A bind the current version has.
    pub old: Bind,
    /// Its replacement.
    pub new: Bind,
}

/// Which filesystem a new version starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filesystem {
    /// The current container's, as it is now.
    Current,
    /// The snapshot of an earlier version.
    Of(u32),
}

/// A new version created but not yet current.
pub(crate) struct Prepared {
    name: String,
    head: ReplicaSet,
    old: Version,
    new: Version,
    /// Whether the old container ran before we stopped it.
    was_running: bool,
    /// Whether the new container is to run (false keeps a paused or stopped set as it was).
    run: bool,
    claimed_gpus: Vec<String>,
    claimed_ports: Vec<u16>,
    released_gpus: Vec<String>,
}

fn parse_container_port(port: &str) -> Result<String> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|p| p > 0);
    if !valid_number || !["tcp", "udp", "sctp"].contains(&protocol) {
        return Err(Error::InvalidParams(format!(
            "container port '{port}' is not a port number (1-65535) with an optional /tcp or /udp"
        )));
    }
    Ok(format!("{number}/{protocol}"))
}

impl Engine {
    /// Creates replicaSet `name` at version 1 and starts it.
    pub async fn run(&self, request: RunRequest) -> Result<ReplicaSetInfo> {
        let RunRequest {
            name,
            image,
            gpu_count,
            binds,
            env,
            cmd,
            container_ports,
        } = request;
        check_name(&name, Error::NameEmpty, Error::NameHasDash)?;
        if image.trim().is_empty() {
            return Err(Error::ImageNameEmpty);
        }
        if gpu_count < 0 {
            return Err(Error::NegativeGpuCount(gpu_count));
        }
        if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
            return Err(Error::InvalidParams(format!(
                "env '{bad}' is not KEY=value"
            )));
        }
        if cmd.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(Error::InvalidParams(
                "cmd, when given, must not be empty".into(),
            ));
        }
        let container_ports = container_ports
            .iter()
            .map(|p| parse_container_port(p))
            .collect::<Result<Vec<_>>>()?;
        if container_ports.iter().collect::<HashSet<_>>().len() != container_ports.len() {
            return Err(Error::InvalidParams(
                "a container port is listed twice".into(),
            ));
        }
        let _guard = self.lock(&format!("rs:{name}")).await;
        if self.store.get(&keys::replica_set(&name)).await?.is_some() {
            return Err(Error::AlreadyExists(name));
        }
        for bind in &binds {
            self.check_bind(bind).await?;
        }
        if self.runtime.inspect_image(&image).await?.is_none() {
            return Err(Error::ImageNotFound(image));
        }
        let spec = ReplicaSetSpec {
            image: image.clone(),
            gpu_count: gpu_count as u32,
            binds,
            env,
            cmd,
            container_ports,
        };
        let version = self.claim_first_version(&name, spec).await?;
        let container = self.container_spec(&name, &version);
        let started = async {
            self.runtime.create_container(&container).await?;
            self.runtime.start_container(&container.name).await
        }
        .await;
        if let Err(e) = started {
            // Undo everything: the container, the records and the claims.
            let cleanup = self.runtime.remove_container(&container.name).await;
            let ports: Vec<u16> = version.ports.iter().map(|p| p.host_port).collect();
            let txn = release(Txn::new(), &version.gpus, &ports)
                .delete(keys::replica_set(&name))
                .delete(keys::version(&name, 1));
            self.commit(txn).await?;
            cleanup?;
            return Err(e.during(Operation::Run));
        }
        self.info(&name).await
    }

    /// Picks GPUs and ports for a new replicaSet and records it, retrying if another engine
    /// claims the same GPUs first.
    async fn claim_first_version(&self, name: &str, spec: ReplicaSetSpec) -> Result<Version> {
        for _ in 0..8 {
            let gpus = self
                .pick_gpus_for(name, &[], spec.gpu_count as usize)
                .await?;
            let ports = self
                .pick_ports_for(name, &spec.container_ports, &[])
                .await?;
            let version = Version {
                version: 1,
                container: format!("{name}-1"),
                image: spec.image.clone(),
                spec: spec.clone(),
                gpus: gpus.clone(),
                ports: ports.clone(),
                snapshot: None,
                created_at: now(),
            };
            let head = ReplicaSet {
                name: name.to_string(),
                current: 1,
                latest: 1,
                status: Status::Running,
                gpus: gpus.clone(),
                ports: ports.clone(),
                pending: None,
                created_at: version.created_at.clone(),
            };
            let host_ports: Vec<u16> = ports.iter().map(|p| p.host_port).collect();
            let txn = claim(Txn::new(), name, &gpus, &host_ports)
                .absent(keys::replica_set(name))
                .put(keys::replica_set(name), encode(&head))
                .put(keys::version(name, 1), encode(&version));
            if self.store.commit(txn).await? {
                return Ok(version);
            }
            if self.store.get(&keys::replica_set(name)).await?.is_some() {
                return Err(Error::AlreadyExists(name.to_string()));
            }
        }
        Err(Error::failed(
            Operation::Run,
            "GPUs or ports kept being claimed by others; try again",
        ))
    }

    async fn pick_gpus_for(
        &self,
        name: &str,
        keep: &[String],
        count: usize,
    ) -> Result<Vec<String>> {
        let gpus = self.inventory.gpus().await?;
        let holders = self.gpu_holders().await?;
        let mut taken = taken_by_others(&holders, name);
        // GPUs we hold but do not keep stay ours until the old container is gone.
        taken.extend(holders.keys().filter(|u| !keep.contains(u)).cloned());
        pick_gpus(&gpus, &taken, keep, count).ok_or_else(|| Error::NotEnoughGpus {
            wanted: count,
            free: gpus.iter().filter(|g| !taken.contains(&g.uuid)).count(),
            total: gpus.len(),
        })
    }

    /// Host ports for `container_ports`: `previous` ones when still free, new ones otherwise.
    async fn pick_ports_for(
        &self,
        name: &str,
        container_ports: &[String],
        previous: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let holders = self.port_holders().await?;
        let mut taken: HashSet<u16> = holders.keys().copied().collect();
        let mut mappings = Vec::new();
        let mut missing = Vec::new();
        for port in container_ports {
            let reusable = previous.iter().find(|p| {
                &p.container_port == port
                    && holders.get(&p.host_port).is_none_or(|h| h == name)
                    && (holders.contains_key(&p.host_port) || host_port_is_free(p.host_port))
            });
            match reusable {
                Some(p) => mappings.push(p.clone()),
                None => missing.push(port.clone()),
            }
        }
        taken.extend(mappings.iter().map(|p| p.host_port));
        let range = self.config.port_range;
        let fresh =
            pick_ports(range, &taken, missing.len(), host_port_is_free).ok_or_else(|| {
                Error::NotEnoughPorts {
                    wanted: missing.len(),
                    range: range.to_string(),
                }
            })?;
        mappings.extend(
            missing
                .into_iter()
                .zip(fresh)
                .map(|(container_port, host_port)| PortMapping {
                    container_port,
                    host_port,
                }),
        );
        // Keep the order the user gave.
        mappings.sort_by_key(|m| container_ports.iter().position(|p| p == &m.container_port));
        Ok(mappings)
    }

    /// The container a version of `name` is (or was) made of.
    pub fn container_spec(&self, name: &str, version: &Version) -> ContainerSpec {
        let mut env = version.spec.env.clone();
        env.retain(|e| !e.starts_with("CONTAINER_VERSION="));
        env.push(format!("CONTAINER_VERSION={}", version.version));
        ContainerSpec {
            name: version.container.clone(),
            image: version.image.clone(),
            env,
            cmd: version.spec.cmd.clone(),
            binds: version.spec.binds.clone(),
            ports: version.ports.clone(),
            gpus: version.gpus.clone(),
            gpu_attach: self.config.gpu_attach,
            labels: self.labels(&[
                (LABEL_REPLICA_SET, name.to_string()),
                (LABEL_VERSION, version.version.to_string()),
            ]),
        }
    }

    async fn head(&self, name: &str) -> Result<(ReplicaSet, u64)> {
        self.read(&keys::replica_set(name))
            .await?
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    async fn version_record(&self, name: &str, version: u32) -> Result<Version> {
        self.read(&keys::version(name, version))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| Error::Store(format!("version {version} of '{name}' has no record")))
    }

    /// Changes GPU count and/or one bind; an empty patch recreates the container as it is.
    pub async fn patch(&self, name: &str, patch: PatchRequest) -> Result<ReplicaSetInfo> {
        if let Some(count) = patch.gpu_count.filter(|c| *c < 0) {
            return Err(Error::NegativeGpuCount(count));
        }
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (head, _) = self.head(name).await?;
        let current = self.version_record(name, head.current).await?;
        let mut spec = current.spec.clone();
        if let Some(count) = patch.gpu_count {
            spec.gpu_count = count as u32;
        }
        if let Some(swap) = &patch.bind {
            let slot = spec
                .binds
                .iter()
                .position(|b| b == &swap.old)
                .ok_or_else(|| {
                    Error::InvalidParams(format!(
                        "'{}:{}' is not a bind of '{name}'",
                        swap.old.src, swap.old.dest
                    ))
                })?;
            self.check_bind(&swap.new).await?;
            spec.binds[slot] = swap.new.clone();
        }
        let asked_for_something = patch.gpu_count.is_some() || patch.bind.is_some();
        if asked_for_something && spec == current.spec {
            return Err(Error::NoNeedPatch(format!(
                "'{name}' already has {} GPUs and these binds",
                spec.gpu_count
            )));
        }
        self.new_version(name, spec, Filesystem::Current)
            .await
            .map_err(|e| e.during(Operation::Patch))
    }

    /// New version with the spec and filesystem of `version`.
    pub async fn rollback(&self, name: &str, version: i64) -> Result<ReplicaSetInfo> {
        if version < 0 {
            return Err(Error::NegativeVersion(version));
        }
        let version = u32::try_from(version)
            .map_err(|_| Error::InvalidParams(format!("version {version} is too large")))?;
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (head, _) = self.head(name).await?;
        if version == head.current {
            return Err(Error::NoNeedRollback(version));
        }
        let target = self
            .read::<Version>(&keys::version(name, version))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| {
                Error::refused(
                    Operation::Rollback,
                    format!("'{name}' has no version {version}"),
                )
            })?;
        if target.snapshot.is_none() {
            return Err(Error::refused(
                Operation::Rollback,
                format!(
                    "the filesystem of version {version} was pruned (only the newest {} snapshots are kept)",
                    self.config.keep_snapshots
                ),
            ));
        }
        self.new_version(name, target.spec, Filesystem::Of(version))
            .await
            .map_err(|e| e.during(Operation::Rollback))
    }

    /// New version with the same spec and filesystem; GPUs are claimed again (the ones held are
    /// kept; a stopped set gets any free ones).
    pub async fn restart(&self, name: &str) -> Result<ReplicaSetInfo> {
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (head, _) = self.head(name).await?;
        let current = self.version_record(name, head.current).await?;
        self.new_version(name, current.spec, Filesystem::Current)
            .await
            .map_err(|e| e.during(Operation::Restart))
    }

    async fn new_version(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
        filesystem: Filesystem,
    ) -> Result<ReplicaSetInfo> {
        let prepared = self.prepare(name, spec, filesystem, true).await?;
        let prepared = self.activate(prepared).await?;
        self.finish(prepared).await?;
        self.info(name).await
    }

    /// Prepares a new version with `spec` on the current filesystem that keeps the set's
    /// status (a volume resize moving its users).
    pub(crate) async fn prepare_rebind(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
    ) -> Result<Prepared> {
        self.prepare(name, spec, Filesystem::Current, false).await
    }

    /// Claims and records a new version, stops and snapshots the old container, creates the new
    /// one. `run` false keeps a paused or stopped set paused or stopped (volume rebinds).
    async fn prepare(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
        filesystem: Filesystem,
        run: bool,
    ) -> Result<Prepared> {
        let (head, revision) = self.head(name).await?;
        let old = self.version_record(name, head.current).await?;
        let run = run || head.status == Status::Running;
        let claims_after = run || head.status.holds_claims();
        let held_gpus = if head.status.holds_claims() {
            head.gpus.clone()
        } else {
            Vec::new()
        };
        let (gpus, ports) = if claims_after {
            let gpus = self
                .pick_gpus_for(name, &held_gpus, spec.gpu_count as usize)
                .await?;
            let ports = self
                .pick_ports_for(name, &spec.container_ports, &head.ports)
                .await?;
            (gpus, ports)
        } else {
            (head.gpus.clone(), head.ports.clone())
        };
        let held_ports: Vec<u16> = if head.status.holds_claims() {
            head.ports.iter().map(|p| p.host_port).collect()
        } else {
            Vec::new()
        };
        let (claimed_gpus, claimed_ports) = if claims_after {
            (
                gpus.iter()
                    .filter(|g| !held_gpus.contains(g))
                    .cloned()
                    .collect(),
                ports
                    .iter()
                    .map(|p| p.host_port)
                    .filter(|p| !held_ports.contains(p))
                    .collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let released_gpus = held_gpus
            .iter()
            .filter(|g| !gpus.contains(g))
            .cloned()
            .collect();
        let number = head.latest + 1;
        let image = match filesystem {
            Filesystem::Current => self.snapshot_name(name, old.version),
            Filesystem::Of(k) => self
                .version_record(name, k)
                .await?
                .snapshot
                .ok_or_else(|| Error::Store(format!("version {k} has no snapshot")))?,
        };
        let new = Version {
            version: number,
            container: format!("{name}-{number}"),
            spec,
            gpus,
            ports,
            image,
            snapshot: None,
            created_at: now(),
        };
        let mut pending_head = head.clone();
        pending_head.latest = number;
        pending_head.pending = Some(number);
        let txn = claim(Txn::new(), name, &claimed_gpus, &claimed_ports)
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&pending_head))
            .put(keys::version(name, number), encode(&new));
        self.commit(txn).await?;
        let mut prepared = Prepared {
            name: name.to_string(),
            head: pending_head,
            old,
            new,
            was_running: false,
            run,
            claimed_gpus,
            claimed_ports,
            released_gpus,
        };
        if let Err(e) = self.replace_container(&mut prepared).await {
            self.abort(prepared).await;
            return Err(e);
        }
        Ok(prepared)
    }

    /// Stops the old container, snapshots it (flattening a long chain) and creates the new one.
    async fn replace_container(&self, prepared: &mut Prepared) -> Result<()> {
        let old = &prepared.old;
        let state = self.runtime.inspect_container(&old.container).await?;
        prepared.was_running = state.as_ref().is_some_and(|s| s.running);
        if prepared.was_running {
            self.runtime
                .stop_container(&old.container, self.config.stop_timeout)
                .await?;
        }
        let snapshot = self.snapshot_name(&prepared.name, old.version);
        let labels = self.labels(&[
            (LABEL_REPLICA_SET, prepared.name.clone()),
            (LABEL_VERSION, old.version.to_string()),
        ]);
        let depth = match self.runtime.inspect_image(&old.image).await? {
            Some(image) => image.layers,
            None => 0,
        };
        if depth + 1 > self.config.max_layers {
            tracing::info!(container = %old.container, depth, "flattening snapshot");
            self.runtime
                .commit_flattened(&old.container, &snapshot, &labels)
                .await?;
        } else {
            self.runtime
                .commit(&old.container, &snapshot, &labels)
                .await?;
        }
        let mut old = prepared.old.clone();
        old.snapshot = Some(snapshot);
        self.store
            .put(&keys::version(&prepared.name, old.version), encode(&old))
            .await?;
        prepared.old = old;
        let spec = self.container_spec(&prepared.name, &prepared.new);
        self.runtime.create_container(&spec).await?;
        Ok(())
    }

    /// Starts the new container (when it is to run); aborts on failure.
    pub(crate) async fn activate(&self, prepared: Prepared) -> Result<Prepared> {
        if !prepared.run {
            return Ok(prepared);
        }
        match self.runtime.start_container(&prepared.new.container).await {
            Ok(()) => Ok(prepared),
            Err(e) => {
                self.abort(prepared).await;
                Err(e)
            }
        }
    }

    /// Removes the old container and makes the new version current; then prunes snapshots.
    pub(crate) async fn finish(&self, prepared: Prepared) -> Result<()> {
        let Prepared {
            name,
            mut head,
            old,
            new,
            run,
            released_gpus,
            ..
        } = prepared;
        if let Err(e) = self.runtime.remove_container(&old.container).await {
            tracing::warn!(container = %old.container, "old container not removed: {e}");
        }
        head.current = new.version;
        head.pending = None;
        head.gpus = new.gpus.clone();
        head.ports = new.ports.clone();
        if run {
            head.status = Status::Running;
        }
        // GPUs go back to the pool only now that the container holding them is gone.
        let txn =
            release(Txn::new(), &released_gpus, &[]).put(keys::replica_set(&name), encode(&head));
        self.commit(txn).await?;
        if let Err(e) = self.prune_snapshots(&name).await {
            tracing::warn!(replica_set = %name, "snapshot pruning failed: {e}");
        }
        Ok(())
    }

    /// Undoes a prepared version: its container, its claims and its record; the old container
    /// runs again if it ran before. The version number stays used.
    pub(crate) async fn abort(&self, prepared: Prepared) {
        let Prepared {
            name,
            mut head,
            old,
            new,
            was_running,
            claimed_gpus,
            claimed_ports,
            ..
        } = prepared;
        if let Err(e) = self.runtime.remove_container(&new.container).await {
            tracing::error!(container = %new.container, "cannot remove failed version: {e}");
        }
        if was_running {
            if let Err(e) = self.runtime.start_container(&old.container).await {
                tracing::error!(container = %old.container, "cannot restart old version: {e}");
            }
        }
        head.pending = None;
        let txn = release(Txn::new(), &claimed_gpus, &claimed_ports)
            .delete(keys::version(&name, new.version))
            .put(keys::replica_set(&name), encode(&head));
        if let Err(e) = self.store.commit(txn).await {
            tracing::error!(replica_set = %name, "cannot release claims of failed version: {e}");
        }
    }

    pub(crate) fn snapshot_name(&self, name: &str, version: u32) -> String {
        format!(
            "{}/{}:v{version}",
            self.config.snapshot_repo,
            name.to_ascii_lowercase()
        )
    }

    /// Untags snapshots beyond the newest `keep_snapshots`.
    async fn prune_snapshots(&self, name: &str) -> Result<()> {
        let versions: Vec<Version> = self.read_all(&keys::versions(name)).await?;
        let keep = self.config.keep_snapshots.max(1);
        for mut version in versions
            .into_iter()
            .rev()
            .filter(|v| v.snapshot.is_some())
            .skip(keep)
        {
            if let Some(snapshot) = version.snapshot.take() {
                self.runtime.remove_image(&snapshot).await?;
                self.store
                    .put(&keys::version(name, version.version), encode(&version))
                    .await?;
            }
        }
        Ok(())
    }

    /// Stops the container and releases its GPUs and ports.
    pub async fn stop(&self, name: &str) -> Result<()> {
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (mut head, revision) = self.head(name).await?;
        let container = format!("{name}-{}", head.current);
        self.runtime
            .stop_container(&container, self.config.stop_timeout)
            .await
            .map_err(|e| e.during(Operation::Stop))?;
        if head.status == Status::Stopped {
            return Ok(());
        }
        let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
        let txn =
            release(Txn::new(), &head.gpus, &ports).unchanged(keys::replica_set(name), revision);
        head.status = Status::Stopped;
        let txn = txn.put(keys::replica_set(name), encode(&head));
        self.commit(txn)
            .await
            .map_err(|e| e.during(Operation::Stop))
    }

    /// Stops the container but keeps its GPUs and ports.
    pub async fn pause(&self, name: &str) -> Result<()> {
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (mut head, revision) = self.head(name).await?;
        if head.status == Status::Stopped {
            return Err(Error::refused(
                Operation::Pause,
                format!("'{name}' is stopped and holds no GPUs; use continue or restart"),
            ));
        }
        let container = format!("{name}-{}", head.current);
        self.runtime
            .stop_container(&container, self.config.stop_timeout)
            .await
            .map_err(|e| e.during(Operation::Pause))?;
        head.status = Status::Paused;
        let txn = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&head));
        self.commit(txn)
            .await
            .map_err(|e| e.during(Operation::Pause))
    }

    /// Starts the current container again; after a stop, first claims the same GPUs and ports
    /// again, or fails saying who holds them.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (mut head, revision) = self.head(name).await?;
        let container = format!("{name}-{}", head.current);
        let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
        let reclaimed = head.status == Status::Stopped;
        if reclaimed {
            let gpu_holders = self.gpu_holders().await?;
            let port_holders = self.port_holders().await?;
            let busy: Vec<String> = head
                .gpus
                .iter()
                .filter_map(|g| {
                    gpu_holders
                        .get(g)
                        .map(|h| format!("GPU {g} (held by '{h}')"))
                })
                .chain(ports.iter().filter_map(|p| {
                    port_holders
                        .get(p)
                        .map(|h| format!("port {p} (held by '{h}')"))
                }))
                .collect();
            if !busy.is_empty() {
                return Err(Error::refused(
                    Operation::Continue,
                    format!(
                        "'{name}' was stopped and {} now in use; restart it to get other GPUs and ports",
                        busy.join(", ")
                    ),
                ));
            }
        }
        head.status = Status::Running;
        let txn = if reclaimed {
            claim(Txn::new(), name, &head.gpus, &ports)
        } else {
            Txn::new()
        }
        .unchanged(keys::replica_set(name), revision)
        .put(keys::replica_set(name), encode(&head));
        if !self.store.commit(txn).await? {
            return Err(Error::refused(
                Operation::Continue,
                format!("the GPUs or ports of '{name}' were just claimed by another replicaSet; restart it instead"),
            ));
        }
        let started = self
            .runtime
            .restart_container(&container, self.config.stop_timeout)
            .await;
        if let Err(e) = started {
            let mut undo = head.clone();
            undo.status = if reclaimed {
                Status::Stopped
            } else {
                Status::Paused
            };
            let txn = if reclaimed {
                release(Txn::new(), &head.gpus, &ports)
            } else {
                Txn::new()
            }
            .put(keys::replica_set(name), encode(&undo));
            self.commit(txn).await?;
            return Err(e.during(Operation::Continue));
        }
        Ok(())
    }

    /// Removes every container, record, claim and snapshot of the replicaSet.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _guard = self.lock(&format!("rs:{name}")).await;
        let (head, _) = self.head(name).await?;
        let versions: Vec<Version> = self.read_all(&keys::versions(name)).await?;
        let result = async {
            let label = format!("{LABEL_REPLICA_SET}={name}");
            for container in self.runtime.list_containers(&label).await? {
                self.runtime.remove_container(&container.id).await?;
            }
            self.runtime
                .remove_container(&format!("{name}-{}", head.current))
                .await?;
            let ports: Vec<u16> = if head.status.holds_claims() {
                head.ports.iter().map(|p| p.host_port).collect()
            } else {
                Vec::new()
            };
            let gpus = if head.status.holds_claims() {
                head.gpus.clone()
            } else {
                Vec::new()
            };
            let txn = versions
                .iter()
                .fold(release(Txn::new(), &gpus, &ports), |t, v| {
                    t.delete(keys::version(name, v.version))
                })
                .delete(keys::replica_set(name));
            self.commit(txn).await?;
            // Newest first: a snapshot goes only once the snapshots built on it are gone.
            for snapshot in versions.iter().rev().filter_map(|v| v.snapshot.as_ref()) {
                self.runtime.remove_image(snapshot).await?;
            }
            Ok(())
        }
        .await;
        result.map_err(|e: Error| e.during(Operation::Delete))
    }

    /// Runs `argv` (no shell) in the current container.
    pub async fn exec(
        &self,
        name: &str,
        argv: &[String],
        workdir: Option<String>,
    ) -> Result<ExecOutput> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(Error::InvalidParams("cmd must name a program".into()));
        }
        let (head, _) = self.head(name).await?;
        if head.status != Status::Running {
            return Err(Error::refused(
                Operation::Exec,
                format!("'{name}' is not running; continue or restart it first"),
            ));
        }
        self.runtime
            .exec(&format!("{name}-{}", head.current), argv, workdir)
            .await
            .map_err(|e| e.during(Operation::Exec))
    }

    /// Commits the current container to image `image`.
    pub async fn commit_image(&self, name: &str, image: &str) -> Result<String> {
        if image.trim().is_empty() {
            return Err(Error::InvalidParams(
                "newImageName must not be empty".into(),
            ));
        }
        let (head, _) = self.head(name).await?;
        let labels = self.labels(&[(LABEL_REPLICA_SET, name.to_string())]);
        self.runtime
            .commit(&format!("{name}-{}", head.current), image, &labels)
            .await
            .map_err(|e| e.during(Operation::Commit))?;
        Ok(image.to_string())
    }

    /// The replicaSet with its current version.
    pub async fn info(&self, name: &str) -> Result<ReplicaSetInfo> {
        let (head, _) = self.head(name).await?;
        let version = self
            .version_record(name, head.current)
            .await
            .map_err(|e| e.during(Operation::Info))?;
        Ok(ReplicaSetInfo {
            replica_set: head,
            version,
        })
    }

    /// Every version, newest first, in one store read.
    pub async fn history(&self, name: &str) -> Result<Vec<Version>> {
        self.head(name).await?;
        let mut versions: Vec<Version> = self
            .read_all(&keys::versions(name))
            .await
            .map_err(|e| e.during(Operation::History))?;
        versions.reverse();
        Ok(versions)
    }

    /// Every replicaSet with its current version, by name.
    pub async fn list(&self) -> Result<Vec<ReplicaSetInfo>> {
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let versions: Vec<Version> = self.read_all(keys::ALL_VERSIONS).await?;
        Ok(heads
            .into_iter()
            .filter_map(|head| {
                let container = format!("{}-{}", head.name, head.current);
                let version = versions.iter().find(|v| v.container == container)?.clone();
                Some(ReplicaSetInfo {
                    replica_set: head,
                    version,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ports_take_an_optional_protocol() {
        assert_eq!(parse_container_port("22").unwrap(), "22/tcp");
        assert_eq!(parse_container_port("53/udp").unwrap(), "53/udp");
        for bad in ["0", "70000", "ssh", "22/xyz", ""] {
            assert_eq!(parse_container_port(bad).unwrap_err().code(), 1000, "{bad}");
        }
    }
}
