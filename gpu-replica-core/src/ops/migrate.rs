//! Migration of a replicaSet to another node of the cluster.
//!
//! The source node (where the set lives) drives it; the target answers four calls of the
//! [`NodeLink`](crate::cluster::NodeLink):
//!
//! 1. Source: records `Intent::Migrate` in the head (the new version's number reserved), stops
//!    the container and commits its filesystem to the version's snapshot image.
//! 2. Target, `Receive`: claims GPUs and ports on itself (recorded in the intent, in the same
//!    transaction), loads the snapshot streamed from the source's Docker (`docker save` →
//!    `docker load`, no registry), creates the moved volumes and the new container.
//! 3. Target, `Files` (per volume, with `moveVolumes`): extracts the volume's files, streamed
//!    from the old container, into the new container's mount.
//! 4. Target, `Start`: starts the new container and, in one transaction, makes it current,
//!    moves the set (and its volumes) to itself and releases the source's claims. This is the
//!    commit point.
//! 5. Source: removes the old container, the set's snapshot images and moved volumes.
//!
//! Before step 4 commits, any failure undoes it: the target drops what it made (or its
//! recovery removes it as an orphan), the source releases what the intent records and starts
//! the old container again. A source killed meanwhile undoes it at its next start (the set is
//! still its own); a source killed after step 4 finds the old container an orphan.

use crate::cluster::{LinkRequest, Migration, NodeLink, NodeRecord};
use crate::engine::access::Holdings;
use crate::engine::claims::{release_keys, retry, Claim, Try, CLAIMS_KEPT_LOST};
use crate::engine::encode;
use crate::engine::events::describe_info;
use crate::error::{Error, Operation, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::model::{
    Intent, Moving, ReplicaSet, ReplicaSetInfo, Status, Version, Volume, VolumeVersion,
};
use crate::ops::Engine;
use crate::runtime::{Bind, ImageStream};
use crate::steps::migration::moving_of;
use crate::store::Txn;

/// The volume of a bind source `data-3`: its name and version.
fn volume_of(src: &str) -> Option<(&str, u32)> {
    let (base, number) = src.rsplit_once('-')?;
    Some((base, number.parse().ok()?))
}

/// The directory holding mount point `dest` (`/data` → `/`).
fn parent_of(dest: &str) -> String {
    match dest.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((parent, _)) => parent.to_string(),
    }
}

impl Engine {
    /// Moves replicaSet `name` to another node of the cluster: its current filesystem (and
    /// with `move_volumes`, its volumes' data) goes to the target's Docker, and a new version
    /// starts there with GPUs and ports of the target. The old container and claims go only
    /// once the new version is current; any failure before leaves the set as it was.
    pub async fn migrate(&self, name: &str, to: Migration) -> Result<ReplicaSetInfo> {
        self.ctx
            .recorded(
                "migrate",
                name,
                |info| format!("to node {}: {}", info.replica_set.node, describe_info(info)),
                self.migrate_set(name, to),
            )
            .await
    }

    async fn migrate_set(&self, name: &str, to: Migration) -> Result<ReplicaSetInfo> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (head, revision) = self.ctx.head(name).await?;
        if self.ctx.node_name().is_empty() {
            return Err(Error::InvalidParams(
                "this server is not part of a cluster (--node): there is no node to migrate to"
                    .into(),
            ));
        }
        let link = self.ctx.shared.link.get().cloned().ok_or_else(|| {
            Error::InvalidParams("this node has no link to the others of its cluster".into())
        })?;
        if head.node != self.ctx.node_name() {
            return Err(Error::Conflict(format!(
                "'{name}' lives on node '{}', not on this one",
                head.node
            )));
        }
        if to.node == head.node {
            return Err(Error::InvalidParams(format!(
                "'{name}' already lives on node '{}'",
                to.node
            )));
        }
        let target = self.ready_node(&to.node).await?;
        if target.cordoned {
            return Err(Error::NodeCordoned(target.name));
        }
        let current = self.ctx.version_record(name, head.current).await?;
        let gpu_count = to.gpu_count.unwrap_or(current.spec.gpu_count);
        // Refused here, before anything stops, when the target cannot have them now (a
        // stopped set needs them only once it continues); the target's claim decides races.
        let holders = self.ctx.gpu_holders().await?;
        let free = target
            .gpus
            .iter()
            .filter(|g| !holders.contains_key(&g.uuid))
            .count();
        let available = if head.status.holds_claims() {
            free
        } else {
            target.gpus.len()
        };
        if gpu_count as usize > available {
            return Err(Error::NotEnoughGpus {
                wanted: gpu_count as usize,
                free,
                total: target.gpus.len(),
            });
        }
        let volumes: Vec<Bind> = current
            .spec
            .binds
            .iter()
            .filter(|b| !b.is_host_path())
            .cloned()
            .collect();
        if !volumes.is_empty() && !to.move_volumes {
            let names: Vec<&str> = volumes.iter().map(|b| b.src.as_str()).collect();
            return Err(Error::VolumesNotMoved(format!(
                "'{name}' mounts volume(s) {}, whose data lives on node '{}': migrate with \
                 moveVolumes (--move-volumes) to take them along",
                names.join(", "),
                head.node
            )));
        }
        self.check_volumes_movable(name, &volumes).await?;
        // The set's snapshots here, removed once it moved (the target clears their records).
        let snapshots: Vec<String> = self
            .ctx
            .read_all::<Version>(&keys::versions(name))
            .await?
            .into_iter()
            .filter_map(|v| v.snapshot)
            .chain(std::iter::once(
                self.ctx.snapshot_name(&head, current.version),
            ))
            .collect();
        let moving = Moving {
            from: head.node.clone(),
            to: target.name.clone(),
            version: head.latest + 1,
            gpu_count,
            move_volumes: to.move_volumes,
            before: head.status,
            claimed_gpus: Vec::new(),
            claimed_ports: Vec::new(),
        };
        let mut recorded = head.clone();
        recorded.latest = moving.version;
        recorded.pending = Some(Intent::Migrate(moving.clone()));
        let txn = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&recorded));
        self.ctx.commit(txn).await?;
        failpoint("migrate.recorded");
        if let Err(e) = self
            .send_set(&*link, &target, &recorded, current.clone(), &volumes)
            .await
        {
            // The target may have made it current before its answer was lost.
            let moved = self
                .ctx
                .read::<ReplicaSet>(&keys::replica_set(name))
                .await?
                .is_some_and(|(h, _)| h.node == target.name);
            if !moved {
                if let Err(abort) = link
                    .send(
                        &target,
                        LinkRequest::Abort {
                            set: name.to_string(),
                        },
                    )
                    .await
                {
                    tracing::warn!(replica_set = %name, "the target did not undo its part (its recovery will): {abort}");
                }
                self.ctx.undo_migration(name).await?;
                return Err(e.during(Operation::Migrate));
            }
        }
        failpoint("migrate.moved");
        self.clean_after_migration(&current, &snapshots, &volumes)
            .await;
        if let Err(e) = self.ctx.release_network(&head.owner).await {
            tracing::warn!(replica_set = %name, "network of {} not removed: {e}", head.owner);
        }
        self.info(name).await
    }

    /// Volumes move only when they are current volumes of this server that no other set
    /// mounts.
    async fn check_volumes_movable(&self, name: &str, volumes: &[Bind]) -> Result<()> {
        if volumes.is_empty() {
            return Ok(());
        }
        let mounted: Vec<Version> = self.ctx.read_all(keys::CURRENT).await?;
        for bind in volumes {
            let managed = match volume_of(&bind.src) {
                Some((base, number)) => self
                    .ctx
                    .read::<Volume>(&keys::volume(base))
                    .await?
                    .is_some_and(|(v, _)| v.current == number && v.pending.is_none()),
                None => false,
            };
            if !managed {
                return Err(Error::refused(
                    Operation::Migrate,
                    format!(
                        "volume '{}' is not a current volume of this server; its data cannot move",
                        bind.src
                    ),
                ));
            }
            // Containers are named `{set}-{version}`, and set names hold no '-'.
            let other = mounted
                .iter()
                .filter_map(|v| Some((v.container.rsplit_once('-')?.0, v)))
                .find(|(set, v)| *set != name && v.spec.binds.iter().any(|b| b.src == bind.src));
            if let Some((other, _)) = other {
                return Err(Error::refused(
                    Operation::Migrate,
                    format!(
                        "volume '{}' is also mounted by '{other}'; it cannot move with '{name}'",
                        bind.src
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Steps 1 to 4 from the source: snapshot, then the target's calls.
    async fn send_set(
        &self,
        link: &dyn NodeLink,
        target: &NodeRecord,
        head: &ReplicaSet,
        current: Version,
        volumes: &[Bind],
    ) -> Result<()> {
        let name = head.name.clone();
        let Some(state) = self
            .ctx
            .shared
            .runtime
            .inspect_container(&current.container)
            .await?
        else {
            return Err(Error::failed(
                Operation::Migrate,
                format!("the container of '{name}' is gone; continue or patch it first"),
            ));
        };
        let running = state.running;
        let old = self
            .ctx
            .snapshot_current(head, current, running, "migrate")
            .await?;
        failpoint("migrate.committed");
        let image = old
            .snapshot
            .clone()
            .ok_or_else(|| Error::Store("the snapshot was not recorded".into()))?;
        let archive = self.ctx.shared.runtime.save_image(&image).await?;
        link.send(
            target,
            LinkRequest::Receive {
                set: name.clone(),
                archive,
            },
        )
        .await?;
        failpoint("migrate.sent");
        for bind in volumes {
            let archive = self
                .ctx
                .shared
                .runtime
                .download_path(&old.container, &bind.dest)
                .await?;
            link.send(
                target,
                LinkRequest::Files {
                    set: name.clone(),
                    dir: parent_of(&bind.dest),
                    archive,
                },
            )
            .await?;
        }
        link.send(target, LinkRequest::Start { set: name }).await
    }

    /// Step 5: what the set left on this node once it moved. Failures are only logged: the
    /// next start's recovery removes what is left (orphans).
    async fn clean_after_migration(&self, old: &Version, snapshots: &[String], volumes: &[Bind]) {
        let runtime = &self.ctx.shared.runtime;
        if let Err(e) = runtime.remove_container(&old.container).await {
            tracing::warn!(container = %old.container, "old container not removed: {e}");
        }
        for image in snapshots {
            if let Err(e) = runtime.remove_image(image).await {
                tracing::warn!(%image, "snapshot not removed: {e}");
            }
        }
        for bind in volumes {
            if let Err(e) = runtime.remove_volume(&bind.src).await {
                tracing::warn!(volume = %bind.src, "moved volume not removed here: {e}");
            }
        }
    }

    /// The head of set `name` and its migration, when it is moving to this node.
    async fn incoming(&self, name: &str) -> Result<(ReplicaSet, u64, Moving)> {
        let (head, revision) = self
            .ctx
            .read::<ReplicaSet>(&keys::replica_set(name))
            .await?
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        match moving_of(&head) {
            Some(moving) if moving.to == self.ctx.node_name() && head.node == moving.from => {
                Ok((head, revision, moving))
            }
            _ => Err(Error::Conflict(format!(
                "no migration of '{name}' to node '{}' is in flight",
                self.ctx.node_name()
            ))),
        }
    }

    /// Target, step 2: claims GPUs and ports here for set `name`'s new version, loads its
    /// filesystem from `archive`, creates its volumes and its container. On failure, what
    /// it made is undone.
    pub async fn accept_migration(&self, name: &str, archive: ImageStream) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        let result = self.accept(name, archive).await;
        if result.is_err() {
            self.drop_incoming(name).await;
        }
        result
    }

    async fn accept(&self, name: &str, archive: ImageStream) -> Result<()> {
        let new = self.claim_incoming(name).await?;
        failpoint("migrate.claimed");
        self.ctx.shared.runtime.load_image(archive).await?;
        if self
            .ctx
            .shared
            .runtime
            .inspect_image(&new.image)
            .await?
            .is_none()
        {
            return Err(Error::failed(
                Operation::Migrate,
                format!("the archive sent did not hold image '{}'", new.image),
            ));
        }
        // Still in flight after the load (the source may have undone it meanwhile)?
        let (_, _, moving) = self.incoming(name).await?;
        if moving.move_volumes {
            for bind in new.spec.binds.iter().filter(|b| !b.is_host_path()) {
                let (base, number) = volume_of(&bind.src).ok_or_else(|| {
                    Error::InvalidParams(format!("'{}' is not a volume of this server", bind.src))
                })?;
                let version: VolumeVersion = self
                    .ctx
                    .read(&keys::volume_version(base, number))
                    .await?
                    .map(|(v, _)| v)
                    .ok_or_else(|| Error::VolumeNotFound(bind.src.clone()))?;
                // A copy an earlier, failed migration left here goes first; a volume of that
                // name that is not ours stays, and the migration stops.
                if !self.remove_own_volume(&bind.src).await? {
                    return Err(Error::refused(
                        Operation::Migrate,
                        format!(
                            "node '{}' has a Docker volume '{}' that is not this server's",
                            self.ctx.node_name(),
                            bind.src
                        ),
                    ));
                }
                self.create_docker_volume(base, &version).await?;
            }
        }
        self.ctx
            .shared
            .runtime
            .remove_container(&new.container)
            .await?;
        let (head, _) = self.ctx.head(name).await?;
        let spec = self.ctx.container_spec(&head.owner, name, &new);
        self.ctx.create_container(&spec).await?;
        failpoint("migrate.created");
        Ok(())
    }

    /// Picks and claims GPUs and ports on this node for the incoming version, within the
    /// owner's quota, and records them in the intent and the version record, in one
    /// transaction.
    async fn claim_incoming(&self, name: &str) -> Result<Version> {
        retry(CLAIMS_KEPT_LOST, move |_| async move {
            let (head, revision, mut moving) = self.incoming(name).await?;
            if !moving.claimed_gpus.is_empty() || !moving.claimed_ports.is_empty() {
                return Err(Error::Conflict(format!(
                    "the migration of '{name}' was already received here"
                )));
            }
            let current = self.ctx.version_record(name, head.current).await?;
            let image = current
                .snapshot
                .clone()
                .ok_or_else(|| Error::Store(format!("'{name}' has no snapshot to move")))?;
            let mut spec = current.spec.clone();
            spec.gpu_count = moving.gpu_count;
            for bind in spec.binds.iter_mut().filter(|b| b.is_host_path()) {
                // A host path is this host's: its policy decides.
                *bind = self.ctx.check_bind(bind).await?;
            }
            let claims = moving.before.holds_claims();
            let gpus = match self
                .ctx
                .pick_gpus_for(name, &[], spec.gpu_count as usize)
                .await
            {
                Ok(gpus) => gpus,
                // A stopped set holds none: it records some of this node's (continue takes
                // them if they are free then; restart takes any).
                Err(Error::NotEnoughGpus { .. }) if !claims => {
                    let all = self.ctx.shared.inventory.gpus().await?;
                    if all.len() < spec.gpu_count as usize {
                        return Err(Error::NotEnoughGpus {
                            wanted: spec.gpu_count as usize,
                            free: 0,
                            total: all.len(),
                        });
                    }
                    all.into_iter()
                        .take(spec.gpu_count as usize)
                        .map(|g| g.uuid)
                        .collect()
                }
                Err(e) => return Err(e),
            };
            // The same host ports when this node's range has them free.
            let range = self.ctx.shared.config.port_range;
            let previous: Vec<_> = head
                .ports
                .iter()
                .filter(|p| range.contains(p.host_port))
                .cloned()
                .collect();
            let ports = self
                .ctx
                .pick_ports_for(name, &spec.container_ports, &previous)
                .await?;
            if claims {
                moving.claimed_gpus = gpus.clone();
                moving.claimed_ports = ports.iter().map(|p| p.host_port).collect();
            }
            let held = if claims { head.gpus.len() } else { 0 };
            let quota = self
                .ctx
                .check_quota(
                    &head.owner,
                    Holdings::gpus(moving.claimed_gpus.len().saturating_sub(held)),
                )
                .await?;
            let new = self
                .ctx
                .version_of(name, moving.version, spec, gpus, ports, image);
            let mut recorded = head.clone();
            recorded.pending = Some(Intent::Migrate(moving.clone()));
            let records = Txn::new()
                .unchanged(keys::replica_set(name), revision)
                .put(keys::replica_set(name), encode(&recorded))
                .put(keys::version(name, moving.version), encode(&new));
            let claim = Claim {
                quota,
                holder: &head,
                gpus: &moving.claimed_gpus,
                ports: &moving.claimed_ports,
                // GPU-time moves when the set does (step 4): never counted twice meanwhile.
                account: false,
            };
            if self.ctx.commit_claims(claim, records).await? {
                return Ok(Try::Done(new));
            }
            Ok(Try::Again)
        })
        .await
    }

    /// Target, step 3: extracts `archive` (a moved volume's files) into `dir` of the incoming
    /// container, which must hold one of its volume mounts.
    pub async fn accept_migration_files(
        &self,
        name: &str,
        dir: &str,
        archive: ImageStream,
    ) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        let result = async {
            let (_, _, moving) = self.incoming(name).await?;
            let new = self.ctx.version_record(name, moving.version).await?;
            let mounts = new
                .spec
                .binds
                .iter()
                .any(|b| !b.is_host_path() && parent_of(&b.dest) == dir);
            if !moving.move_volumes || !mounts {
                return Err(Error::InvalidParams(format!(
                    "'{dir}' holds no volume of '{name}' that moves"
                )));
            }
            self.ctx
                .shared
                .runtime
                .upload_path(&new.container, dir, archive)
                .await
        }
        .await;
        if result.is_err() {
            self.drop_incoming(name).await;
        }
        result
    }

    /// Target, step 4: starts the incoming version (when the set ran) and makes it current
    /// here in one transaction: the set and its moved volumes live on this node from then on,
    /// and the source's claims are released.
    pub async fn complete_migration(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        let result = self.switch_incoming(name).await;
        if result.is_err() {
            self.drop_incoming(name).await;
        }
        result
    }

    async fn switch_incoming(&self, name: &str) -> Result<()> {
        let (_, _, moving) = self.incoming(name).await?;
        let new = self.ctx.version_record(name, moving.version).await?;
        if moving.before.wants_running() {
            self.ctx.start_container(&new.container).await?;
        }
        failpoint("migrate.target_started");
        // Snapshots of earlier versions stay on the source (which removes them): rollbacks
        // here reach the versions from this one on.
        let versions: Vec<Version> = self.ctx.read_all(&keys::versions(name)).await?;
        // The head as it is now: the switch holds only if nobody changed it since.
        let (head, revision, moving) = self.incoming(name).await?;
        let mut moved = head.clone();
        moved.node = self.ctx.node_name().to_string();
        moved.current = moving.version;
        moved.pending = None;
        moved.gpus = new.gpus.clone();
        moved.ports = new.ports.clone();
        moved.status = match moving.before {
            Status::Running | Status::Exited => Status::Running,
            other => other,
        };
        let (old_gpus, old_ports): (Vec<String>, Vec<u16>) = if moving.before.holds_claims() {
            (
                head.gpus.clone(),
                head.ports.iter().map(|p| p.host_port).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let delta = moving.claimed_gpus.len() as i64 - old_gpus.len() as i64;
        let mut txn = release_keys(Txn::new(), &moving.from, &old_gpus, &old_ports)
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&moved))
            .put(keys::current(name), encode(&new));
        txn = self.ctx.account(txn, &moved, delta);
        for mut version in versions
            .into_iter()
            .filter(|v| v.version + 1 < moving.version && v.snapshot.is_some())
        {
            version.snapshot = None;
            txn = txn.put(keys::version(name, version.version), encode(&version));
        }
        if moving.move_volumes {
            for bind in new.spec.binds.iter().filter(|b| !b.is_host_path()) {
                if let Some((mut volume, _)) = match volume_of(&bind.src) {
                    Some((base, _)) => self.ctx.read::<Volume>(&keys::volume(base)).await?,
                    None => None,
                } {
                    volume.node = moved.node.clone();
                    txn = txn.put(keys::volume(&volume.name), encode(&volume));
                }
            }
        }
        if !self.ctx.shared.store.commit(txn).await? {
            return Err(Error::Conflict(format!(
                "the migration of '{name}' was undone by its source meanwhile"
            )));
        }
        failpoint("migrate.switched");
        Ok(())
    }

    /// Removes Docker volume `name` if it is absent or this store's; `false` when it belongs to
    /// something else (left alone).
    async fn remove_own_volume(&self, name: &str) -> Result<bool> {
        let Some(volume) = self.ctx.shared.runtime.inspect_volume(name).await? else {
            return Ok(true);
        };
        if volume.labels.get(crate::engine::LABEL_STORE) != self.ctx.shared.store_id.get() {
            return Ok(false);
        }
        self.ctx.shared.runtime.remove_volume(name).await?;
        Ok(true)
    }

    /// Target: undoes what it made for an incoming migration (the source asked, or a step
    /// failed).
    pub async fn abort_migration(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        self.drop_incoming(name).await;
        // Asked after the source undid it: the container is what is left.
        let mut pass = crate::supervise::reconcile::Reconciled::default();
        self.ctx.sweep_containers(Some(name), &mut pass).await
    }

    /// Removes the incoming container, volumes and image, and releases the claims the intent
    /// records; best effort (recovery removes what is left as orphans).
    async fn drop_incoming(&self, name: &str) {
        let Ok((head, revision, mut moving)) = self.incoming(name).await else {
            return;
        };
        let runtime = &self.ctx.shared.runtime;
        if let Ok(new) = self.ctx.version_record(name, moving.version).await {
            if let Err(e) = runtime.remove_container(&new.container).await {
                tracing::warn!(container = %new.container, "incoming container not removed: {e}");
            }
            if moving.move_volumes {
                for bind in new.spec.binds.iter().filter(|b| !b.is_host_path()) {
                    let _ = self.remove_own_volume(&bind.src).await;
                }
            }
            let _ = runtime.remove_image(&new.image).await;
        }
        let txn = release_keys(
            Txn::new(),
            self.ctx.node_name(),
            &moving.claimed_gpus,
            &moving.claimed_ports,
        );
        moving.claimed_gpus.clear();
        moving.claimed_ports.clear();
        let mut dropped = head;
        dropped.pending = Some(Intent::Migrate(moving.clone()));
        let txn = txn
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&dropped));
        if let Err(e) = self.ctx.shared.store.commit(txn).await {
            tracing::warn!(replica_set = %name, "incoming claims not released: {e}");
        }
    }
}
