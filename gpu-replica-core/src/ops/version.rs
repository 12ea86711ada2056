//! Patch, rollback and restart: each makes a new version that carries the filesystem (see
//! [`crate::steps::transition`]).

use crate::engine::events::describe_info;
use crate::error::{Error, Operation, Result};
use crate::keys;
use crate::limits::Limits;
use crate::model::{ReplicaSetInfo, ReplicaSetSpec, Version};
use crate::ops::Engine;
use crate::runtime::Bind;
use crate::steps::{Filesystem, Prepared};

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
    /// Another image (local, as at run): the new version is created from it, carrying
    /// [`PatchRequest::keep_paths`] from the current container.
    pub image: Option<String>,
    /// Absolute folders an image change carries (default: the engine's
    /// [`crate::EngineConfig::keep_paths`], `/root`); only with [`PatchRequest::image`].
    pub keep_paths: Option<Vec<String>>,
}

/// Replace the mount `old` with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSwap {
    /// A bind the current version has.
    pub old: Bind,
    /// Its replacement.
    pub new: Bind,
}

impl Engine {
    /// Changes GPU count, one bind, resources and/or the image; an empty patch recreates the
    /// container as it is.
    pub async fn patch(&self, name: &str, patch: PatchRequest) -> Result<ReplicaSetInfo> {
        // An image change's event names both images.
        let before = match &patch.image {
            Some(_) => self.info(name).await.ok().map(|i| i.version.spec.image),
            None => None,
        };
        let describe = {
            let image = patch.image.clone();
            move |info: &ReplicaSetInfo| match (&before, &image) {
                (Some(before), Some(image)) => {
                    format!("image {before} → {image}: {}", describe_info(info))
                }
                _ => describe_info(info),
            }
        };
        self.ctx
            .recorded("patch", name, describe, self.patch_set(name, patch))
            .await
    }

    async fn patch_set(&self, name: &str, patch: PatchRequest) -> Result<ReplicaSetInfo> {
        if let Some(count) = patch.gpu_count.filter(|c| *c < 0) {
            return Err(Error::NegativeGpuCount(count));
        }
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (head, _) = self.ctx.head(name).await?;
        self.ctx.check_rootfs_room(&head).await?;
        let current = self.ctx.version_record(name, head.current).await?;
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
                                == crate::engine::policy::resolve_path(std::path::Path::new(
                                    &swap.old.src,
                                ))
                                .to_string_lossy()
                            && b.dest == swap.old.dest
                })
                .ok_or_else(|| {
                    Error::InvalidParams(format!(
                        "'{}:{}' is not a bind of '{name}'",
                        swap.old.src, swap.old.dest
                    ))
                })?;
            spec.binds[slot] = self.ctx.check_bind(&swap.new).await?;
        }
        if let Some(asked) = patch.resources {
            spec.resources = asked.or(spec.resources);
            self.ctx
                .shared
                .config
                .resources
                .grant(spec.gpu_count, &spec.resources)?;
        }
        let asked_for_something =
            patch.gpu_count.is_some() || patch.bind.is_some() || patch.resources.is_some();
        let filesystem = match patch.image {
            Some(image) => {
                let carry = self
                    .kept_paths(&current, patch.keep_paths.as_deref())
                    .await?;
                if image.trim().is_empty() {
                    return Err(Error::ImageNameEmpty);
                }
                self.check_image(&image).await?;
                spec.image = image.clone();
                Filesystem::Image { image, carry }
            }
            None if patch.keep_paths.is_some() => {
                return Err(Error::InvalidParams(
                    "keepPaths goes with imageName: the folders an image change carries".into(),
                ))
            }
            None => {
                if asked_for_something && spec == current.spec {
                    return Err(Error::NoNeedPatch(format!(
                        "'{name}' already has {} GPUs, these binds and these resources",
                        spec.gpu_count
                    )));
                }
                Filesystem::Current
            }
        };
        self.new_version(name, spec, filesystem)
            .await
            .map_err(|e| e.during(Operation::Patch))
    }

    /// The folders an image change carries from `current`: `asked`, else the engine's default,
    /// each absolute and made plain (no `.`, `..` or doubled `/`); one inside a bind is left
    /// out (the mount carries it); one the container lacks is refused, naming it. A default
    /// the container lacks is left out.
    async fn kept_paths(&self, current: &Version, asked: Option<&[String]>) -> Result<Vec<String>> {
        let defaults = asked.is_none();
        let asked: Vec<String> = match asked {
            Some(paths) => paths.to_vec(),
            None => self.ctx.shared.config.keep_paths.clone(),
        };
        let mut kept: Vec<String> = Vec::new();
        for path in asked {
            if !path.starts_with('/') || path.contains('\0') {
                return Err(Error::InvalidParams(format!(
                    "keepPaths: '{path}' is not an absolute path"
                )));
            }
            let mut parts: Vec<&str> = Vec::new();
            for part in path.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        return Err(Error::InvalidParams(format!(
                            "keepPaths: '{path}' may not hold '..'"
                        )))
                    }
                    part => parts.push(part),
                }
            }
            if parts.is_empty() {
                return Err(Error::InvalidParams(
                    "keepPaths: '/' is the whole filesystem; name the folders to keep".into(),
                ));
            }
            let plain = format!("/{}", parts.join("/"));
            let under = |dest: &str| {
                let dest = dest.trim_end_matches('/');
                plain == dest || plain.starts_with(&format!("{dest}/"))
            };
            if current.spec.binds.iter().any(|b| under(&b.dest)) {
                continue;
            }
            let found = self
                .ctx
                .shared
                .runtime
                .path_stat(&current.container, &plain)
                .await?;
            match found {
                Some(_) => {}
                None if defaults => continue,
                None => {
                    return Err(Error::InvalidParams(format!(
                        "keepPaths: '{plain}' does not exist in '{}'",
                        current.container
                    )))
                }
            }
            // A folder inside one already kept is carried with it.
            if kept
                .iter()
                .any(|k| plain == *k || plain.starts_with(&format!("{k}/")))
            {
                continue;
            }
            kept.retain(|k| !k.starts_with(&format!("{plain}/")));
            kept.push(plain);
        }
        Ok(kept)
    }

    /// New version with the spec and filesystem of `version`.
    pub async fn rollback(&self, name: &str, version: i64) -> Result<ReplicaSetInfo> {
        self.ctx
            .recorded(
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
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (head, _) = self.ctx.head(name).await?;
        if version == head.current {
            return Err(Error::NoNeedRollback(version));
        }
        self.ctx.check_rootfs_room(&head).await?;
        let target = self
            .ctx
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
                    self.ctx.shared.config.keep_snapshots
                ),
            ));
        }
        // The filesystem and spec of `version`, with the volumes as they are now.
        let mut spec = target.spec;
        for bind in &mut spec.binds {
            *bind = self.ctx.check_recorded_bind(bind).await?;
        }
        self.new_version(name, spec, Filesystem::Of(version))
            .await
            .map_err(|e| e.during(Operation::Rollback))
    }

    /// New version with the same spec and filesystem; GPUs are claimed again (the ones held are
    /// kept; a stopped set gets any free ones).
    pub async fn restart(&self, name: &str) -> Result<ReplicaSetInfo> {
        self.ctx
            .recorded("restart", name, describe_info, self.restart_set(name))
            .await
    }

    async fn restart_set(&self, name: &str) -> Result<ReplicaSetInfo> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (head, _) = self.ctx.head(name).await?;
        let current = self.ctx.version_record(name, head.current).await?;
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
        let prepared = self.ctx.prepare(name, spec, filesystem, true, None).await?;
        let prepared = self.ctx.activate(prepared).await?;
        self.ctx.finish(prepared).await?;
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
        self.ctx
            .prepare(
                name,
                spec,
                Filesystem::Current,
                false,
                Some(volume.to_string()),
            )
            .await
    }
}
