//! Each owner's network: which one a container joins, making it on first use, mending a
//! container whose network was removed under it (`docker network prune` removes a network whose
//! containers are all stopped), and removing networks that nothing of this store uses.
//!
//! Creating a container or starting one goes through here ([`Context::create_container`],
//! [`Context::start_container`], [`Context::restart_container`]), so every operation, recovery
//! and the reconciler put a set on its owner's network the same way.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::engine::{Context, LABEL_NETWORK, LABEL_OWNER, LABEL_REPLICA_SET, LABEL_STORE};
use crate::error::{Error, Result};
use crate::network::{owner_network, NetworkMode};
use crate::runtime::{ContainerNetwork, ContainerSpec, ContainerState, NetworkCreated};

/// Held while a per-owner network is looked for, made or removed: older Docker makes a second
/// network of a taken name. One for the process, so that engines sharing a Docker in one process
/// (tests, embedders with several stores) never race each other.
static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether Docker refused because a container's network is gone.
fn network_missing(e: &Error) -> bool {
    matches!(e, Error::Docker(m) if m.contains("network") && m.contains("not found"))
}

/// Whether Docker refused because two networks carry the name (made by two processes at once).
fn network_ambiguous(e: &Error) -> bool {
    matches!(e, Error::Docker(m) if m.contains("network") && m.contains("ambiguous"))
}

impl Context {
    /// The network a container of `owner`'s set `set` joins on this host (`None`: Docker's
    /// default bridge); the set's name is its DNS name there.
    pub(crate) fn network_for(&self, owner: &str, set: &str) -> Option<ContainerNetwork> {
        let name = match &self.shared.config.network.mode {
            NetworkMode::Shared => return None,
            NetworkMode::Named(name) => name.clone(),
            NetworkMode::PerOwner => self.owner_network(owner),
        };
        Some(ContainerNetwork {
            name,
            aliases: vec![set.to_string()],
        })
    }

    /// At start: the operator's network, when every set is to join one, exists.
    pub(crate) async fn check_network(&self) -> Result<()> {
        let NetworkMode::Named(name) = &self.shared.config.network.mode else {
            return Ok(());
        };
        if self.shared.runtime.find_networks(name).await?.is_empty() {
            return Err(Error::InvalidParams(format!(
                "network '{name}' (--network) does not exist: make it (docker network create \
                 {name}) or choose per-owner or shared"
            )));
        }
        Ok(())
    }

    /// At start, in per-owner mode: puts the host firewall guard in place (see
    /// [`crate::network::Guard`]); where it cannot, says why in the log and in status.
    pub(crate) fn install_network_guard(&self) {
        let policy = &self.shared.config.network;
        if policy.mode != NetworkMode::PerOwner {
            return;
        }
        let guard = self.shared.network_guard.get_or_init(|| {
            if policy.guard {
                crate::network::install_guard(&policy.pool)
            } else {
                crate::network::Guard {
                    installed: false,
                    rule: policy.pool.guard_rule().join(" "),
                    reason: Some("turned off (--no-network-guard)".into()),
                }
            }
        });
        match &guard.reason {
            None => tracing::info!("network guard in place: iptables -t mangle {}", guard.rule),
            Some(why) => tracing::warn!(
                "the network guard is not in place ({why}): while Docker makes or removes a \
                 network, one owner's containers can briefly reach another's; run as root on \
                 the Docker host, or add it yourself: iptables -t mangle -I {}",
                guard.rule
            ),
        }
    }

    /// The name of `owner`'s network for this store.
    pub(crate) fn owner_network(&self, owner: &str) -> String {
        let store = self.shared.store_id.get().map(String::as_str);
        owner_network(store.unwrap_or("local"), owner)
    }

    /// Makes network `name` if it is `owner`'s per-owner network and missing, on the pool's
    /// first free subnet. Any other network (the operator's) is left to Docker to find.
    pub(crate) async fn ensure_network(&self, name: &str, owner: &str) -> Result<()> {
        if name != self.owner_network(owner) {
            return Ok(());
        }
        let runtime = &self.shared.runtime;
        let _held = NETWORK_LOCK.lock().await;
        let found = runtime.find_networks(name).await?;
        if found.len() > 1 {
            return self.keep_one_network(name).await;
        }
        if !found.is_empty() {
            return Ok(());
        }
        let taken: BTreeSet<String> = runtime
            .list_networks(LABEL_OWNER)
            .await?
            .into_iter()
            .flat_map(|n| n.subnets)
            .collect();
        let labels = self.labels(&[(LABEL_OWNER, owner.to_string())]);
        let pool = self.shared.config.network.pool;
        for subnet in pool.subnets().filter(|s| !taken.contains(s)) {
            // Docker refuses a subnet that overlaps any network it has, ours or not.
            if let NetworkCreated::Created(id) =
                runtime.create_network(name, &subnet, &labels).await?
            {
                tracing::info!(network = %name, %id, %subnet, "made the network of {owner}");
                return self.keep_one_network(name).await;
            }
        }
        Err(Error::NetworkPoolFull(format!(
            "no /{} of the network pool {pool} is free for {owner}'s network ({} owners' \
             networks fit in it); widen --network-pool",
            pool.subnet_prefix(),
            pool.capacity()
        )))
    }

    /// Another engine on this Docker (older Docker does not refuse a taken name) may have made
    /// a network of the same name at the same moment: all keep the one of the lowest ID.
    async fn keep_one_network(&self, name: &str) -> Result<()> {
        let mut same = self.shared.runtime.find_networks(name).await?;
        same.sort_by(|a, b| a.id.cmp(&b.id));
        for extra in same.iter().skip(1) {
            self.shared.runtime.remove_network(&extra.id).await?;
        }
        Ok(())
    }

    /// Creates the container of `spec` on its network, making the network first; a network
    /// removed in between (the reconciler removes unused ones) is made again, once.
    pub(crate) async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        let owner = spec.labels.get(LABEL_OWNER).cloned().unwrap_or_default();
        let mut again = true;
        loop {
            if let Some(network) = &spec.network {
                self.ensure_network(&network.name, &owner).await?;
            }
            match self.shared.runtime.create_container(spec).await {
                // `ensure_network` makes it again, or keeps one of two of its name.
                Err(e) if again && (network_missing(&e) || network_ambiguous(&e)) => again = false,
                done => return done.map(|_| ()),
            }
        }
    }

    /// Starts a container; one whose network was removed under it is put on it afresh first.
    pub(crate) async fn start_container(&self, container: &str) -> Result<()> {
        match self.shared.runtime.start_container(container).await {
            Err(e) if network_missing(&e) => {
                self.mend_network(container).await?;
                self.shared.runtime.start_container(container).await
            }
            done => done,
        }
    }

    /// Restarts a container (starts a stopped one), mending its network as
    /// [`Context::start_container`] does.
    pub(crate) async fn restart_container(&self, container: &str, grace: Duration) -> Result<()> {
        match self
            .shared
            .runtime
            .restart_container(container, grace)
            .await
        {
            Err(e) if network_missing(&e) => {
                self.mend_network(container).await?;
                self.shared.runtime.start_container(container).await
            }
            done => done,
        }
    }

    /// Makes the network container `container` was created on again (if it is an owner's)
    /// and attaches the container to it afresh, under its set's name.
    async fn mend_network(&self, container: &str) -> Result<()> {
        let Some(state) = self.shared.runtime.inspect_container(container).await? else {
            return Ok(());
        };
        self.reattach(&state).await
    }

    async fn reattach(&self, state: &ContainerState) -> Result<()> {
        let label = |key: &str| state.labels.get(key).cloned().unwrap_or_default();
        let name = label(LABEL_NETWORK);
        if name.is_empty() {
            return Ok(());
        }
        self.ensure_network(&name, &label(LABEL_OWNER)).await?;
        let network = ContainerNetwork {
            name,
            aliases: vec![label(LABEL_REPLICA_SET)],
        };
        tracing::warn!(container = %state.name, network = %network.name,
            "the container's network was removed outside gpu-replica: attached to it afresh");
        self.shared
            .runtime
            .reattach_network(&state.name, &network)
            .await
    }

    /// Removes `owner`'s network here once no container of this store is on it.
    pub(crate) async fn release_network(&self, owner: &str) -> Result<()> {
        self.remove_network_if_unused(&self.owner_network(owner))
            .await
            .map(|_| ())
    }

    /// Removes per-owner network `name` when no container is labelled as joining it; returns
    /// whether it went.
    async fn remove_network_if_unused(&self, name: &str) -> Result<bool> {
        let runtime = &self.shared.runtime;
        let _held = NETWORK_LOCK.lock().await;
        let users = runtime
            .list_containers(&format!("{LABEL_NETWORK}={name}"))
            .await?;
        if !users.is_empty() {
            return Ok(false);
        }
        let mut removed = false;
        for network in runtime.find_networks(name).await? {
            removed |= runtime.remove_network(&network.id).await?;
        }
        Ok(removed)
    }

    /// The reconciler's part for networks, from the containers it `listed`: a per-owner
    /// network that a container of this store is on but that is gone is made again and its
    /// (stopped) containers attached afresh; a per-owner network of this store that no
    /// container is on is removed. Returns what it did, a line each.
    pub(crate) async fn settle_networks(&self, listed: &[ContainerState]) -> Result<Vec<String>> {
        let mut settled = Vec::new();
        let Some(store) = self.shared.store_id.get() else {
            return Ok(settled);
        };
        let ours: Vec<&ContainerState> = listed
            .iter()
            .filter(|c| c.labels.get(LABEL_STORE) == Some(store))
            .collect();
        let networks = self.shared.runtime.list_networks(LABEL_OWNER).await?;
        let present: BTreeSet<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        for container in &ours {
            let (Some(name), Some(owner)) = (
                container.labels.get(LABEL_NETWORK),
                container.labels.get(LABEL_OWNER),
            ) else {
                continue;
            };
            if present.contains(name.as_str())
                || *name != self.owner_network(owner)
                || container.running
            {
                continue;
            }
            self.reattach(container).await?;
            settled.push(format!(
                "network {name} of {owner} was gone: made again, {} attached to it",
                container.name
            ));
        }
        let used: BTreeSet<&str> = ours
            .iter()
            .filter_map(|c| c.labels.get(LABEL_NETWORK).map(String::as_str))
            .collect();
        for network in networks
            .iter()
            .filter(|n| n.labels.get(LABEL_STORE) == Some(store))
            .filter(|n| !used.contains(n.name.as_str()))
        {
            if self.remove_network_if_unused(&network.name).await? {
                settled.push(format!(
                    "network {} removed: no set of its owner is on this host",
                    network.name
                ));
            }
        }
        Ok(settled)
    }
}
