//! The container runtime: what the engine needs from Docker, named for what it means.
//!
//! [`DockerRuntime`] is the real implementation (bollard, over `DOCKER_HOST` or the local
//! socket). Types here are the engine's own, so the engine never sees a bollard type and a mock
//! runtime stays small.

pub(crate) mod docker;
mod tar_size;

pub use self::docker::DockerRuntime;

/// Label on the helper containers that move volume data (its value: the Docker volume written)
/// and on the empty image they run.
pub const HELPER_LABEL: &str = "io.gpu-replica.helper";

/// How Docker sees a container spec: the create request's container config, host config and
/// networking config, as JSON in Docker's own field names (what the contract's info shows).
#[derive(Debug, Clone, PartialEq)]
pub struct DockerView {
    /// The container config (`Image`, `Env`, `Cmd`, `ExposedPorts`, `Tty`, …).
    pub config: serde_json::Value,
    /// The host config (`Binds`, `PortBindings`, `DeviceRequests`, `RestartPolicy`, …).
    pub host_config: serde_json::Value,
    /// The networking config (null: Docker's default network).
    pub networking_config: serde_json::Value,
}

impl ContainerSpec {
    /// The create request Docker gets for this spec, in Docker's words.
    pub fn docker_view(&self) -> DockerView {
        let mut body = docker::create_body(self);
        let host_config = body.host_config.take();
        let networking_config = body.networking_config.take();
        let json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
        DockerView {
            config: json(serde_json::to_value(&body)),
            host_config: json(serde_json::to_value(&host_config)),
            networking_config: json(serde_json::to_value(&networking_config)),
        }
    }
}

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::limits::Limits;

/// A container's log output as it arrives: chunks of bytes, stdout and stderr interleaved.
pub type LogStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>;

/// An image as a `docker save` tar archive (layers, config and tags), as it streams.
pub type ImageStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>;

/// How a container is given its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GpuAttach {
    /// Docker device requests, driver `nvidia`, device IDs = GPU UUIDs (as gpu-docker-api).
    #[default]
    DeviceRequests,
    /// Container Device Interface names `nvidia.com/gpu=<uuid>`.
    Cdi,
    /// Only `NVIDIA_VISIBLE_DEVICES`: for an nvidia default runtime, and for fake GPUs.
    Env,
}

impl std::str::FromStr for GpuAttach {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<GpuAttach> {
        match s {
            "device-requests" => Ok(GpuAttach::DeviceRequests),
            "cdi" => Ok(GpuAttach::Cdi),
            "env" => Ok(GpuAttach::Env),
            other => Err(crate::error::Error::InvalidParams(format!(
                "gpu attach mode '{other}' is not device-requests, cdi or env"
            ))),
        }
    }
}

/// A container port published on a host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port inside the container with its protocol, `22/tcp`.
    pub container_port: String,
    /// Port on the host.
    pub host_port: u16,
}

/// A mount: a Docker volume (name) or a host path (absolute) at `dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Volume name, or an absolute host path.
    pub src: String,
    /// Absolute path inside the container.
    pub dest: String,
}

impl Bind {
    /// Whether the source is a host path rather than a volume.
    pub fn is_host_path(&self) -> bool {
        self.src.starts_with('/')
    }
}

/// What a container may not do, whatever its request says (it is never privileged and never
/// shares a host namespace either). The default is least privilege; an operator relaxes one
/// wall at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hardening {
    /// `no-new-privileges`: a setuid binary (`sudo`, `ping` on old images) gains nothing.
    pub no_new_privileges: bool,
    /// Capabilities dropped from Docker's default set.
    pub drop_capabilities: Vec<String>,
    /// Processes (and threads) one container may have; `None`: no limit.
    pub pids_limit: Option<u64>,
    /// Open files per process (soft and hard); `None`: Docker's default. It may lower the
    /// daemon's own limit, never raise it (runc refuses: "error setting rlimit").
    pub open_files: Option<u64>,
}

/// Capabilities dropped by default: raw sockets (packet and ARP spoofing on a shared bridge)
/// and device nodes.
pub const DROPPED_CAPABILITIES: &[&str] = &["NET_RAW", "MKNOD"];

impl Default for Hardening {
    fn default() -> Hardening {
        Hardening {
            no_new_privileges: true,
            drop_capabilities: DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            pids_limit: Some(4096),
            open_files: Some(16384),
        }
    }
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// Container name, `{replicaSet}-{version}`.
    pub name: String,
    /// Image (or snapshot image) to create it from.
    pub image: String,
    /// `KEY=value` environment, on top of the image's.
    pub env: Vec<String>,
    /// Command replacing the image's, if any.
    pub cmd: Option<Vec<String>>,
    /// Mounts.
    pub binds: Vec<Bind>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// GPU UUIDs to attach.
    pub gpus: Vec<String>,
    /// How to attach them.
    pub gpu_attach: GpuAttach,
    /// Labels to set.
    pub labels: BTreeMap<String, String>,
    /// CPU, memory and shm limits.
    pub limits: Limits,
    /// Whether an init process (tini) runs as PID 1.
    pub init: bool,
    /// What the container may not do.
    pub hardening: Hardening,
    /// The network it joins (`None`: Docker's default bridge).
    pub network: Option<ContainerNetwork>,
    /// Bytes it may write on top of its image, enforced by the storage driver (`None`: no
    /// enforced size; give one only where [`ContainerRuntime::rootfs_support`] says so). On
    /// drivers that bound the whole root filesystem (btrfs, zfs, devicemapper) the runtime
    /// adds the image's size.
    pub rootfs_size: Option<u64>,
}

/// Whether the storage driver enforces a size on containers' writable layers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootfsSupport {
    /// Docker's storage driver (`overlay2`, `btrfs`, `fuse-overlayfs`, …).
    pub driver: String,
    /// Whether a container created with a size gets it enforced.
    pub enforced: bool,
    /// Why not, in Docker's words, when it is not.
    pub reason: Option<String>,
}

/// A user-defined network a container joins, with the names it answers to there.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerNetwork {
    /// The network's name.
    pub name: String,
    /// DNS names the container has on it besides its own (its set's name).
    pub aliases: Vec<String>,
}

/// What Docker says about a network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkState {
    /// Network ID.
    pub id: String,
    /// Its name (older Docker allows two networks of one name).
    pub name: String,
    /// Its IPv4 subnets, `a.b.c.d/p`.
    pub subnets: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// How a network create went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCreated {
    /// Made, with this ID.
    Created(String),
    /// Another network already has the subnet (or overlaps it): nothing was made.
    SubnetTaken,
}

/// What Docker says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container ID.
    pub id: String,
    /// Name without the leading '/'.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Whether it runs now.
    pub running: bool,
    /// Docker's status word (created, running, exited, …).
    pub status: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its environment, `KEY=value` (empty in listings).
    pub env: Vec<String>,
    /// Its CPU, memory and shm limits (default in listings).
    pub limits: Limits,
    /// Whether it runs an init process (false in listings).
    pub init: bool,
    /// When it was created, microseconds since the epoch (0 when unknown; to the second in
    /// listings, exact from an inspect).
    pub created: i64,
}

/// Live figures of one running container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// CPU use over the last sampling interval, in percent of one CPU (200 = two CPUs busy).
    pub cpu_percent: f64,
    /// Memory in use, bytes (page cache excluded, as `docker stats` shows it).
    pub memory_used: u64,
    /// Memory limit, bytes (the host's memory when unlimited).
    pub memory_limit: u64,
    /// Bytes received over all networks.
    pub net_rx: u64,
    /// Bytes sent over all networks.
    pub net_tx: u64,
    /// Processes and threads in the container.
    pub pids: u64,
}

/// Output of a command run in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// stdout and stderr, interleaved as produced.
    pub output: String,
    /// The command's exit code.
    pub exit_code: i64,
}

/// A program to run in a container with its input and output attached: a shell, an editor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// The program and its arguments (no shell around them).
    pub argv: Vec<String>,
    /// `KEY=value` on top of the container's environment.
    pub env: Vec<String>,
    /// Working directory (`None`: the container's).
    pub workdir: Option<String>,
    /// User to run as, `name` or `uid[:gid]` (`None`: the container's).
    pub user: Option<String>,
    /// A terminal of (rows, columns); `None`: plain pipes.
    pub tty: Option<(u16, u16)>,
    /// Without a terminal, standard error apart ([`ExecSession::errors`]) instead of
    /// interleaved with the output.
    pub separate_stderr: bool,
}

/// A program running in a container with its streams attached ([`ContainerRuntime::exec_start`]).
pub struct ExecSession {
    /// Docker's ID of the exec: resize it, read its exit code.
    pub id: String,
    /// Its standard input; shutting it down sends end-of-file.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// What it writes, stdout and stderr interleaved (only stdout when
    /// [`ExecRequest::separate_stderr`]), until it exits.
    pub output: futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>,
    /// Its standard error, when asked for apart.
    pub errors: Option<futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").field("id", &self.id).finish()
    }
}

/// What Docker's archive API says of one path in a container (`lstat` of its last component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStat {
    /// The last component of the path.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix `st_mode`: the file type bits and the permission bits.
    pub mode: u32,
    /// Last modification, seconds since the epoch.
    pub mtime: i64,
    /// Where a symbolic link points; empty for anything else.
    pub link_target: String,
}

/// What Docker says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    /// Image ID.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Number of filesystem layers.
    pub layers: usize,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What Docker says about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    /// Volume name.
    pub name: String,
    /// Driver name.
    pub driver: String,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A container's lifecycle as Docker reports it, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Container name.
    pub container: String,
    /// What happened: `start`, `die`, `stop`, `destroy`.
    pub action: String,
    /// The container's labels.
    pub labels: BTreeMap<String, String>,
}

/// Container events, until Docker goes away (the stream then ends or yields an error).
pub type ContainerEventStream = futures_util::stream::BoxStream<'static, Result<ContainerEvent>>;

/// The Docker operations the engine is built on.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// The engine's version, for the startup summary.
    async fn version(&self) -> Result<String>;

    /// Creates a container (not started); returns its ID.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String>;
    /// Starts a created or stopped container.
    async fn start_container(&self, name: &str) -> Result<()>;
    /// Stops a container, killing it after `grace`; a stopped one is left as is.
    async fn stop_container(&self, name: &str, grace: Duration) -> Result<()>;
    /// Restarts a container (stopping it first with `grace`); starts a stopped one.
    async fn restart_container(&self, name: &str, grace: Duration) -> Result<()>;
    /// Removes a container and its anonymous volumes, stopping it first; absent is fine.
    async fn remove_container(&self, name: &str) -> Result<()>;
    /// Inspects a container; `None` when it does not exist.
    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerState>>;
    /// Containers carrying label `key` (any value), running or not.
    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>>;
    /// The container's log: the last `tail` lines (all when `None`), then, with `follow`, what
    /// it writes until it stops.
    async fn logs(&self, name: &str, tail: Option<u64>, follow: bool) -> Result<LogStream>;
    /// CPU, memory, network and process figures of a running container.
    async fn stats(&self, name: &str) -> Result<ContainerStats>;
    /// Runs `argv` (no shell) in a running container, in `workdir` if given.
    async fn exec(
        &self,
        name: &str,
        argv: &[String],
        workdir: Option<String>,
    ) -> Result<ExecOutput>;

    /// Starts `request` in running container `name` with its input and output attached.
    async fn exec_start(&self, name: &str, request: &ExecRequest) -> Result<ExecSession>;
    /// Gives exec `id`'s terminal `rows` × `cols`.
    async fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<()>;
    /// Exec `id`'s exit code once it has ended; `None` while it runs.
    async fn exec_exit_code(&self, id: &str) -> Result<Option<i64>>;
    /// The host's process id of exec `id` while it runs; `None` once it has ended.
    async fn exec_pid(&self, id: &str) -> Result<Option<u32>>;

    /// Commits a container's filesystem to image `image` (`repo:tag`) with extra labels;
    /// returns the image ID. The container's config becomes the image's config.
    async fn commit(
        &self,
        container: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String>;
    /// Like [`ContainerRuntime::commit`], but writes the whole filesystem as one layer (export
    /// and import), keeping the config; for chains that near the layer limit.
    async fn commit_flattened(
        &self,
        container: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String>;
    /// Gives image `source` the extra reference `target` (`repo:tag`).
    async fn tag_image(&self, source: &str, target: &str) -> Result<()>;
    /// Image `image` as a `docker save` archive, streamed: what another engine loads (a set's
    /// filesystem moving between hosts without a registry). Missing image: `ImageNotFound`.
    async fn save_image(&self, image: &str) -> Result<ImageStream>;
    /// Loads a `docker save` archive (`docker load`): the images in it, with their tags.
    async fn load_image(&self, archive: ImageStream) -> Result<()>;
    /// The files under `path` in container `name` (running or not, its volumes included), as
    /// a tar archive whose top entry is `path`'s last component (`docker cp NAME:PATH -`).
    async fn download_path(&self, name: &str, path: &str) -> Result<ImageStream>;
    /// Extracts tar `archive` into directory `dir` of container `name` (running or not, into
    /// its volumes where they are mounted): `docker cp - NAME:DIR`.
    async fn upload_path(&self, name: &str, dir: &str, archive: ImageStream) -> Result<()>;
    /// As [`ContainerRuntime::upload_path`], the files owned by the container's own user
    /// (Docker's `copyUIDGID`): what a user copies in is theirs to change.
    async fn upload_as_user(&self, name: &str, dir: &str, archive: ImageStream) -> Result<()>;
    /// What is at `path` in container `name`; `None` when nothing is.
    async fn path_stat(&self, name: &str, path: &str) -> Result<Option<PathStat>>;
    /// A TCP connection to `port` of running container `name` as its own programs reach it:
    /// on its loopback (entering its network namespace, which needs root), else on its
    /// address in its network.
    async fn connect_port(&self, name: &str, port: u16) -> Result<tokio::net::TcpStream>;
    /// The TCP ports a program of running container `name` listens on (any address of its
    /// network namespace, loopback included), ascending, each once.
    async fn listening_ports(&self, name: &str) -> Result<Vec<u16>>;
    /// Inspects an image; `None` when it is not present.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageState>>;
    /// Images carrying label `key` (any value).
    async fn list_images(&self, label: &str) -> Result<Vec<ImageState>>;
    /// Removes an image reference (untags it; the data goes when nothing else uses it);
    /// absent is fine.
    async fn remove_image(&self, image: &str) -> Result<()>;

    /// Creates a volume of the local driver, asking for `size` bytes when given. Returns whether
    /// the size is enforced (the local driver enforces it only on XFS with project quotas).
    async fn create_volume(
        &self,
        name: &str,
        size: Option<u64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool>;
    /// Inspects a volume; `None` when it does not exist.
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeState>>;
    /// Volumes carrying label `key` (any value).
    async fn list_volumes(&self, label: &str) -> Result<Vec<VolumeState>>;
    /// Bytes of file data in a volume.
    async fn volume_used_bytes(&self, name: &str) -> Result<u64>;
    /// Copies everything in volume `from` into volume `to`, through the Docker API.
    async fn copy_volume(&self, from: &str, to: &str) -> Result<()>;
    /// Removes a volume; absent is fine, in use is an error.
    async fn remove_volume(&self, name: &str) -> Result<()>;

    /// Whether containers created with a writable-layer size of `size` bytes get it enforced
    /// (overlay2 on xfs with `pquota`, btrfs, zfs, devicemapper); found by trying.
    async fn rootfs_support(&self, size: u64) -> Result<RootfsSupport>;
    /// The size of the writable layer of each container carrying `label`, by name: what
    /// `docker ps --size` shows, which Docker finds by walking each layer (costly: call it
    /// from a periodic pass, not per request).
    async fn rootfs_sizes(&self, label: &str) -> Result<BTreeMap<String, u64>>;

    /// Creates a bridge network `name` on IPv4 subnet `subnet` with `labels`. Older Docker
    /// makes a second network of a name already taken: callers look first.
    async fn create_network(
        &self,
        name: &str,
        subnet: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<NetworkCreated>;
    /// The networks named exactly `name` (none, one, or more on older Docker).
    async fn find_networks(&self, name: &str) -> Result<Vec<NetworkState>>;
    /// Networks carrying label `key` (any value), or `key=value`.
    async fn list_networks(&self, label: &str) -> Result<Vec<NetworkState>>;
    /// Removes network `id`; absent is fine. Returns false when a running container still
    /// uses it (and leaves it).
    async fn remove_network(&self, id: &str) -> Result<bool>;
    /// Attaches container `container` (not running) to network `network` afresh, with
    /// `aliases`: what it was attached to under that name (a network since removed) is
    /// dropped first.
    async fn reattach_network(&self, container: &str, network: &ContainerNetwork) -> Result<()>;

    /// Start, die, stop and destroy events of containers carrying `label` (`key=value`), from
    /// now on.
    async fn container_events(&self, label: &str) -> Result<ContainerEventStream>;
}
