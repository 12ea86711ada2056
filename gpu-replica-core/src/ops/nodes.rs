//! The engine as a node of a cluster: its secret and link, joining (the record, the lease and
//! its renewal), the nodes' states, placement of new sets and where a set lives.
use crate::error::{Error, Result};
use crate::keys;
use crate::model::ReplicaSet;
use crate::ops::Engine;
use crate::store::Txn;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::cluster::{DrainState, Location, NodeLink, NodeRecord, NodeState, NodeStatus, NODE_TTL};

/// Of `nodes`, the ready, uncordoned one (not `except`) with the fewest free GPUs that still
/// fit `wanted`, ties by name (so sets pack and whole nodes stay free for large asks). With
/// `any_held`, one whose GPUs are all held will do when none has them free, if it has
/// `wanted` in all.
fn choose<'a>(
    nodes: &'a [NodeStatus],
    wanted: usize,
    any_held: bool,
    except: Option<&str>,
) -> Result<&'a NodeStatus> {
    let open: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready && !n.node.cordoned)
        .filter(|n| except != Some(n.node.name.as_str()))
        .collect();
    let fewest_free = |fits: &dyn Fn(&NodeStatus) -> bool| {
        open.iter()
            .copied()
            .filter(|n| fits(n))
            .min_by(|a, b| (a.free_gpus, &a.node.name).cmp(&(b.free_gpus, &b.node.name)))
    };
    let chosen = fewest_free(&|n| n.free_gpus >= wanted).or_else(|| {
        any_held
            .then(|| fewest_free(&|n| n.node.gpus.len() >= wanted))
            .flatten()
    });
    chosen.ok_or_else(|| Error::NotEnoughGpus {
        wanted,
        free: open.iter().map(|n| n.free_gpus).max().unwrap_or(0),
        total: open.iter().map(|n| n.node.gpus.len()).sum(),
    })
}

/// Every this many lease renewals (a third of [`NODE_TTL`] apart, so ~5 s), a node writes its
/// GPUs' figures into its record when they changed: the others' GPU status stays live.
const GPU_REFRESH_TICKS: u64 = 3;

impl Engine {
    /// Gives the engine its link to the other nodes (once; later calls are ignored).
    pub fn set_link(&self, link: Arc<dyn NodeLink>) {
        let _ = self.ctx.shared.link.set(link);
    }

    /// The secret the nodes of this cluster authenticate their calls to each other with;
    /// `None` before [`Engine::join_cluster`].
    pub fn cluster_secret(&self) -> Option<&str> {
        self.ctx.shared.cluster_secret.get().map(String::as_str)
    }

    /// Reads the cluster's secret, making it when this is the first node; then
    /// [`Engine::cluster_secret`] knows it. [`Engine::join_cluster`] calls it; call it before
    /// [`Engine::recover`] (and give the engine its link) so that recovery can ask a target to
    /// undo its part of an interrupted migration.
    pub async fn load_cluster_secret(&self) -> Result<()> {
        if self.ctx.shared.cluster_secret.get().is_some() {
            return Ok(());
        }
        let fresh = crate::names::new_id()? + &crate::names::new_id()?;
        let txn = Txn::new()
            .absent(keys::CLUSTER_SECRET)
            .put(keys::CLUSTER_SECRET, fresh.clone().into_bytes());
        self.ctx.shared.store.commit(txn).await?;
        let secret = match self.ctx.shared.store.get(keys::CLUSTER_SECRET).await? {
            Some(entry) => String::from_utf8_lossy(&entry.value).into_owned(),
            None => fresh,
        };
        let _ = self.ctx.shared.cluster_secret.set(secret);
        Ok(())
    }

    /// Registers this engine's node ([`crate::EngineConfig::node`]) and keeps it alive until
    /// the engine is dropped: a task renews the lease every third of [`NODE_TTL`], and writes
    /// it again (then reconciles every set of the node) if it expired meanwhile.
    pub async fn join_cluster(
        self: &Arc<Self>,
        advertise: &str,
        docker: &str,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let name = self.ctx.node_name().to_string();
        crate::names::check(
            &name,
            Error::InvalidParams("a cluster node needs a name (EngineConfig::node, --node)".into()),
            |n| Error::InvalidParams(format!("node name '{n}' must not contain '-'")),
        )?;
        self.load_cluster_secret().await?;
        let record = NodeRecord {
            name: name.clone(),
            advertise: advertise.trim_end_matches('/').to_string(),
            gpus: self.ctx.shared.inventory.gpus().await?,
            port_range: self.ctx.shared.config.port_range,
            docker: docker.to_string(),
            joined_at: crate::model::now(),
            cordoned: false,
            drain: None,
        };
        // A cordon and a drain outlive a restart: the fresh record keeps them.
        let fresh = record.clone();
        let record = self
            .update_node(&name, move |stored| {
                let (cordoned, mut drain) = match stored {
                    Some(old) => (old.cordoned, old.drain.take()),
                    None => (false, None),
                };
                // A drain cancelled while this node was down: recovery settled what it had
                // in flight.
                if let Some(ended) = drain
                    .as_mut()
                    .filter(|d| d.state != DrainState::Running && d.finished_at.is_none())
                {
                    ended.in_flight.clear();
                    ended.finished_at = Some(crate::model::now());
                }
                *stored = Some(NodeRecord {
                    cordoned,
                    drain,
                    ..fresh.clone()
                });
                Ok(true)
            })
            .await?
            .unwrap_or(record);
        let alive = keys::node_alive(&name);
        let mut lease = self
            .ctx
            .shared
            .store
            .put_leased(&alive, record.advertise.clone().into_bytes(), NODE_TTL)
            .await?;
        tracing::info!(node = %name, "joined the cluster at {}", record.advertise);
        if record
            .drain
            .as_ref()
            .is_some_and(|d| d.state == DrainState::Running)
        {
            tracing::info!(node = %name, "resuming the drain a restart interrupted");
            self.spawn_drain();
        }
        let engine = Arc::downgrade(self);
        let mut record = record;
        Ok(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(NODE_TTL / 3);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for tick in 0u64.. {
                ticks.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let store = engine.ctx.shared.store.clone();
                // Every GPU_REFRESH_TICKS ticks, the GPUs' figures as they are now (when they
                // changed), so other nodes show live utilization and memory.
                if tick % GPU_REFRESH_TICKS == GPU_REFRESH_TICKS - 1 {
                    match engine.ctx.shared.inventory.gpus().await {
                        Ok(gpus) if gpus != record.gpus => {
                            record.gpus = gpus.clone();
                            let refreshed = engine
                                .update_node(&record.name, move |stored| {
                                    Ok(match stored {
                                        Some(stored) => {
                                            stored.gpus = gpus.clone();
                                            true
                                        }
                                        None => false,
                                    })
                                })
                                .await;
                            if let Err(e) = refreshed {
                                tracing::warn!("cannot refresh the node's GPU figures: {e}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("cannot read the GPUs: {e}"),
                    }
                }
                match store.renew(lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        match store
                            .put_leased(&alive, record.advertise.clone().into_bytes(), NODE_TTL)
                            .await
                        {
                            Ok(fresh) => {
                                lease = fresh;
                                tracing::warn!(node = %record.name, "the node was lost (lease expired); ready again, reconciling its sets");
                                engine.ctx.nudge_everything();
                            }
                            Err(e) => tracing::warn!("cannot rejoin the cluster: {e}"),
                        }
                    }
                    Err(e) => tracing::warn!("cannot renew the node's lease: {e}"),
                }
            }
        }))
    }

    /// Every node of the cluster with its state and free GPUs, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        let records: Vec<NodeRecord> = self.ctx.read_all(keys::NODES).await?;
        let alive: HashSet<String> = self
            .ctx
            .shared
            .store
            .list(keys::NODES_ALIVE)
            .await?
            .into_iter()
            .map(|e| e.key[keys::NODES_ALIVE.len()..].to_string())
            .collect();
        let held: HashSet<String> = self.ctx.gpu_holders().await?.into_keys().collect();
        let heads: Vec<ReplicaSet> = self.ctx.read_all(keys::REPLICA_SETS).await?;
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for head in &heads {
            *per_node.entry(head.node.as_str()).or_default() += 1;
        }
        Ok(records
            .into_iter()
            .map(|node| NodeStatus {
                state: if alive.contains(&node.name) {
                    NodeState::Ready
                } else {
                    NodeState::Lost
                },
                free_gpus: node.gpus.iter().filter(|g| !held.contains(&g.uuid)).count(),
                sets: per_node.get(node.name.as_str()).copied().unwrap_or(0),
                node,
            })
            .collect())
    }

    /// The node a new set of `gpus` GPUs runs on: `pin` when given (it must be ready), else
    /// the ready node with the fewest free GPUs that still fit, ties by name (so sets pack and
    /// whole nodes stay free for large asks). On a single host, here.
    pub async fn place(&self, gpus: u32, pin: Option<&str>) -> Result<Location> {
        self.place_with_volumes(gpus, pin, &[]).await
    }

    /// [`Engine::place`] for a set that mounts bind sources `sources`: the volumes among them
    /// (`data-1`) live on one node, which the set must run on (a pin elsewhere is refused).
    pub async fn place_with_volumes(
        &self,
        gpus: u32,
        pin: Option<&str>,
        sources: &[String],
    ) -> Result<Location> {
        let mut homes: Vec<(String, &str)> = Vec::new();
        for src in sources.iter().filter(|s| !s.starts_with('/')) {
            let Some((base, _)) = src.rsplit_once('-') else {
                continue;
            };
            // Another user's volume, or none: the run answers for it.
            if let Some((volume, _)) = self
                .ctx
                .read::<crate::model::Volume>(&keys::volume(base))
                .await?
            {
                if !volume.node.is_empty() && self.ctx.caller.may_reach(&volume.owner) {
                    homes.push((volume.node, src));
                }
            }
        }
        let pin = match (homes.first(), pin.filter(|p| !p.is_empty())) {
            (None, pin) => pin.map(str::to_string),
            (Some((home, src)), pin) => {
                if let Some((other, other_src)) = homes.iter().find(|(n, _)| n != home) {
                    return Err(Error::BindRefused(format!(
                        "volumes '{src}' and '{other_src}' live on different nodes ('{home}', '{other}'); a set runs on one"
                    )));
                }
                if let Some(pin) = pin.filter(|p| p != home) {
                    return Err(Error::BindRefused(format!(
                        "volume '{src}' lives on node '{home}', not on '{pin}'"
                    )));
                }
                Some(home.clone())
            }
        };
        self.place_pinned(gpus, pin.as_deref()).await
    }

    async fn place_pinned(&self, gpus: u32, pin: Option<&str>) -> Result<Location> {
        if self.ctx.node_name().is_empty() {
            return match pin {
                None | Some("") => Ok(Location::Here),
                Some(other) => Err(Error::InvalidParams(format!(
                    "node '{other}': this server is not part of a cluster (--node)"
                ))),
            };
        }
        let nodes = self.nodes().await?;
        let wanted = gpus as usize;
        let chosen = match pin.filter(|p| !p.is_empty()) {
            Some(pin) => {
                let node = nodes
                    .iter()
                    .find(|n| n.node.name == pin)
                    .ok_or_else(|| Error::NodeNotFound(pin.to_string()))?;
                if node.state == NodeState::Lost {
                    return Err(Error::NodeLost(pin.to_string()));
                }
                if node.node.cordoned {
                    return Err(Error::NodeCordoned(pin.to_string()));
                }
                node
            }
            None => choose(&nodes, wanted, false, None)?,
        };
        Ok(self.location_of(&chosen.node))
    }

    /// The node a set of `gpus` GPUs leaving node `from` moves to: as placement picks (ready,
    /// not cordoned, fewest free GPUs that fit), where a set that holds no GPUs now (stopped)
    /// may go to a node whose GPUs are all held, if it has that many.
    pub(crate) async fn place_away_from(
        &self,
        from: &str,
        gpus: u32,
        holds_gpus: bool,
    ) -> Result<String> {
        let nodes = self.nodes().await?;
        let open = |n: &&NodeStatus| {
            n.state == NodeState::Ready && !n.node.cordoned && n.node.name != from
        };
        if !nodes.iter().any(|n| open(&n)) {
            return Err(Error::refused(
                crate::error::Operation::Migrate,
                format!(
                    "no node but '{from}' is ready and uncordoned: there is nowhere to move to"
                ),
            ));
        }
        let chosen = choose(&nodes, gpus as usize, !holds_gpus, Some(from))?;
        Ok(chosen.node.name.clone())
    }

    /// Where requests about node `name` itself (its drain) are served: here, or on that node
    /// when it is ready; [`Error::NodeNotFound`] or [`Error::NodeLost`] else. On a single
    /// host, here (the operation answers).
    pub async fn locate_node(&self, name: &str) -> Result<Location> {
        if self.ctx.node_name().is_empty() || name == self.ctx.node_name() {
            return Ok(Location::Here);
        }
        let node = self.ready_node(name).await?;
        Ok(self.location_of(&node))
    }

    /// Where replicaSet `name` is served: here, on its node, or nowhere now
    /// ([`Error::NodeLost`]). A set this caller may not reach, or none, is here (the operation
    /// answers "not found" itself).
    pub async fn locate(&self, name: &str) -> Result<Location> {
        if self.ctx.node_name().is_empty() {
            return Ok(Location::Here);
        }
        let Some((head, _)) = self
            .ctx
            .read::<ReplicaSet>(&keys::replica_set(name))
            .await?
        else {
            return Ok(Location::Here);
        };
        if head.node == self.ctx.node_name() || !self.ctx.caller.may_reach(&head.owner) {
            return Ok(Location::Here);
        }
        self.node_location(&head.node).await
    }

    /// Where requests about volume `name` are served: on the node whose Docker holds it (a
    /// volume recorded before volumes had nodes, one this caller may not reach, or none, is
    /// here).
    pub async fn locate_volume(&self, name: &str) -> Result<Location> {
        if self.ctx.node_name().is_empty() {
            return Ok(Location::Here);
        }
        let Some((volume, _)) = self
            .ctx
            .read::<crate::model::Volume>(&keys::volume(name))
            .await?
        else {
            return Ok(Location::Here);
        };
        if volume.node.is_empty() || !self.ctx.caller.may_reach(&volume.owner) {
            return Ok(Location::Here);
        }
        self.node_location(&volume.node).await
    }

    /// Where node `name` (which a set or volume records) is reached, if it is ready; one
    /// without a record is gone.
    pub(crate) async fn node_location(&self, name: &str) -> Result<Location> {
        if name == self.ctx.node_name() {
            return Ok(Location::Here);
        }
        match self.ready_node(name).await {
            Ok(node) => Ok(self.location_of(&node)),
            Err(Error::NodeNotFound(_)) => Err(Error::NodeLost(name.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Node `name`'s record, if it is ready: [`Error::NodeNotFound`] when no node has that
    /// name, [`Error::NodeLost`] when it stopped renewing its lease.
    pub(crate) async fn ready_node(&self, name: &str) -> Result<NodeRecord> {
        let Some((node, _)) = self.ctx.read::<NodeRecord>(&keys::node(name)).await? else {
            return Err(Error::NodeNotFound(name.to_string()));
        };
        if self
            .ctx
            .shared
            .store
            .get(&keys::node_alive(name))
            .await?
            .is_none()
        {
            return Err(Error::NodeLost(name.to_string()));
        }
        Ok(node)
    }

    fn location_of(&self, node: &NodeRecord) -> Location {
        if node.name == self.ctx.node_name() {
            Location::Here
        } else {
            Location::Node {
                name: node.name.clone(),
                url: node.advertise.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuInventory;

    async fn node(
        name: &str,
        state: NodeState,
        gpus: u32,
        free: usize,
        cordoned: bool,
    ) -> NodeStatus {
        NodeStatus {
            node: NodeRecord {
                name: name.into(),
                advertise: format!("http://{name}:2378"),
                gpus: crate::gpu::StaticInventory::fake_on(name, gpus)
                    .gpus()
                    .await
                    .unwrap(),
                port_range: "40000-40100".parse().unwrap(),
                docker: "Docker".into(),
                joined_at: String::new(),
                cordoned,
                drain: None,
            },
            state,
            free_gpus: free,
            sets: 0,
        }
    }

    #[tokio::test]
    async fn placement_passes_cordoned_and_lost_nodes_by() {
        let nodes = [
            node("a", NodeState::Ready, 4, 1, true),
            node("b", NodeState::Lost, 4, 1, false),
            node("c", NodeState::Ready, 4, 3, false),
            node("d", NodeState::Ready, 4, 2, false),
        ];
        let nodes = futures_util::future::join_all(nodes).await;
        // a and b have the fewest free, but one is cordoned and one lost: d packs.
        assert_eq!(choose(&nodes, 1, false, None).unwrap().node.name, "d");
        assert_eq!(choose(&nodes, 3, false, None).unwrap().node.name, "c");
        // Leaving d (a drain of d), c.
        assert_eq!(choose(&nodes, 1, false, Some("d")).unwrap().node.name, "c");
        // Nobody has 4 free: refused with what the open nodes have.
        match choose(&nodes, 4, false, None) {
            Err(Error::NotEnoughGpus {
                wanted,
                free,
                total,
            }) => {
                assert_eq!((wanted, free, total), (4, 3, 8))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stopped_set_leaving_a_node_may_go_where_every_gpu_is_held() {
        let nodes = [
            node("a", NodeState::Ready, 2, 2, false),
            node("b", NodeState::Ready, 2, 0, false),
            node("c", NodeState::Ready, 1, 0, false),
        ];
        let nodes = futures_util::future::join_all(nodes).await;
        // Free GPUs first, wherever they are.
        assert_eq!(choose(&nodes, 2, true, None).unwrap().node.name, "a");
        // None free but on a node with that many: it holds none until it continues.
        assert_eq!(choose(&nodes, 2, true, Some("a")).unwrap().node.name, "b");
        assert!(choose(&nodes, 2, false, Some("a")).is_err());
        assert!(choose(&nodes, 3, true, None).is_err());
    }
}
