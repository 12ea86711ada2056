//! What the operator allows: names, bind mounts of host paths and of volumes.

use std::path::{Component, Path, PathBuf};

use crate::engine::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::runtime::Bind;

/// Host paths never mounted, whatever the operator allows.
const FORBIDDEN_HOST_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/var/run/docker.sock",
    "/run/docker.sock",
];

/// Checks a replicaSet or volume name (see [`crate::names::check`]).
pub(crate) fn check_name(name: &str, empty: Error, dash: fn(String) -> Error) -> Result<()> {
    crate::names::check(name, empty, dash)
}

impl Context {
    /// Checks one bind and returns it as it will be mounted: destination absolute and not
    /// `/`; a host source resolved (symlinks, `..`) and then under an allowed root and never a
    /// system path; a volume source existing and managed by this engine (or allowed by name).
    pub(crate) async fn check_bind(&self, bind: &Bind) -> Result<Bind> {
        crate::input::bind_path("bind source", &bind.src)?;
        crate::input::bind_path("bind destination", &bind.dest)?;
        if !bind.dest.starts_with('/') {
            return Err(Error::InvalidParams(format!(
                "bind destination '{}' must be an absolute path",
                bind.dest
            )));
        }
        let dest: Vec<Component> = Path::new(&bind.dest).components().collect();
        if dest.contains(&Component::ParentDir) {
            return Err(Error::InvalidParams(format!(
                "bind destination '{}' must not contain '..'",
                bind.dest
            )));
        }
        if !dest.iter().any(|c| matches!(c, Component::Normal(_))) {
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

    /// `bind` as an older version recorded it, mounted now: a volume of this engine follows
    /// to its current version (a resize since then replaced `data-1` by `data-2`, and Docker
    /// would silently make an empty `data-1`), then the bind is checked as a new one.
    pub(crate) async fn check_recorded_bind(&self, bind: &Bind) -> Result<Bind> {
        let mut bind = bind.clone();
        if let Some((base, number)) = bind.src.rsplit_once('-') {
            if !bind.is_host_path() && number.parse::<u32>().is_ok() {
                if let Some((volume, _)) = self
                    .read::<crate::model::Volume>(&keys::volume(base))
                    .await?
                {
                    bind.src = crate::names::docker_volume(&volume.name, volume.current);
                }
            }
        }
        self.check_bind(&bind).await
    }

    /// A volume may be mounted when this engine manages it (the current version of one of its
    /// volumes) or the operator allows it by name; never another application's volume.
    async fn check_volume_source(&self, src: &str) -> Result<()> {
        if self.shared.runtime.inspect_volume(src).await?.is_none() {
            // Bind sources are versioned names (`data-1`), made by POST /api/v1/volumes.
            return Err(Error::VolumeNotFound(src.to_string()));
        }
        if self.shared.config.allowed_volumes.iter().any(|v| v == src) {
            return Ok(());
        }
        let managed = match src.rsplit_once('-') {
            Some((base, number)) => match number.parse::<u32>() {
                Ok(number) => match self
                    .read::<crate::model::Volume>(&keys::volume(base))
                    .await?
                {
                    // Another user's volume is missing, as one that does not exist.
                    Some((v, _)) if !self.caller.may_reach(&v.owner) => {
                        return Err(Error::VolumeNotFound(src.to_string()))
                    }
                    Some((v, _)) => v.current == number,
                    None => false,
                },
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
            .shared
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn engine(config: EngineConfig) -> Context {
        Context::new(
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
