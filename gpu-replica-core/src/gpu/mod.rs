//! The host's GPUs: what exists, and how close each pair is.
//!
//! The engine asks the inventory which GPUs exist and claims them in the store; the inventory
//! itself holds no claims. [`NvmlInventory`] reads a real host through NVML, [`StaticInventory`]
//! stands for a host without GPUs (`fake:N`) or a configured list.

mod fake;
mod nvml;
pub mod toolkit;

pub use self::fake::StaticInventory;
pub use self::nvml::NvmlInventory;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One GPU of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index as nvidia-smi numbers it (PCI bus order).
    pub index: u32,
    /// Stable identifier, `GPU-…`; what claims and containers refer to.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Total memory in bytes, when known.
    pub memory_total: Option<u64>,
    /// Memory in use in bytes, when known.
    pub memory_used: Option<u64>,
    /// Utilization in percent, when known.
    pub utilization: Option<u32>,
    /// Distance to every GPU by position in the inventory (0 = same board … 5 = across
    /// sockets); empty when the topology is unknown.
    pub distances: Vec<u32>,
}

/// Source of the host's GPU list.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait GpuInventory: Send + Sync {
    /// Every GPU of the host, in index order.
    async fn gpus(&self) -> Result<Vec<GpuInfo>>;
    /// A short description for logs and the startup summary.
    fn describe(&self) -> String;
    /// Whether these GPUs are synthetic (`fake:N`): containers then never go through the
    /// NVIDIA container toolkit.
    fn synthetic(&self) -> bool {
        false
    }
}
