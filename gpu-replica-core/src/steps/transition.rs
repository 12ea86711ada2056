//! How a replicaSet moves to a new version, carrying its filesystem.
//!
//! [`Engine::prepare`] claims what the new version needs and records the intent in the head,
//! before Docker is touched; then it stops the old container, snapshots its filesystem to
//! `{repo}/{name}:v{k}` (flattened when the chain nears the layer limit) and creates the new
//! container. [`Engine::activate`] starts it; [`Engine::finish`] removes the old container and
//! makes the new version current; [`Engine::abort`] undoes a prepared version. Each step is
//! idempotent, so a restarted engine can finish or undo a transition from its records alone.

use crate::engine::access::Holdings;
use crate::engine::claims::{retry, Claim, Try, CLAIMS_KEPT_LOST};
use crate::engine::{encode, Context, LABEL_REPLICA_SET, LABEL_VERSION};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::model::{Intent, ReplicaSet, ReplicaSetSpec, Status, Version};
use crate::store::Txn;

/// Which filesystem a new version starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filesystem {
    /// The current container's, as it is now.
    Current,
    /// The snapshot of an earlier version.
    Of(u32),
    /// Another image, with these folders (absolute paths) of the current container carried.
    Image {
        /// The image.
        image: String,
        /// The folders.
        carry: Vec<String>,
    },
}

/// A new version recorded (and perhaps created) but not yet current.
pub(crate) struct Prepared {
    pub(crate) name: String,
    /// The head as recorded, with the intent in `pending`.
    head: ReplicaSet,
    old: Version,
    new: Version,
    /// Whether the old container ran before the transition.
    was_running: bool,
    run: bool,
    claimed_gpus: Vec<String>,
    claimed_ports: Vec<u16>,
    released_gpus: Vec<String>,
}

/// A tar of the folders (mode 0755, root's) that make up absolute path `dir`, to extract at
/// `/`: where a kept folder's parent is missing from the new image.
fn folders_archive(dir: &str) -> crate::runtime::ImageStream {
    let mut tar = tar::Builder::new(Vec::new());
    let mut at = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        at = if at.is_empty() {
            part.to_string()
        } else {
            format!("{at}/{part}")
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        let _ = tar.append_data(&mut header, format!("{at}/"), std::io::empty());
    }
    let bytes = tar.into_inner().unwrap_or_default();
    Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(bytes))]))
}

impl Prepared {
    /// Whether the old container ran before the transition.
    pub(crate) fn was_running(&self) -> bool {
        self.was_running
    }

    /// The old container's name.
    pub(crate) fn old_container(&self) -> &str {
        &self.old.container
    }

    /// Rebuilds a transition from its records (crash recovery); `None` if the head records no
    /// new version.
    pub(crate) fn from_records(head: ReplicaSet, old: Version, new: Version) -> Option<Prepared> {
        let Some(Intent::NewVersion {
            run,
            claimed_gpus,
            claimed_ports,
            released_gpus,
            ..
        }) = head.pending.clone()
        else {
            return None;
        };
        Some(Prepared {
            name: head.name.clone(),
            was_running: head.status == Status::Running,
            head,
            old,
            new,
            run,
            claimed_gpus,
            claimed_ports,
            released_gpus,
        })
    }
}

/// How many times an undone version's old container is started before the reconciler is
/// left to it.
const ABORT_START_TRIES: u32 = 5;

impl Context {
    /// Claims and records a new version, stops and snapshots the old container, creates the new
    /// one. `run` false keeps a paused or stopped set paused or stopped (volume rebinds);
    /// `resize` names the volume resize this is part of.
    pub(crate) async fn prepare(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
        filesystem: Filesystem,
        run: bool,
        resize: Option<String>,
    ) -> Result<Prepared> {
        let mut prepared = self
            .record_transition(name, spec, filesystem, run, resize)
            .await?;
        failpoint("version.recorded");
        if let Err(e) = self.replace_container(&mut prepared).await {
            self.abort(prepared).await;
            return Err(self.name_full_disk(e));
        }
        if let Err(e) = self.carry(&mut prepared).await {
            self.abort(prepared).await;
            return Err(self.name_full_disk(e));
        }
        Ok(prepared)
    }

    /// `e`, said as Docker's disk being full when it is ("no space left on device" from a
    /// commit, a create, a copy, a start), naming the disk and its room; the caller undid the
    /// operation.
    pub(crate) fn name_full_disk(&self, e: Error) -> Error {
        let text = e.to_string();
        if !text.to_lowercase().contains("no space left on device") {
            return e;
        }
        let root = self
            .shared
            .config
            .disks
            .iter()
            .find(|(name, _)| name == "docker")
            .map(|(_, path)| path.clone());
        let room = root
            .as_deref()
            .and_then(crate::engine::disk::room)
            .map(|(free, total)| {
                let shown = crate::engine::disk::shown;
                format!(", {} free of {}", shown(free), shown(total))
            })
            .unwrap_or_default();
        let root = root.map_or_else(|| "its data root".to_string(), |p| p.display().to_string());
        Error::DockerDiskFull(format!(
            "Docker's data root {root}{room} ({text}); the set is back on its old version"
        ))
    }

    /// Copies the folders an image change keeps from the old container (stopped, snapshotted)
    /// into the new one (created, not started) through Docker's archive API, streamed, owners,
    /// modes, times and links as they were; then records them carried. Copying again over a
    /// copy cut short gives the same result, so recovery simply does it again.
    pub(crate) async fn carry(&self, prepared: &mut Prepared) -> Result<()> {
        let Some(Intent::NewVersion { carry, .. }) = prepared.head.pending.clone() else {
            return Ok(());
        };
        if carry.is_empty() {
            return Ok(());
        }
        let runtime = &self.shared.runtime;
        let (old, new) = (&prepared.old.container, &prepared.new.container);
        for path in &carry {
            let failed = |e: Error| Error::Failed {
                op: crate::error::Operation::Patch,
                reason: format!(
                    "copying {path} into the new image failed ({e}); the set is back on its \
                         old version"
                ),
            };
            let (parent, _) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = if parent.is_empty() { "/" } else { parent };
            if runtime
                .path_stat(new, parent)
                .await
                .map_err(failed)?
                .is_none()
            {
                runtime
                    .upload_path(new, "/", folders_archive(parent))
                    .await
                    .map_err(failed)?;
            }
            let archive = runtime.download_path(old, path).await.map_err(failed)?;
            runtime
                .upload_path(new, parent, archive)
                .await
                .map_err(failed)?;
            failpoint("image.carrying");
        }
        if let Some(Intent::NewVersion { carry, .. }) = prepared.head.pending.as_mut() {
            carry.clear();
        }
        self.commit(Txn::new().put(keys::replica_set(&prepared.name), encode(&prepared.head)))
            .await?;
        failpoint("image.carried");
        Ok(())
    }

    /// Picks GPUs and ports and writes the intent, the claims and the new version record in one
    /// transaction; retries when another engine claims the same GPUs or ports first.
    async fn record_transition(
        &self,
        name: &str,
        spec: ReplicaSetSpec,
        filesystem: Filesystem,
        run: bool,
        resize: Option<String>,
    ) -> Result<Prepared> {
        let (spec, resize, filesystem) = (&spec, &resize, &filesystem);
        retry(CLAIMS_KEPT_LOST, move |_| async move {
            let (head, revision) = self.head(name).await?;
            let old = self.version_record(name, head.current).await?;
            let run = run || head.status.wants_running();
            let claims_after = run || head.status.holds_claims();
            let held_gpus = if head.status.holds_claims() {
                head.gpus.clone()
            } else {
                Vec::new()
            };
            let held_ports: Vec<u16> = if head.status.holds_claims() {
                head.ports.iter().map(|p| p.host_port).collect()
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
            let (claimed_gpus, claimed_ports): (Vec<String>, Vec<u16>) = if claims_after {
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
            let released_gpus: Vec<String> = held_gpus
                .iter()
                .filter(|g| !gpus.contains(g))
                .cloned()
                .collect();
            let number = head.latest + 1;
            let (image, carry) = match filesystem {
                Filesystem::Current => (self.snapshot_name(&head, old.version), Vec::new()),
                Filesystem::Of(k) => (
                    self.version_record(name, *k)
                        .await?
                        .snapshot
                        .ok_or_else(|| Error::Store(format!("version {k} has no snapshot")))?,
                    Vec::new(),
                ),
                Filesystem::Image { image, carry } => (image.clone(), carry.clone()),
            };
            let new = self.version_of(name, number, spec.clone(), gpus, ports, image);
            let mut recorded = head.clone();
            recorded.latest = number;
            recorded.pending = Some(Intent::NewVersion {
                version: number,
                run,
                claimed_gpus: claimed_gpus.clone(),
                claimed_ports: claimed_ports.clone(),
                released_gpus: released_gpus.clone(),
                resize: resize.clone(),
                carry,
            });
            let quota = self
                .check_quota(&head.owner, Holdings::gpus(claimed_gpus.len()))
                .await?;
            let records = Txn::new()
                .unchanged(keys::replica_set(name), revision)
                .put(keys::replica_set(name), encode(&recorded))
                .put(keys::version(name, number), encode(&new));
            let claim = Claim {
                quota,
                holder: &head,
                gpus: &claimed_gpus,
                ports: &claimed_ports,
                account: true,
            };
            if self.commit_claims(claim, records).await? {
                return Ok(Try::Done(Prepared {
                    name: name.to_string(),
                    was_running: head.status == Status::Running,
                    head: recorded,
                    old,
                    new,
                    run,
                    claimed_gpus,
                    claimed_ports,
                    released_gpus,
                }));
            }
            let (_, now_revision) = self.head(name).await?;
            if now_revision != revision {
                return Err(Error::Conflict(format!(
                    "'{name}' was changed by another engine during this operation"
                )));
            }
            // Only a claim was lost to another engine: pick again.
            Ok(Try::Again)
        })
        .await
    }

    /// Stops the old container, snapshots it (flattening a long chain) and creates the new one.
    async fn replace_container(&self, prepared: &mut Prepared) -> Result<()> {
        let old = prepared.old.clone();
        match self
            .shared
            .runtime
            .inspect_container(&old.container)
            .await?
        {
            Some(state) => {
                prepared.old = self
                    .snapshot_current(&prepared.head, old, state.running, "version")
                    .await?;
            }
            None => self.start_from_image_of_vanished(prepared).await?,
        }
        failpoint("version.committed");
        let spec = self.container_spec(&prepared.head.owner, &prepared.name, &prepared.new);
        self.create_container(&spec).await?;
        failpoint("version.created");
        Ok(())
    }

    /// Stops `old`, the current version of `head`'s set (when `running`), commits its
    /// filesystem to its snapshot image (flattening a long chain) and records the snapshot.
    /// Failpoint `{step}.stopped` is passed once it stopped.
    pub(crate) async fn snapshot_current(
        &self,
        head: &ReplicaSet,
        old: Version,
        running: bool,
        step: &str,
    ) -> Result<Version> {
        if running {
            self.shared
                .runtime
                .stop_container(&old.container, self.shared.config.stop_timeout)
                .await?;
        }
        failpoint(&format!("{step}.stopped"));
        let snapshot = self.snapshot_name(head, old.version);
        let labels = self.labels(&[
            (LABEL_REPLICA_SET, head.name.clone()),
            (LABEL_VERSION, old.version.to_string()),
        ]);
        let depth = match self.shared.runtime.inspect_image(&old.image).await? {
            Some(image) => image.layers,
            None => 0,
        };
        if depth + 1 > self.shared.config.max_layers {
            tracing::info!(container = %old.container, depth, "flattening snapshot");
            self.shared
                .runtime
                .commit_flattened(&old.container, &snapshot, &labels)
                .await?;
        } else {
            self.shared
                .runtime
                .commit(&old.container, &snapshot, &labels)
                .await?;
        }
        let mut old = old;
        old.snapshot = Some(snapshot);
        // Still the current version: its copy changes with it.
        let txn = Txn::new()
            .put(keys::version(&head.name, old.version), encode(&old))
            .put(keys::current(&head.name), encode(&old));
        self.commit(txn).await?;
        Ok(old)
    }

    /// The old container vanished outside the engine, so its filesystem cannot be carried: the
    /// new version starts from the image the old one was created from (a `Filesystem::Of`
    /// rollback keeps its snapshot).
    async fn start_from_image_of_vanished(&self, prepared: &mut Prepared) -> Result<()> {
        let old = &prepared.old;
        tracing::warn!(container = %old.container, "container is gone; the new version starts from its image");
        if prepared.new.image == self.snapshot_name(&prepared.head, old.version) {
            prepared.new.image = old.image.clone();
            self.shared
                .store
                .put(
                    &keys::version(&prepared.name, prepared.new.version),
                    encode(&prepared.new),
                )
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn is_running(&self, container: &str) -> Result<bool> {
        Ok(self
            .shared
            .runtime
            .inspect_container(container)
            .await?
            .is_some_and(|c| c.running))
    }

    /// Starts the new container (when it is to run); aborts on failure.
    pub(crate) async fn activate(&self, prepared: Prepared) -> Result<Prepared> {
        if !prepared.run || self.is_running(&prepared.new.container).await? {
            return Ok(prepared);
        }
        match self.start_container(&prepared.new.container).await {
            Ok(()) => {
                failpoint("version.started");
                Ok(prepared)
            }
            Err(e) => {
                self.abort(prepared).await;
                Err(self.name_full_disk(e))
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
        if let Err(e) = self.shared.runtime.remove_container(&old.container).await {
            tracing::warn!(container = %old.container, "old container not removed: {e}");
        }
        failpoint("version.old_removed");
        head.current = new.version;
        head.pending = None;
        head.gpus = new.gpus.clone();
        head.ports = new.ports.clone();
        if run {
            head.status = Status::Running;
        }
        // GPUs go back to the pool only now that the container holding them is gone.
        let txn = self
            .release(Txn::new(), &head, &released_gpus, &[])
            .put(keys::replica_set(&name), encode(&head))
            .put(keys::current(&name), encode(&new));
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
        if let Err(e) = self.shared.runtime.remove_container(&new.container).await {
            tracing::error!(container = %new.container, "cannot remove failed version: {e}");
        }
        if was_running && !self.is_running(&old.container).await.unwrap_or(true) {
            // A few tries: after a full disk, Docker frees what the failed step wrote only
            // moments later; past them, the reconciler keeps trying.
            for attempt in 1..=ABORT_START_TRIES {
                match self.start_container(&old.container).await {
                    Ok(()) => break,
                    Err(e) if attempt < ABORT_START_TRIES => {
                        tracing::warn!(container = %old.container, "restarting the old version failed ({e}); trying again");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(container = %old.container, "cannot restart old version: {e}");
                        self.shared.nudges.push(&name);
                    }
                }
            }
        }
        head.pending = None;
        // The number was never seen as a version: hand it out again, so history has no gaps.
        if head.latest == new.version {
            head.latest -= 1;
        }
        let txn = self
            .release(Txn::new(), &head, &claimed_gpus, &claimed_ports)
            .delete(keys::version(&name, new.version))
            .put(keys::replica_set(&name), encode(&head));
        if let Err(e) = self.shared.store.commit(txn).await {
            tracing::error!(replica_set = %name, "cannot release claims of failed version: {e}");
        }
    }

    /// The snapshot image of version `version` of `head`'s set, named by its id.
    pub(crate) fn snapshot_name(&self, head: &ReplicaSet, version: u32) -> String {
        crate::names::snapshot_image(&self.shared.config.snapshot_repo, &head.image_id(), version)
    }

    /// Untags snapshots beyond the newest `keep_snapshots`.
    async fn prune_snapshots(&self, name: &str) -> Result<()> {
        let versions: Vec<Version> = self.read_all(&keys::versions(name)).await?;
        let keep = self.shared.config.keep_snapshots.max(1);
        for mut version in versions
            .into_iter()
            .rev()
            .filter(|v| v.snapshot.is_some())
            .skip(keep)
        {
            if let Some(snapshot) = version.snapshot.take() {
                self.shared.runtime.remove_image(&snapshot).await?;
                self.shared
                    .store
                    .put(&keys::version(name, version.version), encode(&version))
                    .await?;
            }
        }
        Ok(())
    }
}
