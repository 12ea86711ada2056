//! Crash recovery: what a starting engine does with operations a crash left in flight, and with
//! Docker objects the store no longer knows.
//!
//! Every multi-step operation writes its intent into the head record before touching Docker
//! (see [`crate::model::Intent`]), and every step is idempotent. [`Engine::recover`] therefore
//! finishes what can be finished (a new version whose container exists; a stop; a delete; a
//! resize whose copy is done) and undoes the rest (claims released, the old container running
//! again), then removes labelled containers, images and volumes no record refers to.

use std::collections::{HashMap, HashSet};

use crate::engine::{
    encode, Context, Recovery, LABEL_REPLICA_SET, LABEL_STORE, LABEL_VERSION, LABEL_VOLUME,
};
use crate::error::Result;
use crate::keys;
use crate::model::{Intent, Moving, ReplicaSet, Status, Volume, VolumeVersion};
use crate::runtime::HELPER_LABEL;
use crate::steps::Prepared;
use crate::store::Txn;

/// The images a version record refers to (the rest of the record is not decoded).
#[derive(serde::Deserialize)]
struct ImageRefs {
    image: String,
    snapshot: Option<String>,
}

impl Context {
    /// Finishes or undoes every operation a crash left in flight, removes orphaned Docker
    /// objects, and reports current containers that are gone. Call it once at start, before
    /// serving requests.
    pub async fn recover(&self) -> Result<Recovery> {
        self.load_store_id().await?;
        let mut report = Recovery::default();
        let restored = self.shared.store.get(keys::RESTORED).await?;
        if let Some(entry) = &restored {
            report.restored = Some(
                match serde_json::from_slice::<crate::backup::Header>(&entry.value) {
                    Ok(h) => format!(
                        "the backup of {} taken at {} ({} records)",
                        h.store, h.created, h.records
                    ),
                    Err(_) => "a backup".into(),
                },
            );
        }
        let heads = self.own_sets().await?;
        for head in heads.into_iter().filter(|h| h.pending.is_some()) {
            let _guard = self.lock_set(&head.name).await;
            self.recover_set(head, &mut report).await?;
        }
        let volumes: Vec<Volume> = self.read_all(keys::VOLUMES).await?;
        for volume in volumes.into_iter().filter(|v| v.pending.is_some()) {
            let _guard = self.lock_volume(&volume.name).await;
            self.recover_resize(volume, &mut report).await?;
        }
        self.remove_orphans(&mut report).await?;
        // Start-up is one pass of the reconciler: current containers end as the records say.
        let pass = self.reconcile().await?;
        report.reconciled = pass.settled;
        report.missing = pass.shown;
        if report != Recovery::default() {
            tracing::warn!("recovery: {report}");
        }
        self.shared.metrics.count_actions(
            self.node_name(),
            true,
            "finished",
            report.finished.len(),
        );
        self.shared
            .metrics
            .count_actions(self.node_name(), true, "undone", report.undone.len());
        self.shared.metrics.count_actions(
            self.node_name(),
            true,
            "orphan_removed",
            report.orphans_removed.len(),
        );
        self.shared
            .metrics
            .count_actions(self.node_name(), true, "missing", report.missing.len());
        self.emit("recovery", "", true, report.to_string()).await;
        if restored.is_some() {
            self.shared.store.delete(keys::RESTORED).await?;
        }
        *self
            .shared
            .last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }

    /// Finishes or undoes the operation recorded in `head` (the caller holds the set's lock).
    async fn recover_set(&self, head: ReplicaSet, report: &mut Recovery) -> Result<()> {
        let Some(intent) = head.pending.clone() else {
            return Ok(());
        };
        let name = head.name.clone();
        match intent {
            Intent::Run => {
                let version = self.version_record(&name, 1).await?;
                let created = self
                    .shared
                    .runtime
                    .inspect_container(&version.container)
                    .await?
                    .is_some();
                if created && self.finish_run(&name).await.is_ok() {
                    report.finished.push(format!("run of {name}"));
                } else {
                    self.undo_run(&name, &head.image_id(), &version).await?;
                    report.undone.push(format!("run of {name}"));
                }
            }
            // The resize it belongs to decides, below.
            Intent::NewVersion {
                resize: Some(_), ..
            } => {}
            Intent::NewVersion { version, .. } => {
                let line = format!("new version {version} of {name}");
                if self.recover_version(head, version, true).await? {
                    report.finished.push(line);
                } else {
                    report.undone.push(line);
                }
            }
            Intent::Stop => {
                self.finish_stop(head).await?;
                report.finished.push(format!("stop of {name}"));
            }
            Intent::Pause => {
                self.finish_pause(head).await?;
                report.finished.push(format!("pause of {name}"));
            }
            Intent::Continue { reclaimed } => {
                let before = if reclaimed {
                    Status::Stopped
                } else {
                    Status::Paused
                };
                match self.finish_resume(head, before).await {
                    Ok(()) => report.finished.push(format!("continue of {name}")),
                    Err(_) => report.undone.push(format!("continue of {name}")),
                }
            }
            Intent::Delete => {
                self.finish_delete(head).await?;
                report.finished.push(format!("delete of {name}"));
            }
            // Still ours: the target never made it current. Undone.
            Intent::Migrate(Moving { to, .. }) => {
                self.undo_migration(&name).await?;
                report
                    .undone
                    .push(format!("migration of {name} to node {to}"));
            }
        }
        Ok(())
    }

    /// Settles what a failed operation left on `name` (the store or Docker went away midway)
    /// before the next operation on it; the caller holds the set's lock.
    pub(crate) async fn settle(&self, name: &str) -> Result<()> {
        let Some((head, _)) = self.read::<ReplicaSet>(&keys::replica_set(name)).await? else {
            return Ok(());
        };
        if matches!(
            head.pending,
            None | Some(Intent::NewVersion {
                resize: Some(_),
                ..
            })
        ) {
            return Ok(());
        }
        let mut report = Recovery::default();
        self.recover_set(head, &mut report).await?;
        tracing::warn!(replica_set = %name, "settled an interrupted operation: {report}");
        Ok(())
    }

    /// Reads the store's identity, creating it on a new store.
    async fn load_store_id(&self) -> Result<()> {
        let fresh = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("{:x}{:x}", nanos, std::process::id())
        };
        let txn = Txn::new()
            .absent(keys::STORE_ID)
            .put(keys::STORE_ID, fresh.clone().into_bytes());
        self.shared.store.commit(txn).await?;
        let id = match self.shared.store.get(keys::STORE_ID).await? {
            Some(entry) => String::from_utf8_lossy(&entry.value).into_owned(),
            None => fresh,
        };
        let _ = self.shared.store_id.set(id);
        Ok(())
    }

    /// Finishes the new version if `forward` and its container was created, else undoes it.
    /// Returns whether it finished.
    async fn recover_version(&self, head: ReplicaSet, version: u32, forward: bool) -> Result<bool> {
        let name = head.name.clone();
        let old = self.version_record(&name, head.current).await?;
        let new = self.version_record(&name, version).await?;
        let created = self
            .shared
            .runtime
            .inspect_container(&new.container)
            .await?
            .is_some();
        let Some(prepared) = Prepared::from_records(head, old, new) else {
            return Ok(false);
        };
        if forward && created {
            let mut prepared = prepared;
            // An image change cut short in its copy: copied again (the old container is
            // still there, stopped), or undone when that fails.
            if let Err(e) = self.carry(&mut prepared).await {
                tracing::warn!(replica_set = %name, "an interrupted image change is undone: {e}");
                self.abort(prepared).await;
                return Ok(false);
            }
            let prepared = match self.activate(prepared).await {
                Ok(prepared) => prepared,
                Err(_) => return Ok(false),
            };
            self.finish(prepared).await?;
            Ok(true)
        } else {
            if prepared.was_running() {
                // A killed engine may have left a stop of the old container in its grace
                // period, which Docker finishes on its own later: stop it ourselves and wait,
                // so the start below is the last word and the container ends up running.
                let old = prepared.old_container().to_string();
                self.shared
                    .runtime
                    .stop_container(&old, self.shared.config.stop_timeout)
                    .await?;
            }
            self.abort(prepared).await;
            Ok(false)
        }
    }

    /// A resize finishes once its copy is done; before that it is undone, users included.
    async fn recover_resize(&self, mut volume: Volume, report: &mut Recovery) -> Result<()> {
        let Some(intent) = volume.pending.clone() else {
            return Ok(());
        };
        let old: VolumeVersion = self
            .read(&keys::volume_version(&volume.name, volume.current))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| {
                crate::error::Error::Store(format!("volume {} has no current record", volume.name))
            })?;
        for user in &intent.users {
            let _guard = self.lock_set(user).await;
            let Some((head, _)) = self.read::<ReplicaSet>(&keys::replica_set(user)).await? else {
                continue;
            };
            if let Some(Intent::NewVersion {
                version,
                resize: Some(of),
                ..
            }) = head.pending.clone()
            {
                if of == volume.name {
                    self.recover_version(head, version, intent.copied).await?;
                }
            }
        }
        let line = format!("resize of {} to version {}", volume.name, intent.version);
        if intent.copied {
            self.complete_resize(&mut volume, &old).await?;
            report.finished.push(line);
        } else {
            let docker_name = crate::names::docker_volume(&volume.name, intent.version);
            self.shared.runtime.remove_volume(&docker_name).await?;
            volume.pending = None;
            if volume.latest == intent.version {
                volume.latest -= 1;
            }
            let txn = Txn::new()
                .delete(keys::volume_version(&volume.name, intent.version))
                .put(keys::volume(&volume.name), encode(&volume));
            self.commit(txn).await?;
            report.undone.push(line);
        }
        Ok(())
    }

    /// Removes labelled containers, snapshot images and volumes the records made and let go
    /// (an old version's, a crash's leftovers); those the records never knew (see
    /// [`records_know`]) are reported and left alone.
    async fn remove_orphans(&self, report: &mut Recovery) -> Result<()> {
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let current: HashSet<String> = heads
            .iter()
            .map(|h| crate::names::container(&h.name, h.current))
            .collect();
        let by_name: HashMap<&str, &ReplicaSet> =
            heads.iter().map(|h| (h.name.as_str(), h)).collect();
        // Only objects this store recorded: never another deployment's on the same host.
        let selected = |labels: &std::collections::BTreeMap<String, String>| {
            labels.get(LABEL_STORE) == self.shared.store_id.get()
        };
        // Version numbers the records never handed out, by set: raised past, below.
        let mut beyond: HashMap<String, u32> = HashMap::new();
        // When the store last recorded something (its newest event, µs), read once if needed.
        let mut newest_event: Option<i64> = None;
        for container in self
            .shared
            .runtime
            .list_containers(LABEL_REPLICA_SET)
            .await?
        {
            if !selected(&container.labels) || current.contains(&container.name) {
                continue;
            }
            let set = container
                .labels
                .get(LABEL_REPLICA_SET)
                .cloned()
                .unwrap_or_default();
            let version = version_of(&container.name, &container.labels);
            // Read only for the rare container that is not current: a start stays one list.
            let has_record = match (by_name.get(set.as_str()), version) {
                (Some(_), Some(v)) => self
                    .shared
                    .store
                    .get(&keys::version(&set, v))
                    .await?
                    .is_some(),
                _ => false,
            };
            let recorded = by_name.contains_key(set.as_str());
            let unknown = if records_know(by_name.get(set.as_str()).copied(), version, has_record) {
                false
            } else if self.marked_unknown(&container.name).await? {
                true
            } else {
                // Made after the newest thing the store recorded: the store went back in time
                // (a restore); made before, the records saw it and let it go (a leftover).
                if newest_event.is_none() {
                    newest_event = Some(self.newest_event_micros().await?);
                }
                // To the microsecond (a listing says only the second).
                let created = self
                    .shared
                    .runtime
                    .inspect_container(&container.name)
                    .await?
                    .map_or(container.created, |c| c.created);
                if created > newest_event.unwrap_or(0) {
                    self.mark_unknown(&container.name, &set, version).await?;
                    true
                } else {
                    false
                }
            };
            if unknown {
                report
                    .unknown
                    .push(unknown_line("container", &container.name, &set, recorded));
                if let (true, Some(v)) = (recorded, version) {
                    let highest = beyond.entry(set).or_default();
                    *highest = (*highest).max(v);
                }
            } else {
                self.shared.runtime.remove_container(&container.id).await?;
                report
                    .orphans_removed
                    .push(format!("container {}", container.name));
            }
        }
        for (set, highest) in beyond {
            self.raise_latest(&set, highest).await?;
        }
        // Helpers that moved data of our volumes (the label holds the Docker volume name).
        let volume_heads: Vec<Volume> = self.read_all(keys::VOLUMES).await?;
        let ours = |docker_name: &str| {
            volume_heads.iter().any(|v| {
                docker_name
                    .rsplit_once('-')
                    .is_some_and(|(base, _)| base == v.name)
            })
        };
        for helper in self.shared.runtime.list_containers(HELPER_LABEL).await? {
            if helper.labels.get(HELPER_LABEL).is_some_and(|v| ours(v)) {
                self.shared.runtime.remove_container(&helper.id).await?;
                report
                    .orphans_removed
                    .push(format!("helper container {}", helper.name));
            }
        }
        let images: Vec<_> = self
            .shared
            .runtime
            .list_images(LABEL_REPLICA_SET)
            .await?
            .into_iter()
            .filter(|i| selected(&i.labels))
            .collect();
        if !images.is_empty() {
            // Only the image names of every version of the sets living here (in a cluster, a
            // set that moved away left its snapshots behind), read only when there are images
            // to judge.
            let here: HashMap<&str, &ReplicaSet> = heads
                .iter()
                .filter(|h| h.node == self.node_name())
                .map(|h| (h.name.as_str(), h))
                .collect();
            let by_id: HashMap<String, &ReplicaSet> =
                heads.iter().map(|h| (h.image_id(), h)).collect();
            let versions: Vec<ImageRefs> = self
                .shared
                .store
                .list(keys::ALL_VERSIONS)
                .await?
                .into_iter()
                .filter(|e| {
                    e.key[keys::ALL_VERSIONS.len()..]
                        .split('/')
                        .next()
                        .is_some_and(|set| here.contains_key(set))
                })
                .filter_map(|e| serde_json::from_slice(&e.value).ok())
                .collect();
            let referenced: HashSet<&String> = versions
                .iter()
                .flat_map(|v| v.snapshot.iter().chain(std::iter::once(&v.image)))
                .collect();
            let prefix = format!("{}/", self.shared.config.snapshot_repo);
            for image in images {
                for tag in image.tags.iter().filter(|t| t.starts_with(&prefix)) {
                    if referenced.contains(tag) {
                        continue;
                    }
                    // `{repo}/{id}:v{N}` (a snapshot) or `{repo}/{id}:base` (a clone's start).
                    let (id, version) = tag[prefix.len()..]
                        .split_once(':')
                        .map(|(id, t)| {
                            (id, t.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()))
                        })
                        .unwrap_or(("", None));
                    let head = by_id.get(id).copied();
                    // A snapshot is made of the version being left: one of the current version
                    // (or a later one) no record names was made after the backup this store
                    // was restored from, and may hold the only copy of those files.
                    let known = match (head, version) {
                        (Some(head), Some(v)) => v < head.current,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if !known {
                        report.unknown.push(format!(
                            "image {tag}: no record of it (made after the backup this store was restored from?); left alone"
                        ));
                    } else if self.shared.runtime.remove_image(tag).await.is_ok() {
                        report.orphans_removed.push(format!("image {tag}"));
                    }
                }
            }
        }

        // A volume of another node is not live here (a copy a migration left); one recorded
        // before volumes had nodes may be anywhere.
        let live: HashSet<String> = volume_heads
            .iter()
            .filter(|v| v.node.is_empty() || v.node == self.node_name())
            .map(|v| crate::names::docker_volume(&v.name, v.current))
            .collect();
        let volume_recorded: HashSet<(String, u32)> = self
            .shared
            .store
            .list("volume-versions/")
            .await?
            .iter()
            .filter_map(|e| {
                let (name, number) = e.key["volume-versions/".len()..].rsplit_once('/')?;
                Some((name.to_string(), number.parse().ok()?))
            })
            .collect();
        let volumes_by_name: HashMap<&str, &Volume> =
            volume_heads.iter().map(|v| (v.name.as_str(), v)).collect();
        for volume in self.shared.runtime.list_volumes(LABEL_VOLUME).await? {
            if !selected(&volume.labels) || live.contains(&volume.name) {
                continue;
            }
            let (base, version) = match volume.name.rsplit_once('-') {
                Some((base, n)) => (base, n.parse::<u32>().ok()),
                None => (volume.name.as_str(), None),
            };
            let head = volumes_by_name.get(base).copied();
            let known = match (head, version) {
                (Some(head), Some(v)) => {
                    volume_recorded.contains(&(head.name.clone(), v))
                        || head.pending.as_ref().is_some_and(|p| p.version == v)
                }
                _ => false,
            };
            if !known {
                report
                    .unknown
                    .push(unknown_line("volume", &volume.name, base, head.is_some()));
                if let (Some(head), Some(v)) = (head, version) {
                    if v > head.latest {
                        self.raise_volume_latest(&head.name, v).await?;
                    }
                }
            } else if self
                .shared
                .runtime
                .remove_volume(&volume.name)
                .await
                .is_ok()
            {
                report
                    .orphans_removed
                    .push(format!("volume {}", volume.name));
            }
        }
        Ok(())
    }

    /// Records container `name` here as unknown to the records: never removed after.
    async fn mark_unknown(&self, name: &str, set: &str, version: Option<u32>) -> Result<()> {
        let key = keys::unknown_container(self.node_name(), name);
        let value = serde_json::json!({
            "replicaSet": set,
            "version": version,
            "foundAt": crate::model::now(),
        });
        self.shared
            .store
            .put(&key, value.to_string().into_bytes())
            .await?;
        Ok(())
    }

    /// When the store recorded its newest event, microseconds since the epoch (0 without
    /// any): an event's number is the microsecond it happened.
    async fn newest_event_micros(&self) -> Result<i64> {
        let events = self.shared.store.list(keys::EVENTS).await?;
        Ok(events
            .last()
            .and_then(|e| e.key[keys::EVENTS.len()..].parse::<i64>().ok())
            .unwrap_or(0))
    }

    /// Makes `set`'s next version number come after `version`, a number its records never
    /// handed out (a container made after the backup this store was restored from), so no new
    /// version collides with it.
    async fn raise_latest(&self, set: &str, version: u32) -> Result<()> {
        let _guard = self.lock_set(set).await;
        if let Some((mut head, revision)) = self.read::<ReplicaSet>(&keys::replica_set(set)).await?
        {
            if head.latest < version {
                head.latest = version;
                let txn = Txn::new()
                    .unchanged(keys::replica_set(set), revision)
                    .put(keys::replica_set(set), encode(&head));
                self.commit(txn).await?;
            }
        }
        Ok(())
    }

    /// [`Context::raise_latest`] for a volume.
    async fn raise_volume_latest(&self, name: &str, version: u32) -> Result<()> {
        let _guard = self.lock_volume(name).await;
        if let Some((mut head, revision)) = self.read::<Volume>(&keys::volume(name)).await? {
            if head.latest < version {
                head.latest = version;
                let txn = Txn::new()
                    .unchanged(keys::volume(name), revision)
                    .put(keys::volume(name), encode(&head));
                self.commit(txn).await?;
            }
        }
        Ok(())
    }
}

/// The version a container of ours is of: its label, else its name's `-N`.
pub(crate) fn version_of(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<u32> {
    labels
        .get(LABEL_VERSION)
        .and_then(|v| v.parse().ok())
        .or_else(|| name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()))
}

/// Whether the records know version `version` of a set whose head is `head`: the version has
/// a record (`recorded`: an old version, one a crash left) or an intent reserves it. A store
/// only goes back in time when it was restored from a backup (or copied back by hand): then a
/// set made since has no head, and a version made since no record. What the records do not
/// know is never removed.
pub(crate) fn records_know(
    head: Option<&ReplicaSet>,
    version: Option<u32>,
    recorded: bool,
) -> bool {
    let (Some(head), Some(version)) = (head, version) else {
        return false;
    };
    let reserved = match &head.pending {
        Some(Intent::NewVersion { version: v, .. }) => *v == version,
        Some(Intent::Migrate(moving)) => moving.version == version,
        _ => false,
    };
    recorded || reserved
}

fn unknown_line(what: &str, name: &str, of: &str, recorded: bool) -> String {
    if recorded {
        format!("{what} {name}: a version of '{of}' its records never had (made after the backup this store was restored from?); left alone")
    } else {
        format!("{what} {name}: '{of}' is not in the store (made after the backup this store was restored from?); left alone")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mockall::predicate::eq;
    use mockall::Sequence;

    use crate::engine::encode;
    use crate::gpu::StaticInventory;
    use crate::keys;
    use crate::model::{Intent, ReplicaSet, ReplicaSetSpec, Status, Version};
    use crate::runtime::{ContainerState, MockContainerRuntime};
    use crate::store::{MemoryStore, StateStore};
    use crate::{Engine, EngineConfig};

    fn version(number: u32) -> Version {
        Version {
            version: number,
            container: format!("set-{number}"),
            spec: ReplicaSetSpec {
                image: "img".into(),
                gpu_count: 0,
                binds: vec![],
                env: vec![],
                cmd: None,
                container_ports: vec![],
                resources: Default::default(),
            },
            gpus: vec![],
            ports: vec![],
            image: "img".into(),
            snapshot: None,
            limits: Default::default(),
            created_at: String::new(),
        }
    }

    fn stopped(name: &str) -> ContainerState {
        ContainerState {
            id: name.into(),
            name: name.into(),
            image: "img".into(),
            running: false,
            status: "exited".into(),
            labels: Default::default(),
            env: vec![],
            limits: Default::default(),
            init: false,
            created: 0,
        }
    }

    /// A patch whose engine was killed before its new container existed: the old container may
    /// still be in the grace period of a stop that Docker finishes later. Recovery stops it
    /// itself (waiting), and only then starts it again, so it ends running.
    #[tokio::test]
    async fn an_undone_patch_stops_the_old_container_before_starting_it_again() {
        let store = Arc::new(MemoryStore::new());
        let head = ReplicaSet {
            name: "set".into(),
            id: String::new(),
            owner: crate::engine::OPERATOR.into(),
            node: String::new(),
            current: 1,
            latest: 2,
            status: Status::Running,
            gpus: vec![],
            ports: vec![],
            pending: Some(Intent::NewVersion {
                version: 2,
                run: true,
                claimed_gpus: vec![],
                claimed_ports: vec![],
                released_gpus: vec![],
                resize: None,
                carry: Vec::new(),
            }),
            created_at: String::new(),
            timers: Default::default(),
        };
        store
            .put(&keys::replica_set("set"), encode(&head))
            .await
            .unwrap();
        store
            .put(&keys::version("set", 1), encode(&version(1)))
            .await
            .unwrap();
        store
            .put(&keys::version("set", 2), encode(&version(2)))
            .await
            .unwrap();

        let mut runtime = MockContainerRuntime::new();
        let mut order = Sequence::new();
        runtime
            .expect_inspect_container()
            .with(eq("set-2"))
            .returning(|_| Ok(None));
        runtime
            .expect_stop_container()
            .withf(|name, _| name == "set-1")
            .times(1)
            .in_sequence(&mut order)
            .returning(|_, _| Ok(()));
        runtime
            .expect_remove_container()
            .with(eq("set-2"))
            .returning(|_| Ok(()));
        runtime
            .expect_inspect_container()
            .with(eq("set-1"))
            .returning(|name| Ok(Some(stopped(name))));
        runtime
            .expect_start_container()
            .with(eq("set-1"))
            .times(1)
            .in_sequence(&mut order)
            .returning(|_| Ok(()));
        let engine = Engine::new(
            Arc::new(runtime),
            store.clone(),
            Arc::new(StaticInventory::fake(1)),
            EngineConfig::default(),
        );
        engine.ctx.settle("set").await.unwrap();
        let (head, _) = engine.ctx.head("set").await.unwrap();
        assert_eq!((head.current, head.latest, head.pending), (1, 1, None));
        assert!(store.get(&keys::version("set", 2)).await.unwrap().is_none());
    }
}
