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
use crate::events::describe_info;
use crate::failpoint::failpoint;
use crate::keys;
use crate::limits::Limits;
use crate::model::{now, Intent, ReplicaSet, ReplicaSetInfo, ReplicaSetSpec, Status, Version};
use crate::runtime::{Bind, ContainerSpec, ExecOutput, PortMapping};
use crate::sched::{host_port_is_free, pick_gpus, pick_ports};
use crate::store::Txn;
use crate::transition::{Filesystem, Prepared};

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
    /// CPU, memory and shm wanted, within the share of `gpu_count` GPUs; what is not asked
    /// for gets the share.
    pub resources: Limits,
}

/// A change to a replicaSet; an empty patch recreates it as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchRequest {
    /// New GPU count.
    pub gpu_count: Option<i64>,
    /// One bind swapped for another.
    pub bind: Option<BindSwap>,
    /// CPU, memory or shm asked anew (within the share of the new GPU count); fields left
    /// `None` keep the earlier ask.
    pub resources: Option<Limits>,
}

/// Replace the mount `old` with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSwap {
    /// A bind the current version has.
    pub old: Bind,
    /// Its replacement.
    pub new: Bind,
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
        let name = request.name.clone();
        self.recorded("run", &name, describe_info, self.run_set(request))
            .await
    }

    async fn run_set(&self, request: RunRequest) -> Result<ReplicaSetInfo> {
        let RunRequest {
            name,
            image,
            gpu_count,
            binds,
            env,
            cmd,
            container_ports,
            resources,
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
        self.config.resources.grant(gpu_count as u32, &resources)?;
        let _guard = self.lock_set(&name).await;
        self.settle(&name).await?;
        if self.store.get(&keys::replica_set(&name)).await?.is_some() {
            return Err(Error::AlreadyExists(name));
        }
        let mut checked = Vec::with_capacity(binds.len());
        for bind in &binds {
            checked.push(self.check_bind(bind).await?);
        }
        let binds = checked;
        if !crate::names::is_image_reference(&image) {
            return Err(Error::InvalidParams(format!(
                "imageName '{image}' is not a Docker image reference (lowercase repository, optional :tag)"
            )));
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
            resources,
        };
        let id = crate::names::new_id()?;
        let version = self.claim_first_version(&name, &id, spec, &image).await?;
        failpoint("run.recorded");
        let container = self.container_spec(&name, &version);
        let started = async {
            self.runtime.create_container(&container).await?;
            failpoint("run.created");
            self.finish_run(&name).await
        }
        .await;
        if let Err(e) = started {
            self.undo_run(&name, &id, &version).await?;
            return Err(e.during(Operation::Run));
        }
        self.info(&name).await
    }

    /// Starts version 1 (if it is not running) and clears the intent.
    pub(crate) async fn finish_run(&self, name: &str) -> Result<()> {
        let container = crate::names::container(name, 1);
        if !self.is_running(&container).await? {
            self.runtime.start_container(&container).await?;
        }
        failpoint("run.started");
        let (mut head, revision) = self.head(name).await?;
        head.pending = None;
        let txn = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&head));
        self.commit(txn).await
    }

    /// Removes everything a failed run made: the container, the records and the claims.
    pub(crate) async fn undo_run(&self, name: &str, id: &str, version: &Version) -> Result<()> {
        self.runtime.remove_container(&version.container).await?;
        if version.image == self.clone_base(id) {
            self.runtime.remove_image(&version.image).await?;
        }
        let ports: Vec<u16> = version.ports.iter().map(|p| p.host_port).collect();
        let txn = release(Txn::new(), &version.gpus, &ports)
            .delete(keys::replica_set(name))
            .delete(keys::current(name))
            .delete(keys::version(name, 1));
        self.commit(txn).await
    }

    /// Picks GPUs and ports for a new replicaSet and records it, retrying if another engine
    /// claims the same GPUs first.
    /// `image` is what the container is created from: the user's image, or a clone's base;
    /// `id` is the new set's immutable id.
    pub(crate) async fn claim_first_version(
        &self,
        name: &str,
        id: &str,
        spec: ReplicaSetSpec,
        image: &str,
    ) -> Result<Version> {
        for _ in 0..8 {
            let gpus = self
                .pick_gpus_for(name, &[], spec.gpu_count as usize)
                .await?;
            let ports = self
                .pick_ports_for(name, &spec.container_ports, &[])
                .await?;
            let version = Version {
                version: 1,
                container: crate::names::container(name, 1),
                image: image.to_string(),
                limits: self.config.resources.fit(spec.gpu_count, &spec.resources),
                spec: spec.clone(),
                gpus: gpus.clone(),
                ports: ports.clone(),
                snapshot: None,
                created_at: now(),
            };
            let head = ReplicaSet {
                name: name.to_string(),
                id: id.to_string(),
                current: 1,
                latest: 1,
                status: Status::Running,
                gpus: gpus.clone(),
                ports: ports.clone(),
                pending: Some(Intent::Run),
                created_at: version.created_at.clone(),
                timers: Default::default(),
            };
            let host_ports: Vec<u16> = ports.iter().map(|p| p.host_port).collect();
            let txn = claim(Txn::new(), name, &gpus, &host_ports)
                .absent(keys::replica_set(name))
                .put(keys::replica_set(name), encode(&head))
                .put(keys::version(name, 1), encode(&version))
                .put(keys::current(name), encode(&version));
            if self.store.commit(txn).await? {
                return Ok(version);
            }
            if self.store.get(&keys::replica_set(name)).await?.is_some() {
                return Err(Error::AlreadyExists(name.to_string()));
            }
        }
        Err(Error::Conflict(
            "the GPUs or ports picked kept being claimed by other requests".into(),
        ))
    }

    pub(crate) async fn pick_gpus_for(
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
    pub(crate) async fn pick_ports_for(
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
            limits: version.limits,
            init: self.config.resources.init,
            labels: self.labels(&[
                (LABEL_REPLICA_SET, name.to_string()),
                (LABEL_VERSION, version.version.to_string()),
            ]),
        }
    }

    pub(crate) async fn head(&self, name: &str) -> Result<(ReplicaSet, u64)> {
        self.read(&keys::replica_set(name))
            .await?
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    pub(crate) async fn version_record(&self, name: &str, version: u32) -> Result<Version> {
        self.read(&keys::version(name, version))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| Error::Store(format!("version {version} of '{name}' has no record")))
    }

    /// Changes GPU count and/or one bind; an empty patch recreates the container as it is.
    pub async fn patch(&self, name: &str, patch: PatchRequest) -> Result<ReplicaSetInfo> {
        self.recorded("patch", name, describe_info, self.patch_set(name, patch))
            .await
    }

    async fn patch_set(&self, name: &str, patch: PatchRequest) -> Result<ReplicaSetInfo> {
        if let Some(count) = patch.gpu_count.filter(|c| *c < 0) {
            return Err(Error::NegativeGpuCount(count));
        }
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
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
                .position(|b| {
                    b == &swap.old
                        || swap.old.is_host_path()
                            && b.src
                                == crate::engine::resolve_path(std::path::Path::new(&swap.old.src))
                                    .to_string_lossy()
                            && b.dest == swap.old.dest
                })
                .ok_or_else(|| {
                    Error::InvalidParams(format!(
                        "'{}:{}' is not a bind of '{name}'",
                        swap.old.src, swap.old.dest
                    ))
                })?;
            spec.binds[slot] = self.check_bind(&swap.new).await?;
        }
        if let Some(asked) = patch.resources {
            spec.resources = asked.or(spec.resources);
            self.config
                .resources
                .grant(spec.gpu_count, &spec.resources)?;
        }
        let asked_for_something =
            patch.gpu_count.is_some() || patch.bind.is_some() || patch.resources.is_some();
        if asked_for_something && spec == current.spec {
            return Err(Error::NoNeedPatch(format!(
                "'{name}' already has {} GPUs, these binds and these resources",
                spec.gpu_count
            )));
        }
        self.new_version(name, spec, Filesystem::Current)
            .await
            .map_err(|e| e.during(Operation::Patch))
    }

    /// New version with the spec and filesystem of `version`.
    pub async fn rollback(&self, name: &str, version: i64) -> Result<ReplicaSetInfo> {
        self.recorded(
            "rollback",
            name,
            |info| format!("to version {version}: {}", describe_info(info)),
            self.rollback_set(name, version),
        )
        .await
    }

    async fn rollback_set(&self, name: &str, version: i64) -> Result<ReplicaSetInfo> {
        if version < 0 {
            return Err(Error::NegativeVersion(version));
        }
        let version = u32::try_from(version)
            .map_err(|_| Error::InvalidParams(format!("version {version} is too large")))?;
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
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
        self.recorded("restart", name, describe_info, self.restart_set(name))
            .await
    }

    async fn restart_set(&self, name: &str) -> Result<ReplicaSetInfo> {
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
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
        let prepared = self.prepare(name, spec, filesystem, true, None).await?;
        let prepared = self.activate(prepared).await?;
        self.finish(prepared).await?;
        self.info(name).await
    }

    /// Prepares a new version with `spec` on the current filesystem that keeps the set's
    /// status, as part of resizing `volume`.
    pub(crate) async fn prepare_rebind(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
        volume: &str,
    ) -> Result<Prepared> {
        self.prepare(
            name,
            spec,
            Filesystem::Current,
            false,
            Some(volume.to_string()),
        )
        .await
    }

    /// Writes `head` with `intent` pending, if nobody changed it since `revision`.
    async fn record_intent(
        &self,
        head: &mut ReplicaSet,
        revision: u64,
        intent: Intent,
    ) -> Result<()> {
        head.pending = Some(intent);
        let txn = Txn::new()
            .unchanged(keys::replica_set(&head.name), revision)
            .put(keys::replica_set(&head.name), encode(&*head));
        self.commit(txn).await
    }

    /// When Docker could not be reached, the recorded intent is dropped so that what the user
    /// is told ("nothing was changed") stays true: the next request does not finish it behind
    /// their back. (Had Docker acted after all, the reconciler settles the container.)
    async fn forget_unreached(&self, name: &str, result: Result<()>) -> Result<()> {
        let Err(Error::Unavailable(reason)) = result else {
            return result;
        };
        if let Ok(Some((mut head, revision))) =
            self.read::<ReplicaSet>(&keys::replica_set(name)).await
        {
            if matches!(
                head.pending,
                Some(Intent::Stop | Intent::Pause | Intent::Delete)
            ) {
                head.pending = None;
                let txn = Txn::new()
                    .unchanged(keys::replica_set(name), revision)
                    .put(keys::replica_set(name), encode(&head));
                if let Err(e) = self.store.commit(txn).await {
                    tracing::warn!(replica_set = %name, "intent kept after an outage: {e}");
                }
            }
        }
        Err(Error::Unavailable(reason))
    }

    /// Stops the container and releases its GPUs and ports.
    pub async fn stop(&self, name: &str) -> Result<()> {
        self.recorded(
            "stop",
            name,
            |_| "stopped; GPUs and ports released".into(),
            self.stop_set(name),
        )
        .await
    }

    pub(crate) async fn stop_set(&self, name: &str) -> Result<()> {
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
        let (mut head, revision) = self.head(name).await?;
        let container = crate::names::container(name, head.current);
        if head.status == Status::Stopped {
            return self
                .runtime
                .stop_container(&container, self.config.stop_timeout)
                .await
                .map_err(|e| e.during(Operation::Stop));
        }
        let result = async {
            self.record_intent(&mut head, revision, Intent::Stop)
                .await?;
            failpoint("stop.recorded");
            self.finish_stop(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e| e.during(Operation::Stop))
    }

    /// Stops the container, then releases the claims and records the stop.
    pub(crate) async fn finish_stop(&self, mut head: ReplicaSet) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        self.runtime
            .stop_container(&container, self.config.stop_timeout)
            .await?;
        failpoint("stop.stopped");
        let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
        let txn = release(Txn::new(), &head.gpus, &ports);
        head.status = Status::Stopped;
        head.pending = None;
        self.commit(txn.put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Stops the container but keeps its GPUs and ports.
    pub async fn pause(&self, name: &str) -> Result<()> {
        self.recorded(
            "pause",
            name,
            |_| "stopped; GPUs and ports kept".into(),
            self.pause_set(name),
        )
        .await
    }

    async fn pause_set(&self, name: &str) -> Result<()> {
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
        let (mut head, revision) = self.head(name).await?;
        if head.status == Status::Stopped {
            return Err(Error::refused(
                Operation::Pause,
                format!("'{name}' is stopped and holds no GPUs; use continue or restart"),
            ));
        }
        let result = async {
            self.record_intent(&mut head, revision, Intent::Pause)
                .await?;
            failpoint("pause.recorded");
            self.finish_pause(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e| e.during(Operation::Pause))
    }

    /// Stops the container and records the pause.
    pub(crate) async fn finish_pause(&self, mut head: ReplicaSet) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        self.runtime
            .stop_container(&container, self.config.stop_timeout)
            .await?;
        failpoint("pause.stopped");
        head.status = Status::Paused;
        head.pending = None;
        self.commit(Txn::new().put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Starts the current container again; after a stop, first claims the same GPUs and ports
    /// again, or fails saying who holds them. (The contract calls this "continue".)
    pub async fn resume(&self, name: &str) -> Result<()> {
        self.recorded(
            "continue",
            name,
            |_| "running again".into(),
            self.resume_set(name),
        )
        .await
    }

    async fn resume_set(&self, name: &str) -> Result<()> {
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
        let (mut head, revision) = self.head(name).await?;
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
        let before = head.status;
        head.status = Status::Running;
        head.pending = Some(Intent::Continue { reclaimed });
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
        failpoint("continue.recorded");
        self.finish_resume(head, before)
            .await
            .map_err(|e| e.during(Operation::Continue))
    }

    /// Starts the container and records it running; on failure puts the set back as it was
    /// (`before`), releasing claims taken again.
    pub(crate) async fn finish_resume(&self, mut head: ReplicaSet, before: Status) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        let started = async {
            if self.runtime.inspect_container(&container).await?.is_none() {
                // It vanished outside the engine: make it again from its version record (from
                // the image it was created from; what it wrote since is gone with it).
                let version = self.version_record(&head.name, head.current).await?;
                tracing::warn!(%container, "container is gone; creating it again from its record");
                self.runtime
                    .create_container(&self.container_spec(&head.name, &version))
                    .await?;
            }
            self.runtime
                .restart_container(&container, self.config.stop_timeout)
                .await
        }
        .await;
        let reclaimed = matches!(head.pending, Some(Intent::Continue { reclaimed: true }));
        head.pending = None;
        if let Err(e) = started {
            head.status = before;
            let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
            let txn = if reclaimed {
                release(Txn::new(), &head.gpus, &ports)
            } else {
                Txn::new()
            }
            .put(keys::replica_set(&head.name), encode(&head));
            self.commit(txn).await?;
            return Err(e);
        }
        failpoint("continue.started");
        self.commit(Txn::new().put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Removes every container, record, claim and snapshot of the replicaSet.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.recorded(
            "delete",
            name,
            |_| "containers, records, claims and snapshots removed".into(),
            self.delete_set(name),
        )
        .await
    }

    async fn delete_set(&self, name: &str) -> Result<()> {
        let _guard = self.lock_set(name).await;
        self.settle(name).await?;
        let (mut head, revision) = self.head(name).await?;
        let result = async {
            self.record_intent(&mut head, revision, Intent::Delete)
                .await?;
            failpoint("delete.recorded");
            self.finish_delete(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e: Error| e.during(Operation::Delete))
    }

    /// Removes containers, then records and claims, then snapshots; safe to repeat.
    pub(crate) async fn finish_delete(&self, head: ReplicaSet) -> Result<()> {
        let name = head.name.clone();
        let versions: Vec<Version> = self.read_all(&keys::versions(&name)).await?;
        let label = format!("{LABEL_REPLICA_SET}={name}");
        for container in self.runtime.list_containers(&label).await? {
            self.runtime.remove_container(&container.id).await?;
        }
        self.runtime
            .remove_container(&crate::names::container(&name, head.current))
            .await?;
        failpoint("delete.containers_removed");
        // Release only claims this set holds: a stopped set's GPUs may be someone else's now.
        let gpu_holders = self.gpu_holders().await?;
        let port_holders = self.port_holders().await?;
        let gpus: Vec<String> = gpu_holders
            .into_iter()
            .filter(|(_, holder)| holder == &name)
            .map(|(gpu, _)| gpu)
            .collect();
        let ports: Vec<u16> = port_holders
            .into_iter()
            .filter(|(_, holder)| holder == &name)
            .map(|(port, _)| port)
            .collect();
        let txn = versions
            .iter()
            .fold(release(Txn::new(), &gpus, &ports), |t, v| {
                t.delete(keys::version(&name, v.version))
            })
            .delete(keys::replica_set(&name))
            .delete(keys::current(&name));
        self.commit(txn).await?;
        failpoint("delete.records_removed");
        // Newest first: a snapshot goes only once the snapshots built on it are gone.
        for snapshot in versions.iter().rev().filter_map(|v| v.snapshot.as_ref()) {
            self.runtime.remove_image(snapshot).await?;
        }
        self.runtime
            .remove_image(&self.clone_base(&head.image_id()))
            .await?;
        Ok(())
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
        let container = crate::names::container(name, head.current);
        match self.runtime.exec(&container, argv, workdir).await {
            Err(Error::NotRunning(_)) => {
                // The records say running, Docker says otherwise: the reconciler settles it.
                self.nudge_reconcile(name);
                Err(Error::refused(
                    Operation::Exec,
                    format!(
                        "the container {container} of '{name}' is not running (it exited or was \
                         stopped outside gpu-replica); continue it, or wait for it to be restarted"
                    ),
                ))
            }
            other => other.map_err(|e| e.during(Operation::Exec)),
        }
    }

    /// Commits the current container to image `image`.
    pub async fn commit_image(&self, name: &str, image: &str) -> Result<String> {
        if image.trim().is_empty() {
            return Err(Error::InvalidParams(
                "newImageName must not be empty".into(),
            ));
        }
        if !crate::names::is_image_reference(image) {
            return Err(Error::InvalidParams(format!(
                "newImageName '{image}' is not a Docker image reference: lowercase letters, digits \
                 and single '.', '_' or '-' between them, then an optional ':tag'"
            )));
        }
        let (head, _) = self.head(name).await?;
        let labels = self.labels(&[(LABEL_REPLICA_SET, name.to_string())]);
        self.runtime
            .commit(&crate::names::container(name, head.current), image, &labels)
            .await
            .map_err(|e| e.during(Operation::Commit))?;
        Ok(image.to_string())
    }

    /// The replicaSet with its current version. Where the store has a generation (redb,
    /// memory), answers are kept until the next write to the store.
    pub async fn info(&self, name: &str) -> Result<ReplicaSetInfo> {
        // Read the generation before the records: a write that lands in between moves it,
        // so what is cached under it is never newer-looking than it is.
        let Some(generation) = self.store.generation() else {
            return self.read_info(name).await;
        };
        {
            let cache = self.info_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, info)) = cache.get(name) {
                if *at == generation {
                    return Ok(info.clone());
                }
            }
        }
        let info = self.read_info(name).await?;
        let mut cache = self.info_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 4096 {
            cache.retain(|_, (at, _)| *at == generation);
        }
        cache.insert(name.to_string(), (generation, info.clone()));
        Ok(info)
    }

    async fn read_info(&self, name: &str) -> Result<ReplicaSetInfo> {
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

    /// Every replicaSet with its current version, by name: two prefix reads, whatever the
    /// length of the histories.
    pub async fn list(&self) -> Result<Vec<ReplicaSetInfo>> {
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let mut current: std::collections::HashMap<String, Version> = self
            .store
            .list(keys::CURRENT)
            .await?
            .into_iter()
            .filter_map(|e| {
                let name = e.key[keys::CURRENT.len()..].to_string();
                Some((name, serde_json::from_slice(&e.value).ok()?))
            })
            .collect();
        let mut infos = Vec::with_capacity(heads.len());
        for head in heads {
            let version = match current.remove(&head.name) {
                Some(v) if v.version == head.current => v,
                // Recorded before the copies existed, or caught between two writes.
                _ => match self.version_record(&head.name, head.current).await {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            infos.push(ReplicaSetInfo {
                replica_set: head,
                version,
            });
        }
        Ok(infos)
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

#[cfg(test)]
mod cache_tests {
    use std::sync::Arc;

    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::{MemoryStore, StateStore};
    use crate::{keys, Engine};

    fn head(status: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"c","current":1,"latest":1,"status":"{status}","gpus":[],"ports":[],"pending":null,"created_at":"t"}}"#
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn info_is_cached_until_the_store_is_written() {
        let store = Arc::new(MemoryStore::new());
        let version = br#"{"version":1,"container":"c-1","spec":{"image":"i","gpu_count":0,"binds":[],"env":[],"cmd":null,"container_ports":[]},"gpus":[],"ports":[],"image":"i","snapshot":null,"created_at":"t"}"#;
        store
            .put(&keys::version("c", 1), version.to_vec())
            .await
            .unwrap();
        store
            .put(&keys::replica_set("c"), head("running"))
            .await
            .unwrap();
        let engine = Engine::new(
            Arc::new(MockContainerRuntime::new()),
            store.clone(),
            Arc::new(StaticInventory::fake(0)),
            Default::default(),
        );
        assert_eq!(
            engine.info("c").await.unwrap().replica_set.status,
            crate::Status::Running
        );
        assert_eq!(engine.info_cache.lock().unwrap().len(), 1);
        // A write by anyone holding the same store object is seen at once.
        store
            .put(&keys::replica_set("c"), head("stopped"))
            .await
            .unwrap();
        assert_eq!(
            engine.info("c").await.unwrap().replica_set.status,
            crate::Status::Stopped
        );
        store.delete(&keys::replica_set("c")).await.unwrap();
        assert_eq!(engine.info("c").await.unwrap_err().code(), 1016);
    }

    #[tokio::test]
    async fn list_reads_the_current_copies_and_falls_back_to_the_version_records() {
        let store = Arc::new(MemoryStore::new());
        let version = |v: u32| {
            format!(r#"{{"version":{v},"container":"c-{v}","spec":{{"image":"i","gpu_count":0,"binds":[],"env":[],"cmd":null,"container_ports":[]}},"gpus":[],"ports":[],"image":"i","snapshot":null,"created_at":"t"}}"#).into_bytes()
        };
        // A set recorded before the copies existed: no `current/` key.
        store.put(&keys::version("c", 1), version(1)).await.unwrap();
        store
            .put(&keys::replica_set("c"), head("running"))
            .await
            .unwrap();
        let engine = Engine::new(
            Arc::new(MockContainerRuntime::new()),
            store.clone(),
            Arc::new(StaticInventory::fake(0)),
            Default::default(),
        );
        let listed = engine.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].version.container, "c-1");
        // A copy of another version than the head's current is not trusted.
        store.put(&keys::current("c"), version(7)).await.unwrap();
        assert_eq!(engine.list().await.unwrap()[0].version.version, 1);
        // The copy is what is read when it matches: it says c-1 here, the record is gone.
        store.put(&keys::current("c"), version(1)).await.unwrap();
        store.delete(&keys::version("c", 1)).await.unwrap();
        assert_eq!(engine.list().await.unwrap()[0].version.container, "c-1");
    }
}
