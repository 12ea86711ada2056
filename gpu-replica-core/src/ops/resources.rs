//! GPU and port status: who holds what.

use crate::error::{Error, Operation, Result};
use crate::keys;
use crate::model::{GpuStatus, NodePorts, PortStatus, ReplicaSet};
use crate::ops::Engine;

/// What a user sees as the holder of a GPU another user's replicaSet holds (never a valid
/// set name).
pub const HELD_BY_ANOTHER: &str = "(another user)";

impl Engine {
    /// Every GPU of the host (of every node in a cluster) with the replicaSet holding it; for a
    /// user, a GPU held by another
    /// user's set shows [`HELD_BY_ANOTHER`] instead of the set's name.
    pub async fn gpu_status(&self) -> Result<Vec<GpuStatus>> {
        let here = self.ctx.node_name().to_string();
        let mut gpus: Vec<(String, crate::gpu::GpuInfo)> = self
            .ctx
            .shared
            .inventory
            .gpus()
            .await
            .map_err(|e| e.during(Operation::Status))?
            .into_iter()
            .map(|g| (here.clone(), g))
            .collect();
        if !here.is_empty() {
            // The other nodes' GPUs as they last wrote them (every ~5 s when they change).
            let nodes: Vec<crate::cluster::NodeRecord> = self.ctx.read_all(keys::NODES).await?;
            for node in nodes.into_iter().filter(|n| n.name != here) {
                gpus.extend(node.gpus.into_iter().map(|g| (node.name.clone(), g)));
            }
        }
        let mut holders = self.ctx.gpu_holders().await?;
        if !self.ctx.caller.is_admin() {
            let mine: std::collections::HashSet<String> = self
                .ctx
                .read_all::<ReplicaSet>(keys::REPLICA_SETS)
                .await?
                .into_iter()
                .filter(|h| h.owner == self.ctx.caller.name)
                .map(|h| h.name)
                .collect();
            for holder in holders.values_mut() {
                if !mine.contains(holder) {
                    *holder = HELD_BY_ANOTHER.to_string();
                }
            }
        }
        Ok(gpus
            .into_iter()
            .map(|(node, gpu)| {
                let holder = holders.get(&gpu.uuid).cloned();
                GpuStatus { gpu, holder, node }
            })
            .collect())
    }

    /// Claimed ports of the configured range.
    pub async fn port_status(&self) -> Result<PortStatus> {
        self.port_status_of(None).await
    }

    /// [`Engine::port_status`] of node `node` (this one when `None`); in a cluster, with every
    /// node's figures in `nodes`.
    pub async fn port_status_of(&self, node: Option<&str>) -> Result<PortStatus> {
        let here = self.ctx.node_name().to_string();
        let asked = node.filter(|n| !n.is_empty()).unwrap_or(&here).to_string();
        let mut nodes = Vec::new();
        if !here.is_empty() {
            let records: Vec<crate::cluster::NodeRecord> = self.ctx.read_all(keys::NODES).await?;
            for record in records {
                let used = self.used_ports(&record.name, record.port_range).await?;
                nodes.push(NodePorts {
                    node: record.name,
                    available: record.port_range.len() - used.len(),
                    range: record.port_range,
                    used,
                });
            }
        }
        let (range, used) = match nodes.iter().find(|n| n.node == asked) {
            Some(n) => (n.range, n.used.clone()),
            None if asked == here => {
                let range = self.ctx.shared.config.port_range;
                (range, self.used_ports(&here, range).await?)
            }
            None => return Err(Error::NodeNotFound(asked)),
        };
        Ok(PortStatus {
            range,
            available: range.len() - used.len(),
            used,
            nodes,
        })
    }

    /// Claimed ports of `node` within `range`, ascending.
    async fn used_ports(&self, node: &str, range: crate::sched::PortRange) -> Result<Vec<u16>> {
        let prefix = keys::port_claims(node);
        let mut used: Vec<u16> = self
            .ctx
            .shared
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|e| e.key[prefix.len()..].parse().ok())
            .filter(|p| range.contains(*p))
            .collect();
        used.sort_unstable();
        Ok(used)
    }
}

/// The room on a disk the server depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpace {
    /// What lives there: `store` (the state store's file) or `docker` (Docker's data root).
    pub name: String,
    /// A folder on it.
    pub path: String,
    /// Bytes free for unprivileged writers (what a full disk runs out of).
    pub free_bytes: u64,
    /// Its size in bytes.
    pub total_bytes: u64,
}

impl Engine {
    /// The room on the disks the engine was told to watch ([`crate::EngineConfig::disks`]);
    /// one that cannot be read now (gone, or on another host) is left out.
    pub fn disks(&self) -> Vec<DiskSpace> {
        self.ctx
            .shared
            .config
            .disks
            .iter()
            .filter_map(|(name, path)| {
                let (free_bytes, total_bytes) = crate::engine::disk::room(path)?;
                Some(DiskSpace {
                    name: name.clone(),
                    path: path.display().to_string(),
                    free_bytes,
                    total_bytes,
                })
            })
            .collect()
    }
}
