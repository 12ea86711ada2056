//! The step that undoes a migration from its source node: shared by the migration itself (a
//! failure before the target made the new version current) and by recovery (a source engine
//! that died in the middle). Idempotent: nothing when the set moved already.

use crate::cluster::{LinkRequest, NodeRecord};
use crate::engine::claims::{release_keys, retry, Try};
use crate::engine::{encode, Context};
use crate::error::Result;
use crate::keys;
use crate::model::{Intent, Moving, ReplicaSet};
use crate::store::Txn;

/// The migration `head` records, if any.
pub(crate) fn moving_of(head: &ReplicaSet) -> Option<Moving> {
    match &head.pending {
        Some(Intent::Migrate(moving)) => Some(moving.clone()),
        _ => None,
    }
}

impl Context {
    /// Undoes a migration of a set that still lives here: releases what the target claimed,
    /// forgets the new version and starts the old container again if it ran. Nothing when
    /// the target already made it current (the set lives there now).
    pub(crate) async fn undo_migration(&self, name: &str) -> Result<()> {
        let exhausted =
            format!("the migration of '{name}' kept changing while it was being undone");
        retry(&exhausted, move |_| async move {
            let Some((head, revision)) = self.read::<ReplicaSet>(&keys::replica_set(name)).await?
            else {
                return Ok(Try::Done(()));
            };
            let Some(moving) = moving_of(&head) else {
                return Ok(Try::Done(()));
            };
            if head.node != self.node_name() {
                return Ok(Try::Done(()));
            }
            let mut undone = head.clone();
            undone.pending = None;
            if undone.latest == moving.version {
                undone.latest -= 1;
            }
            let txn = release_keys(
                Txn::new(),
                &moving.to,
                &moving.claimed_gpus,
                &moving.claimed_ports,
            )
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&undone))
            .delete(keys::version(name, moving.version));
            if !self.shared.store.commit(txn).await? {
                // The target changed the intent (its claims) meanwhile: read it again.
                return Ok(Try::Again);
            }
            // What the target made goes too (else its reconciler or recovery removes it).
            if let (Some(link), Ok(Some((target, _)))) = (
                self.shared.link.get(),
                self.read::<NodeRecord>(&keys::node(&moving.to)).await,
            ) {
                let abort = LinkRequest::Abort {
                    set: name.to_string(),
                };
                if let Err(e) = link.send(&target, abort).await {
                    tracing::warn!(replica_set = %name, "node '{}' did not undo its part: {e}", moving.to);
                }
            }
            if moving.before.wants_running() {
                let container = self.version_record(name, head.current).await?.container;
                // A killed engine may have left a stop in its grace period: finish it first,
                // so the start is the last word.
                self.shared
                    .runtime
                    .stop_container(&container, self.shared.config.stop_timeout)
                    .await?;
                self.start_container(&container).await?;
            }
            Ok(Try::Done(()))
        })
        .await
    }
}
