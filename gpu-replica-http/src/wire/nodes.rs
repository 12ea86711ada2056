//! Bodies of the routes that cordon and drain a node of a cluster.

use gpu_replica_core::cluster::{DrainState, NodeRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `?parallel=` of `POST /api/v1/nodes/{name}/drain`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DrainQuery {
    /// Migrations at once (default 2, at most 16).
    #[serde(default)]
    pub parallel: u32,
}

/// A set a drain moved.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainMovedView {
    /// The replicaSet.
    pub set: String,
    /// The node it lives on now.
    pub to: String,
}

/// A set a drain could not move (it stays where it was), and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainFailedView {
    /// The replicaSet.
    pub set: String,
    /// The error's code (1013: no node has the GPUs, 1055/1046: its volumes cannot move…).
    pub code: u16,
    /// Why, in words.
    pub reason: String,
}

/// A node's drain: the last one, or the one under way.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainView {
    /// The node.
    pub node: String,
    /// Whether it is cordoned (takes no new sets).
    pub cordoned: bool,
    /// `none` (never drained), `running`, `finished` or `cancelled`.
    pub state: String,
    /// Migrations at once.
    pub parallel: u32,
    /// When it started (empty when never drained).
    pub started_at: String,
    /// When it finished, or was cancelled with nothing in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Sets being moved now.
    pub in_flight: Vec<String>,
    /// Sets moved, in the order they arrived.
    pub moved: Vec<DrainMovedView>,
    /// Sets that could not move, with why.
    pub failed: Vec<DrainFailedView>,
}

/// The word for a drain's state.
pub fn drain_state_word(state: DrainState) -> &'static str {
    match state {
        DrainState::Running => "running",
        DrainState::Finished => "finished",
        DrainState::Cancelled => "cancelled",
    }
}

impl From<&NodeRecord> for DrainView {
    fn from(record: &NodeRecord) -> DrainView {
        let mut view = DrainView {
            node: record.name.clone(),
            cordoned: record.cordoned,
            state: "none".into(),
            parallel: 0,
            started_at: String::new(),
            finished_at: None,
            in_flight: Vec::new(),
            moved: Vec::new(),
            failed: Vec::new(),
        };
        if let Some(drain) = &record.drain {
            view.state = drain_state_word(drain.state).into();
            view.parallel = drain.parallel;
            view.started_at = drain.started_at.clone();
            view.finished_at = drain.finished_at.clone();
            view.in_flight = drain.in_flight.clone();
            view.moved = drain
                .moved
                .iter()
                .map(|m| DrainMovedView {
                    set: m.set.clone(),
                    to: m.to.clone(),
                })
                .collect();
            view.failed = drain
                .failed
                .iter()
                .map(|f| DrainFailedView {
                    set: f.set.clone(),
                    code: f.code,
                    reason: f.reason.clone(),
                })
                .collect();
        }
        view
    }
}
