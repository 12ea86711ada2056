//! The event log: every lifecycle change (run, patch, rollback, stop, a timer firing, a volume
//! resize, crash recovery, …) with its time and outcome.
//!
//! Events are written to the store (`events/{seq}`, the newest [`KEEP_EVENTS`] kept), so they
//! outlive the process, and are broadcast to live subscribers ([`Engine::subscribe`]). Writing
//! an event never fails the operation it describes.

use std::future::Future;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::engine::{encode, Context};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::ReplicaSetInfo;
use crate::store::Txn;

/// Events kept in the store; older ones are dropped.
pub const KEEP_EVENTS: usize = 1000;

/// One lifecycle change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing number (microseconds since the epoch, made unique); resume after it.
    pub seq: u64,
    /// When it happened, RFC 3339 UTC.
    pub time: String,
    /// What happened: `run`, `patch`, `rollback`, `restart`, `stop`, `pause`, `continue`,
    /// `delete`, `clone`, `timer.idle`, `timer.at`, `timers`, `volume.create`,
    /// `volume.resize`, `volume.delete`, `recovery`; in a cluster `migrate`, `node.cordon`,
    /// `node.uncordon`, `node.drain` (its start, cancel and end; the target is the node) and
    /// `drain` (one set moved off a drained node, or not and why).
    pub kind: String,
    /// The replicaSet or volume concerned (empty for recovery).
    pub target: String,
    /// Who did it: a user's name, `admin` for the built-in administrator and for what the
    /// server does by itself (timers, recovery, reconciliation).
    #[serde(default)]
    pub actor: String,
    /// Whom the target belongs to; users see only events of their own objects.
    #[serde(default)]
    pub owner: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What came of it, or why it failed.
    pub message: String,
}

/// Broadcast side of the log.
pub(crate) struct EventLog {
    sender: broadcast::Sender<Event>,
    last_seq: Mutex<u64>,
    /// Events recorded by this process; old ones are pruned every 64th.
    recorded: std::sync::atomic::AtomicU64,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            sender: broadcast::channel(1024).0,
            last_seq: Mutex::new(0),
            recorded: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl EventLog {
    /// A number larger than every one handed out before, close to the clock.
    fn next_seq(&self) -> u64 {
        let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last + 1).max(micros as u64);
        *last
    }
}

/// What a successful replicaSet change led to, in words.
pub(crate) fn describe_info(info: &ReplicaSetInfo) -> String {
    format!(
        "{} now current ({} GPU(s))",
        info.version.container,
        info.version.gpus.len()
    )
}

impl Context {
    /// Records an event: stored, then broadcast. A store failure is logged, not returned.
    pub(crate) async fn emit(&self, kind: &str, target: &str, ok: bool, message: String) {
        let owner = self.owner_of(kind, target).await;
        self.emit_for(&owner, kind, target, ok, message).await;
    }

    /// Whom the target of an event of `kind` belongs to: the caller for a user (they act on
    /// their own objects only); for an admin, the recorded owner (the admin when it is gone).
    async fn owner_of(&self, kind: &str, target: &str) -> String {
        if !self.caller.is_admin() {
            return self.caller.name.clone();
        }
        let owner = if kind.starts_with("user.") {
            return target.to_string();
        } else if kind.starts_with("node.") {
            // A node is nobody's: its events are the admins'.
            None
        } else if kind.starts_with("volume.") {
            self.read::<crate::model::Volume>(&keys::volume(target))
                .await
                .ok()
                .flatten()
                .map(|(v, _)| v.owner)
        } else if target.is_empty() {
            None
        } else {
            self.read::<crate::model::ReplicaSet>(&keys::replica_set(target))
                .await
                .ok()
                .flatten()
                .map(|(h, _)| h.owner)
        };
        owner.unwrap_or_else(|| self.caller.name.clone())
    }

    /// Whether this caller may see `event`: an admin sees all, a user those of their objects.
    pub fn sees(&self, event: &Event) -> bool {
        self.caller.may_reach(&event.owner)
    }

    async fn emit_for(&self, owner: &str, kind: &str, target: &str, ok: bool, message: String) {
        let seq = self.shared.events.next_seq();
        let event = Event {
            seq,
            time: crate::model::rfc3339_micros(seq),
            kind: kind.to_string(),
            target: target.to_string(),
            actor: self.caller.name.clone(),
            owner: owner.to_string(),
            ok,
            message,
        };
        let txn = Txn::new().put(keys::event(seq), encode(&event));
        if let Err(e) = self.shared.store.commit(txn).await {
            tracing::warn!(error = %e, kind, target, "event not stored");
        }
        let recorded = self
            .shared
            .events
            .recorded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if recorded.is_multiple_of(64) {
            if let Err(e) = self.prune_events().await {
                tracing::warn!(error = %e, "old events not pruned");
            }
        }
        // No subscriber is fine.
        let _ = self.shared.events.sender.send(event);
    }

    /// Runs `op` and records its outcome as event `kind` on `target`; `describe` says what a
    /// success led to.
    pub(crate) async fn recorded<T>(
        &self,
        kind: &str,
        target: &str,
        describe: impl FnOnce(&T) -> String,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // Read before: a delete takes the record that says whose it was.
        let owner = self.owner_of(kind, target).await;
        let started = std::time::Instant::now();
        let result = op.await;
        self.shared.metrics.count_operation(
            self.node_name(),
            kind,
            result.is_ok(),
            started.elapsed(),
        );
        // A request on an object that is not there (or not the caller's) changed nothing.
        if matches!(result, Err(Error::NotFound(_) | Error::VolumeNotFound(_))) {
            return result;
        }
        let (ok, message) = match &result {
            Ok(value) => (true, describe(value)),
            Err(e) => (false, e.to_string()),
        };
        self.emit_for(&owner, kind, target, ok, message).await;
        result
    }

    async fn prune_events(&self) -> Result<()> {
        let all = self.shared.store.list(keys::EVENTS).await?;
        if all.len() <= KEEP_EVENTS {
            return Ok(());
        }
        let excess = all.len() - KEEP_EVENTS;
        let txn = all[..excess]
            .iter()
            .fold(Txn::new(), |t, e| t.delete(e.key.clone()));
        self.shared.store.commit(txn).await?;
        Ok(())
    }

    /// Live events from now on, everyone's: filter them with [`Engine::sees`]. A subscriber
    /// that falls more than 1024 events behind misses the oldest (and is told so by the
    /// receiver); [`Engine::events`] reads them back.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.sender.subscribe()
    }

    /// Stored events this caller sees, oldest first: the newest `last`, only those after
    /// `after` when given.
    pub async fn events(&self, last: usize, after: Option<u64>) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = self.read_all(keys::EVENTS).await?;
        events.retain(|e| after.is_none_or(|after| e.seq > after) && self.sees(e));
        let skip = events.len().saturating_sub(last);
        Ok(events.split_off(skip))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::gpu::StaticInventory;
    use crate::runtime::MockContainerRuntime;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn the_store_keeps_the_newest_events_in_order() {
        let engine = Context::new(
            Arc::new(MockContainerRuntime::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(StaticInventory::fake(0)),
            Default::default(),
        );
        let total = KEEP_EVENTS + 100;
        for i in 0..total {
            engine
                .emit("run", &format!("s{i}"), true, String::new())
                .await;
        }
        let stored = engine.events(usize::MAX, None).await.unwrap();
        assert!(stored.len() >= KEEP_EVENTS && stored.len() < KEEP_EVENTS + 64);
        assert_eq!(stored.last().unwrap().target, format!("s{}", total - 1));
        assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        let last_two = engine.events(2, None).await.unwrap();
        assert_eq!(last_two[1].target, format!("s{}", total - 1));
        assert!(engine
            .events(10, Some(last_two[0].seq))
            .await
            .unwrap()
            .iter()
            .all(|e| e.seq > last_two[0].seq));
    }
}
