//! The one error type of the core, and the contract codes each variant maps to.
//!
//! User mistakes get their own variant (and their own code); failures of Docker or the store
//! during an operation are wrapped by [`Error::during`] into [`Error::Failed`], which carries the
//! operation so the HTTP layer can answer with the contract's "X failed" code.

use std::fmt;

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation a failure happened in; picks the contract's "failed" code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Run a new replicaSet.
    Run,
    /// Delete a replicaSet.
    Delete,
    /// Execute a command.
    Exec,
    /// Patch a replicaSet.
    Patch,
    /// Stop a replicaSet.
    Stop,
    /// Restart a replicaSet.
    Restart,
    /// Commit a replicaSet's container to an image.
    Commit,
    /// Read a replicaSet's current version.
    Info,
    /// Read a replicaSet's history.
    History,
    /// Pause a replicaSet.
    Pause,
    /// Continue a paused or stopped replicaSet.
    Continue,
    /// Roll back to an earlier version.
    Rollback,
    /// Create a volume.
    VolumeCreate,
    /// Delete a volume.
    VolumeDelete,
    /// Read a volume's current version.
    VolumeInfo,
    /// Read a volume's history.
    VolumeHistory,
    /// Resize a volume.
    VolumeResize,
    /// Read GPU or port status, or list objects.
    Status,
    /// Clone a replicaSet into a new one.
    Clone,
    /// Read a container's logs or live statistics.
    Logs,
    /// Move a replicaSet to another node of the cluster.
    Migrate,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 21] = [
        Operation::Run,
        Operation::Delete,
        Operation::Exec,
        Operation::Patch,
        Operation::Stop,
        Operation::Restart,
        Operation::Commit,
        Operation::Info,
        Operation::History,
        Operation::Pause,
        Operation::Continue,
        Operation::Rollback,
        Operation::VolumeCreate,
        Operation::VolumeDelete,
        Operation::VolumeInfo,
        Operation::VolumeHistory,
        Operation::VolumeResize,
        Operation::Status,
        Operation::Clone,
        Operation::Logs,
        Operation::Migrate,
    ];

    /// The contract code for "this operation failed".
    pub fn failure_code(self) -> u16 {
        match self {
            Operation::Run => 1004,
            Operation::Delete => 1005,
            Operation::Exec => 1006,
            Operation::Patch => 1007,
            Operation::Stop => 1010,
            Operation::Restart => 1011,
            Operation::Commit => 1015,
            Operation::Info => 1016,
            Operation::History => 1017,
            Operation::Pause => 1018,
            Operation::Continue => 1019,
            Operation::Rollback => 1021,
            Operation::VolumeCreate => 1023,
            Operation::VolumeDelete => 1025,
            Operation::VolumeInfo => 1033,
            Operation::VolumeHistory => 1034,
            Operation::VolumeResize => 1035,
            Operation::Status => 500,
            Operation::Clone => 1044,
            Operation::Logs => 1045,
            Operation::Migrate => 1056,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            Operation::Run => "run",
            Operation::Delete => "delete",
            Operation::Exec => "execute",
            Operation::Patch => "patch",
            Operation::Stop => "stop",
            Operation::Restart => "restart",
            Operation::Commit => "commit",
            Operation::Info => "info",
            Operation::History => "history",
            Operation::Pause => "pause",
            Operation::Continue => "continue",
            Operation::Rollback => "rollback",
            Operation::VolumeCreate => "volume create",
            Operation::VolumeDelete => "volume delete",
            Operation::VolumeInfo => "volume info",
            Operation::VolumeHistory => "volume history",
            Operation::VolumeResize => "volume resize",
            Operation::Status => "status",
            Operation::Clone => "clone",
            Operation::Logs => "logs",
            Operation::Migrate => "migrate",
        };
        f.write_str(word)
    }
}

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed.
    #[error("invalid request: {0}")]
    InvalidParams(String),
    /// `imageName` is empty.
    #[error("image name must not be empty")]
    ImageNameEmpty,
    /// A stop time that has already passed: well formed, but the clock has moved on.
    #[error("invalid request: stop time {0} is not in the future")]
    StopTimePast(String),
    /// The replicaSet name is empty.
    #[error("replicaSet name must not be empty")]
    NameEmpty,
    /// The replicaSet name contains '-', which separates the version.
    #[error("replicaSet name '{0}' must not contain '-' (it separates the version)")]
    NameHasDash(String),
    /// A replicaSet of that name already exists.
    #[error("replicaSet '{0}' already exists")]
    AlreadyExists(String),
    /// The patch changes nothing that needs a new version.
    #[error("nothing to patch: {0}")]
    NoNeedPatch(String),
    /// A negative GPU count was asked for.
    #[error("gpu count must not be negative (got {0})")]
    NegativeGpuCount(i64),
    /// Fewer GPUs are free than asked for.
    #[error("not enough GPUs: asked for {wanted}, {free} free of {total}")]
    NotEnoughGpus {
        /// GPUs asked for.
        wanted: usize,
        /// GPUs free now.
        free: usize,
        /// GPUs on the host.
        total: usize,
    },
    /// The set's writable layer is over its limit, where the storage driver cannot enforce it:
    /// a patch or commit would carry it into a snapshot. The container runs on.
    #[error("over the disk limit: {0}")]
    OverDisk(String),
    /// The operator's network pool has no subnet left for another owner's network.
    #[error("no network: {0}")]
    NetworkPoolFull(String),
    /// No SSH public key of that fingerprint for that user.
    #[error("SSH key not found: {0}")]
    KeyNotFound(String),
    /// The SSH public key is another user's (a key lets one person in).
    #[error("SSH key taken: {0}")]
    KeyTaken(String),
    /// Fewer host ports are free than asked for.
    #[error("not enough free host ports in {range}: asked for {wanted}")]
    NotEnoughPorts {
        /// Ports asked for.
        wanted: usize,
        /// The configured range.
        range: String,
    },
    /// No replicaSet of that name.
    #[error("replicaSet '{0}' not found")]
    NotFound(String),
    /// A negative version was asked for.
    #[error("version must not be negative (got {0})")]
    NegativeVersion(i64),
    /// Rollback to the version that is already current.
    #[error("version {0} is already the current version")]
    NoNeedRollback(u32),
    /// The volume name is empty.
    #[error("volume name must not be empty")]
    VolumeNameEmpty,
    /// A volume of that name already exists.
    #[error("volume '{0}' already exists")]
    VolumeExists(String),
    /// Resize to the size the volume already has.
    #[error("volume '{0}' already has size {1}")]
    VolumeSameSize(String, String),
    /// A size string with an unknown unit.
    #[error("size '{0}' not understood: use a number with KB, MB, GB or TB (for example 20GB)")]
    SizeUnit(String),
    /// Shrinking below the data the volume holds.
    #[error("volume '{name}' holds {used} bytes, more than the requested {requested} bytes")]
    ShrinkBelowUsage {
        /// Volume name.
        name: String,
        /// Bytes in use.
        used: u64,
        /// Bytes asked for.
        requested: u64,
    },
    /// The volume name contains '-'.
    #[error("volume name '{0}' must not contain '-' (it separates the version)")]
    VolumeNameHasDash(String),
    /// The volume name begins with '/'.
    #[error("volume name '{0}' must not begin with '/'")]
    VolumeNameSlash(String),
    /// No volume of that name.
    #[error("volume '{0}' not found")]
    VolumeNotFound(String),
    /// The image is not present locally (it is never pulled).
    #[error(
        "image '{0}' is not present on this host; load or build it first (images are never pulled)"
    )]
    ImageNotFound(String),
    /// A bind mount the operator's policy does not allow.
    #[error("bind refused: {0}")]
    BindRefused(String),
    /// Resources asked beyond the share the GPU count gives.
    #[error("over the share: {0}")]
    OverShare(String),
    /// A GPU inventory could not be read.
    #[error("GPU inventory: {0}")]
    Gpu(String),
    /// The Docker engine answered with an error or could not be reached.
    #[error("docker: {0}")]
    Docker(String),
    /// The state store answered with an error.
    #[error("state store: {0}")]
    Store(String),
    /// The state store's disk is full: nothing was written; reads still work, and writes do
    /// again once there is room.
    #[error("the state store's disk is full ({0}); nothing was changed: make room and retry")]
    StoreFull(String),
    /// Docker's disk (its data root) is full: the operation was undone, the set is back on
    /// its old version; it works again once there is room.
    #[error("Docker's disk is full: {0}; make room there and retry")]
    DockerDiskFull(String),
    /// Another request (of this engine or of another engine on the same store) changed the
    /// same records first; nothing of this request was kept, try again.
    #[error("conflict: {0}; nothing was changed, try again")]
    Conflict(String),
    /// The container is not running (Docker refused to act on it).
    #[error("container not running: {0}")]
    NotRunning(String),
    /// A request without a valid token: the server's own, or a user's.
    #[error("missing or wrong token: send Authorization: Bearer <token> (gpu-replica --token)")]
    Unauthorized,
    /// The owner's quota does not allow it; nothing was created or claimed.
    #[error("over quota: {0}")]
    QuotaExceeded(String),
    /// Only an admin may do this.
    #[error("only an admin may do this: {0}")]
    AdminOnly(String),
    /// Too many failed sign-ins from this address; wait a moment.
    #[error("too many failed authentications from this address; wait a second and try again")]
    TooManyAttempts,
    /// No user of that name.
    #[error("user '{0}' not found")]
    UserNotFound(String),
    /// A user of that name already exists.
    #[error("user '{0}' already exists")]
    UserExists(String),
    /// The user still owns replicaSets or volumes.
    #[error("user not removed: {0}")]
    UserOwnsObjects(String),
    /// The set lives on a cluster node that stopped renewing its lease.
    #[error("node '{0}' is lost (it stopped renewing its lease); its sets answer when it is back, nothing was changed")]
    NodeLost(String),
    /// A migration without `moveVolumes` of a set that mounts volumes (their data would stay
    /// behind).
    #[error("{0}")]
    VolumesNotMoved(String),
    /// No node of that name in the cluster.
    #[error("no node named '{0}' in the cluster")]
    NodeNotFound(String),
    /// The node is cordoned: it takes no new sets (uncordon it first, or let placement pick
    /// another).
    #[error("node '{0}' is cordoned: it takes no new sets (gpu-replica node uncordon {0}, or leave the node to placement)")]
    NodeCordoned(String),
    /// Docker or the state store cannot be reached now; nothing was changed, try again.
    #[error("{0} is unreachable; nothing was changed, try again when it is back")]
    Unavailable(String),
    /// An operation cannot be done in the object's present state (a stopped set, GPUs now
    /// held by another, a volume still mounted); the user can act on the reason.
    #[error("{op} refused: {reason}")]
    Refused {
        /// The operation.
        op: Operation,
        /// Why, and what to do instead.
        reason: String,
    },
    /// An operation failed for a reason that is not the user's input.
    #[error("{op} failed: {reason}")]
    Failed {
        /// The operation.
        op: Operation,
        /// What went wrong, in words.
        reason: String,
    },
}

impl Error {
    /// The gpu-docker-api contract code for this error (new cases from 1036 on).
    pub fn code(&self) -> u16 {
        match self {
            Error::InvalidParams(_) | Error::StopTimePast(_) => 1000,
            Error::ImageNameEmpty => 1001,
            Error::NameEmpty => 1002,
            Error::NameHasDash(_) => 1003,
            Error::AlreadyExists(_) => 1008,
            Error::NoNeedPatch(_) => 1009,
            Error::NegativeGpuCount(_) => 1012,
            Error::NotEnoughGpus { .. } => 1013,
            Error::NotEnoughPorts { .. } => 1014,
            Error::NotFound(_) => 1016,
            Error::NegativeVersion(_) => 1020,
            Error::NoNeedRollback(_) => 1022,
            Error::VolumeNameEmpty => 1024,
            Error::VolumeExists(_) => 1026,
            Error::VolumeSameSize(..) => 1028,
            Error::SizeUnit(_) => 1029,
            Error::ShrinkBelowUsage { .. } => 1030,
            Error::VolumeNameHasDash(_) => 1031,
            Error::VolumeNameSlash(_) => 1032,
            Error::VolumeNotFound(_) => 1033,
            Error::ImageNotFound(_) => 1036,
            Error::BindRefused(_) => 1037,
            Error::OverShare(_) => 1043,
            Error::Gpu(_) => 1038,
            Error::Docker(_) => 1039,
            Error::Store(_) => 1040,
            Error::Unavailable(_) => 1041,
            Error::Unauthorized => 1042,
            Error::Conflict(_) => 1046,
            Error::NotRunning(_) => 1047,
            Error::QuotaExceeded(_) => 1048,
            Error::AdminOnly(_) => 1049,
            Error::TooManyAttempts => 1050,
            Error::UserNotFound(_) => 1051,
            Error::UserExists(_) => 1052,
            Error::UserOwnsObjects(_) => 1053,
            Error::NodeLost(_) => 1054,
            Error::VolumesNotMoved(_) => 1055,
            Error::NodeNotFound(_) => 1057,
            Error::NetworkPoolFull(_) => 1058,
            Error::OverDisk(_) => 1059,
            Error::KeyNotFound(_) => 1060,
            Error::KeyTaken(_) => 1061,
            Error::StoreFull(_) => 1062,
            Error::DockerDiskFull(_) => 1063,
            Error::NodeCordoned(_) => 1064,
            Error::Failed { op, .. } | Error::Refused { op, .. } => op.failure_code(),
        }
    }

    /// What the code of this kind of error means, in a few words (the OpenAPI document's list
    /// of codes is made of these).
    pub fn summary(&self) -> &'static str {
        match self {
            Error::InvalidParams(_) => "invalid params",
            Error::StopTimePast(_) => "invalid params: a stop time already past",
            Error::ImageNameEmpty => "image name empty",
            Error::NameEmpty => "replicaSet name empty",
            Error::NameHasDash(_) => "replicaSet name contains '-'",
            Error::AlreadyExists(_) => "replicaSet already exists",
            Error::NoNeedPatch(_) => "no need to patch",
            Error::NegativeGpuCount(_) => "gpu count < 0",
            Error::NotEnoughGpus { .. } => "not enough GPUs",
            Error::NotEnoughPorts { .. } => "not enough ports",
            Error::NotFound(_) => "replicaSet not found",
            Error::NegativeVersion(_) => "version < 0",
            Error::NoNeedRollback(_) => "no need to roll back",
            Error::VolumeNameEmpty => "volume name empty",
            Error::VolumeExists(_) => "volume exists",
            Error::VolumeSameSize(..) => "volume already has that size",
            Error::SizeUnit(_) => "size unit not KB/MB/GB/TB",
            Error::ShrinkBelowUsage { .. } => "used bytes exceed the new size",
            Error::VolumeNameHasDash(_) => "volume name contains '-'",
            Error::VolumeNameSlash(_) => "volume name begins with '/'",
            Error::VolumeNotFound(_) => "volume not found",
            Error::ImageNotFound(_) => "image not present locally (never pulled)",
            Error::BindRefused(_) => "bind refused by the host-path or volume policy",
            Error::OverShare(_) => "CPU, memory or shm beyond the share of the GPU count",
            Error::Gpu(_) => "GPU inventory failure",
            Error::Docker(_) => "Docker failure",
            Error::Store(_) => "state store failure",
            Error::Unavailable(_) => "Docker or the store unreachable; nothing changed, retry",
            Error::Unauthorized => "missing or wrong bearer token",
            Error::Conflict(_) => {
                "another request changed the same records first; nothing kept, retry"
            }
            Error::NotRunning(_) => "container not running",
            Error::QuotaExceeded(_) => "over the user's quota; nothing created or claimed",
            Error::AdminOnly(_) => "only an admin may do this",
            Error::TooManyAttempts => "too many failed authentications from this address",
            Error::UserNotFound(_) => "user not found",
            Error::UserExists(_) => "user already exists",
            Error::UserOwnsObjects(_) => "user still owns replicaSets or volumes",
            Error::NodeLost(_) => "the set's cluster node is lost; nothing changed",
            Error::VolumesNotMoved(_) => "the set mounts volumes: migrate with moveVolumes",
            Error::NodeNotFound(_) => "no such node in the cluster",
            Error::NetworkPoolFull(_) => "no subnet left in the network pool for the owner",
            Error::OverDisk(_) => "the set's root filesystem is over its limit; nothing changed",
            Error::KeyNotFound(_) => "no such SSH key",
            Error::KeyTaken(_) => "the SSH key is another user's",
            Error::StoreFull(_) => "the state store's disk is full; nothing was changed",
            Error::DockerDiskFull(_) => "Docker's disk is full; the operation was undone",
            Error::NodeCordoned(_) => "the node is cordoned: it takes no new sets",
            Error::Failed { .. } | Error::Refused { .. } => "operation failed or refused",
        }
    }

    /// Every code the server can answer with, ascending, with what it means: one sample of
    /// each variant, and the failure code of each operation.
    pub fn catalogue() -> Vec<(u16, String)> {
        let s = String::new;
        let samples = [
            Error::InvalidParams(s()),
            Error::ImageNameEmpty,
            Error::NameEmpty,
            Error::NameHasDash(s()),
            Error::AlreadyExists(s()),
            Error::NoNeedPatch(s()),
            Error::NegativeGpuCount(0),
            Error::NotEnoughGpus {
                wanted: 0,
                free: 0,
                total: 0,
            },
            Error::NotEnoughPorts {
                wanted: 0,
                range: s(),
            },
            Error::NotFound(s()),
            Error::NegativeVersion(0),
            Error::NoNeedRollback(0),
            Error::VolumeNameEmpty,
            Error::VolumeExists(s()),
            Error::VolumeSameSize(s(), s()),
            Error::SizeUnit(s()),
            Error::ShrinkBelowUsage {
                name: s(),
                used: 0,
                requested: 0,
            },
            Error::VolumeNameHasDash(s()),
            Error::VolumeNameSlash(s()),
            Error::VolumeNotFound(s()),
            Error::ImageNotFound(s()),
            Error::BindRefused(s()),
            Error::OverShare(s()),
            Error::Gpu(s()),
            Error::Docker(s()),
            Error::Store(s()),
            Error::Unavailable(s()),
            Error::Unauthorized,
            Error::Conflict(s()),
            Error::NotRunning(s()),
            Error::QuotaExceeded(s()),
            Error::AdminOnly(s()),
            Error::TooManyAttempts,
            Error::UserNotFound(s()),
            Error::UserExists(s()),
            Error::UserOwnsObjects(s()),
            Error::NodeLost(s()),
            Error::VolumesNotMoved(s()),
            Error::NodeNotFound(s()),
            Error::NetworkPoolFull(s()),
            Error::OverDisk(s()),
            Error::KeyNotFound(s()),
            Error::KeyTaken(s()),
            Error::StoreFull(s()),
            Error::DockerDiskFull(s()),
            Error::NodeCordoned(s()),
        ];
        let mut codes: std::collections::BTreeMap<u16, String> = samples
            .iter()
            .map(|e| (e.code(), e.summary().to_string()))
            .collect();
        for op in Operation::ALL {
            let code = op.failure_code();
            if code != 500 {
                codes.entry(code).or_insert_with(|| format!("{op} failed"));
            }
        }
        // The contract's code for a volume name without its version (`bar` where `bar-1` is
        // meant); kept for clients of the original, never answered here.
        codes
            .entry(1027)
            .or_insert_with(|| "volume name must contain its version (unused here)".into());
        codes.into_iter().collect()
    }

    /// Attributes a backend failure to `op`; user errors pass through unchanged.
    pub fn during(self, op: Operation) -> Error {
        match self {
            Error::Docker(reason) | Error::Store(reason) | Error::Gpu(reason) => {
                Error::Failed { op, reason }
            }
            other => other,
        }
    }

    /// `op` refused in the present state, with the reason.
    pub fn refused(op: Operation, reason: impl Into<String>) -> Error {
        Error::Refused {
            op,
            reason: reason.into(),
        }
    }

    /// A failure of `op` described in words.
    pub fn failed(op: Operation, reason: impl Into<String>) -> Error {
        Error::Failed {
            op,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_every_code_from_1000_up_once() {
        let codes: Vec<u16> = Error::catalogue().iter().map(|(c, _)| *c).collect();
        let expected: Vec<u16> = (1000..=1064).collect();
        assert_eq!(codes, expected);
    }
}
