//! Cordoning and draining a node of a cluster.
//!
//! A cordoned node (a flag in its record, `nodes/{name}`, which every node reads) gets no new
//! set: placement passes it by, and a run, clone, volume or migration pinned to it is refused
//! ([`Error::NodeCordoned`]). Its sets stay and keep working.
//!
//! A drain cordons the node, then moves every set living on it (running, paused, stopped;
//! with its volumes' data when it mounts volumes) to another node by the usual placement,
//! `parallel` at a time, each with [`Engine::migrate`]. Its progress (in flight, moved, failed
//! with why) is written into the node's record, so any node answers for it, and each set
//! moved or not is an event `drain`. The drained node drives every migration, because a
//! migration is driven by its source; each one leaves its set on exactly one node whatever
//! happens (its own undo, or the source's recovery after a crash).
//!
//! Cancelling (or uncordoning) marks the record: no new move starts, those in flight finish
//! or are undone. A drained node killed meanwhile resumes the drain when it joins again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;

use crate::cluster::{
    Drain, DrainFailed, DrainMoved, DrainState, Migration, NodeRecord, NodeStatus,
};
use crate::engine::claims::{retry, Try};
use crate::engine::encode;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::ReplicaSet;
use crate::ops::Engine;
use crate::store::Txn;

/// Migrations at once when a drain does not say.
pub const DRAIN_PARALLEL: u32 = 2;

/// The most migrations at once a drain may ask for.
const MOST_PARALLEL: u32 = 16;

/// Tries to place one set when another move took the GPUs placement picked.
const PLACEMENT_TRIES: u32 = 3;

impl Engine {
    /// Cordons node `node`: placement gives it no new set from now on; its sets stay.
    /// Admins only.
    pub async fn cordon(&self, node: &str) -> Result<NodeStatus> {
        self.check_node_admin("cordon a node")?;
        self.update_existing_node(node, |record| {
            let changed = !record.cordoned;
            record.cordoned = true;
            changed
        })
        .await?;
        self.ctx
            .emit("node.cordon", node, true, "takes no new sets".into())
            .await;
        self.node_status(node).await
    }

    /// Uncordons node `node`: placement may give it new sets again. A drain under way is
    /// cancelled (no new move starts; those in flight finish or are undone). Admins only.
    pub async fn uncordon(&self, node: &str) -> Result<NodeStatus> {
        self.check_node_admin("uncordon a node")?;
        let cancelled = AtomicBool::new(false);
        self.update_existing_node(node, |record| {
            let drain_cancelled = cancel(record);
            cancelled.store(drain_cancelled, Ordering::SeqCst);
            let changed = record.cordoned || drain_cancelled;
            record.cordoned = false;
            changed
        })
        .await?;
        let message = if cancelled.load(Ordering::SeqCst) {
            "takes new sets again; its drain is cancelled"
        } else {
            "takes new sets again"
        };
        self.ctx
            .emit("node.uncordon", node, true, message.into())
            .await;
        self.node_status(node).await
    }

    /// Drains node `node`, which must be this engine's: cordons it and starts moving every
    /// set on it to other nodes, `parallel` at a time (0: [`DRAIN_PARALLEL`]), in the
    /// background. Answers the node's record at once; its `drain` tells the progress (read
    /// it again with [`Engine::drain_status`]). A drain already running here is answered as
    /// it is. Admins only.
    pub async fn drain(&self, node: &str, parallel: u32) -> Result<NodeRecord> {
        self.check_node_admin("drain a node")?;
        if node != self.ctx.node_name() {
            self.ready_node(node).await?;
            return Err(Error::InvalidParams(format!(
                "node '{node}' drives its own drain: ask it (through HTTP, any node sends the request there)"
            )));
        }
        if self.ctx.shared.link.get().is_none() {
            return Err(Error::InvalidParams(
                "this node has no link to the others of its cluster".into(),
            ));
        }
        let parallel = match parallel {
            0 => DRAIN_PARALLEL,
            n => n.min(MOST_PARALLEL),
        };
        let runner = self.ctx.shared.instance.clone();
        let started = AtomicBool::new(false);
        let record = self
            .update_existing_node(node, |record| {
                let running_here = record
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.state == DrainState::Running && d.runner == runner);
                started.store(!running_here, Ordering::SeqCst);
                let changed = !record.cordoned || !running_here;
                record.cordoned = true;
                if !running_here {
                    record.drain = Some(Drain {
                        state: DrainState::Running,
                        parallel,
                        started_at: crate::model::now(),
                        finished_at: None,
                        in_flight: Vec::new(),
                        moved: Vec::new(),
                        failed: Vec::new(),
                        runner: runner.clone(),
                    });
                }
                changed
            })
            .await?;
        if started.load(Ordering::SeqCst) {
            let sets = self.sets_on(node).await?.len();
            self.ctx
                .emit(
                    "node.drain",
                    node,
                    true,
                    format!("started: {sets} set(s) to move, {parallel} at a time"),
                )
                .await;
            self.spawn_drain();
        }
        Ok(record)
    }

    /// Node `node`'s record: whether it is cordoned and its last drain (or the one under
    /// way). Admins only (a drain names everyone's sets).
    pub async fn drain_status(&self, node: &str) -> Result<NodeRecord> {
        self.check_node_admin("read a node's drain")?;
        self.node_record(node).await
    }

    /// Cancels the drain of node `node` under way: no new move starts, those in flight finish
    /// or are undone (each set ends on exactly one node). The node stays cordoned. Nothing
    /// when no drain runs. Admins only.
    pub async fn cancel_drain(&self, node: &str) -> Result<NodeRecord> {
        self.check_node_admin("cancel a drain")?;
        let cancelled = AtomicBool::new(false);
        let record = self
            .update_existing_node(node, |record| {
                let changed = cancel(record);
                cancelled.store(changed, Ordering::SeqCst);
                changed
            })
            .await?;
        if cancelled.load(Ordering::SeqCst) {
            self.ctx
                .emit(
                    "node.drain",
                    node,
                    true,
                    "cancelled: no new move starts; those in flight finish or are undone".into(),
                )
                .await;
        }
        Ok(record)
    }

    /// Refuses a new set on this node when it is cordoned (a run or clone that reached it
    /// anyway, say forwarded just before the cordon).
    pub(crate) async fn refuse_if_cordoned(&self) -> Result<()> {
        let node = self.ctx.node_name();
        if node.is_empty() {
            return Ok(());
        }
        match self.ctx.read::<NodeRecord>(&keys::node(node)).await? {
            Some((record, _)) if record.cordoned => Err(Error::NodeCordoned(node.to_string())),
            _ => Ok(()),
        }
    }

    /// Runs this node's drain in the background (taking it over from an engine that ran it
    /// before a restart).
    pub(crate) fn spawn_drain(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            let node = engine.ctx.node_name().to_string();
            if let Err(e) = engine.run_drain(&node).await {
                tracing::warn!(%node, "the drain stopped: {e}");
                engine
                    .ctx
                    .emit("node.drain", &node, false, format!("stopped: {e}"))
                    .await;
            }
        });
    }

    /// Changes node `name`'s record with `change` (given `None` when there is none), written
    /// with compare-and-swap, read again when another writer came first. `change` answers
    /// whether it changed anything (nothing is written else). The record as it is after.
    pub(crate) async fn update_node<F>(&self, name: &str, change: F) -> Result<Option<NodeRecord>>
    where
        F: Fn(&mut Option<NodeRecord>) -> Result<bool>,
    {
        let key = keys::node(name);
        let exhausted = format!("node '{name}''s record kept changing");
        retry(&exhausted, |_| async {
            let (mut record, txn) = match self.ctx.read::<NodeRecord>(&key).await? {
                Some((record, revision)) => (Some(record), Txn::new().unchanged(&key, revision)),
                None => (None, Txn::new().absent(&key)),
            };
            if !change(&mut record)? {
                return Ok(Try::Done(record));
            }
            let Some(changed) = &record else {
                return Ok(Try::Done(record));
            };
            if self
                .ctx
                .shared
                .store
                .commit(txn.put(&key, encode(changed)))
                .await?
            {
                Ok(Try::Done(record))
            } else {
                Ok(Try::Again)
            }
        })
        .await
    }

    /// [`Engine::update_node`] of a node that must exist ([`Error::NodeNotFound`] else).
    async fn update_existing_node(
        &self,
        name: &str,
        change: impl Fn(&mut NodeRecord) -> bool,
    ) -> Result<NodeRecord> {
        self.update_node(name, |record| match record {
            Some(record) => Ok(change(record)),
            None => Err(Error::NodeNotFound(name.to_string())),
        })
        .await?
        .ok_or_else(|| Error::NodeNotFound(name.to_string()))
    }

    fn check_node_admin(&self, what: &str) -> Result<()> {
        if !self.ctx.caller.is_admin() {
            return Err(Error::AdminOnly(what.to_string()));
        }
        if self.ctx.node_name().is_empty() {
            return Err(Error::InvalidParams(
                "this server is not part of a cluster (--node): it has no nodes to cordon or drain"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn node_record(&self, name: &str) -> Result<NodeRecord> {
        self.ctx
            .read::<NodeRecord>(&keys::node(name))
            .await?
            .map(|(record, _)| record)
            .ok_or_else(|| Error::NodeNotFound(name.to_string()))
    }

    async fn node_status(&self, name: &str) -> Result<NodeStatus> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.node.name == name)
            .ok_or_else(|| Error::NodeNotFound(name.to_string()))
    }

    /// The sets living on node `node`, by name.
    async fn sets_on(&self, node: &str) -> Result<Vec<String>> {
        let heads: Vec<ReplicaSet> = self.ctx.read_all(keys::REPLICA_SETS).await?;
        let mut names: Vec<String> = heads
            .into_iter()
            .filter(|h| h.node == node)
            .map(|h| h.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The drain of node `node` (this one): takes it over, moves what lives there until
    /// nothing is left to try or it is cancelled, and records the end.
    async fn run_drain(&self, node: &str) -> Result<()> {
        let runner = self.ctx.shared.instance.clone();
        // Taken over: what a crash left "in flight" was settled by recovery since.
        let record = self
            .update_existing_node(node, |record| match &mut record.drain {
                Some(drain) if drain.state == DrainState::Running => {
                    drain.runner = runner.clone();
                    drain.in_flight.clear();
                    true
                }
                _ => false,
            })
            .await?;
        let Some(drain) = record
            .drain
            .filter(|d| d.state == DrainState::Running && d.runner == runner)
        else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        // A set that failed is not tried again by this drain; one moved is gone from here.
        let mut tried: HashSet<String> = drain.failed.iter().map(|f| f.set.clone()).collect();
        loop {
            if !self.drain_goes_on(node).await? {
                break;
            }
            // Listed again after each round: a set that arrived meanwhile (placed just
            // before the cordon) goes too.
            let todo: Vec<String> = self
                .sets_on(node)
                .await?
                .into_iter()
                .filter(|s| !tried.contains(s))
                .collect();
            if todo.is_empty() {
                break;
            }
            tried.extend(todo.iter().cloned());
            futures_util::stream::iter(todo)
                .map(|set| async move { self.drain_one(node, &set).await })
                .buffer_unordered(drain.parallel.max(1) as usize)
                .collect::<Vec<()>>()
                .await;
        }
        let record = self
            .update_existing_node(node, |record| match &mut record.drain {
                Some(drain) if drain.runner == runner && drain.finished_at.is_none() => {
                    if drain.state == DrainState::Running {
                        drain.state = DrainState::Finished;
                    }
                    drain.finished_at = Some(crate::model::now());
                    drain.in_flight.clear();
                    true
                }
                _ => false,
            })
            .await?;
        if let Some(drain) = record.drain.filter(|d| d.runner == runner) {
            let message = format!(
                "{}: {} set(s) moved, {} not moved, in {:.1} s{}",
                match drain.state {
                    DrainState::Cancelled => "cancelled",
                    _ => "finished",
                },
                drain.moved.len(),
                drain.failed.len(),
                started.elapsed().as_secs_f64(),
                if drain.failed.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = drain.failed.iter().map(|f| f.set.as_str()).collect();
                    format!(" ({})", names.join(", "))
                }
            );
            tracing::info!(%node, "drain {message}");
            let ok = drain.state == DrainState::Finished && drain.failed.is_empty();
            self.ctx.emit("node.drain", node, ok, message).await;
        }
        Ok(())
    }

    /// Whether this engine's drain of `node` is still running (not cancelled, not taken over).
    async fn drain_goes_on(&self, node: &str) -> Result<bool> {
        let record = self.node_record(node).await?;
        Ok(record.drain.is_some_and(|d| {
            d.state == DrainState::Running && d.runner == self.ctx.shared.instance
        }))
    }

    /// Moves set `set` off node `node` unless the drain was cancelled meanwhile, and records
    /// how it went.
    async fn drain_one(&self, node: &str, set: &str) {
        let runner = self.ctx.shared.instance.clone();
        let begun = self
            .update_existing_node(node, |record| match &mut record.drain {
                Some(drain) if drain.state == DrainState::Running && drain.runner == runner => {
                    drain.in_flight.push(set.to_string());
                    true
                }
                _ => false,
            })
            .await;
        match begun {
            Ok(record)
                if record
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.in_flight.iter().any(|s| s == set)) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%node, replica_set = %set, "not moved: {e}");
                return;
            }
        }
        let outcome = self.move_off(node, set).await;
        let recorded = self
            .update_existing_node(node, |record| {
                let Some(drain) = &mut record.drain else {
                    return false;
                };
                drain.in_flight.retain(|s| s != set);
                match &outcome {
                    Ok(Some(to)) => drain.moved.push(DrainMoved {
                        set: set.to_string(),
                        to: to.clone(),
                    }),
                    Ok(None) => {}
                    Err(e) => drain.failed.push(DrainFailed {
                        set: set.to_string(),
                        code: e.code(),
                        reason: e.to_string(),
                    }),
                }
                true
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(%node, replica_set = %set, "the drain's progress was not recorded: {e}");
        }
        match outcome {
            Ok(Some(to)) => {
                self.ctx
                    .emit(
                        "drain",
                        set,
                        true,
                        format!("moved from node {node} to node {to}"),
                    )
                    .await
            }
            Ok(None) => {}
            Err(e) => {
                self.ctx
                    .emit(
                        "drain",
                        set,
                        false,
                        format!("not moved from node {node}: {e}"),
                    )
                    .await
            }
        }
    }

    /// Moves set `set` off node `node` to where placement puts it; the node it lives on then,
    /// or `None` when it is gone (deleted meanwhile).
    async fn move_off(&self, node: &str, set: &str) -> Result<Option<String>> {
        let Some((head, _)) = self.ctx.read::<ReplicaSet>(&keys::replica_set(set)).await? else {
            return Ok(None);
        };
        if head.node != node {
            return Ok(Some(head.node));
        }
        let current = self.ctx.version_record(set, head.current).await?;
        let move_volumes = current.spec.binds.iter().any(|b| !b.is_host_path());
        let mut tries = 0;
        loop {
            tries += 1;
            let to = self
                .place_away_from(node, current.spec.gpu_count, head.status.holds_claims())
                .await?;
            let migration = Migration {
                node: to,
                gpu_count: None,
                move_volumes,
            };
            match self.migrate(set, migration).await {
                Ok(info) => return Ok(Some(info.replica_set.node)),
                // Another move took the GPUs placement picked: placed again.
                Err(Error::NotEnoughGpus { .. }) if tries < PLACEMENT_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Marks the drain `record` holds as cancelled if it runs; whether it did.
fn cancel(record: &mut NodeRecord) -> bool {
    match &mut record.drain {
        Some(drain) if drain.state == DrainState::Running => {
            drain.state = DrainState::Cancelled;
            if drain.in_flight.is_empty() {
                drain.finished_at = Some(crate::model::now());
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::Location;
    use crate::engine::{Caller, EngineConfig, Role};
    use crate::gpu::{GpuInventory, StaticInventory};
    use crate::runtime::MockContainerRuntime;
    use crate::store::{MemoryStore, StateStore};

    /// Node `n1` of a cluster of two (both alive), on a runtime that panics if called.
    async fn node_of_two() -> Engine {
        let store = Arc::new(MemoryStore::new());
        for name in ["n1", "n2"] {
            let record = NodeRecord {
                name: name.into(),
                advertise: format!("http://{name}:2378"),
                gpus: StaticInventory::fake_on(name, 2).gpus().await.unwrap(),
                port_range: "40000-40100".parse().unwrap(),
                docker: "Docker".into(),
                joined_at: String::new(),
                cordoned: false,
                drain: None,
            };
            store.put(&keys::node(name), encode(&record)).await.unwrap();
            store
                .put(&keys::node_alive(name), b"up".to_vec())
                .await
                .unwrap();
        }
        Engine::new(
            Arc::new(MockContainerRuntime::new()),
            store,
            Arc::new(StaticInventory::fake_on("n1", 2)),
            EngineConfig {
                node: Some("n1".into()),
                ..EngineConfig::default()
            },
        )
    }

    #[tokio::test]
    async fn a_cordoned_node_takes_no_new_set_until_it_is_uncordoned() {
        let engine = node_of_two().await;
        let user = engine.as_caller(Caller::new("bob", Role::User));
        assert!(matches!(user.cordon("n1").await, Err(Error::AdminOnly(_))));
        assert!(matches!(
            engine.cordon("n9").await,
            Err(Error::NodeNotFound(_))
        ));
        assert!(engine.cordon("n1").await.unwrap().node.cordoned);
        // Pinned: refused; placed: the other node (n1 would win the tie by name).
        assert!(matches!(
            engine.place(0, Some("n1")).await,
            Err(Error::NodeCordoned(n)) if n == "n1"
        ));
        assert!(matches!(
            engine.place(0, None).await,
            Ok(Location::Node { name, .. }) if name == "n2"
        ));
        // A run that reaches it anyway is refused before Docker is asked anything.
        let run = crate::ops::run::RunRequest {
            name: "s".into(),
            image: "img".into(),
            ..Default::default()
        };
        assert!(matches!(engine.run(run).await, Err(Error::NodeCordoned(_))));
        // A drain is driven by its node, and needs the link to the others.
        assert!(matches!(
            engine.drain("n2", 0).await,
            Err(Error::InvalidParams(m)) if m.contains("drives its own drain")
        ));
        assert!(matches!(
            engine.drain("n1", 0).await,
            Err(Error::InvalidParams(m)) if m.contains("no link")
        ));
        // Leaving n1, a set goes to n2, unless n2 is cordoned too: then nowhere, said so.
        assert_eq!(engine.place_away_from("n1", 1, true).await.unwrap(), "n2");
        engine.cordon("n2").await.unwrap();
        assert!(matches!(
            engine.place_away_from("n1", 0, true).await,
            Err(Error::Refused { reason, .. }) if reason.contains("nowhere to move")
        ));
        engine.uncordon("n2").await.unwrap();
        assert!(!engine.uncordon("n1").await.unwrap().node.cordoned);
        assert_eq!(engine.place(0, None).await.unwrap(), Location::Here);
    }

    #[tokio::test]
    async fn cancelling_stops_a_running_drain_and_leaves_an_ended_one_alone() {
        let engine = node_of_two().await;
        let drain = |state, in_flight: &[&str]| Drain {
            state,
            parallel: 2,
            started_at: String::new(),
            finished_at: None,
            in_flight: in_flight.iter().map(|s| s.to_string()).collect(),
            moved: Vec::new(),
            failed: Vec::new(),
            runner: "gone".into(),
        };
        let set_drain = |d: Drain| {
            let engine = engine.clone();
            async move {
                engine
                    .update_existing_node("n1", move |r| {
                        r.drain = Some(d.clone());
                        true
                    })
                    .await
                    .unwrap()
            }
        };
        // Moves in flight: cancelled, ended once they are.
        set_drain(drain(DrainState::Running, &["a"])).await;
        let after = engine.cancel_drain("n1").await.unwrap().drain.unwrap();
        assert_eq!(after.state, DrainState::Cancelled);
        assert_eq!(after.finished_at, None);
        // None in flight: ended at once.
        set_drain(drain(DrainState::Running, &[])).await;
        let after = engine.uncordon("n1").await.unwrap().node.drain.unwrap();
        assert_eq!(after.state, DrainState::Cancelled);
        assert!(after.finished_at.is_some());
        // A finished drain stays finished.
        set_drain(drain(DrainState::Finished, &[])).await;
        let after = engine.cancel_drain("n1").await.unwrap().drain.unwrap();
        assert_eq!(after.state, DrainState::Finished);
    }
}
