//! Starting an engine the way a server does, in the one order that is safe:
//!
//! 0. the store's schema: an older store is backed up and migrated, a newer one refused
//!    ([`crate::backup::upgrade`]);
//! 1. in a cluster, the cluster's secret (made by the first node), and with it the link to the
//!    other nodes: recovery may have to ask another node to undo its part of a migration;
//! 2. recovery: what a crash left in flight is finished or undone, orphans are removed, before
//!    any new request is taken;
//! 3. in a cluster, joining it (the node's record and its lease);
//! 4. the timers (idle and stop-at) and the reconciler (Docker's events and a periodic pass).
//!
//! [`Engine::builder`] gathers the parts, [`EngineBuilder::start`] runs the steps and hands back
//! a [`Running`] engine that owns the background tasks. `gpu-replica serve` does exactly this,
//! then serves HTTP; an embedder gets the same server behaviour in one call.

use std::fmt;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::cluster::NodeLink;
use crate::engine::Recovery;
use crate::engine::{Clock, EngineConfig};
use crate::error::Error;
use crate::gpu::GpuInventory;
use crate::ops::Engine;
use crate::runtime::ContainerRuntime;
use crate::store::StateStore;

/// Makes the link to the other nodes from the cluster's secret.
type LinkMaker = Box<dyn FnOnce(&str) -> Arc<dyn NodeLink> + Send>;

/// The parts of an engine and how to start it; see [`Engine::builder`].
pub struct EngineBuilder {
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<dyn StateStore>,
    inventory: Arc<dyn GpuInventory>,
    config: EngineConfig,
    clock: Option<Arc<dyn Clock>>,
    advertise: Option<String>,
    link: Option<LinkMaker>,
}

/// The start-up step that failed, with what failed.
#[derive(Debug)]
pub struct StartError {
    /// What was being done: "reading the cluster's secret", "recovery", "joining the cluster".
    pub step: &'static str,
    /// Why it failed.
    pub error: Error,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

impl StartError {
    fn at(step: &'static str) -> impl FnOnce(Error) -> StartError {
        move |error| StartError { step, error }
    }
}

impl std::error::Error for StartError {}

/// A started engine and its background tasks (membership, timers, reconciler). Dropping it
/// stops the tasks; [`Running::engine`] may be shared meanwhile.
pub struct Running {
    engine: Arc<Engine>,
    recovery: Recovery,
    tasks: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Gathers an engine's parts, to be [`EngineBuilder::start`]ed (or only
    /// [`EngineBuilder::build`]t, with nothing running in the background).
    pub fn builder(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<dyn StateStore>,
        inventory: Arc<dyn GpuInventory>,
    ) -> EngineBuilder {
        EngineBuilder {
            runtime,
            store,
            inventory,
            config: EngineConfig::default(),
            clock: None,
            advertise: None,
            link: None,
        }
    }
}

impl EngineBuilder {
    /// How the engine behaves (default: [`EngineConfig::default`]).
    pub fn config(mut self, config: EngineConfig) -> EngineBuilder {
        self.config = config;
        self
    }

    /// Where GPU-time is read from (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> EngineBuilder {
        self.clock = Some(clock);
        self
    }

    /// In a cluster ([`EngineConfig::node`]): the URL the other nodes reach this one at.
    pub fn advertise(mut self, url: impl Into<String>) -> EngineBuilder {
        self.advertise = Some(url.into());
        self
    }

    /// In a cluster: how to reach the other nodes, made from the cluster's secret once it is
    /// read (`gpu_replica_http::HttpNodeLink::new(secret, client)`, say).
    pub fn node_link(
        mut self,
        make: impl FnOnce(&str) -> Arc<dyn NodeLink> + Send + 'static,
    ) -> EngineBuilder {
        self.link = Some(Box::new(make));
        self
    }

    /// The engine, with nothing started: no recovery, no background task.
    pub fn build(self) -> Engine {
        let engine = Engine::new(self.runtime, self.store, self.inventory, self.config);
        match self.clock {
            Some(clock) => engine.with_clock(clock),
            None => engine,
        }
    }

    /// Starts the engine in the order the module describes; a failed step stops it there.
    pub async fn start(mut self) -> Result<Running, StartError> {
        let advertise = self.advertise.take();
        let link = self.link.take();
        let node = self.config.node.is_some();
        if node && advertise.is_none() {
            return Err(StartError {
                step: "joining the cluster",
                error: Error::InvalidParams(
                    "a node needs the URL the other nodes reach it at (advertise)".into(),
                ),
            });
        }
        let backup_dir = self.config.backup_dir.clone();
        let engine = Arc::new(self.build());
        crate::backup::upgrade(engine.ctx.store().as_ref(), backup_dir.as_deref())
            .await
            .map_err(StartError::at(
                "bringing the store to this release's schema",
            ))?;
        engine.ctx.check_toolkit();
        engine
            .ctx
            .check_network()
            .await
            .map_err(StartError::at("finding the network sets join"))?;
        engine.ctx.install_network_guard();
        engine
            .ctx
            .check_rootfs()
            .await
            .map_err(StartError::at("asking the storage driver for size limits"))?;
        if node {
            engine
                .load_cluster_secret()
                .await
                .map_err(StartError::at("reading the cluster's secret"))?;
            if let (Some(make), Some(secret)) = (link, engine.cluster_secret()) {
                engine.set_link(make(secret));
            }
        }
        let recovery = engine
            .ctx
            .recover()
            .await
            .map_err(StartError::at("recovery"))?;
        let mut tasks = Vec::new();
        if let Some(url) = advertise.filter(|_| node) {
            let docker = engine
                .ctx
                .runtime()
                .version()
                .await
                .map_err(StartError::at("reading the container runtime's version"))?;
            tasks.push(
                engine
                    .join_cluster(&url, &docker)
                    .await
                    .map_err(StartError::at("joining the cluster"))?,
            );
        }
        tasks.push(engine.spawn_timers());
        tasks.push(engine.ctx.spawn_reconciler());
        tasks.push(engine.ctx.spawn_rootfs_meter());
        Ok(Running {
            engine,
            recovery,
            tasks,
        })
    }
}

impl Running {
    /// The engine, acting for the built-in admin.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// What the start-up recovery did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_node_without_an_address_for_the_others_stops_before_touching_anything() {
        // No expectation: any call to Docker would panic the mock.
        let result = Engine::builder(
            Arc::new(MockContainerRuntime::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::fake(1)),
        )
        .config(EngineConfig {
            node: Some("gpu1".into()),
            ..EngineConfig::default()
        })
        .start()
        .await;
        let Err(error) = result else {
            panic!("a node started without --advertise")
        };
        assert_eq!(error.step, "joining the cluster");
        assert_eq!(error.error.code(), 1000);
        assert!(error.to_string().contains("advertise"), "{error}");
    }

    #[tokio::test]
    async fn a_failed_recovery_names_its_step_and_starts_no_task() {
        let mut runtime = MockContainerRuntime::new();
        runtime
            .expect_list_containers()
            .returning(|_| Err(Error::Docker("the engine is down".into())));
        runtime
            .expect_list_images()
            .returning(|_| Err(Error::Docker("the engine is down".into())));
        runtime
            .expect_list_volumes()
            .returning(|_| Err(Error::Docker("the engine is down".into())));
        // No host firewall change from a unit test.
        let mut config = EngineConfig::default();
        config.network.guard = false;
        config.rootfs.size = None;
        let result = Engine::builder(
            Arc::new(runtime),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::fake(1)),
        )
        .config(config)
        .start()
        .await;
        let Err(error) = result else {
            panic!("started on a Docker that is down")
        };
        assert_eq!(error.step, "recovery");
        assert!(error.to_string().starts_with("recovery: "), "{error}");
    }

    #[tokio::test]
    async fn an_unknown_toolkit_before_its_fixes_refuses_ld_preload_and_fake_gpus_skip_it() {
        let real = crate::gpu::GpuInfo {
            index: 0,
            uuid: "GPU-real".into(),
            name: "H200".into(),
            memory_total: None,
            memory_used: None,
            utilization: None,
            distances: Vec::new(),
        };
        let engine = Engine::builder(
            Arc::new(MockContainerRuntime::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::from_list(vec![real])),
        )
        .build();
        let report = engine.ctx.check_toolkit().clone();
        assert!(report.used);
        // No toolkit binary answers here: the version is unknown, so every advisory holds.
        assert_eq!(report.version, None);
        assert_eq!(report.vulnerable_to.len(), 3);
        let error = engine
            .run(crate::RunRequest {
                name: "x".into(),
                image: "img".into(),
                env: vec!["A=1".into(), "LD_PRELOAD=/tmp/evil.so".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), 1000);
        assert!(
            error.to_string().contains("LD_PRELOAD")
                && error.to_string().contains("CVE-2025-23266"),
            "{error}"
        );
        assert_eq!(engine.toolkit(), Some(&report));

        let fake = Engine::builder(
            Arc::new(MockContainerRuntime::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::fake(2)),
        )
        .build();
        let report = fake.ctx.check_toolkit();
        assert!(!report.used && report.vulnerable_to.is_empty() && report.refused_env.is_empty());
    }
}
