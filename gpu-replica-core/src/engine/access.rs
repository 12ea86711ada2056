//! Who acts, and what they may reach: callers with their roles, the owner check every read of
//! a replicaSet or volume goes through, and the quota every claim is checked against inside
//! the claim's own transaction.
//!
//! A user reaches only what they own: another user's replicaSet or volume answers exactly as a
//! missing one. An admin reaches everything. Names stay one namespace for the whole server (as
//! Docker's container names do), so a name another user took is refused as taken at creation.

use serde::{Deserialize, Serialize};

use crate::engine::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{ReplicaSet, Volume, VolumeVersion};
use crate::store::Txn;

pub use crate::model::OPERATOR;

/// A user as stored (their account: role, quota, the salted hash of their token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub quota: Quota,
    /// Random salt, hex.
    pub salt: String,
    /// SHA-256 of salt and secret, hex.
    pub hash: String,
    pub created_at: String,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and acts on everything, manages users.
    Admin,
    /// Sees and acts on their own replicaSets and volumes, within their quota.
    User,
}

/// Who an operation is done for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's name (owner of what they create).
    pub name: String,
    /// Their role.
    pub role: Role,
}

impl Caller {
    /// The built-in administrator, [`OPERATOR`].
    pub fn operator() -> Caller {
        Caller {
            name: OPERATOR.to_string(),
            role: Role::Admin,
        }
    }

    /// A caller named `name` with `role`.
    pub fn new(name: impl Into<String>, role: Role) -> Caller {
        Caller {
            name: name.into(),
            role,
        }
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see and act on an object owned by `owner`.
    pub fn may_reach(&self, owner: &str) -> bool {
        self.is_admin() || self.name == owner
    }
}

/// How much one user may hold at once; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// GPUs held at once (running and paused sets hold theirs; stopped ones do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
    /// ReplicaSets, whatever their state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sets: Option<u32>,
    /// Total size of their volumes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volume_bytes: Option<u64>,
    /// Total disk: their volumes and their sets' writable layers (as last measured), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

/// What one user holds now, or asks for on top.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holdings {
    /// GPUs claimed by their replicaSets.
    pub gpus: u32,
    /// Their replicaSets.
    pub sets: u32,
    /// Total size of their volumes' current versions, in bytes.
    pub volume_bytes: u64,
    /// Their sets' writable layers, as last measured, in bytes.
    #[serde(default)]
    pub rootfs_bytes: u64,
}

impl Holdings {
    /// `n` more GPUs.
    pub(crate) fn gpus(n: usize) -> Holdings {
        Holdings {
            gpus: n as u32,
            ..Holdings::default()
        }
    }

    /// One more replicaSet with `gpus` GPUs.
    pub(crate) fn set_with(gpus: usize) -> Holdings {
        Holdings {
            gpus: gpus as u32,
            sets: 1,
            ..Holdings::default()
        }
    }

    /// `bytes` more of volumes.
    pub(crate) fn volume_bytes(bytes: u64) -> Holdings {
        Holdings {
            volume_bytes: bytes,
            ..Holdings::default()
        }
    }

    fn is_empty(&self) -> bool {
        *self == Holdings::default()
    }
}

/// The part of a claiming transaction that keeps a quota: the owner's guard key, read before
/// the holdings were counted, must be unchanged at commit, and is bumped by it. Two claims of
/// one owner that counted the same holdings cannot both commit; the loser counts again.
#[derive(Debug, Default)]
pub(crate) struct QuotaGuard {
    guard: Option<(String, Option<u64>, u64)>,
}

impl QuotaGuard {
    /// Adds the guard's condition and write to `txn`.
    pub(crate) fn apply(&self, txn: Txn) -> Txn {
        match &self.guard {
            None => txn,
            Some((key, None, next)) => txn
                .absent(key.clone())
                .put(key.clone(), next.to_string().into_bytes()),
            Some((key, Some(revision), next)) => txn
                .unchanged(key.clone(), *revision)
                .put(key.clone(), next.to_string().into_bytes()),
        }
    }
}

impl Context {
    /// The stored account of user `name`, if there is one.
    pub(crate) async fn user_record(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .read::<UserRecord>(&keys::user(name))
            .await?
            .map(|(u, _)| u))
    }

    /// Whether this caller may reach replicaSet `name` (its head); another user's set is
    /// reported missing, exactly as one that does not exist.
    pub(crate) fn reachable_set(&self, name: &str, head: &ReplicaSet) -> Result<()> {
        if self.caller.may_reach(&head.owner) {
            Ok(())
        } else {
            Err(Error::NotFound(name.to_string()))
        }
    }

    /// How a claim's holder is named to this caller: by name to an admin, unnamed to a user
    /// (it may be another user's).
    pub(crate) fn holder_name(&self, holder: &str) -> String {
        if self.caller.is_admin() {
            format!("'{holder}'")
        } else {
            "another replicaSet".into()
        }
    }

    /// The same for a volume.
    pub(crate) fn reachable_volume(&self, name: &str, volume: &Volume) -> Result<()> {
        if self.caller.may_reach(&volume.owner) {
            Ok(())
        } else {
            Err(Error::VolumeNotFound(name.to_string()))
        }
    }

    /// What `owner` holds now: replicaSets, the GPUs claimed by them, and the size of their
    /// volumes' current versions.
    pub(crate) async fn holdings(&self, owner: &str) -> Result<Holdings> {
        let heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let mine: std::collections::HashSet<String> = heads
            .into_iter()
            .filter(|h| h.owner == owner)
            .map(|h| h.name)
            .collect();
        let gpus = self
            .gpu_holders()
            .await?
            .values()
            .filter(|holder| mine.contains(*holder))
            .count();
        let volumes: Vec<Volume> = self.read_all(keys::VOLUMES).await?;
        let mut volume_bytes = 0u64;
        for volume in volumes.iter().filter(|v| v.owner == owner) {
            // A resize in flight counts at the larger of its two sizes.
            let numbers =
                std::iter::once(volume.current).chain(volume.pending.as_ref().map(|p| p.version));
            let mut largest = 0;
            for number in numbers {
                let key = keys::volume_version(&volume.name, number);
                if let Some((version, _)) = self.read::<VolumeVersion>(&key).await? {
                    largest = largest.max(version.size_bytes);
                }
            }
            volume_bytes = volume_bytes.saturating_add(largest);
        }
        let rootfs_bytes = self
            .shared
            .store
            .list(keys::ROOTFS)
            .await?
            .into_iter()
            .filter(|e| mine.contains(&e.key[keys::ROOTFS.len()..]))
            .filter_map(|e| serde_json::from_slice::<crate::model::RootfsUsage>(&e.value).ok())
            .map(|usage| usage.bytes)
            .fold(0u64, u64::saturating_add);
        Ok(Holdings {
            gpus: gpus as u32,
            sets: mine.len() as u32,
            volume_bytes,
            rootfs_bytes,
        })
    }

    /// Checks that `owner` may take `more` on top of what they hold now, and returns the guard
    /// to put in the transaction that takes it. Owners without a quota (the built-in admin,
    /// users without limits) get an empty guard and nothing is counted.
    pub(crate) async fn check_quota(&self, owner: &str, more: Holdings) -> Result<QuotaGuard> {
        if more.is_empty() {
            return Ok(QuotaGuard::default());
        }
        let Some(user) = self.user_record(owner).await? else {
            return Ok(QuotaGuard::default());
        };
        let quota = user.quota;
        let limited = (more.gpus > 0 && quota.max_gpus.is_some())
            || (more.sets > 0 && quota.max_sets.is_some())
            || (more.volume_bytes > 0
                && (quota.max_volume_bytes.is_some() || quota.max_disk_bytes.is_some()));
        if !limited {
            return Ok(QuotaGuard::default());
        }
        // The guard is read before the holdings: a claim of this owner that commits after
        // this read moves it, and this transaction then fails and counts again.
        let key = keys::quota_guard(owner);
        let (revision, next) = match self.shared.store.get(&key).await? {
            None => (None, 1),
            Some(entry) => {
                let seen: u64 = String::from_utf8_lossy(&entry.value).parse().unwrap_or(0);
                (Some(entry.revision), seen + 1)
            }
        };
        let held = self.holdings(owner).await?;
        let over = |what: &str, limit: Option<u64>, used: u64, asked: u64| -> Result<()> {
            match limit {
                Some(limit) if asked > 0 && used.saturating_add(asked) > limit => {
                    Err(Error::QuotaExceeded(format!(
                        "{owner} may hold {limit} {what}, holds {used} and asked for {asked} more"
                    )))
                }
                _ => Ok(()),
            }
        };
        over(
            "GPU(s)",
            quota.max_gpus.map(u64::from),
            held.gpus.into(),
            more.gpus.into(),
        )?;
        over(
            "replicaSet(s)",
            quota.max_sets.map(u64::from),
            held.sets.into(),
            more.sets.into(),
        )?;
        over(
            "bytes of volumes",
            quota.max_volume_bytes,
            held.volume_bytes,
            more.volume_bytes,
        )?;
        over(
            "bytes of disk (volumes and root filesystems)",
            quota.max_disk_bytes,
            held.volume_bytes.saturating_add(held.rootfs_bytes),
            more.volume_bytes,
        )?;
        Ok(QuotaGuard {
            guard: Some((key, revision, next)),
        })
    }
}
