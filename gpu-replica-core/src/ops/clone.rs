//! Clone: a new replicaSet from any version of an existing one, with that version's spec and
//! filesystem, under its own name, with its own GPUs and host ports.
//!
//! The clone's first container is created from a base image `{repo}/{clone}:base`: a commit
//! of the source's current container, or a second reference to the snapshot of an earlier
//! version (no copy). The base belongs to the clone, so deleting the source leaves the clone
//! intact, and deleting the clone removes it. The clone is recorded (intent `Run`) before its
//! base image exists, so a crash at any step is finished or undone like a run.

use crate::engine::events::describe_info;
use crate::engine::{check_name, LABEL_REPLICA_SET};
use crate::error::{Error, Operation, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::limits::Limits;
use crate::model::{ReplicaSetInfo, Version};
use crate::ops::Engine;

/// A request to clone a replicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneRequest {
    /// The replicaSet to clone.
    pub source: String,
    /// Name of the new replicaSet.
    pub name: String,
    /// The version to clone; the current one when `None`.
    pub version: Option<i64>,
    /// GPUs for the clone; the source version's count when `None`.
    pub gpu_count: Option<i64>,
    /// CPU, memory and shm asked for; the source version's asks when `None`.
    pub resources: Option<Limits>,
}

impl Engine {
    /// Creates replicaSet `request.name` from a version of `request.source` and starts it.
    pub async fn clone_set(&self, request: CloneRequest) -> Result<ReplicaSetInfo> {
        let name = request.name.clone();
        self.ctx
            .recorded(
                "clone",
                &name,
                |info| format!("from {}: {}", request.source, describe_info(info)),
                self.clone_inner(&request),
            )
            .await
    }

    async fn clone_inner(&self, request: &CloneRequest) -> Result<ReplicaSetInfo> {
        let CloneRequest {
            source,
            name,
            version,
            gpu_count,
            resources,
        } = request;
        check_name(name, Error::NameEmpty, Error::NameHasDash)?;
        let version = match *version {
            Some(v) if v < 0 => return Err(Error::NegativeVersion(v)),
            Some(v) => Some(
                u32::try_from(v)
                    .map_err(|_| Error::InvalidParams(format!("version {v} is too large")))?,
            ),
            None => None,
        };
        if let Some(count) = gpu_count.filter(|c| *c < 0) {
            return Err(Error::NegativeGpuCount(count));
        }
        if source == name {
            return Err(Error::AlreadyExists(name.clone()));
        }
        // Both sets are locked, in name order, so two clones the other way round cannot
        // wait on each other.
        let (first, second) = if source < name {
            (source, name)
        } else {
            (name, source)
        };
        self.refuse_if_cordoned().await?;
        let _first = self.ctx.lock_set(first).await;
        let _second = self.ctx.lock_set(second).await;
        self.ctx.settle(source).await?;
        self.ctx.settle(name).await?;
        if self
            .ctx
            .shared
            .store
            .get(&keys::replica_set(name))
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(name.clone()));
        }
        let (head, _) = self.ctx.head(source).await?;
        let number = version.unwrap_or(head.current);
        let origin: Version = self
            .ctx
            .read(&keys::version(source, number))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| {
                Error::refused(
                    Operation::Clone,
                    format!("'{source}' has no version {number}"),
                )
            })?;
        let from_current = number == head.current;
        if from_current {
            // The clone commits the current container: its writable layer is copied.
            self.ctx.check_rootfs_room(&head).await?;
        }
        if !from_current && origin.snapshot.is_none() {
            return Err(Error::refused(
                Operation::Clone,
                format!("the filesystem of version {number} of '{source}' was pruned"),
            ));
        }
        let mut spec = origin.spec.clone();
        if let Some(count) = gpu_count {
            spec.gpu_count = *count as u32;
        }
        if let Some(asked) = resources {
            spec.resources = asked.or(spec.resources);
        }
        self.ctx
            .shared
            .config
            .resources
            .grant(spec.gpu_count, &spec.resources)?;
        let mut checked = Vec::with_capacity(spec.binds.len());
        for bind in &spec.binds {
            checked.push(self.ctx.check_recorded_bind(bind).await?);
        }
        spec.binds = checked;
        let id = crate::names::new_id()?;
        let base = self.ctx.clone_base(&id);
        let version = self.ctx.claim_first_version(name, &id, spec, &base).await?;
        failpoint("clone.recorded");
        let made = async {
            let labels = self.ctx.labels(&[(LABEL_REPLICA_SET, name.clone())]);
            match &origin.snapshot {
                Some(snapshot) if !from_current => {
                    self.ctx.shared.runtime.tag_image(snapshot, &base).await
                }
                _ => self
                    .ctx
                    .shared
                    .runtime
                    .commit(&origin.container, &base, &labels)
                    .await
                    .map(|_| ()),
            }?;
            failpoint("clone.based");
            let spec = self
                .ctx
                .container_spec(&self.ctx.caller.name, name, &version);
            self.ctx.create_container(&spec).await?;
            failpoint("clone.created");
            self.ctx.finish_run(name).await
        }
        .await;
        if let Err(e) = made {
            self.ctx.undo_run(name, &id, &version).await?;
            return Err(e.during(Operation::Clone));
        }
        self.info(name).await
    }
}
