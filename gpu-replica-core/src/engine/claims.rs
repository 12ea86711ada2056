//! Claims on GPUs and host ports: who holds what, what is free, and the transactions that take
//! and give them back. Each GPU and port is its own key, taken with compare-and-swap, so two
//! engines on one store never hand out the same one.

use std::collections::{HashMap, HashSet};

use crate::engine::access::{Holdings, QuotaGuard};
use crate::engine::records::encode;
use crate::engine::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{now, Intent, ReplicaSet, ReplicaSetSpec, Status, Version};
use crate::runtime::PortMapping;
use crate::sched::{host_port_is_free, pick_gpus, pick_ports};
use crate::store::Txn;

/// GPUs and ports (of `node`) a claim adds to a transaction.
fn claim_keys(txn: Txn, node: &str, holder: &str, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus.iter().fold(txn, |t, uuid| {
        t.absent(keys::gpu_claim(uuid))
            .put(keys::gpu_claim(uuid), holder.as_bytes().to_vec())
    });
    ports.iter().fold(txn, |t, port| {
        t.absent(keys::port_claim(node, *port))
            .put(keys::port_claim(node, *port), holder.as_bytes().to_vec())
    })
}

/// Releases GPUs and ports (of `node`) in a transaction.
pub(crate) fn release_keys(txn: Txn, node: &str, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus
        .iter()
        .fold(txn, |t, uuid| t.delete(keys::gpu_claim(uuid)));
    ports
        .iter()
        .fold(txn, |t, port| t.delete(keys::port_claim(node, *port)))
}

/// How often a claim is tried before it answers a conflict: concurrent claims of one owner
/// under a quota lose to each other until each has counted the others' (16 at once settle).
const CLAIM_ATTEMPTS: u32 = 32;

/// Waits a little, more after each lost attempt, with jitter so losers do not meet again.
async fn backoff(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let millis = u64::from(attempt.min(8)) * 2 + u64::from(byte[0] % 8);
    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
}

/// What one try of a compare-and-swap loop came to.
pub(crate) enum Try<T> {
    /// It committed, or decided the answer.
    Done(T),
    /// It lost a race to another request: read again and try once more.
    Again,
}

/// What a claim answers when it lost every try.
pub(crate) const CLAIMS_KEPT_LOST: &str =
    "the GPUs or ports picked kept being claimed by other requests";

/// The one retry loop of the engine's compare-and-swaps: runs `attempt` (given its number)
/// until it is done, at most [`CLAIM_ATTEMPTS`] times with a growing, jittered wait between;
/// then a conflict saying `exhausted`.
///
/// `attempt` makes a fresh future each time; it borrows what it reads (the engine, the
/// request) from outside, so the loop stays `Send` for a spawned task.
pub(crate) async fn retry<T, F, Fut>(exhausted: &str, mut attempt: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Try<T>>>,
{
    for n in 0..CLAIM_ATTEMPTS {
        backoff(n).await;
        if let Try::Done(answer) = attempt(n).await? {
            return Ok(answer);
        }
    }
    Err(Error::Conflict(exhausted.to_string()))
}

/// GPUs and host ports a set takes in one transaction, under its owner's quota guard.
pub(crate) struct Claim<'a> {
    /// The owner's quota guard, checked for what this claim adds.
    pub(crate) quota: QuotaGuard,
    /// The set the claims are for: its name holds the keys.
    pub(crate) holder: &'a ReplicaSet,
    /// GPUs it takes.
    pub(crate) gpus: &'a [String],
    /// Host ports of this node it takes.
    pub(crate) ports: &'a [u16],
    /// Whether its GPU-time starts now (not on a migration's target: it moves with the set).
    pub(crate) account: bool,
}

/// The set of keys of `holders` not held by `me`.
pub(crate) fn taken_by_others<K: Clone + Eq + std::hash::Hash>(
    holders: &HashMap<K, String>,
    me: &str,
) -> HashSet<K> {
    holders
        .iter()
        .filter(|(_, holder)| holder.as_str() != me)
        .map(|(k, _)| k.clone())
        .collect()
}

impl Context {
    /// The claim transaction: `claim`'s GPUs and ports (each must still be free), its quota
    /// guard and GPU-time record, and the caller's `records`, committed together or not at
    /// all. `Ok(false)` when a compare-and-swap lost (a claim, the guard or a record changed).
    pub(crate) async fn commit_claims(&self, claim: Claim<'_>, records: Txn) -> Result<bool> {
        let Claim {
            quota,
            holder,
            gpus,
            ports,
            account,
        } = claim;
        let txn = claim_keys(
            quota.apply(records),
            self.node_name(),
            &holder.name,
            gpus,
            ports,
        );
        let txn = if account {
            self.account(txn, holder, gpus.len() as i64)
        } else {
            txn
        };
        self.shared.store.commit(txn).await
    }

    /// The record of version `number` of set `name` with `spec` on `gpus` and `ports`, created
    /// from `image`, its limits fitted to the share of its GPU count.
    pub(crate) fn version_of(
        &self,
        name: &str,
        number: u32,
        spec: ReplicaSetSpec,
        gpus: Vec<String>,
        ports: Vec<PortMapping>,
        image: String,
    ) -> Version {
        Version {
            version: number,
            container: crate::names::container(name, number),
            limits: self
                .shared
                .config
                .resources
                .fit(spec.gpu_count, &spec.resources),
            spec,
            gpus,
            ports,
            image,
            snapshot: None,
            created_at: now(),
        }
    }

    /// Adds to `txn` the release of `head`'s claims on `gpus` and `ports`, and the GPU-time
    /// record of the release.
    pub(crate) fn release(
        &self,
        txn: Txn,
        head: &ReplicaSet,
        gpus: &[String],
        ports: &[u16],
    ) -> Txn {
        let txn = release_keys(txn, self.node_name(), gpus, ports);
        self.account(txn, head, -(gpus.len() as i64))
    }

    /// Who holds each GPU, by UUID.
    pub(crate) async fn gpu_holders(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .shared
            .store
            .list(keys::GPU_CLAIMS)
            .await?
            .into_iter()
            .map(|e| {
                let uuid = e.key[keys::GPU_CLAIMS.len()..].to_string();
                (uuid, String::from_utf8_lossy(&e.value).into_owned())
            })
            .collect())
    }

    /// Who holds each host port of this node.
    pub(crate) async fn port_holders(&self) -> Result<HashMap<u16, String>> {
        let prefix = keys::port_claims(self.node_name());
        Ok(self
            .shared
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|e| {
                let port = e.key[prefix.len()..].parse().ok()?;
                Some((port, String::from_utf8_lossy(&e.value).into_owned()))
            })
            .collect())
    }

    /// Picks GPUs and ports for a new replicaSet owned by the caller and records it, within
    /// the caller's quota, retrying if another request claims the same GPUs (or another claim
    /// of the same owner commits) first.
    /// `image` is what the container is created from: the user's image, or a clone's base;
    /// `id` is the new set's immutable id.
    pub(crate) async fn claim_first_version(
        &self,
        name: &str,
        id: &str,
        spec: ReplicaSetSpec,
        image: &str,
    ) -> Result<Version> {
        let (owner, spec) = (&self.caller.name, &spec);
        retry(CLAIMS_KEPT_LOST, move |_| async move {
            let owner = owner.clone();
            let quota = self
                .check_quota(&owner, Holdings::set_with(spec.gpu_count as usize))
                .await?;
            let gpus = self
                .pick_gpus_for(name, &[], spec.gpu_count as usize)
                .await?;
            let ports = self
                .pick_ports_for(name, &spec.container_ports, &[])
                .await?;
            let version = self.version_of(name, 1, spec.clone(), gpus, ports, image.to_string());
            let head = ReplicaSet {
                name: name.to_string(),
                id: id.to_string(),
                owner: owner.clone(),
                node: self.node_name().to_string(),
                current: 1,
                latest: 1,
                status: Status::Running,
                gpus: version.gpus.clone(),
                ports: version.ports.clone(),
                pending: Some(Intent::Run),
                created_at: version.created_at.clone(),
                timers: Default::default(),
            };
            let host_ports: Vec<u16> = version.ports.iter().map(|p| p.host_port).collect();
            let records = Txn::new()
                .absent(keys::replica_set(name))
                .put(keys::replica_set(name), encode(&head))
                .put(keys::version(name, 1), encode(&version))
                .put(keys::current(name), encode(&version));
            let claim = Claim {
                quota,
                holder: &head,
                gpus: &head.gpus,
                ports: &host_ports,
                account: true,
            };
            if self.commit_claims(claim, records).await? {
                return Ok(Try::Done(version));
            }
            if self
                .shared
                .store
                .get(&keys::replica_set(name))
                .await?
                .is_some()
            {
                return Err(Error::AlreadyExists(name.to_string()));
            }
            Ok(Try::Again)
        })
        .await
    }

    pub(crate) async fn pick_gpus_for(
        &self,
        name: &str,
        keep: &[String],
        count: usize,
    ) -> Result<Vec<String>> {
        let gpus = self.shared.inventory.gpus().await?;
        let holders = self.gpu_holders().await?;
        let mut taken = taken_by_others(&holders, name);
        // GPUs we hold but do not keep stay ours until the old container is gone.
        taken.extend(holders.keys().filter(|u| !keep.contains(u)).cloned());
        pick_gpus(&gpus, &taken, keep, count).ok_or_else(|| Error::NotEnoughGpus {
            wanted: count,
            free: gpus.iter().filter(|g| !taken.contains(&g.uuid)).count(),
            total: gpus.len(),
        })
    }

    /// Host ports for `container_ports`: `previous` ones when still free, new ones otherwise.
    pub(crate) async fn pick_ports_for(
        &self,
        name: &str,
        container_ports: &[String],
        previous: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let holders = self.port_holders().await?;
        let mut taken: HashSet<u16> = holders.keys().copied().collect();
        let mut mappings = Vec::new();
        let mut missing = Vec::new();
        for port in container_ports {
            let reusable = previous.iter().find(|p| {
                &p.container_port == port
                    && holders.get(&p.host_port).is_none_or(|h| h == name)
                    && (holders.contains_key(&p.host_port) || host_port_is_free(p.host_port))
            });
            match reusable {
                Some(p) => mappings.push(p.clone()),
                None => missing.push(port.clone()),
            }
        }
        taken.extend(mappings.iter().map(|p| p.host_port));
        let range = self.shared.config.port_range;
        let fresh =
            pick_ports(range, &taken, missing.len(), host_port_is_free).ok_or_else(|| {
                Error::NotEnoughPorts {
                    wanted: missing.len(),
                    range: range.to_string(),
                }
            })?;
        mappings.extend(
            missing
                .into_iter()
                .zip(fresh)
                .map(|(container_port, host_port)| PortMapping {
                    container_port,
                    host_port,
                }),
        );
        // Keep the order the user gave.
        mappings.sort_by_key(|m| container_ports.iter().position(|p| p == &m.container_port));
        Ok(mappings)
    }
}
