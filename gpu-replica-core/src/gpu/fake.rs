//! A fixed GPU list: synthetic GPUs for hosts without any (`fake:N`), or GPUs named by the
//! operator.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{GpuInfo, GpuInventory};
use crate::error::{Error, Result};

/// A [`GpuInventory`] whose GPUs never change; only their utilization can be set (clones
/// share it), to stand for work on fake GPUs.
#[derive(Debug, Clone)]
pub struct StaticInventory {
    gpus: Arc<Mutex<Vec<GpuInfo>>>,
    label: String,
    /// Fake GPUs (not a configured list of real ones).
    synthetic: bool,
}

impl StaticInventory {
    /// `count` synthetic GPUs with stable UUIDs (`GPU-00000000-0000-4000-8000-00000000000N`), so
    /// that state written by one process still matches the GPUs of the next. Nothing runs on
    /// them, so they report 0 % utilization until [`StaticInventory::set_utilization`].
    pub fn fake(count: u32) -> StaticInventory {
        StaticInventory::fake_with_prefix(count, 0, format!("fake:{count}"))
    }

    /// `count` synthetic GPUs of cluster node `node`: their UUIDs carry a hash of the node's
    /// name (`GPU-{hash}-0000-4000-8000-00000000000N`), so two nodes' fake GPUs never share one.
    pub fn fake_on(node: &str, count: u32) -> StaticInventory {
        // FNV-1a: stable across processes and versions.
        let hash = node.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        StaticInventory::fake_with_prefix(
            count,
            hash.max(1),
            format!("fake:{count} of node {node}"),
        )
    }

    fn fake_with_prefix(count: u32, prefix: u32, label: String) -> StaticInventory {
        let gpus = (0..count)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{prefix:08x}-0000-4000-8000-{index:012x}"),
                name: "Fake GPU".to_string(),
                memory_total: Some(16 * 1024 * 1024 * 1024),
                memory_used: Some(0),
                utilization: Some(0),
                distances: Vec::new(),
            })
            .collect();
        StaticInventory {
            gpus: Arc::new(Mutex::new(gpus)),
            label,
            synthetic: true,
        }
    }

    /// Sets the utilization GPU `uuid` reports (a test hook for idle timers); `false` when no
    /// such GPU exists.
    pub fn set_utilization(&self, uuid: &str, percent: Option<u32>) -> bool {
        let mut gpus = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        match gpus.iter_mut().find(|g| g.uuid == uuid) {
            Some(gpu) => {
                gpu.utilization = percent;
                true
            }
            None => false,
        }
    }

    /// GPUs given by the operator (for instance read from a file).
    pub fn from_list(gpus: Vec<GpuInfo>) -> StaticInventory {
        let label = format!("static list of {}", gpus.len());
        StaticInventory {
            gpus: Arc::new(Mutex::new(gpus)),
            label,
            synthetic: false,
        }
    }

    /// Parses `fake:N` or `none`.
    pub fn parse(spec: &str) -> Result<StaticInventory> {
        if spec == "none" {
            return Ok(StaticInventory::from_list(Vec::new()));
        }
        let count = spec
            .strip_prefix("fake:")
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| Error::Gpu(format!("'{spec}' is not 'fake:N' or 'none'")))?;
        Ok(StaticInventory::fake(count))
    }
}

#[async_trait]
impl GpuInventory for StaticInventory {
    async fn gpus(&self) -> Result<Vec<GpuInfo>> {
        Ok(self.gpus.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn synthetic(&self) -> bool {
        self.synthetic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_gpus_keep_their_uuids_across_inventories() {
        let a = StaticInventory::fake(3).gpus().await.unwrap();
        let b = StaticInventory::parse("fake:3")
            .unwrap()
            .gpus()
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_ne!(a[0].uuid, a[1].uuid);
    }

    #[test]
    fn a_malformed_spec_is_refused() {
        assert!(StaticInventory::parse("fake:x").is_err());
        assert!(StaticInventory::parse("none").is_ok());
    }
}
