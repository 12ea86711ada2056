//! Claims on GPUs and host ports: who holds what, what is free, and the transactions that take
//! and give them back. Each GPU and port is its own key, taken with compare-and-swap, so two
//! engines on one store never hand out the same one.

use std::collections::{HashMap, HashSet};

use crate::engine::records::encode;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{now, Intent, ReplicaSet, ReplicaSetSpec, Status, Version};
use crate::runtime::PortMapping;
use crate::sched::{host_port_is_free, pick_gpus, pick_ports};
use crate::store::Txn;

/// GPUs and ports a claim adds to a transaction.
pub(crate) fn claim(txn: Txn, holder: &str, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus.iter().fold(txn, |t, uuid| {
        t.absent(keys::gpu_claim(uuid))
            .put(keys::gpu_claim(uuid), holder.as_bytes().to_vec())
    });
    ports.iter().fold(txn, |t, port| {
        t.absent(keys::port_claim(*port))
            .put(keys::port_claim(*port), holder.as_bytes().to_vec())
    })
}

/// Releases GPUs and ports in a transaction.
pub(crate) fn release(txn: Txn, gpus: &[String], ports: &[u16]) -> Txn {
    let txn = gpus
        .iter()
        .fold(txn, |t, uuid| t.delete(keys::gpu_claim(uuid)));
    ports
        .iter()
        .fold(txn, |t, port| t.delete(keys::port_claim(*port)))
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

impl Engine {
    /// Who holds each GPU, by UUID.
    pub(crate) async fn gpu_holders(&self) -> Result<HashMap<String, String>> {
        Ok(self
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

    /// Who holds each host port.
    pub(crate) async fn port_holders(&self) -> Result<HashMap<u16, String>> {
        Ok(self
            .store
            .list(keys::PORT_CLAIMS)
            .await?
            .into_iter()
            .filter_map(|e| {
                let port = e.key[keys::PORT_CLAIMS.len()..].parse().ok()?;
                Some((port, String::from_utf8_lossy(&e.value).into_owned()))
            })
            .collect())
    }

    /// Picks GPUs and ports for a new replicaSet and records it, retrying if another engine
    /// claims the same GPUs first.
    /// `image` is what the container is created from: the user's image, or a clone's base;
    /// `id` is the new set's immutable id.
    pub(crate) async fn claim_first_version(
        &self,
        name: &str,
        id: &str,
        spec: ReplicaSetSpec,
        image: &str,
    ) -> Result<Version> {
        for _ in 0..8 {
            let gpus = self
                .pick_gpus_for(name, &[], spec.gpu_count as usize)
                .await?;
            let ports = self
                .pick_ports_for(name, &spec.container_ports, &[])
                .await?;
            let version = Version {
                version: 1,
                container: crate::names::container(name, 1),
                image: image.to_string(),
                limits: self.config.resources.fit(spec.gpu_count, &spec.resources),
                spec: spec.clone(),
                gpus: gpus.clone(),
                ports: ports.clone(),
                snapshot: None,
                created_at: now(),
            };
            let head = ReplicaSet {
                name: name.to_string(),
                id: id.to_string(),
                current: 1,
                latest: 1,
                status: Status::Running,
                gpus: gpus.clone(),
                ports: ports.clone(),
                pending: Some(Intent::Run),
                created_at: version.created_at.clone(),
                timers: Default::default(),
            };
            let host_ports: Vec<u16> = ports.iter().map(|p| p.host_port).collect();
            let txn = claim(Txn::new(), name, &gpus, &host_ports)
                .absent(keys::replica_set(name))
                .put(keys::replica_set(name), encode(&head))
                .put(keys::version(name, 1), encode(&version))
                .put(keys::current(name), encode(&version));
            if self.store.commit(txn).await? {
                return Ok(version);
            }
            if self.store.get(&keys::replica_set(name)).await?.is_some() {
                return Err(Error::AlreadyExists(name.to_string()));
            }
        }
        Err(Error::Conflict(
            "the GPUs or ports picked kept being claimed by other requests".into(),
        ))
    }

    pub(crate) async fn pick_gpus_for(
        &self,
        name: &str,
        keep: &[String],
        count: usize,
    ) -> Result<Vec<String>> {
        let gpus = self.inventory.gpus().await?;
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
        let range = self.config.port_range;
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
