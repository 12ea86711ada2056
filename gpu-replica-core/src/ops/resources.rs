//! GPU and port status: who holds what.

use crate::engine::Engine;
use crate::error::{Operation, Result};
use crate::keys;
use crate::model::{GpuStatus, PortStatus, ReplicaSet};

/// What a user sees as the holder of a GPU another user's replicaSet holds (never a valid
/// set name).
pub const HELD_BY_ANOTHER: &str = "(another user)";

impl Engine {
    /// Every GPU of the host with the replicaSet holding it; for a user, a GPU held by another
    /// user's set shows [`HELD_BY_ANOTHER`] instead of the set's name.
    pub async fn gpu_status(&self) -> Result<Vec<GpuStatus>> {
        let gpus = self
            .shared
            .inventory
            .gpus()
            .await
            .map_err(|e| e.during(Operation::Status))?;
        let mut holders = self.gpu_holders().await?;
        if !self.caller.is_admin() {
            let mine: std::collections::HashSet<String> = self
                .read_all::<ReplicaSet>(keys::REPLICA_SETS)
                .await?
                .into_iter()
                .filter(|h| h.owner == self.caller.name)
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
            .map(|gpu| {
                let holder = holders.get(&gpu.uuid).cloned();
                GpuStatus { gpu, holder }
            })
            .collect())
    }

    /// Claimed ports of the configured range.
    pub async fn port_status(&self) -> Result<PortStatus> {
        let range = self.shared.config.port_range;
        let mut used: Vec<u16> = self
            .port_holders()
            .await?
            .into_keys()
            .filter(|p| range.contains(*p))
            .collect();
        used.sort_unstable();
        Ok(PortStatus {
            range,
            available: range.len() - used.len(),
            used,
        })
    }
}
