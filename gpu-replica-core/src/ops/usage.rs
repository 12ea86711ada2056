//! The GPU-time report: GPU-seconds per user and per replicaSet over a period, integrated from
//! the records [`crate::engine::accounting`] writes with every claim change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::accounting::GpuTime;
use crate::error::Result;
use crate::keys;
use crate::ops::Engine;

/// GPU-time of one replicaSet over the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetUsage {
    /// Its owner.
    pub owner: String,
    /// Its name (the last one seen; a deleted set keeps its line).
    pub replica_set: String,
    /// Its immutable id: a set deleted and run again under the same name is another line.
    pub id: String,
    /// GPU-seconds within the period.
    pub gpu_seconds: f64,
    /// GPUs it holds at the end of the period.
    pub gpus_at_end: i64,
}

/// GPU-time of one user over the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserUsage {
    /// The user.
    pub owner: String,
    /// GPU-seconds within the period, all their sets together.
    pub gpu_seconds: f64,
}

/// GPU-time over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// Start of the period, seconds since the epoch.
    pub from: i64,
    /// End of the period, seconds since the epoch.
    pub to: i64,
    /// Per user, by name.
    pub users: Vec<UserUsage>,
    /// Per replicaSet, by owner then name.
    pub replica_sets: Vec<SetUsage>,
}

/// Which GPU-time to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Start, seconds since the epoch (default: the beginning).
    pub from: Option<i64>,
    /// End, seconds since the epoch (default: now, by the engine's clock).
    pub to: Option<i64>,
    /// Only this user's (admins; a user always sees only their own).
    pub owner: Option<String>,
}

/// Microseconds `gpus` GPUs were held between `start` and `end`, clipped to the period.
fn overlap(start: u64, end: u64, from: u64, to: u64) -> u64 {
    end.min(to).saturating_sub(start.max(from))
}

impl Engine {
    /// GPU-seconds per user and per replicaSet over the period. A user sees only their own;
    /// an admin everyone's, or one user's with `owner`.
    pub async fn usage(&self, query: UsageQuery) -> Result<UsageReport> {
        let now = self.ctx.shared.clock.now_micros();
        // Before 1970 is the beginning; a period that ends before it starts is empty.
        let from = query.from.unwrap_or(0).max(0);
        let to = query.to.unwrap_or((now / 1_000_000) as i64).max(from);
        let owner = match (self.ctx.caller.is_admin(), query.owner) {
            (true, owner) => owner,
            // Another user's GPU-time answers as none at all.
            (false, Some(other)) if other != self.ctx.caller.name => return Ok(empty(from, to)),
            (false, _) => Some(self.ctx.caller.name.clone()),
        };
        let prefix = match &owner {
            Some(o) => keys::gpu_times_of(o),
            None => keys::GPU_TIMES.to_string(),
        };
        // Without an end, up to this very microsecond.
        let from_us = (from as u64).saturating_mul(1_000_000);
        let to_us = match query.to {
            Some(_) => (to as u64).saturating_mul(1_000_000),
            None => now,
        };
        // Keys are `gpu-time/{owner}/{id}/{at}.{unique}`: each set's records come together,
        // in time order.
        let mut sets: BTreeMap<(String, String), (String, Vec<GpuTime>)> = BTreeMap::new();
        for entry in self.ctx.shared.store.list(&prefix).await? {
            let mut parts = entry.key[keys::GPU_TIMES.len()..].splitn(3, '/');
            let (Some(who), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<GpuTime>(&entry.value) else {
                tracing::warn!(key = %entry.key, "unreadable GPU-time record skipped");
                continue;
            };
            let slot = sets
                .entry((who.to_string(), id.to_string()))
                .or_insert_with(|| (record.name.clone(), Vec::new()));
            slot.0 = record.name.clone();
            slot.1.push(record);
        }
        let mut report = empty(from, to);
        let mut per_user: BTreeMap<String, u128> = BTreeMap::new();
        let mut lines = Vec::new();
        for ((who, id), (name, mut records)) in sets {
            records.sort_by_key(|r| r.at);
            let (mut held, mut since, mut micros) = (0i64, 0u64, 0u128);
            for record in &records {
                if record.at >= to_us {
                    break;
                }
                micros += held.max(0) as u128 * overlap(since, record.at, from_us, to_us) as u128;
                held += record.delta;
                since = record.at;
            }
            micros += held.max(0) as u128 * overlap(since, to_us, from_us, to_us) as u128;
            if micros == 0 && held <= 0 {
                continue;
            }
            *per_user.entry(who.clone()).or_default() += micros;
            lines.push(SetUsage {
                owner: who,
                replica_set: name,
                id,
                gpu_seconds: micros as f64 / 1e6,
                gpus_at_end: held,
            });
        }
        lines.sort_by(|a, b| (&a.owner, &a.replica_set).cmp(&(&b.owner, &b.replica_set)));
        report.replica_sets = lines;
        report.users = per_user
            .into_iter()
            .map(|(owner, micros)| UserUsage {
                owner,
                gpu_seconds: micros as f64 / 1e6,
            })
            .collect();
        Ok(report)
    }
}

fn empty(from: i64, to: i64) -> UsageReport {
    UsageReport {
        from,
        to,
        users: Vec::new(),
        replica_sets: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::{overlap, UsageQuery};
    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::MemoryStore;

    /// Found by fuzzing: a period before 1970, or at the end of time, is an answer, not a panic.
    #[tokio::test]
    async fn any_period_is_answered() {
        let engine = crate::ops::Engine::new(
            std::sync::Arc::new(MockContainerRuntime::new()),
            std::sync::Arc::new(MemoryStore::new()),
            std::sync::Arc::new(StaticInventory::fake(0)),
            Default::default(),
        );
        for (from, to) in [
            (None, Some(-25_000_000_000)),
            (Some(i64::MAX), None),
            (Some(-1), Some(i64::MAX)),
            (Some(i64::MIN), Some(i64::MIN)),
        ] {
            let report = engine
                .usage(UsageQuery {
                    from,
                    to,
                    owner: None,
                })
                .await
                .unwrap();
            assert!(report.users.is_empty() && report.from <= report.to);
        }
    }

    #[test]
    fn overlaps_are_clipped_to_the_period() {
        assert_eq!(overlap(0, 10, 5, 20), 5);
        assert_eq!(overlap(10, 30, 5, 20), 10);
        assert_eq!(overlap(25, 30, 5, 20), 0);
        assert_eq!(overlap(0, 3, 5, 20), 0);
    }
}
