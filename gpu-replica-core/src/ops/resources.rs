//! GPU and port status: who holds what.

use crate::engine::Engine;
use crate::error::{Operation, Result};
use crate::model::{GpuStatus, PortStatus};

impl Engine {
    /// Every GPU of the host with the replicaSet holding it.
    pub async fn gpu_status(&self) -> Result<Vec<GpuStatus>> {
        let gpus = self
            .inventory
            .gpus()
            .await
            .map_err(|e| e.during(Operation::Status))?;
        let holders = self.gpu_holders().await?;
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
        let range = self.config.port_range;
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
