//! Watching a replicaSet: its current container's log and live statistics, with the figures
//! of its GPUs where the inventory knows them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Operation, Result};
use crate::gpu::GpuInfo;
use crate::model::Status;
use crate::ops::Engine;
use crate::runtime::{ContainerStats, LogStream};

/// Live figures of a replicaSet's current container and of its GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The container measured, `{name}-{version}`.
    pub container: String,
    /// CPU, memory, network and processes.
    pub container_stats: ContainerStats,
    /// Each GPU the set holds, with memory and utilization when the inventory knows them.
    pub gpus: Vec<GpuInfo>,
}

impl Engine {
    /// The current container's log: the last `tail` lines (all when `None`), then, with
    /// `follow`, what it writes until it stops.
    pub async fn logs(&self, name: &str, tail: Option<u64>, follow: bool) -> Result<LogStream> {
        let (head, _) = self.ctx.head(name).await?;
        self.ctx
            .shared
            .runtime
            .logs(&crate::names::container(name, head.current), tail, follow)
            .await
            .map_err(|e| e.during(Operation::Logs))
    }

    /// CPU, memory and network of the current container, and its GPUs' memory and
    /// utilization (takes about a second: Docker measures CPU over an interval).
    pub async fn stats(&self, name: &str) -> Result<Stats> {
        let (head, _) = self.ctx.head(name).await?;
        if head.status != Status::Running {
            return Err(Error::refused(
                Operation::Logs,
                format!("'{name}' is not running; statistics exist only for a running container"),
            ));
        }
        let container = crate::names::container(name, head.current);
        let container_stats = self
            .ctx
            .shared
            .runtime
            .stats(&container)
            .await
            .map_err(|e| e.during(Operation::Logs))?;
        let gpus = self
            .ctx
            .shared
            .inventory
            .gpus()
            .await?
            .into_iter()
            .filter(|g| head.gpus.contains(&g.uuid))
            .collect();
        Ok(Stats {
            container,
            container_stats,
            gpus,
        })
    }
}
