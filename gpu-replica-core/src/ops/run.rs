//! Run: a new replicaSet at version 1, its GPUs and host ports claimed and recorded before
//! Docker is touched.

use std::collections::HashSet;

use crate::engine::check_name;
use crate::engine::events::describe_info;
use crate::error::{Error, Operation, Result};
use crate::failpoint::failpoint;
use crate::keys;
use crate::limits::Limits;
use crate::model::{ReplicaSetInfo, ReplicaSetSpec};
use crate::ops::Engine;
use crate::runtime::Bind;

/// A request to run a new replicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRequest {
    /// ReplicaSet name, `[A-Za-z0-9_.]+`.
    pub name: String,
    /// A local image (never pulled).
    pub image: String,
    /// GPUs wanted; 0 = cardless.
    pub gpu_count: i64,
    /// Mounts.
    pub binds: Vec<Bind>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Command replacing the image's.
    pub cmd: Option<Vec<String>>,
    /// Container ports to publish (`22`, `53/udp`).
    pub container_ports: Vec<String>,
    /// CPU, memory and shm wanted, within the share of `gpu_count` GPUs; what is not asked
    /// for gets the share.
    pub resources: Limits,
}

fn parse_container_port(port: &str) -> Result<String> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|p| p > 0);
    if !valid_number || !["tcp", "udp", "sctp"].contains(&protocol) {
        return Err(Error::InvalidParams(format!(
            "container port '{port}' is not a port number (1-65535) with an optional /tcp or /udp"
        )));
    }
    Ok(format!("{number}/{protocol}"))
}

impl Engine {
    /// Creates replicaSet `name` at version 1 and starts it.
    pub async fn run(&self, request: RunRequest) -> Result<ReplicaSetInfo> {
        let name = request.name.clone();
        self.ctx
            .recorded("run", &name, describe_info, self.run_set(request))
            .await
    }

    async fn run_set(&self, request: RunRequest) -> Result<ReplicaSetInfo> {
        let RunRequest {
            name,
            image,
            gpu_count,
            binds,
            env,
            cmd,
            container_ports,
            resources,
        } = request;
        check_name(&name, Error::NameEmpty, Error::NameHasDash)?;
        if image.trim().is_empty() {
            return Err(Error::ImageNameEmpty);
        }
        if gpu_count < 0 {
            return Err(Error::NegativeGpuCount(gpu_count));
        }
        for (i, entry) in env.iter().enumerate() {
            crate::input::env_entry(i, entry)?;
        }
        self.ctx.check_env_for_toolkit(&env)?;
        if let Some(cmd) = &cmd {
            if cmd.first().is_none_or(String::is_empty) {
                return Err(Error::InvalidParams(
                    "cmd, when given, must name a program".into(),
                ));
            }
            crate::input::os_strings("cmd", cmd)?;
        }
        // `22` and `22/tcp` are one port: published once, in the order first given.
        let mut seen = HashSet::new();
        let container_ports = container_ports
            .iter()
            .map(|p| parse_container_port(p))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect::<Vec<_>>();
        self.ctx
            .shared
            .config
            .resources
            .grant(gpu_count as u32, &resources)?;
        self.refuse_if_cordoned().await?;
        let _guard = self.ctx.lock_set(&name).await;
        self.ctx.settle(&name).await?;
        if self
            .ctx
            .shared
            .store
            .get(&keys::replica_set(&name))
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(name));
        }
        let mut checked = Vec::with_capacity(binds.len());
        for bind in &binds {
            checked.push(self.ctx.check_bind(bind).await?);
        }
        let binds = checked;
        self.check_image(&image).await?;
        let spec = ReplicaSetSpec {
            image: image.clone(),
            gpu_count: gpu_count as u32,
            binds,
            env,
            cmd,
            container_ports,
            resources,
        };
        let id = crate::names::new_id()?;
        let version = self
            .ctx
            .claim_first_version(&name, &id, spec, &image)
            .await?;
        failpoint("run.recorded");
        let container = self
            .ctx
            .container_spec(&self.ctx.caller.name, &name, &version);
        let started = async {
            self.ctx.create_container(&container).await?;
            failpoint("run.created");
            self.ctx.finish_run(&name).await
        }
        .await;
        if let Err(e) = started {
            self.ctx.undo_run(&name, &id, &version).await?;
            return Err(e.during(Operation::Run));
        }
        self.info(&name).await
    }
}

impl Engine {
    /// Checks that `image` is a Docker image reference present on this host (never pulled):
    /// 1000 for a malformed one, 1036 for a missing one.
    pub(crate) async fn check_image(&self, image: &str) -> Result<()> {
        if !crate::names::is_image_reference(image) {
            return Err(Error::InvalidParams(format!(
                "imageName '{image}' is not a Docker image reference (lowercase repository, optional :tag)"
            )));
        }
        if self
            .ctx
            .shared
            .runtime
            .inspect_image(image)
            .await?
            .is_none()
        {
            return Err(Error::ImageNotFound(image.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_given_twice_is_published_once() {
        let mut runtime = crate::runtime::MockContainerRuntime::new();
        runtime.expect_inspect_image().returning(|_| Ok(None));
        let engine = crate::ops::Engine::new(
            std::sync::Arc::new(runtime),
            std::sync::Arc::new(crate::store::MemoryStore::new()),
            std::sync::Arc::new(crate::gpu::StaticInventory::fake(0)),
            Default::default(),
        );
        // Refused later for the image (the mock knows none), not for the ports.
        let error = engine
            .run(RunRequest {
                name: "p".into(),
                image: "img".into(),
                container_ports: vec!["22".into(), "22/tcp".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), 1036, "{error}");
    }

    #[test]
    fn container_ports_take_an_optional_protocol() {
        assert_eq!(parse_container_port("22").unwrap(), "22/tcp");
        assert_eq!(parse_container_port("53/udp").unwrap(), "53/udp");
        for bad in ["0", "70000", "ssh", "22/xyz", ""] {
            assert_eq!(parse_container_port(bad).unwrap_err().code(), 1000, "{bad}");
        }
    }
}
