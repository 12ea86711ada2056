//! The real inventory, read through NVML.
//!
//! libnvidia-ml is loaded at run time: on a host without the driver, [`NvmlInventory::open`]
//! returns an error value that says so, never a panic, and the server can fall back to none.

use std::sync::Arc;

use async_trait::async_trait;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::Nvml;

use super::{GpuInfo, GpuInventory};
use crate::error::{Error, Result};

/// A [`GpuInventory`] backed by NVML.
pub struct NvmlInventory {
    nvml: Arc<Nvml>,
}

fn gpu_err(e: impl std::fmt::Display) -> Error {
    Error::Gpu(format!("NVML: {e}"))
}

impl NvmlInventory {
    /// Loads NVML; fails with [`Error::Gpu`] when the library or the driver is missing.
    pub fn open() -> Result<NvmlInventory> {
        let nvml = Nvml::init().map_err(gpu_err)?;
        Ok(NvmlInventory {
            nvml: Arc::new(nvml),
        })
    }

    fn read(nvml: &Nvml) -> Result<Vec<GpuInfo>> {
        let count = nvml.device_count().map_err(gpu_err)?;
        let devices = (0..count)
            .map(|i| nvml.device_by_index(i).map_err(gpu_err))
            .collect::<Result<Vec<_>>>()?;
        let mut gpus = Vec::with_capacity(devices.len());
        for (position, device) in devices.iter().enumerate() {
            let memory = device.memory_info().ok();
            let distances = (0..count)
                .map(|other_position| {
                    if other_position as usize == position {
                        return Some(0);
                    }
                    // The call takes the other device by value: fetch a fresh handle.
                    let other = nvml.device_by_index(other_position).ok()?;
                    device
                        .topology_common_ancestor(other)
                        .ok()
                        .map(topology_distance)
                })
                .collect::<Option<Vec<u32>>>()
                .unwrap_or_default();
            gpus.push(GpuInfo {
                index: device.index().map_err(gpu_err)?,
                uuid: device.uuid().map_err(gpu_err)?,
                name: device.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                memory_total: memory.as_ref().map(|m| m.total),
                memory_used: memory.as_ref().map(|m| m.used),
                utilization: device.utilization_rates().ok().map(|u| u.gpu),
                distances,
            });
        }
        Ok(gpus)
    }
}

/// Smaller is closer: one board, one PCIe switch, several switches, one host bridge, one NUMA
/// node, across sockets.
fn topology_distance(level: TopologyLevel) -> u32 {
    match level {
        TopologyLevel::Internal => 0,
        TopologyLevel::Single => 1,
        TopologyLevel::Multiple => 2,
        TopologyLevel::HostBridge => 3,
        TopologyLevel::Node => 4,
        TopologyLevel::System => 5,
    }
}

#[async_trait]
impl GpuInventory for NvmlInventory {
    async fn gpus(&self) -> Result<Vec<GpuInfo>> {
        let nvml = self.nvml.clone();
        tokio::task::spawn_blocking(move || NvmlInventory::read(&nvml))
            .await
            .map_err(gpu_err)?
    }

    fn describe(&self) -> String {
        let driver = self
            .nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        format!("NVML (driver {driver})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_the_driver_gets_an_error_value() {
        // This machine has no NVIDIA driver; on one that has, opening must simply work.
        match NvmlInventory::open() {
            Ok(inventory) => assert!(inventory.describe().starts_with("NVML")),
            Err(e) => assert!(matches!(e, Error::Gpu(_)), "{e}"),
        }
    }
}
