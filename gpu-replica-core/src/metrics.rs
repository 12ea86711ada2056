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
//! the inventory when [`crate::Engine::collect_metrics`] is called. Each node reports its own GPUs,
//! sets and ports: summed over the nodes' scrapes, a cluster's figures come out whole.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
    pub(crate) operations: Family<OperationLabels, Counter>,
    pub(crate) operation_seconds: HistogramFamily<OperationLabels>,
    pub(crate) recovery: Family<ActionLabels, Counter>,
    pub(crate) reconcile: Family<ActionLabels, Counter>,
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
    /// Counts one operation of `kind` on `node` that took `took`.
    pub(crate) fn count_operation(&self, node: &str, kind: &str, ok: bool, took: Duration) {
        debug_assert!(
            OPERATIONS.contains(&kind),
            "'{kind}' missing from OPERATIONS"
        );
        let labels = OperationLabels {
            operation: kind.to_string(),
            outcome: if ok { "ok" } else { "failed" }.to_string(),
            node: node.to_string(),
        };
        self.operations.get_or_create(&labels).inc();
        self.operation_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts `n` actions on `node` of a recovery (`recovery` true) or reconcile pass.
    pub(crate) fn count_actions(&self, node: &str, recovery: bool, action: &str, n: usize) {
        debug_assert!(
            RECOVERY_ACTIONS.contains(&action) || RECONCILE_ACTIONS.contains(&action),
            "'{action}' missing from the known actions"
        );
        if n == 0 {
            return;
        }
        let labels = ActionLabels {
            action: action.to_string(),
            node: node.to_string(),
        };
        let family = if recovery {
            &self.recovery
        } else {
            &self.reconcile
        };
        family.get_or_create(&labels).inc_by(n as u64);
    }

    /// Makes every known series exist (at zero where nothing happened yet).
    pub(crate) fn start_at_zero(&self, node: &str) {
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
