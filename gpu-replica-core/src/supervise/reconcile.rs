//! Reconciliation, level-triggered: the records say what should be, Docker says what is, and
//! the engine settles the difference where the records say what to do, or shows it.
//!
//! - A set recorded running whose container stopped outside the engine (a `docker stop`, a stop
//!   that a killed engine left in its grace period) is started again. One whose container
//!   vanished, or does not start, is shown `exited` (status in info and list, and an event);
//!   `continue` or a patch makes it run again. It keeps its GPUs and ports meanwhile.
//! - A set recorded paused or stopped whose container runs (started outside the engine) is
//!   stopped again.
//! - A GPU or port claim whose holder does not exist, is stopped, or no longer lists it is
//!   released.
//!
//! Sets with an operation in flight are left to that operation (and to recovery, should it have
//! died). [`Engine::reconcile`] is one pass; [`Engine::spawn_reconciler`] runs one per set on
//! each Docker container event and a full pass every [`crate::EngineConfig::reconcile_interval`].
//! [`Engine::recover`] runs one pass at start.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;

use crate::engine::{encode, Context, WeakContext, LABEL_REPLICA_SET, LABEL_STORE};
use crate::error::Result;
use crate::keys;
use crate::model::{ReplicaSet, Status};
use crate::names;
use crate::runtime::ContainerState;
use crate::store::{Entry, Txn};

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Drift settled: a container started or stopped, a stray claim released.
    pub settled: Vec<String>,
    /// Drift shown, for a person: a set marked `exited`.
    pub shown: Vec<String>,
}

impl Reconciled {
    /// Whether the pass found nothing to do.
    pub fn is_empty(&self) -> bool {
        self.settled.is_empty() && self.shown.is_empty()
    }
}

impl Context {
    /// One pass over every replicaSet and every claim; see the module documentation. Docker
    /// is asked once for all containers; only a set that looks drifted is looked at again,
    /// under its lock.
    pub async fn reconcile(&self) -> Result<Reconciled> {
        let mut pass = Reconciled::default();
        // Containers first, then the heads: what the sweep below needs (and drift does not
        // mind).
        let listed = self
            .shared
            .runtime
            .list_containers(LABEL_REPLICA_SET)
            .await?;
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let containers: HashMap<&str, &ContainerState> =
            listed.iter().map(|c| (c.name.as_str(), c)).collect();
        for head in heads.iter().filter(|h| h.node == self.node_name()) {
            let container = containers
                .get(names::container(&head.name, head.current).as_str())
                .copied();
            if head.pending.is_none() && !drifted(head.status, container) {
                continue;
            }
            self.reconcile_one(&head.name, &mut pass).await?;
        }
        self.release_stray_claims(&mut pass).await?;
        for line in self.settle_networks(&listed).await? {
            self.settled("", line, &mut pass).await?;
        }
        if !self.node_name().is_empty() {
            self.sweep_listed(listed, &heads, &mut pass).await?;
        }
        Ok(self.counted(pass))
    }

    /// In a cluster, removes this store's containers (of set `only`, or of every set) that
    /// their set does not use here: it lives on another node (an undone or finished
    /// migration left them), or they are not its current container. A set with an operation
    /// in flight is left alone (it may be creating one). Containers are listed before the
    /// heads are read, so one created meanwhile belongs to a head that already says so.
    pub(crate) async fn sweep_containers(
        &self,
        only: Option<&str>,
        pass: &mut Reconciled,
    ) -> Result<()> {
        let listed: Vec<ContainerState> = self
            .shared
            .runtime
            .list_containers(LABEL_REPLICA_SET)
            .await?
            .into_iter()
            .filter(|c| {
                only.is_none_or(|set| {
                    c.labels.get(LABEL_REPLICA_SET).map(String::as_str) == Some(set)
                })
            })
            .collect();
        if listed.is_empty() {
            return Ok(());
        }
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        self.sweep_listed(listed, &heads, pass).await
    }

    /// [`Engine::sweep_containers`] over containers `listed` before `heads` were read.
    async fn sweep_listed(
        &self,
        listed: Vec<ContainerState>,
        heads: &[ReplicaSet],
        pass: &mut Reconciled,
    ) -> Result<()> {
        let Some(store) = self.shared.store_id.get() else {
            return Ok(());
        };
        let heads: HashMap<&str, &ReplicaSet> =
            heads.iter().map(|h| (h.name.as_str(), h)).collect();
        for container in listed
            .into_iter()
            .filter(|c| c.labels.get(LABEL_STORE) == Some(store))
        {
            let set = container
                .labels
                .get(LABEL_REPLICA_SET)
                .cloned()
                .unwrap_or_default();
            let unused = match heads.get(set.as_str()) {
                None => true,
                // Recorded before it was a cluster node: not this sweep's to judge.
                Some(head) if head.pending.is_some() || head.node.is_empty() => false,
                Some(head) => {
                    head.node != self.node_name()
                        || container.name != names::container(&head.name, head.current)
                }
            };
            // One the records never knew, found at the start after a restore: left alone.
            let unused = unused && !self.marked_unknown(&container.name).await?;
            if unused {
                self.shared.runtime.remove_container(&container.id).await?;
                pass.settled.push(format!(
                    "container {} removed: '{set}' does not use it on this node",
                    container.name
                ));
            }
        }
        Ok(())
    }

    /// Reconciles one replicaSet (its container against its head).
    pub async fn reconcile_set(&self, name: &str) -> Result<Reconciled> {
        let mut pass = Reconciled::default();
        self.reconcile_one(name, &mut pass).await?;
        Ok(self.counted(pass))
    }

    /// `pass`, counted in the metrics.
    fn counted(&self, pass: Reconciled) -> Reconciled {
        self.shared
            .metrics
            .count_actions(self.node_name(), false, "settled", pass.settled.len());
        self.shared
            .metrics
            .count_actions(self.node_name(), false, "shown", pass.shown.len());
        pass
    }

    /// Asks a running reconciler to look at `name` soon.
    pub(crate) fn nudge_reconcile(&self, name: &str) {
        self.shared.nudges.push(name);
    }

    /// Asks the reconciler for a full pass soon (a node back from being lost).
    pub(crate) fn nudge_everything(&self) {
        self.shared.nudges.push_everything();
    }

    async fn reconcile_one(&self, name: &str, pass: &mut Reconciled) -> Result<()> {
        let _guard = self.lock_set(name).await;
        let Some((mut head, revision)) = self.read::<ReplicaSet>(&keys::replica_set(name)).await?
        else {
            return Ok(());
        };
        // Another node's set (one that moved away) is that node's to reconcile.
        if head.pending.is_some() || head.node != self.node_name() {
            return Ok(());
        }
        let container = names::container(name, head.current);
        let state = self.shared.runtime.inspect_container(&container).await?;
        if !drifted(head.status, state.as_ref()) {
            return Ok(());
        }
        let running = state.as_ref().is_some_and(|s| s.running);
        match head.status {
            Status::Running => {
                let why = match state {
                    Some(_) => match self.start_container(&container).await {
                        Ok(()) => {
                            let line = format!(
                                "{container} of {name} had stopped outside gpu-replica: started again"
                            );
                            return self.settled(name, line, pass).await;
                        }
                        Err(e) => format!("does not start: {e}"),
                    },
                    None => "is gone".to_string(),
                };
                head.status = Status::Exited;
                let txn = Txn::new()
                    .unchanged(keys::replica_set(name), revision)
                    .put(keys::replica_set(name), encode(&head));
                if self.shared.store.commit(txn).await? {
                    let line = format!(
                        "{container} of {name} {why}: shown exited (continue or patch it to run it again)"
                    );
                    tracing::warn!(replica_set = %name, "{line}");
                    self.emit("reconcile", name, false, line.clone()).await;
                    pass.shown.push(line);
                }
                Ok(())
            }
            Status::Exited if running => {
                head.status = Status::Running;
                let txn = Txn::new()
                    .unchanged(keys::replica_set(name), revision)
                    .put(keys::replica_set(name), encode(&head));
                if self.shared.store.commit(txn).await? {
                    let line = format!("{container} of {name} runs again: shown running");
                    self.settled(name, line, pass).await?;
                }
                Ok(())
            }
            Status::Paused | Status::Stopped if running => {
                self.shared
                    .runtime
                    .stop_container(&container, self.shared.config.stop_timeout)
                    .await?;
                let line =
                    format!(
                    "{container} of {name} was started outside gpu-replica while {}: stopped again",
                    if head.status == Status::Paused { "paused" } else { "stopped" }
                );
                self.settled(name, line, pass).await
            }
            Status::Exited | Status::Paused | Status::Stopped => Ok(()),
        }
    }

    async fn settled(&self, name: &str, line: String, pass: &mut Reconciled) -> Result<()> {
        tracing::info!(replica_set = %name, "reconcile: {line}");
        self.emit("reconcile", name, true, line.clone()).await;
        pass.settled.push(line);
        Ok(())
    }

    /// Releases claims whose holder does not exist, is stopped, or does not list them; each
    /// in a transaction that holds only if neither the claim nor the holder changed meanwhile.
    async fn release_stray_claims(&self, pass: &mut Reconciled) -> Result<()> {
        let mut gpus = self.shared.store.list(keys::GPU_CLAIMS).await?;
        if !self.node_name().is_empty() {
            // In a cluster, each node judges the claims on its own GPUs only.
            let local: std::collections::HashSet<String> = self
                .shared
                .inventory
                .gpus()
                .await?
                .into_iter()
                .map(|g| g.uuid)
                .collect();
            gpus.retain(|e| local.contains(&e.key[keys::GPU_CLAIMS.len()..]));
        }
        let port_prefix = keys::port_claims(self.node_name());
        let ports = self.shared.store.list(&port_prefix).await?;
        if gpus.is_empty() && ports.is_empty() {
            return Ok(());
        }
        // Every holder's head with its revision, in one read: the transactions below hold only
        // if neither the claim nor its holder changed since.
        let heads: HashMap<String, (ReplicaSet, u64)> = self
            .shared
            .store
            .list(keys::REPLICA_SETS)
            .await?
            .into_iter()
            .filter_map(|e| {
                let head: ReplicaSet = serde_json::from_slice(&e.value).ok()?;
                Some((head.name.clone(), (head, e.revision)))
            })
            .collect();
        let claims = gpus
            .iter()
            .map(|e| (e, Claimed::Gpu(&e.key[keys::GPU_CLAIMS.len()..])))
            .chain(ports.iter().filter_map(|e| {
                let port = e.key[port_prefix.len()..].parse().ok()?;
                Some((e, Claimed::Port(port)))
            }));
        for (entry, claimed) in claims {
            self.release_if_stray(entry, claimed, &heads, pass).await?;
        }
        Ok(())
    }

    async fn release_if_stray(
        &self,
        entry: &Entry,
        claimed: Claimed<'_>,
        heads: &HashMap<String, (ReplicaSet, u64)>,
        pass: &mut Reconciled,
    ) -> Result<()> {
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        let head = heads.get(&holder);
        let why = match head {
            None => "no such set",
            Some((h, _)) if h.pending.is_some() => return Ok(()),
            Some((h, _)) if !h.status.holds_claims() => "the set is stopped",
            Some((h, _)) if !claimed.listed_in(h) => "the set does not hold it",
            Some(_) => return Ok(()),
        };
        let txn = Txn::new()
            .unchanged(entry.key.clone(), entry.revision)
            .delete(entry.key.clone());
        let txn = match head {
            None => txn.absent(keys::replica_set(&holder)),
            Some((_, revision)) => txn.unchanged(keys::replica_set(&holder), *revision),
        };
        if self.shared.store.commit(txn).await? {
            let line = format!("{claimed} claimed by '{holder}' released: {why}");
            self.settled(&holder, line, pass).await?;
        }
        Ok(())
    }

    /// Runs the reconciler until the engine is closed or dropped: one set on each Docker event
    /// about its containers (or a nudge), every set each `reconcile_interval`. Docker going
    /// away is waited out: the event stream is opened again once it is back.
    pub fn spawn_reconciler(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.downgrade();
        let interval = self.shared.config.reconcile_interval;
        let closing = self.closing_receiver();
        tokio::spawn(async move {
            let events = tokio::spawn(watch_docker(engine.clone()));
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut closing = closing;
            while let Some(nudges) = engine.upgrade().map(|e| e.shared.nudges.clone()) {
                let full = tokio::select! {
                    _ = ticks.tick() => true,
                    _ = nudges.notify.notified() => false,
                    _ = closing.wait_for(|c| *c) => break,
                };
                drop(nudges);
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                let names = engine.shared.nudges.take();
                let outcome = if full || engine.shared.nudges.take_everything() {
                    engine.reconcile().await.map(|_| ())
                } else {
                    let mut pass = Reconciled::default();
                    let mut outcome = Ok(());
                    for name in names {
                        outcome = outcome.and(engine.reconcile_one(&name, &mut pass).await);
                    }
                    outcome
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "reconcile pass failed; the next one retries");
                }
            }
            events.abort();
        })
    }
}

/// Follows Docker's events about this store's containers and nudges the reconciler for the
/// set each one belongs to; reopens the stream when Docker comes back.
async fn watch_docker(engine: WeakContext) {
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let label = match strong.shared.store_id.get() {
            Some(id) => format!("{LABEL_STORE}={id}"),
            None => LABEL_REPLICA_SET.to_string(),
        };
        let runtime = strong.shared.runtime.clone();
        drop(strong);
        match runtime.container_events(&label).await {
            Ok(mut stream) => {
                // Whatever happened while we were not listening.
                if let Some(engine) = engine.upgrade() {
                    engine.shared.nudges.push_everything();
                }
                while let Some(event) = stream.next().await {
                    let Ok(event) = event else { break };
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    if let Some(set) = event.labels.get(LABEL_REPLICA_SET) {
                        tracing::debug!(container = %event.container, action = %event.action, "docker event");
                        engine.nudge_reconcile(set);
                    }
                }
                // The stream ended: Docker went away or restarted. Look at everything once
                // it is back, then follow again.
                if let Some(engine) = engine.upgrade() {
                    engine.shared.nudges.push_everything();
                }
            }
            Err(e) => tracing::debug!(error = %e, "docker events unavailable; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether a set recorded `status` disagrees with its container (`None`: gone).
fn drifted(status: Status, container: Option<&ContainerState>) -> bool {
    let running = container.is_some_and(|c| c.running);
    // Docker's restart policy is already bringing it back.
    let restarting = container.is_some_and(|c| c.status == "restarting");
    match status {
        Status::Running => !running && !restarting,
        Status::Exited | Status::Paused | Status::Stopped => running,
    }
}

/// A claimed GPU or port.
#[derive(Clone, Copy)]
enum Claimed<'a> {
    Gpu(&'a str),
    Port(u16),
}

impl Claimed<'_> {
    fn listed_in(self, head: &ReplicaSet) -> bool {
        match self {
            Claimed::Gpu(uuid) => head.gpus.iter().any(|g| g == uuid),
            Claimed::Port(port) => head.ports.iter().any(|p| p.host_port == port),
        }
    }
}

impl std::fmt::Display for Claimed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claimed::Gpu(uuid) => write!(f, "GPU {uuid}"),
            Claimed::Port(port) => write!(f, "port {port}"),
        }
    }
}
