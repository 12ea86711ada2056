//! Stop, pause, continue and delete: the intent recorded first, then the idempotent step of
//! [`crate::steps::finish`] that a restarted engine can finish.

use crate::engine::access::Holdings;
use crate::engine::claims::Claim;
use crate::engine::encode;
use crate::error::{Error, Operation, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::model::{Intent, ReplicaSet, Status};
use crate::ops::Engine;
use crate::store::Txn;

impl Engine {
    /// Writes `head` with `intent` pending, if nobody changed it since `revision`.
    async fn record_intent(
        &self,
        head: &mut ReplicaSet,
        revision: u64,
        intent: Intent,
    ) -> Result<()> {
        head.pending = Some(intent);
        let txn = Txn::new()
            .unchanged(keys::replica_set(&head.name), revision)
            .put(keys::replica_set(&head.name), encode(&*head));
        self.ctx.commit(txn).await
    }

    /// When Docker could not be reached, the recorded intent is dropped so that what the user
    /// is told ("nothing was changed") stays true: the next request does not finish it behind
    /// their back. (Had Docker acted after all, the reconciler settles the container.)
    async fn forget_unreached(&self, name: &str, result: Result<()>) -> Result<()> {
        let Err(Error::Unavailable(reason)) = result else {
            return result;
        };
        if let Ok(Some((mut head, revision))) =
            self.ctx.read::<ReplicaSet>(&keys::replica_set(name)).await
        {
            if matches!(
                head.pending,
                Some(Intent::Stop | Intent::Pause | Intent::Delete)
            ) {
                head.pending = None;
                let txn = Txn::new()
                    .unchanged(keys::replica_set(name), revision)
                    .put(keys::replica_set(name), encode(&head));
                if let Err(e) = self.ctx.shared.store.commit(txn).await {
                    tracing::warn!(replica_set = %name, "intent kept after an outage: {e}");
                }
            }
        }
        Err(Error::Unavailable(reason))
    }

    /// Stops the container and releases its GPUs and ports.
    pub async fn stop(&self, name: &str) -> Result<()> {
        self.ctx
            .recorded(
                "stop",
                name,
                |_| "stopped; GPUs and ports released".into(),
                self.stop_set(name),
            )
            .await
    }

    pub(crate) async fn stop_set(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (mut head, revision) = self.ctx.head(name).await?;
        let container = crate::names::container(name, head.current);
        if head.status == Status::Stopped {
            return self
                .ctx
                .shared
                .runtime
                .stop_container(&container, self.ctx.shared.config.stop_timeout)
                .await
                .map_err(|e| e.during(Operation::Stop));
        }
        let result = async {
            self.record_intent(&mut head, revision, Intent::Stop)
                .await?;
            failpoint("stop.recorded");
            self.ctx.finish_stop(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e| e.during(Operation::Stop))
    }

    /// Stops the container but keeps its GPUs and ports.
    pub async fn pause(&self, name: &str) -> Result<()> {
        self.ctx
            .recorded(
                "pause",
                name,
                |_| "stopped; GPUs and ports kept".into(),
                self.pause_set(name),
            )
            .await
    }

    async fn pause_set(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (mut head, revision) = self.ctx.head(name).await?;
        if head.status == Status::Stopped {
            return Err(Error::refused(
                Operation::Pause,
                format!("'{name}' is stopped and holds no GPUs; use continue or restart"),
            ));
        }
        let result = async {
            self.record_intent(&mut head, revision, Intent::Pause)
                .await?;
            failpoint("pause.recorded");
            self.ctx.finish_pause(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e| e.during(Operation::Pause))
    }

    /// Starts the current container again; after a stop, first claims the same GPUs and ports
    /// again, or fails saying who holds them. (The contract calls this "continue".)
    pub async fn resume(&self, name: &str) -> Result<()> {
        self.ctx
            .recorded(
                "continue",
                name,
                |_| "running again".into(),
                self.resume_set(name),
            )
            .await
    }

    async fn resume_set(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (mut head, revision) = self.ctx.head(name).await?;
        let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
        let reclaimed = head.status == Status::Stopped;
        let quota = if reclaimed {
            self.ctx
                .check_quota(&head.owner, Holdings::gpus(head.gpus.len()))
                .await?
        } else {
            Default::default()
        };
        if reclaimed {
            let gpu_holders = self.ctx.gpu_holders().await?;
            let port_holders = self.ctx.port_holders().await?;
            let busy: Vec<String> = head
                .gpus
                .iter()
                .filter_map(|g| {
                    gpu_holders
                        .get(g)
                        .map(|h| format!("GPU {g} (held by {})", self.ctx.holder_name(h)))
                })
                .chain(ports.iter().filter_map(|p| {
                    port_holders
                        .get(p)
                        .map(|h| format!("port {p} (held by {})", self.ctx.holder_name(h)))
                }))
                .collect();
            if !busy.is_empty() {
                return Err(Error::refused(
                    Operation::Continue,
                    format!(
                        "'{name}' was stopped and {} now in use; restart it to get other GPUs and ports",
                        busy.join(", ")
                    ),
                ));
            }
        }
        let before = head.status;
        head.status = Status::Running;
        head.pending = Some(Intent::Continue { reclaimed });
        let records = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&head));
        let none: (&[String], &[u16]) = (&[], &[]);
        let (gpus, ports) = if reclaimed {
            (head.gpus.as_slice(), ports.as_slice())
        } else {
            none
        };
        let claim = Claim {
            quota,
            holder: &head,
            gpus,
            ports,
            account: true,
        };
        if !self.ctx.commit_claims(claim, records).await? {
            return Err(Error::refused(
                Operation::Continue,
                format!("the GPUs or ports of '{name}' were just claimed by another replicaSet; restart it instead"),
            ));
        }
        failpoint("continue.recorded");
        self.ctx
            .finish_resume(head, before)
            .await
            .map_err(|e| e.during(Operation::Continue))
    }

    /// Removes every container, record, claim and snapshot of the replicaSet.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.ctx
            .recorded(
                "delete",
                name,
                |_| "containers, records, claims and snapshots removed".into(),
                self.delete_set(name),
            )
            .await
    }

    async fn delete_set(&self, name: &str) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        self.ctx.settle(name).await?;
        let (mut head, revision) = self.ctx.head(name).await?;
        let result = async {
            self.record_intent(&mut head, revision, Intent::Delete)
                .await?;
            failpoint("delete.recorded");
            self.ctx.finish_delete(head).await
        }
        .await;
        self.forget_unreached(name, result)
            .await
            .map_err(|e: Error| e.during(Operation::Delete))
    }
}
