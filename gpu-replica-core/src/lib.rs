//! # gpu-replica-core
//!
//! Versioned GPU containers ("replicaSets") and versioned volumes on one GPU host, through the
//! Docker Engine API. Docker cannot change a container's GPUs or mounts after creation, so every
//! such change makes a new container **version** that inherits the old one's filesystem (by a
//! snapshot commit: the cost is what the container changed, not the image), keeps its volumes
//! and host ports, and can be rolled back to.
//!
//! An [`Engine`] is made of three trait objects: a [`ContainerRuntime`] (Docker via
//! [`DockerRuntime`]), a [`StateStore`] ([`RedbStore`] by default, [`MemoryStore`], or
//! `EtcdStore` with the `etcd` feature) and a [`GpuInventory`] ([`NvmlInventory`] or
//! [`StaticInventory`]). Frontends hold an `Arc<Engine>` and call its typed async methods.
//!
//! The engine [`Engine::new`] returns acts for the built-in admin. [`Engine::as_caller`] gives a
//! handle on the same engine acting for a user ([`Caller`]): they reach their own replicaSets and
//! volumes only (another user's answer as missing), within their [`Quota`], checked in the same
//! transaction as the claims. Users and their tokens live in the store ([`Engine::add_user`],
//! [`Engine::authenticate`]); GPU-time is recorded with every claim change and reported by
//! [`Engine::usage`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use gpu_replica_core::{DockerRuntime, Engine, EngineConfig, RedbStore, RunRequest, StaticInventory};
//!
//! # async fn demo() -> gpu_replica_core::Result<()> {
//! let engine = Engine::new(
//!     Arc::new(DockerRuntime::connect().await?),
//!     Arc::new(RedbStore::open("state.redb")?),
//!     Arc::new(StaticInventory::fake(4)),
//!     EngineConfig::default(),
//! );
//! let info = engine
//!     .run(RunRequest { name: "foo".into(), image: "ubuntu:22.04".into(), gpu_count: 2, ..Default::default() })
//!     .await?;
//! println!("{} holds {:?}", info.version.container, info.version.gpus);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod backup;
pub mod cluster;
mod engine;
mod error;

mod failpoint;
#[cfg(test)]
mod failure_tests;
pub mod gpu;
mod input;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod names;
pub mod network;
mod ops;
pub mod runtime;
pub mod sched;
pub mod screen;
mod size;
mod start;
mod steps;
pub mod store;
mod supervise;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use crate::cluster::{LinkRequest, Migration, NodeLink};
pub use crate::engine::events::{Event, KEEP_EVENTS};
pub use crate::engine::Recovery;
pub use crate::engine::{
    Caller, Clock, EngineConfig, Holdings, ManualClock, Quota, Role, SystemClock,
    LABEL_REPLICA_SET, LABEL_STORE, LABEL_VERSION, LABEL_VOLUME, OPERATOR,
};
pub use crate::error::{Error, Operation, Result};
pub use crate::failpoint::{FAILPOINTS, FAILPOINT_EXIT_CODE};
pub use crate::gpu::{GpuInfo, GpuInventory, NvmlInventory, StaticInventory};
pub use crate::limits::{parse_cpus, Limits, ResourcePolicy, RootfsPolicy};
pub use crate::model::{
    GpuStatus, Intent, Moving, NodePorts, PortStatus, ReplicaSet, ReplicaSetInfo, ReplicaSetSpec,
    RootfsUsage, Status, Timers, Version, Volume, VolumeInfo, VolumeIntent, VolumeVersion,
};
pub use crate::ops::clone::CloneRequest;
pub use crate::ops::drain::DRAIN_PARALLEL;
pub use crate::ops::files::{FileStat, Files};
pub use crate::ops::observe::Stats;
pub use crate::ops::proxy::{
    Admission, PortHere, ProxyGrant, ProxyTarget, ProxyTicket, SetService, PROXY_COOKIE_TTL,
    PROXY_LINK_TTL,
};
pub use crate::ops::resources::{DiskSpace, HELD_BY_ANOTHER};
pub use crate::ops::run::RunRequest;
pub use crate::ops::screen::{ScreenAttachment, ScreenEvent, ScreenRequest};
pub use crate::ops::shell::{Shell, ShellControl, ShellRequest};
pub use crate::ops::sshkeys::SshKey;
pub use crate::ops::timers::{parse_duration, parse_time};
pub use crate::ops::usage::{SetUsage, UsageQuery, UsageReport, UserUsage};
pub use crate::ops::users::{NewUser, Purged, QuotaChange, UserInfo};
pub use crate::ops::version::{BindSwap, PatchRequest};
pub use crate::ops::Engine;
pub use crate::runtime::{
    Bind, ContainerEvent, ContainerRuntime, ContainerStats, DockerRuntime, ExecOutput, GpuAttach,
    Hardening, LogStream, PathStat, PortMapping,
};
pub use crate::sched::PortRange;
pub use crate::screen::{ScreenPolicy, ScreenUpdate};
pub use crate::size::parse_size;
pub use crate::start::{EngineBuilder, Running, StartError};
pub use crate::store::{MemoryStore, RedbStore, StateStore};
pub use crate::supervise::reconcile::Reconciled;

#[cfg(feature = "etcd")]
pub use crate::store::{EtcdAccess, EtcdStore};
