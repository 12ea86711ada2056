//! Reads and commands on a running set: execute, commit, info, history and the list.

use crate::engine::LABEL_REPLICA_SET;
use crate::error::{Error, Operation, Result};
use crate::keys;
use crate::model::{ReplicaSet, ReplicaSetInfo, Status, Version};
use crate::ops::Engine;
use crate::runtime::ExecOutput;

impl Engine {
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
        crate::input::os_strings("cmd", argv)?;
        // An empty workDir is the container's own, as Docker reads it.
        let workdir = workdir.filter(|d| !d.is_empty());
        if let Some(dir) = &workdir {
            crate::input::work_dir(dir)?;
        }
        let (head, _) = self.ctx.head(name).await?;
        if head.status != Status::Running {
            return Err(Error::refused(
                Operation::Exec,
                format!("'{name}' is not running; continue or restart it first"),
            ));
        }
        let container = crate::names::container(name, head.current);
        match self
            .ctx
            .shared
            .runtime
            .exec(&container, argv, workdir)
            .await
        {
            Err(Error::NotRunning(_)) => {
                // The records say running, Docker says otherwise: the reconciler settles it.
                self.ctx.nudge_reconcile(name);
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
        let (head, _) = self.ctx.head(name).await?;
        self.ctx.check_rootfs_room(&head).await?;
        let labels = self.ctx.labels(&[(LABEL_REPLICA_SET, name.to_string())]);
        self.ctx
            .shared
            .runtime
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
        let Some(generation) = self.ctx.shared.store.generation() else {
            return self.read_info(name).await;
        };
        {
            let cache = self
                .ctx
                .shared
                .info_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((at, info)) = cache.get(name) {
                if *at == generation {
                    self.ctx.reachable_set(name, &info.replica_set)?;
                    return Ok(info.clone());
                }
            }
        }
        let info = self.read_info(name).await?;
        let mut cache = self
            .ctx
            .shared
            .info_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 4096 {
            cache.retain(|_, (at, _)| *at == generation);
        }
        cache.insert(name.to_string(), (generation, info.clone()));
        Ok(info)
    }

    async fn read_info(&self, name: &str) -> Result<ReplicaSetInfo> {
        let (head, _) = self.ctx.head(name).await?;
        let version = self
            .ctx
            .version_record(name, head.current)
            .await
            .map_err(|e| e.during(Operation::Info))?;
        let rootfs = self
            .ctx
            .read(&keys::rootfs(name))
            .await?
            .map(|(usage, _)| usage);
        Ok(ReplicaSetInfo {
            rootfs,
            replica_set: head,
            version,
        })
    }

    /// Every version, newest first, in one store read.
    pub async fn history(&self, name: &str) -> Result<Vec<Version>> {
        self.ctx.head(name).await?;
        let mut versions: Vec<Version> = self
            .ctx
            .read_all(&keys::versions(name))
            .await
            .map_err(|e| e.during(Operation::History))?;
        versions.reverse();
        Ok(versions)
    }

    /// Every replicaSet this caller may reach with its current version, by name: three prefix
    /// reads, whatever the length of the histories.
    pub async fn list(&self) -> Result<Vec<ReplicaSetInfo>> {
        self.list_where(None, None).await
    }

    /// The records under `prefix`, by the name that follows it (unreadable ones left out).
    async fn by_name<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<std::collections::HashMap<String, T>> {
        Ok(self
            .ctx
            .shared
            .store
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|e| {
                let name = e.key[prefix.len()..].to_string();
                Some((name, serde_json::from_slice(&e.value).ok()?))
            })
            .collect())
    }

    /// [`Engine::list`], only the sets of `owner` and of cluster node `node` when given.
    pub async fn list_where(
        &self,
        owner: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<ReplicaSetInfo>> {
        let mut heads: Vec<ReplicaSet> = self.ctx.read_all(keys::REPLICA_SETS).await?;
        heads.retain(|h| {
            self.ctx.caller.may_reach(&h.owner)
                && owner.is_none_or(|o| h.owner == o)
                && node.is_none_or(|n| h.node == n)
        });
        let mut current: std::collections::HashMap<String, Version> =
            self.by_name(keys::CURRENT).await?;
        let mut rootfs: std::collections::HashMap<String, crate::model::RootfsUsage> =
            self.by_name(keys::ROOTFS).await?;
        let mut infos = Vec::with_capacity(heads.len());
        for head in heads {
            let version = match current.remove(&head.name) {
                Some(v) if v.version == head.current => v,
                // Recorded before the copies existed, or caught between two writes.
                _ => match self.ctx.version_record(&head.name, head.current).await {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            infos.push(ReplicaSetInfo {
                rootfs: rootfs.remove(&head.name),
                replica_set: head,
                version,
            });
        }
        Ok(infos)
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

    /// Version `v` of set `c`, as stored.
    fn version(v: u32) -> Vec<u8> {
        format!(r#"{{"version":{v},"container":"c-{v}","spec":{{"image":"i","gpu_count":0,"binds":[],"env":[],"cmd":null,"container_ports":[]}},"gpus":[],"ports":[],"image":"i","snapshot":null,"created_at":"t"}}"#).into_bytes()
    }

    /// A store holding set `c` at version 1 (no current-version copy), and an engine on it.
    async fn engine_with_c() -> (Arc<MemoryStore>, Engine) {
        let store = Arc::new(MemoryStore::new());
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
        (store, engine)
    }

    #[tokio::test]
    async fn info_is_cached_until_the_store_is_written() {
        let (store, engine) = engine_with_c().await;
        assert_eq!(
            engine.info("c").await.unwrap().replica_set.status,
            crate::model::Status::Running
        );
        assert_eq!(engine.ctx.shared.info_cache.lock().unwrap().len(), 1);
        // A write by anyone holding the same store object is seen at once.
        store
            .put(&keys::replica_set("c"), head("stopped"))
            .await
            .unwrap();
        assert_eq!(
            engine.info("c").await.unwrap().replica_set.status,
            crate::model::Status::Stopped
        );
        store.delete(&keys::replica_set("c")).await.unwrap();
        assert_eq!(engine.info("c").await.unwrap_err().code(), 1016);
    }

    #[tokio::test]
    async fn list_reads_the_current_copies_and_falls_back_to_the_version_records() {
        // A set recorded before the copies existed: no `current/` key.
        let (store, engine) = engine_with_c().await;
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
