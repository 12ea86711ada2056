//! Root filesystems: the size a set's writable layer may grow to, whether the storage driver
//! enforces it (found once at start, by asking Docker for a container with a size), the
//! periodic measurement of every container's writable layer, and the refusal of a patch or
//! commit that would carry a layer over its limit (or its owner over their disk quota) into a
//! snapshot. Nothing is stopped or lost: the container runs on.

use std::collections::BTreeMap;

use crate::engine::{encode, Context, LABEL_REPLICA_SET, LABEL_STORE};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{now, ReplicaSet, RootfsUsage};
use crate::names;

/// A measurement is written again only when it moved by this much (or by 1 %), so that an idle
/// host does not rewrite its records every pass.
const WORTH_WRITING: u64 = 1 << 20;

/// The room on the disk holding `path`: bytes free for unprivileged writers (what a full disk
/// runs out of) and its size; `None` when it cannot be read here.
pub(crate) fn room(path: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only into the struct passed; the path is a C string.
    if unsafe { libc::statvfs(text.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

/// Below this much free on Docker's data root, a snapshot's layer is measured against it.
const LOW_DOCKER_ROOM: u64 = 2 << 30;

/// Room a snapshot needs on top of its layer (the image's metadata, Docker's own files).
const SNAPSHOT_MARGIN: u64 = 32 << 20;

/// Bytes as people read them.
pub(crate) fn shown(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

impl Context {
    /// At start: whether the storage driver enforces the configured size, kept for the life of
    /// the engine and shown in status; a driver that cannot is logged with Docker's reason.
    pub(crate) async fn check_rootfs(&self) -> Result<()> {
        let Some(size) = self.shared.config.rootfs.size else {
            return Ok(());
        };
        let support = self.shared.runtime.rootfs_support(size).await?;
        match &support.reason {
            None => tracing::info!(
                "root filesystems: {} per set, enforced by the {} storage driver",
                shown(size),
                support.driver
            ),
            Some(why) => tracing::warn!(
                "root filesystems: the {} storage driver cannot enforce a size ({why}); each \
                 set's writable layer is measured every {:?} instead, and a set over {} has its \
                 patches and commits refused",
                support.driver,
                self.shared.config.rootfs.measure_interval,
                shown(size)
            ),
        }
        let _ = self.shared.rootfs_support.set(support);
        Ok(())
    }

    /// The size a new container's writable layer gets from the storage driver: the limit,
    /// where the driver enforces one.
    pub(crate) fn enforced_rootfs_size(&self) -> Option<u64> {
        let support = self.shared.rootfs_support.get()?;
        self.shared.config.rootfs.size.filter(|_| support.enforced)
    }

    /// One measurement of the writable layer of every set of this node: records what moved,
    /// and tells (log and event) of a set that went over its limit or an owner that went over
    /// their disk quota. Returns what it told.
    pub(crate) async fn measure_rootfs(&self) -> Result<Vec<String>> {
        // Only this store's containers: Docker walks the files of each one listed.
        let label = match self.shared.store_id.get() {
            Some(id) => format!("{LABEL_STORE}={id}"),
            None => LABEL_REPLICA_SET.to_string(),
        };
        let sizes = self.shared.runtime.rootfs_sizes(&label).await?;
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let limit = self.shared.config.rootfs.size;
        let enforced = self.enforced_rootfs_size().is_some();
        let mut told = Vec::new();
        let mut owners = BTreeMap::new();
        // Every earlier measurement in one read, not one per set.
        let mut earlier: BTreeMap<String, RootfsUsage> = self
            .shared
            .store
            .list(keys::ROOTFS)
            .await?
            .into_iter()
            .filter_map(|e| {
                let name = e.key[keys::ROOTFS.len()..].to_string();
                Some((name, serde_json::from_slice(&e.value).ok()?))
            })
            .collect();
        for head in heads.iter().filter(|h| h.node == self.node_name()) {
            let container = names::container(&head.name, head.current);
            let Some(&bytes) = sizes.get(&container) else {
                continue;
            };
            let key = keys::rootfs(&head.name);
            let before = earlier.remove(&head.name);
            let usage = RootfsUsage {
                bytes,
                limit,
                enforced,
                measured_at: now(),
                container,
            };
            let moved = before.as_ref().is_none_or(|b| {
                b.container != usage.container
                    || b.limit != usage.limit
                    || b.enforced != usage.enforced
                    || b.over() != usage.over()
                    || b.bytes.abs_diff(bytes) >= WORTH_WRITING.max(b.bytes / 100)
            });
            // A set deleted meanwhile keeps no record: written only while its head is as read.
            if moved
                && self
                    .read::<ReplicaSet>(&keys::replica_set(&head.name))
                    .await?
                    .is_some()
            {
                self.shared.store.put(&key, encode(&usage)).await?;
            }
            if usage.over() && !before.as_ref().is_some_and(|b| b.over()) {
                let line = format!(
                    "the root filesystem of {} holds {}, over its {} (the storage driver does not \
                     enforce it): its next patch or commit is refused until files are removed",
                    head.name,
                    shown(bytes),
                    shown(limit.unwrap_or_default())
                );
                tracing::warn!(replica_set = %head.name, "{line}");
                self.emit("rootfs", &head.name, false, line.clone()).await;
                told.push(line);
            }
            owners.insert(head.owner.clone(), head.name.clone());
        }
        for (owner, some_set) in owners {
            if let Err(Error::OverDisk(line)) = self.check_owner_disk(&owner).await {
                tracing::warn!(%owner, "{line}");
                self.emit("rootfs", &some_set, false, line.clone()).await;
                told.push(line);
            }
        }
        Ok(told)
    }

    /// Refuses (1059) what would carry set `head`'s writable layer into a snapshot when it is
    /// over a limit the driver does not enforce, or its owner is over their disk quota.
    pub(crate) async fn check_rootfs_room(&self, head: &ReplicaSet) -> Result<()> {
        let current = names::container(&head.name, head.current);
        if let Some((usage, _)) = self.read::<RootfsUsage>(&keys::rootfs(&head.name)).await? {
            if usage.over() && usage.container == current {
                return Err(Error::OverDisk(format!(
                    "the root filesystem of '{}' holds {} (measured {}), over its {}; remove \
                     files in it (its volumes do not count) and try again when the next \
                     measurement shows it under",
                    head.name,
                    shown(usage.bytes),
                    usage.measured_at,
                    shown(usage.limit.unwrap_or_default())
                )));
            }
        }
        self.check_owner_disk(&head.owner).await?;
        self.check_docker_room(head).await
    }

    /// Refuses (1063) a snapshot of `head`'s writable layer that Docker's data root has no
    /// room for, before anything stops: a commit that runs out of room leaves the disk full
    /// (Docker keeps what it wrote), so not even the old container could start again. The
    /// layer is measured only when the disk is low.
    async fn check_docker_room(&self, head: &ReplicaSet) -> Result<()> {
        let Some(root) = self
            .shared
            .config
            .disks
            .iter()
            .find(|(name, _)| name == "docker")
            .map(|(_, path)| path.clone())
        else {
            return Ok(());
        };
        let Some((free, total)) = room(&root) else {
            return Ok(());
        };
        if free >= LOW_DOCKER_ROOM {
            return Ok(());
        }
        let current = names::container(&head.name, head.current);
        let label = format!("{LABEL_REPLICA_SET}={}", head.name);
        let layer = self
            .shared
            .runtime
            .rootfs_sizes(&label)
            .await?
            .get(&current)
            .copied()
            .unwrap_or(0);
        if layer.saturating_add(SNAPSHOT_MARGIN) > free {
            return Err(Error::DockerDiskFull(format!(
                "Docker's data root {} has {} free of {}, and the snapshot of '{}' needs {} \
                 (its writable layer) and some room to spare; nothing was stopped or changed",
                root.display(),
                shown(free),
                shown(total),
                head.name,
                shown(layer)
            )));
        }
        Ok(())
    }

    /// Whether `owner`'s volumes and writable layers fit their disk quota.
    async fn check_owner_disk(&self, owner: &str) -> Result<()> {
        let Some(max) = self
            .user_record(owner)
            .await?
            .and_then(|u| u.quota.max_disk_bytes)
        else {
            return Ok(());
        };
        let held = self.holdings(owner).await?;
        let used = held.volume_bytes.saturating_add(held.rootfs_bytes);
        if used > max {
            return Err(Error::OverDisk(format!(
                "{owner} holds {} of disk ({} in volumes, {} in root filesystems), over their \
                 quota of {}",
                shown(used),
                shown(held.volume_bytes),
                shown(held.rootfs_bytes),
                shown(max)
            )));
        }
        Ok(())
    }
}
