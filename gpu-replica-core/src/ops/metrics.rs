//! What the engine counts as it works, and the scrape: gauges read from the records and the
//! inventory when [`Engine::collect_metrics`] is called.

use crate::error::{Error, Result};
use crate::keys;
use crate::model::Status;
use crate::ops::Engine;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// This machine's host name, as DCGM's exporter reports it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)] // DCGM's label names, as its dashboards expect them
struct DcgmLabels {
    gpu: String,
    UUID: String,
    modelName: String,
    Hostname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    gpu: String,
    uuid: String,
    set: String,
    owner: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetLabels {
    set: String,
    owner: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    disk: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

impl Engine {
    /// Registers everything this engine reports into `registry`: its counters and histograms,
    /// and gauges read now from the records and the GPU inventory (of this node). For admins
    /// only ([`Error::AdminOnly`]): the figures name every set and owner.
    pub async fn collect_metrics(&self, registry: &mut Registry) -> Result<()> {
        if !self.ctx.caller.is_admin() {
            return Err(Error::AdminOnly(
                "the metrics name every set and owner: scrape as an admin or with the metrics \
                 token"
                    .into(),
            ));
        }
        let metrics = &self.ctx.shared.metrics;
        let node = self.ctx.node_name().to_string();
        metrics.start_at_zero(&node);
        registry.register(
            "gpu_replica_operations",
            "Operations by kind and outcome",
            metrics.operations.clone(),
        );
        registry.register(
            "gpu_replica_operation_duration_seconds",
            "How long operations took, by kind and outcome",
            metrics.operation_seconds.clone(),
        );
        registry.register(
            "gpu_replica_recovery_actions",
            "What start-up recoveries did: operations finished or undone, orphans removed, containers found missing",
            metrics.recovery.clone(),
        );
        registry.register(
            "gpu_replica_reconcile_actions",
            "What the reconciler did: drift settled (a container started or stopped, a claim released) or shown (a set marked exited)",
            metrics.reconcile.clone(),
        );

        let gpus = self.ctx.shared.inventory.gpus().await?;
        let host = hostname();
        let util = Family::<DcgmLabels, Gauge>::default();
        let used = Family::<DcgmLabels, Gauge>::default();
        let free = Family::<DcgmLabels, Gauge>::default();
        for gpu in &gpus {
            let labels = DcgmLabels {
                gpu: gpu.index.to_string(),
                UUID: gpu.uuid.clone(),
                modelName: gpu.name.clone(),
                Hostname: host.clone(),
            };
            if let Some(percent) = gpu.utilization {
                util.get_or_create(&labels).set(i64::from(percent));
            }
            if let (Some(total), Some(in_use)) = (gpu.memory_total, gpu.memory_used) {
                let mib = |bytes: u64| (bytes / (1024 * 1024)) as i64;
                used.get_or_create(&labels).set(mib(in_use));
                free.get_or_create(&labels)
                    .set(mib(total.saturating_sub(in_use)));
            }
        }
        registry.register("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", util);
        registry.register(
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB)",
            used,
        );
        registry.register(
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB)",
            free,
        );

        // Claims on this node's GPUs, by set and owner.
        let holders = self.ctx.gpu_holders().await?;
        let heads: Vec<crate::model::ReplicaSet> = self.ctx.read_all(keys::REPLICA_SETS).await?;
        let owner_of = |set: &str| {
            heads
                .iter()
                .find(|h| h.name == set)
                .map(|h| h.owner.clone())
                .unwrap_or_default()
        };
        let claimed = Family::<ClaimLabels, Gauge>::default();
        for gpu in &gpus {
            let holder = holders.get(&gpu.uuid);
            let labels = ClaimLabels {
                gpu: gpu.index.to_string(),
                uuid: gpu.uuid.clone(),
                set: holder.cloned().unwrap_or_default(),
                owner: holder.map(|h| owner_of(h)).unwrap_or_default(),
                node: node.clone(),
            };
            claimed
                .get_or_create(&labels)
                .set(i64::from(holder.is_some()));
        }
        registry.register(
            "gpu_replica_gpu_claimed",
            "1 when a set holds the GPU (set and owner label it), 0 when it is free",
            claimed,
        );

        let sets = Family::<StatusLabels, Gauge>::default();
        for status in [
            Status::Running,
            Status::Paused,
            Status::Stopped,
            Status::Exited,
        ] {
            let word = serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let count = heads
                .iter()
                .filter(|h| h.node == node && h.status == status)
                .count();
            sets.get_or_create(&StatusLabels {
                status: word,
                node: node.clone(),
            })
            .set(count as i64);
        }
        registry.register(
            "gpu_replica_sets",
            "Replica sets living on this node, by status",
            sets,
        );

        // Writable layers as last measured (the measurement is periodic, never per scrape).
        let rootfs = Family::<SetLabels, Gauge>::default();
        for entry in self.ctx.shared.store.list(keys::ROOTFS).await? {
            let set = &entry.key[keys::ROOTFS.len()..];
            let Some(head) = heads
                .iter()
                .find(|h| h.name == set && h.node == node && self.ctx.caller.may_reach(&h.owner))
            else {
                continue;
            };
            if let Ok(usage) = serde_json::from_slice::<crate::model::RootfsUsage>(&entry.value) {
                let labels = SetLabels {
                    set: set.to_string(),
                    owner: head.owner.clone(),
                    node: node.clone(),
                };
                rootfs
                    .get_or_create(&labels)
                    .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
            }
        }
        registry.register(
            "gpu_replica_rootfs_bytes",
            "Bytes a set's container wrote on top of its image, as last measured",
            rootfs,
        );

        let ports = self.port_status().await?;
        let here = NodeLabels { node: node.clone() };
        let used_ports = Family::<NodeLabels, Gauge>::default();
        used_ports.get_or_create(&here).set(ports.used.len() as i64);
        let free_ports = Family::<NodeLabels, Gauge>::default();
        free_ports.get_or_create(&here).set(ports.available as i64);
        registry.register(
            "gpu_replica_ports_used",
            "Host ports of the range claimed",
            used_ports,
        );
        registry.register(
            "gpu_replica_ports_free",
            "Host ports of the range free",
            free_ports,
        );

        let disk_free = Family::<DiskLabels, Gauge>::default();
        let disk_size = Family::<DiskLabels, Gauge>::default();
        for disk in self.disks() {
            let labels = DiskLabels {
                disk: disk.name,
                node: node.clone(),
            };
            disk_free
                .get_or_create(&labels)
                .set(i64::try_from(disk.free_bytes).unwrap_or(i64::MAX));
            disk_size
                .get_or_create(&labels)
                .set(i64::try_from(disk.total_bytes).unwrap_or(i64::MAX));
        }
        registry.register(
            "gpu_replica_disk_free_bytes",
            "Bytes free on the store's disk and on Docker's data root",
            disk_free,
        );
        registry.register(
            "gpu_replica_disk_size_bytes",
            "Size of the store's disk and of Docker's data root",
            disk_size,
        );
        Ok(())
    }
}
