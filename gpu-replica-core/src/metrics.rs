//! What the engine counts, and what it reads at scrape time, in Prometheus' terms (through
//! `prometheus-client`, never a formatter of ours).
//!
//! - Per GPU of this node, the names NVIDIA's DCGM exporter uses, where the inventory knows the
//!   figure: `DCGM_FI_DEV_GPU_UTIL` (%), `DCGM_FI_DEV_FB_USED` and `DCGM_FI_DEV_FB_FREE` (MiB),
//!   labelled `gpu`, `UUID`, `modelName`, `Hostname`; a dashboard made for DCGM works as is.
//! - Ours, prefixed `gpu_replica_` and labelled `node` (empty on a single host): GPUs claimed
//!   by set and owner, sets by status, ports used and free, operations by kind and outcome with
//!   their duration, what recoveries and the reconciler did.
//!
//! Counters and histograms live as long as the engine; gauges are read from the records and
//! the inventory when [`Engine::collect_metrics`] is called. Each node reports its own GPUs,
//! sets and ports: summed over the nodes' scrapes, a cluster's figures come out whole.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::Status;

/// `operation` and `outcome` (`ok` or `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The event kind: `run`, `patch`, `volume.resize`, …
    pub operation: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The node that did it.
    pub node: String,
}

/// What one recovery or reconcile pass did, by kind of action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `finished`, `undone`, `orphan_removed`, `missing` (recovery); `settled`, `shown`
    /// (reconciler).
    pub action: String,
    /// The node.
    pub node: String,
}

/// Every operation kind counted (the event kinds of [`Engine`]'s operations): each is exported
/// from the first scrape, at zero until it happens, so a dashboard never shows "no data".
pub const OPERATIONS: &[&str] = &[
    "run",
    "patch",
    "rollback",
    "restart",
    "stop",
    "pause",
    "continue",
    "delete",
    "clone",
    "migrate",
    "timers",
    "volume.create",
    "volume.resize",
    "volume.delete",
];

/// What a start-up recovery counts.
pub const RECOVERY_ACTIONS: &[&str] = &["finished", "undone", "orphan_removed", "missing"];

/// What a reconcile pass counts.
pub const RECONCILE_ACTIONS: &[&str] = &["settled", "shown"];

const OUTCOMES: [&str; 2] = ["ok", "failed"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations of operations: 10 ms to ~80 s.
fn operation_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The engine's counters, shared by its handles.
pub(crate) struct EngineMetrics {
    operations: Family<OperationLabels, Counter>,
    operation_seconds: HistogramFamily<OperationLabels>,
    recovery: Family<ActionLabels, Counter>,
    reconcile: Family<ActionLabels, Counter>,
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics {
            operations: Family::default(),
            operation_seconds: Family::new_with_constructor(operation_buckets),
            recovery: Family::default(),
            reconcile: Family::default(),
        }
    }
}

impl EngineMetrics {
    /// Makes every known series exist (at zero where nothing happened yet).
    fn start_at_zero(&self, node: &str) {
        for operation in OPERATIONS {
            for outcome in OUTCOMES {
                let labels = OperationLabels {
                    operation: operation.to_string(),
                    outcome: outcome.to_string(),
                    node: node.to_string(),
                };
                let _ = self.operations.get_or_create(&labels);
                let _ = self.operation_seconds.get_or_create(&labels);
            }
        }
        for (family, actions) in [
            (&self.recovery, RECOVERY_ACTIONS),
            (&self.reconcile, RECONCILE_ACTIONS),
        ] {
            for action in actions {
                let _ = family.get_or_create(&ActionLabels {
                    action: action.to_string(),
                    node: node.to_string(),
                });
            }
        }
    }
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
struct StatusLabels {
    status: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// This machine's host name, as DCGM's exporter reports it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl Engine {
    /// Counts one operation of `kind` that took `took`.
    pub(crate) fn count_operation(&self, kind: &str, ok: bool, took: Duration) {
        debug_assert!(
            OPERATIONS.contains(&kind),
            "'{kind}' missing from OPERATIONS"
        );
        let labels = OperationLabels {
            operation: kind.to_string(),
            outcome: if ok { "ok" } else { "failed" }.to_string(),
            node: self.node_name().to_string(),
        };
        let metrics = &self.shared.metrics;
        metrics.operations.get_or_create(&labels).inc();
        metrics
            .operation_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts `n` actions of a recovery (`recovery` true) or reconcile pass.
    pub(crate) fn count_actions(&self, recovery: bool, action: &str, n: usize) {
        debug_assert!(
            RECOVERY_ACTIONS.contains(&action) || RECONCILE_ACTIONS.contains(&action),
            "'{action}' missing from the known actions"
        );
        if n == 0 {
            return;
        }
        let labels = ActionLabels {
            action: action.to_string(),
            node: self.node_name().to_string(),
        };
        let family = if recovery {
            &self.shared.metrics.recovery
        } else {
            &self.shared.metrics.reconcile
        };
        family.get_or_create(&labels).inc_by(n as u64);
    }

    /// Registers everything this engine reports into `registry`: its counters and histograms,
    /// and gauges read now from the records and the GPU inventory (of this node). For admins
    /// only ([`Error::AdminOnly`]): the figures name every set and owner.
    pub async fn collect_metrics(&self, registry: &mut Registry) -> Result<()> {
        if !self.caller.is_admin() {
            return Err(Error::AdminOnly(
                "the metrics name every set and owner: scrape as an admin or with the metrics \
                 token"
                    .into(),
            ));
        }
        let metrics = &self.shared.metrics;
        let node = self.node_name().to_string();
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

        let gpus = self.shared.inventory.gpus().await?;
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
        let holders = self.gpu_holders().await?;
        let heads: Vec<crate::model::ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
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
        Ok(())
    }
}
