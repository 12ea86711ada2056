//! The idempotent steps that operations and crash recovery share: each can be repeated after
//! a crash at any point and ends in the same state, so an operation is finished by running the
//! rest of its steps, or undone by the matching undo step.

use crate::engine::{
    encode, Context, LABEL_NETWORK, LABEL_OWNER, LABEL_REPLICA_SET, LABEL_STORE, LABEL_VERSION,
};
use crate::error::Result;
use crate::failpoint::failpoint;
use crate::keys;
use crate::model::{Intent, ReplicaSet, Status, Version, Volume, VolumeVersion};
use crate::runtime::ContainerSpec;
use crate::store::Txn;

impl Context {
    /// The image the first container of the clone with id `id` is created from.
    pub(crate) fn clone_base(&self, id: &str) -> String {
        crate::names::clone_base(&self.shared.config.snapshot_repo, id)
    }

    /// Starts version 1 (if it is not running) and clears the intent.
    pub(crate) async fn finish_run(&self, name: &str) -> Result<()> {
        let container = crate::names::container(name, 1);
        if !self.is_running(&container).await? {
            self.start_container(&container).await?;
        }
        failpoint("run.started");
        let (mut head, revision) = self.head(name).await?;
        head.pending = None;
        let txn = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&head));
        self.commit(txn).await
    }

    /// Removes everything a failed run made: the container, the records and the claims.
    pub(crate) async fn undo_run(&self, name: &str, id: &str, version: &Version) -> Result<()> {
        self.shared
            .runtime
            .remove_container(&version.container)
            .await?;
        if version.image == self.clone_base(id) {
            self.shared.runtime.remove_image(&version.image).await?;
        }
        let ports: Vec<u16> = version.ports.iter().map(|p| p.host_port).collect();
        let (head, _) = self.head(name).await?;
        let txn = self
            .release(Txn::new(), &head, &version.gpus, &ports)
            .delete(keys::replica_set(name))
            .delete(keys::current(name))
            .delete(keys::version(name, 1));
        self.commit(txn).await?;
        if let Err(e) = self.release_network(&head.owner).await {
            tracing::warn!(replica_set = %name, "network of {} not removed: {e}", head.owner);
        }
        Ok(())
    }

    /// The container a version of `owner`'s set `name` is (or was) made of: on the owner's
    /// network here, labelled with the owner and the network.
    pub fn container_spec(&self, owner: &str, name: &str, version: &Version) -> ContainerSpec {
        let network = self.network_for(owner, name);
        let mut labels = vec![
            (LABEL_REPLICA_SET, name.to_string()),
            (LABEL_VERSION, version.version.to_string()),
            (LABEL_OWNER, owner.to_string()),
        ];
        if let Some(network) = &network {
            labels.push((LABEL_NETWORK, network.name.clone()));
        }
        let mut env = version.spec.env.clone();
        env.retain(|e| !e.starts_with("CONTAINER_VERSION="));
        env.push(format!("CONTAINER_VERSION={}", version.version));
        ContainerSpec {
            name: version.container.clone(),
            image: version.image.clone(),
            env,
            cmd: version.spec.cmd.clone(),
            binds: version.spec.binds.clone(),
            ports: version.ports.clone(),
            gpus: version.gpus.clone(),
            gpu_attach: self.shared.config.gpu_attach,
            limits: version.limits,
            init: self.shared.config.resources.init,
            hardening: self.shared.config.hardening.clone(),
            labels: self.labels(&labels),
            network,
            rootfs_size: self.enforced_rootfs_size(),
        }
    }

    /// Stops the container, then releases the claims and records the stop.
    pub(crate) async fn finish_stop(&self, mut head: ReplicaSet) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        self.shared
            .runtime
            .stop_container(&container, self.shared.config.stop_timeout)
            .await?;
        failpoint("stop.stopped");
        let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
        let txn = self.release(Txn::new(), &head, &head.gpus, &ports);
        head.status = Status::Stopped;
        head.pending = None;
        self.commit(txn.put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Stops the container and records the pause.
    pub(crate) async fn finish_pause(&self, mut head: ReplicaSet) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        self.shared
            .runtime
            .stop_container(&container, self.shared.config.stop_timeout)
            .await?;
        failpoint("pause.stopped");
        head.status = Status::Paused;
        head.pending = None;
        self.commit(Txn::new().put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Starts the container and records it running; on failure puts the set back as it was
    /// (`before`), releasing claims taken again.
    pub(crate) async fn finish_resume(&self, mut head: ReplicaSet, before: Status) -> Result<()> {
        let container = crate::names::container(&head.name, head.current);
        let started = async {
            if self
                .shared
                .runtime
                .inspect_container(&container)
                .await?
                .is_none()
            {
                // It vanished outside the engine: make it again from its version record (from
                // the image it was created from; what it wrote since is gone with it).
                let version = self.version_record(&head.name, head.current).await?;
                tracing::warn!(%container, "container is gone; creating it again from its record");
                self.create_container(&self.container_spec(&head.owner, &head.name, &version))
                    .await?;
            }
            self.restart_container(&container, self.shared.config.stop_timeout)
                .await
        }
        .await;
        let reclaimed = matches!(head.pending, Some(Intent::Continue { reclaimed: true }));
        head.pending = None;
        if let Err(e) = started {
            head.status = before;
            let ports: Vec<u16> = head.ports.iter().map(|p| p.host_port).collect();
            let txn = if reclaimed {
                self.release(Txn::new(), &head, &head.gpus, &ports)
            } else {
                Txn::new()
            }
            .put(keys::replica_set(&head.name), encode(&head));
            self.commit(txn).await?;
            return Err(e);
        }
        failpoint("continue.started");
        self.commit(Txn::new().put(keys::replica_set(&head.name), encode(&head)))
            .await
    }

    /// Removes containers, then records and claims, then snapshots; safe to repeat.
    pub(crate) async fn finish_delete(&self, head: ReplicaSet) -> Result<()> {
        let name = head.name.clone();
        let versions: Vec<Version> = self.read_all(&keys::versions(&name)).await?;
        let label = format!("{LABEL_REPLICA_SET}={name}");
        for container in self.shared.runtime.list_containers(&label).await? {
            // Only this store's, and never one its records did not know at the start after
            // a restore (recovery reported it and left it alone).
            let ours = container.labels.get(LABEL_STORE) == self.shared.store_id.get();
            if ours && !self.marked_unknown(&container.name).await? {
                self.shared.runtime.remove_container(&container.id).await?;
            }
        }
        self.shared
            .runtime
            .remove_container(&crate::names::container(&name, head.current))
            .await?;
        failpoint("delete.containers_removed");
        // Release only claims this set holds: a stopped set's GPUs may be someone else's now.
        let gpu_holders = self.gpu_holders().await?;
        let port_holders = self.port_holders().await?;
        let gpus: Vec<String> = gpu_holders
            .into_iter()
            .filter(|(_, holder)| holder == &name)
            .map(|(gpu, _)| gpu)
            .collect();
        let ports: Vec<u16> = port_holders
            .into_iter()
            .filter(|(_, holder)| holder == &name)
            .map(|(port, _)| port)
            .collect();
        let txn = versions
            .iter()
            .fold(self.release(Txn::new(), &head, &gpus, &ports), |t, v| {
                t.delete(keys::version(&name, v.version))
            })
            .delete(keys::replica_set(&name))
            .delete(keys::current(&name))
            .delete(keys::rootfs(&name));
        self.commit(txn).await?;
        failpoint("delete.records_removed");
        // Newest first: a snapshot goes only once the snapshots built on it are gone.
        for snapshot in versions.iter().rev().filter_map(|v| v.snapshot.as_ref()) {
            self.shared.runtime.remove_image(snapshot).await?;
        }
        self.shared
            .runtime
            .remove_image(&self.clone_base(&head.image_id()))
            .await?;
        // The owner's network goes with their last container here (or at the next reconcile).
        if let Err(e) = self.release_network(&head.owner).await {
            tracing::warn!(replica_set = %name, "network of {} not removed: {e}", head.owner);
        }
        Ok(())
    }

    /// Makes the new version current and removes the old Docker volume.
    pub(crate) async fn complete_resize(
        &self,
        head: &mut Volume,
        old: &VolumeVersion,
    ) -> Result<()> {
        if let Some(intent) = head.pending.take() {
            head.current = intent.version;
        }
        self.commit(Txn::new().put(keys::volume(&head.name), encode(&*head)))
            .await?;
        if let Err(e) = self.shared.runtime.remove_volume(&old.docker_name).await {
            tracing::warn!(volume = %old.docker_name, "old volume not removed: {e}");
        }
        Ok(())
    }
}
