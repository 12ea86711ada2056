//! Versioned volumes: `bar` lives in Docker as `bar-1`, then `bar-2` after a resize, and so on.
//!
//! A resize creates the next version, copies the data through the Docker API, and moves every
//! managed replicaSet that mounts the volume onto it (each gets a new container version). Either
//! all of that happens, or none of it: a failure removes the new volume and every new container
//! and starts the old containers again.

use crate::engine::access::{Caller, Holdings};
use crate::engine::claims::{retry, Try};
use crate::engine::{check_name, encode, LABEL_VERSION, LABEL_VOLUME};
use crate::error::{Error, Operation, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::model::{now, ReplicaSetInfo, Volume, VolumeInfo, VolumeIntent, VolumeVersion};
use crate::ops::Engine;
use crate::runtime::Bind;
use crate::size::parse_size;
use crate::steps::Prepared;
use crate::store::Txn;

fn describe_volume(info: &VolumeInfo) -> String {
    format!(
        "{} now current ({})",
        info.version.docker_name, info.version.size
    )
}

impl Engine {
    /// Creates volume `name` as Docker volume `{name}-1` of `size` (`20GB`).
    pub async fn create_volume(&self, name: &str, size: &str) -> Result<VolumeInfo> {
        self.ctx
            .recorded(
                "volume.create",
                name,
                describe_volume,
                self.create_volume_inner(name, size),
            )
            .await
    }

    async fn create_volume_inner(&self, name: &str, size: &str) -> Result<VolumeInfo> {
        check_volume_name(name)?;
        let size_bytes = parse_size(size)?;
        let _guard = self.ctx.lock_volume(name).await;
        let docker_name = crate::names::docker_volume(name, 1);
        let version = VolumeVersion {
            version: 1,
            docker_name: docker_name.clone(),
            size: size.trim().to_string(),
            size_bytes,
            size_enforced: false,
            driver: "local".into(),
            created_at: now(),
        };
        let head = Volume {
            name: name.to_string(),
            owner: self.ctx.caller.name.clone(),
            node: self.ctx.node_name().to_string(),
            current: 1,
            latest: 1,
            pending: None,
            created_at: version.created_at.clone(),
        };
        if self
            .ctx
            .shared
            .runtime
            .inspect_volume(&docker_name)
            .await?
            .is_some()
        {
            return Err(Error::VolumeExists(name.to_string()));
        }
        let txn = Txn::new()
            .absent(keys::volume(name))
            .put(keys::volume(name), encode(&head))
            .put(keys::volume_version(name, 1), encode(&version));
        let bytes = Holdings::volume_bytes(size_bytes);
        if !self
            .commit_within_quota(&head.owner, bytes, &txn, Some(&keys::volume(name)))
            .await?
        {
            return Err(Error::VolumeExists(name.to_string()));
        }
        match self.create_docker_volume(name, &version).await {
            Ok(version) => Ok(VolumeInfo {
                volume: head,
                version,
            }),
            Err(e) => {
                let txn = Txn::new()
                    .delete(keys::volume(name))
                    .delete(keys::volume_version(name, 1));
                self.ctx.commit(txn).await?;
                Err(e.during(Operation::VolumeCreate))
            }
        }
    }

    /// Commits `txn` together with `owner`'s quota guard for `more`, counting the holdings
    /// again when another claim of the owner committed first. `Ok(false)` when the commit
    /// failed because key `taken` exists (the name is someone else's now).
    async fn commit_within_quota(
        &self,
        owner: &str,
        more: Holdings,
        txn: &Txn,
        taken: Option<&str>,
    ) -> Result<bool> {
        retry(
            "other claims of the same owner kept committing first",
            move |_| async move {
                let quota = self.ctx.check_quota(owner, more).await?;
                if self
                    .ctx
                    .shared
                    .store
                    .commit(quota.apply(txn.clone()))
                    .await?
                {
                    return Ok(Try::Done(true));
                }
                if let Some(key) = taken {
                    if self.ctx.shared.store.get(key).await?.is_some() {
                        return Ok(Try::Done(false));
                    }
                }
                Ok(Try::Again)
            },
        )
        .await
    }

    pub(crate) async fn create_docker_volume(
        &self,
        name: &str,
        version: &VolumeVersion,
    ) -> Result<VolumeVersion> {
        let labels = self.ctx.labels(&[
            (LABEL_VOLUME, name.to_string()),
            (LABEL_VERSION, version.version.to_string()),
        ]);
        let enforced = self
            .ctx
            .shared
            .runtime
            .create_volume(&version.docker_name, Some(version.size_bytes), &labels)
            .await?;
        let mut version = version.clone();
        if enforced {
            version.size_enforced = true;
            self.ctx
                .shared
                .store
                .put(
                    &keys::volume_version(name, version.version),
                    encode(&version),
                )
                .await?;
        }
        Ok(version)
    }

    pub(crate) async fn volume_head(&self, name: &str) -> Result<(Volume, VolumeVersion)> {
        let name = base_volume_name(name);
        let (head, _) = self
            .ctx
            .read::<Volume>(&keys::volume(name))
            .await?
            .ok_or_else(|| Error::VolumeNotFound(name.to_string()))?;
        self.ctx.reachable_volume(name, &head)?;
        let (version, _) = self
            .ctx
            .read::<VolumeVersion>(&keys::volume_version(name, head.current))
            .await?
            .ok_or_else(|| {
                Error::Store(format!("volume '{name}' has no current version record"))
            })?;
        Ok((head, version))
    }

    /// Resizes volume `name` to `size`: a new version with the data copied, and every managed
    /// replicaSet mounting it moved onto the new version.
    pub async fn resize_volume(&self, name: &str, size: &str) -> Result<VolumeInfo> {
        self.ctx
            .recorded(
                "volume.resize",
                base_volume_name(name),
                describe_volume,
                self.resize_volume_inner(name, size),
            )
            .await
    }

    async fn resize_volume_inner(&self, name: &str, size: &str) -> Result<VolumeInfo> {
        // The caller must reach the volume; the sets that mount it move whoever owns them.
        self.volume_head(name).await?;
        self.as_caller(Caller::operator())
            .resize_reachable_volume(name, size)
            .await
    }

    async fn resize_reachable_volume(&self, name: &str, size: &str) -> Result<VolumeInfo> {
        let name = base_volume_name(name).to_string();
        let size_bytes = parse_size(size)?;
        let _guard = self.ctx.lock_volume(&name).await;
        let (mut head, current) = self.volume_head(&name).await?;
        if size_bytes == current.size_bytes {
            return Err(Error::VolumeSameSize(name, current.size));
        }
        if size_bytes < current.size_bytes {
            let used = self
                .ctx
                .shared
                .runtime
                .volume_used_bytes(&current.docker_name)
                .await
                .map_err(|e| e.during(Operation::VolumeResize))?;
            if used > size_bytes {
                return Err(Error::ShrinkBelowUsage {
                    name,
                    used,
                    requested: size_bytes,
                });
            }
        }
        let users = self.mounted_by(&current.docker_name).await?;
        let mut guards = Vec::new();
        for user in &users {
            guards.push(self.ctx.lock_set(&user.replica_set.name).await);
        }
        let number = head.latest + 1;
        let next = VolumeVersion {
            version: number,
            docker_name: crate::names::docker_volume(&name, number),
            size: size.trim().to_string(),
            size_bytes,
            size_enforced: false,
            driver: current.driver.clone(),
            created_at: now(),
        };
        head.latest = number;
        head.pending = Some(VolumeIntent {
            version: number,
            users: users.iter().map(|u| u.replica_set.name.clone()).collect(),
            copied: false,
        });
        let growth = Holdings::volume_bytes(size_bytes.saturating_sub(current.size_bytes));
        let txn = Txn::new()
            .put(keys::volume(&name), encode(&head))
            .put(keys::volume_version(&name, number), encode(&next));
        self.commit_within_quota(&head.owner, growth, &txn, None)
            .await?;
        failpoint("resize.recorded");
        let next = match self.move_volume(&mut head, &current, &next, &users).await {
            Ok(next) => next,
            Err(e) => {
                head.pending = None;
                // The number was never seen as a version: hand it out again (no gap).
                if head.latest == number {
                    head.latest -= 1;
                }
                let txn = Txn::new()
                    .delete(keys::volume_version(&name, number))
                    .put(keys::volume(&name), encode(&head));
                self.ctx.commit(txn).await?;
                return Err(e.during(Operation::VolumeResize));
            }
        };
        failpoint("resize.finished");
        self.ctx.complete_resize(&mut head, &current).await?;
        Ok(VolumeInfo {
            volume: head,
            version: next,
        })
    }

    /// Creates `next`, stops the users, copies, rebinds the users; all or nothing.
    async fn move_volume(
        &self,
        head: &mut Volume,
        current: &VolumeVersion,
        next: &VolumeVersion,
        users: &[ReplicaSetInfo],
    ) -> Result<VolumeVersion> {
        let next = self.create_docker_volume(&head.name, next).await?;
        failpoint("resize.volume_created");
        let mut prepared: Vec<Prepared> = Vec::new();
        let outcome = async {
            for user in users {
                let mut spec = user.version.spec.clone();
                for bind in spec
                    .binds
                    .iter_mut()
                    .filter(|b| b.src == current.docker_name)
                {
                    *bind = Bind {
                        src: next.docker_name.clone(),
                        dest: bind.dest.clone(),
                    };
                }
                prepared.push(
                    self.prepare_rebind(&user.replica_set.name, spec, &head.name)
                        .await?,
                );
            }
            failpoint("resize.prepared");
            // Every user is stopped now: the copy sees data at rest.
            self.ctx
                .shared
                .runtime
                .copy_volume(&current.docker_name, &next.docker_name)
                .await?;
            if let Some(intent) = head.pending.as_mut() {
                intent.copied = true;
            }
            self.ctx
                .commit(Txn::new().put(keys::volume(&head.name), encode(&*head)))
                .await
        }
        .await;
        if let Err(e) = outcome {
            for p in prepared {
                self.ctx.abort(p).await;
            }
            self.ctx
                .shared
                .runtime
                .remove_volume(&next.docker_name)
                .await
                .ok();
            return Err(e);
        }
        failpoint("resize.copied");
        let mut started = Vec::new();
        let mut pending = prepared.into_iter();
        for p in pending.by_ref() {
            match self.ctx.activate(p).await {
                Ok(p) => started.push(p),
                Err(e) => {
                    for p in started.into_iter().chain(pending) {
                        self.ctx.abort(p).await;
                    }
                    self.ctx
                        .shared
                        .runtime
                        .remove_volume(&next.docker_name)
                        .await
                        .ok();
                    return Err(e);
                }
            }
        }
        failpoint("resize.started");
        for p in started {
            self.ctx.finish(p).await?;
        }
        Ok(next)
    }

    /// Managed replicaSets whose current version mounts Docker volume `docker_name`.
    async fn mounted_by(&self, docker_name: &str) -> Result<Vec<ReplicaSetInfo>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|info| info.version.spec.binds.iter().any(|b| b.src == docker_name))
            .collect())
    }

    /// Deletes the volume; refused while a replicaSet mounts it.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        self.ctx
            .recorded(
                "volume.delete",
                base_volume_name(name),
                |_| "every version removed".into(),
                self.delete_volume_inner(name),
            )
            .await
    }

    async fn delete_volume_inner(&self, name: &str) -> Result<()> {
        let name = base_volume_name(name).to_string();
        let _guard = self.ctx.lock_volume(&name).await;
        let (_, current) = self.volume_head(&name).await?;
        // Every set that mounts it counts, whoever owns it.
        let operator = self.as_caller(Caller::operator());
        let users = operator.mounted_by(&current.docker_name).await?;
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|u| u.replica_set.name.as_str()).collect();
            return Err(Error::refused(
                Operation::VolumeDelete,
                format!(
                    "volume '{}' is mounted by replicaSet {}; delete them or patch them onto another volume first",
                    current.docker_name,
                    names.join(", ")
                ),
            ));
        }
        self.ctx
            .shared
            .runtime
            .remove_volume(&current.docker_name)
            .await
            .map_err(|e| e.during(Operation::VolumeDelete))?;
        let versions = self
            .ctx
            .shared
            .store
            .list(&keys::volume_versions(&name))
            .await?;
        let txn = versions
            .iter()
            .fold(Txn::new(), |t, e| t.delete(e.key.clone()))
            .delete(keys::volume(&name));
        self.ctx
            .commit(txn)
            .await
            .map_err(|e| e.during(Operation::VolumeDelete))
    }

    /// The volume with its current version.
    pub async fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let (volume, version) = self.volume_head(name).await?;
        Ok(VolumeInfo { volume, version })
    }

    /// Every version of the volume, newest first.
    pub async fn volume_history(&self, name: &str) -> Result<Vec<VolumeVersion>> {
        let name = base_volume_name(name);
        self.volume_head(name).await?;
        let mut versions: Vec<VolumeVersion> = self
            .ctx
            .read_all(&keys::volume_versions(name))
            .await
            .map_err(|e| e.during(Operation::VolumeHistory))?;
        versions.reverse();
        Ok(versions)
    }

    /// Every volume this caller may reach, with its current version.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.list_volumes_of(None).await
    }

    /// [`Engine::list_volumes`], only `owner`'s when given.
    pub async fn list_volumes_of(&self, owner: Option<&str>) -> Result<Vec<VolumeInfo>> {
        let heads: Vec<Volume> = self.ctx.read_all(keys::VOLUMES).await?;
        let mut infos = Vec::with_capacity(heads.len());
        for volume in heads
            .into_iter()
            .filter(|v| self.ctx.caller.may_reach(&v.owner) && owner.is_none_or(|o| v.owner == o))
        {
            let key = keys::volume_version(&volume.name, volume.current);
            let (version, _) = self.ctx.read::<VolumeVersion>(&key).await?.ok_or_else(|| {
                Error::Store(format!(
                    "volume '{}' has no current version record",
                    volume.name
                ))
            })?;
            infos.push(VolumeInfo { volume, version });
        }
        Ok(infos)
    }
}

fn check_volume_name(name: &str) -> Result<()> {
    if name.starts_with('/') {
        return Err(Error::VolumeNameSlash(name.to_string()));
    }
    check_name(name, Error::VolumeNameEmpty, Error::VolumeNameHasDash)
}

/// `bar-2` → `bar`: a volume may be named by its Docker name too.
fn base_volume_name(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, version)) if version.parse::<u32>().is_ok() => base,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_checked_with_their_own_codes() {
        assert_eq!(check_volume_name("").unwrap_err().code(), 1024);
        assert_eq!(check_volume_name("a-b").unwrap_err().code(), 1031);
        assert_eq!(check_volume_name("/a").unwrap_err().code(), 1032);
        assert!(check_volume_name("bar").is_ok());
    }

    #[test]
    fn docker_names_resolve_to_the_volume() {
        assert_eq!(base_volume_name("bar-2"), "bar");
        assert_eq!(base_volume_name("bar"), "bar");
    }
}
