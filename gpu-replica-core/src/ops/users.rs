//! Users: accounts with a role and a quota, kept in the state store, and the tokens they sign
//! in with.
//!
//! A token is `grp-{name}-{64 hex digits}`: 256 random bits after the user's name. The store
//! keeps only a per-user random salt and the SHA-256 of salt and secret; a token is checked by
//! hashing what was sent with that salt and comparing in constant time. (The secret is random
//! and long, not a password a person chose, so a slow hash would buy nothing against guessing;
//! the salt keeps two users' records from ever sharing a hash.) A token is shown once, when it
//! is made, and never logged.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::access::{Caller, Holdings, Quota, Role, UserRecord, OPERATOR};
use crate::engine::{check_name, encode};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::now;
use crate::ops::Engine;
use crate::store::Txn;

/// What starts every user token.
const TOKEN_PREFIX: &str = "grp-";

/// What [`Engine::purge_user`] deleted with the account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    /// The replicaSets, with their containers, snapshots and claims.
    pub replica_sets: Vec<String>,
    /// The volumes.
    pub volumes: Vec<String>,
}

/// A user as shown: never their token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// Name, `[A-Za-z0-9][A-Za-z0-9_.]*`.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Limits.
    pub quota: Quota,
    /// What they hold now.
    pub holdings: Holdings,
    /// When they were added, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created_at: String,
}

/// A user to add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewUser {
    /// Name, `[A-Za-z0-9][A-Za-z0-9_.]*`; not `admin` (the built-in administrator).
    pub name: String,
    /// Whether they are an admin.
    pub admin: bool,
    /// Their limits.
    pub quota: Quota,
}

/// A change of quota: `None` leaves a limit as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaChange {
    /// GPUs held at once.
    pub max_gpus: Option<Option<u32>>,
    /// ReplicaSets.
    pub max_sets: Option<Option<u32>>,
    /// Total volume bytes.
    pub max_volume_bytes: Option<Option<u64>>,
    /// Total disk bytes: volumes and writable layers.
    pub max_disk_bytes: Option<Option<u64>>,
}

impl QuotaChange {
    fn apply(&self, quota: &mut Quota) {
        if let Some(v) = self.max_gpus {
            quota.max_gpus = v;
        }
        if let Some(v) = self.max_sets {
            quota.max_sets = v;
        }
        if let Some(v) = self.max_volume_bytes {
            quota.max_volume_bytes = v;
        }
        if let Some(v) = self.max_disk_bytes {
            quota.max_disk_bytes = v;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

fn random_hex(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Store(format!("no randomness for a token: {e}")))?;
    Ok(hex(&bytes))
}

fn hash(salt: &str, secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(b":");
    hasher.update(secret.as_bytes());
    hex(&hasher.finalize())
}

/// A token's user name and secret, when it can be one.
fn token_parts(token: &str) -> Result<(&str, &str)> {
    let (name, secret) = parse_token(token).ok_or(Error::Unauthorized)?;
    crate::names::check(name, Error::Unauthorized, |_| Error::Unauthorized)?;
    Ok((name, secret))
}

/// The user `name` among `users`, when `secret` is their token's.
fn check_token(
    users: &crate::engine::user_cache::Users,
    name: &str,
    secret: &str,
) -> Result<Caller> {
    let user = users.get(name).ok_or(Error::Unauthorized)?;
    let sent = hash(&user.salt, secret);
    if bool::from(sent.as_bytes().ct_eq(user.hash.as_bytes())) {
        Ok(Caller::new(user.name.clone(), user.role))
    } else {
        Err(Error::Unauthorized)
    }
}

/// A fresh token for `name`, with the salt and hash to store.
fn new_token(name: &str) -> Result<(String, String, String)> {
    let secret = random_hex(32)?;
    let salt = random_hex(16)?;
    let hash = hash(&salt, &secret);
    Ok((format!("{TOKEN_PREFIX}{name}-{secret}"), salt, hash))
}

/// `grp-{name}-{secret}` → (name, secret).
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    // Names hold no '-', so the first one ends the name.
    let (name, secret) = rest.split_once('-')?;
    (!name.is_empty() && secret.len() == 64).then_some((name, secret))
}

impl Engine {
    pub(crate) fn admin_only(&self, what: &str) -> Result<()> {
        if self.ctx.caller.is_admin() {
            Ok(())
        } else {
            Err(Error::AdminOnly(what.to_string()))
        }
    }

    async fn user_info_of(&self, user: UserRecord) -> Result<UserInfo> {
        Ok(UserInfo {
            holdings: self.ctx.holdings(&user.name).await?,
            name: user.name,
            role: user.role,
            quota: user.quota,
            created_at: user.created_at,
        })
    }

    /// Whether any user was added (then every request needs a token).
    pub async fn has_users(&self) -> Result<bool> {
        Ok(!self.ctx.users_now().await?.is_empty())
    }

    /// [`Engine::has_users`] answered from memory, without waiting: `None` when the copy of
    /// the users is not known to be true now (then ask [`Engine::has_users`]).
    pub fn has_users_now(&self) -> Option<bool> {
        self.ctx.users_if_fresh().map(|users| !users.is_empty())
    }

    /// Who `token` belongs to; [`Error::Unauthorized`] when it is no user's (wrong, made up,
    /// or reset since).
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let (name, secret) = token_parts(token)?;
        let users = self.ctx.users_now().await?;
        check_token(&users, name, secret)
    }

    /// [`Engine::authenticate`] answered from memory, without waiting: `None` when the copy
    /// of the users is not known to be true now (then ask [`Engine::authenticate`]). A
    /// request path that answers most requests in one poll uses it first.
    pub fn authenticate_now(&self, token: &str) -> Option<Result<Caller>> {
        let (name, secret) = match token_parts(token) {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        let users = self.ctx.users_if_fresh()?;
        Some(check_token(&users, name, secret))
    }

    /// Adds a user (admins only); returns them with their token, which is shown only now.
    pub async fn add_user(&self, new: NewUser) -> Result<(UserInfo, String)> {
        self.admin_only("adding users")?;
        check_name(
            &new.name,
            Error::InvalidParams("user name must not be empty".into()),
            |n| Error::InvalidParams(format!("user name '{n}' must not contain '-'")),
        )?;
        if new.name == OPERATOR {
            return Err(Error::UserExists(format!(
                "{OPERATOR} (the built-in administrator, who holds the server's --token)"
            )));
        }
        let (token, salt, hash) = new_token(&new.name)?;
        let record = UserRecord {
            name: new.name.clone(),
            role: if new.admin { Role::Admin } else { Role::User },
            quota: new.quota,
            salt,
            hash,
            created_at: now(),
        };
        let txn = Txn::new()
            .absent(keys::user(&new.name))
            .put(keys::user(&new.name), encode(&record));
        let added = self.ctx.shared.store.commit(txn).await;
        self.ctx.forget_users();
        if !added? {
            return Err(Error::UserExists(new.name));
        }
        self.ctx
            .emit(
                "user.add",
                &new.name,
                true,
                format!("{:?}", record.role).to_lowercase(),
            )
            .await;
        Ok((self.user_info_of(record).await?, token))
    }

    /// Every user with what they hold (admins only).
    pub async fn users(&self) -> Result<Vec<UserInfo>> {
        self.admin_only("listing users")?;
        let records: Vec<UserRecord> = self.ctx.read_all(keys::USERS).await?;
        let mut infos = Vec::with_capacity(records.len());
        for record in records {
            infos.push(self.user_info_of(record).await?);
        }
        Ok(infos)
    }

    /// One user with what they hold: an admin may ask for anyone, a user for themselves.
    pub async fn user_info(&self, name: &str) -> Result<UserInfo> {
        if !self.ctx.caller.may_reach(name) {
            return Err(Error::UserNotFound(name.to_string()));
        }
        match self.ctx.user_record(name).await? {
            Some(record) => self.user_info_of(record).await,
            None if name == OPERATOR => Ok(UserInfo {
                name: OPERATOR.into(),
                role: Role::Admin,
                quota: Quota::default(),
                holdings: self.ctx.holdings(OPERATOR).await?,
                created_at: String::new(),
            }),
            None => Err(Error::UserNotFound(name.to_string())),
        }
    }

    /// Removes a user (admins only); refused while they own replicaSets or volumes, so nothing
    /// is left without an owner. Their GPU-time stays for the usage report.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.admin_only("removing users")?;
        let (_, revision) = self
            .ctx
            .read::<UserRecord>(&keys::user(name))
            .await?
            .ok_or_else(|| Error::UserNotFound(name.to_string()))?;
        let held = self.ctx.holdings(name).await?;
        let volumes = self
            .ctx
            .read_all::<crate::model::Volume>(keys::VOLUMES)
            .await?
            .into_iter()
            .filter(|v| v.owner == name)
            .count();
        if held.sets > 0 || volumes > 0 {
            return Err(Error::UserOwnsObjects(format!(
                "'{name}' still owns {} replicaSet(s) and {volumes} volume(s); delete them first, \
                 or remove the user with them: `gpu-replica user rm {name} --purge` \
                 (DELETE /api/v1/users/{name}?purge=true)",
                held.sets
            )));
        }
        let txn = Txn::new()
            .unchanged(keys::user(name), revision)
            .delete(keys::user(name))
            .delete(keys::quota_guard(name));
        let txn = self.drop_ssh_keys(name, txn).await?;
        let done = self.ctx.commit(txn).await;
        self.ctx.forget_users();
        done?;
        self.ctx
            .emit("user.remove", name, true, "removed".into())
            .await;
        Ok(())
    }

    /// Removes a user with everything they own (admins only), as `userdel -r` does: first
    /// their token stops working (nothing new is made meanwhile), then their replicaSets go
    /// (containers, snapshots, claims, records), then their volumes, then the account. What a
    /// failure leaves stays theirs and a second purge finishes it. In a cluster, objects on
    /// another node are deleted by that node: purge there, or delete them first.
    pub async fn purge_user(&self, name: &str) -> Result<Purged> {
        self.admin_only("removing users")?;
        self.reset_token(name).await?;
        let here = self.ctx.node_name().to_string();
        let sets: Vec<crate::model::ReplicaSet> = self.ctx.read_all(keys::REPLICA_SETS).await?;
        let volumes: Vec<crate::model::Volume> = self.ctx.read_all(keys::VOLUMES).await?;
        let elsewhere: Vec<String> = sets
            .iter()
            .filter(|s| s.owner == name && s.node != here)
            .map(|s| format!("replicaSet '{}' on node '{}'", s.name, s.node))
            .chain(
                volumes
                    .iter()
                    .filter(|v| v.owner == name && v.node != here)
                    .map(|v| format!("volume '{}' on node '{}'", v.name, v.node)),
            )
            .collect();
        if !elsewhere.is_empty() {
            return Err(Error::UserOwnsObjects(format!(
                "'{name}' owns {} that this node cannot delete; delete them there first",
                elsewhere.join(", ")
            )));
        }
        let mut purged = Purged::default();
        for set in sets.iter().filter(|s| s.owner == name) {
            match self.delete(&set.name).await {
                Ok(()) | Err(Error::NotFound(_)) => purged.replica_sets.push(set.name.clone()),
                Err(e) => return Err(e),
            }
        }
        for volume in volumes.iter().filter(|v| v.owner == name) {
            match self.delete_volume(&volume.name).await {
                Ok(()) | Err(Error::VolumeNotFound(_)) => purged.volumes.push(volume.name.clone()),
                Err(e) => return Err(e),
            }
        }
        self.remove_user(name).await?;
        Ok(purged)
    }

    /// Makes a new token for `name`; the old one stops working at once. Admins may reset
    /// anyone's, users their own.
    pub async fn reset_token(&self, name: &str) -> Result<String> {
        if !self.ctx.caller.may_reach(name) {
            return Err(Error::UserNotFound(name.to_string()));
        }
        let (mut record, revision) = self
            .ctx
            .read::<UserRecord>(&keys::user(name))
            .await?
            .ok_or_else(|| Error::UserNotFound(name.to_string()))?;
        let (token, salt, hash) = new_token(name)?;
        record.salt = salt;
        record.hash = hash;
        let txn = Txn::new()
            .unchanged(keys::user(name), revision)
            .put(keys::user(name), encode(&record));
        let done = self.ctx.commit(txn).await;
        self.ctx.forget_users();
        done?;
        self.ctx
            .emit("user.token", name, true, "token reset".into())
            .await;
        Ok(token)
    }

    /// Changes a user's limits (admins only). Lowering a limit below what they hold takes
    /// nothing away; it refuses their next claims until they are under it.
    pub async fn set_quota(&self, name: &str, change: QuotaChange) -> Result<UserInfo> {
        self.admin_only("changing quotas")?;
        let (mut record, revision) = self
            .ctx
            .read::<UserRecord>(&keys::user(name))
            .await?
            .ok_or_else(|| Error::UserNotFound(name.to_string()))?;
        change.apply(&mut record.quota);
        let txn = Txn::new()
            .unchanged(keys::user(name), revision)
            .put(keys::user(name), encode(&record));
        let done = self.ctx.commit(txn).await;
        self.ctx.forget_users();
        done?;
        self.ctx
            .emit("user.quota", name, true, format!("{:?}", record.quota))
            .await;
        self.user_info_of(record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stored_as_lowercase_hex_as_they_always_were() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&bytes), expected);
        // SHA-256 of "salt:secret", as every stored record has it.
        assert_eq!(
            hash("salt", "secret"),
            "e0daae7ddca6117bae5f642d182bf4c456a16fe195e74ccb38714372c533f828"
        );
    }

    #[test]
    fn tokens_carry_the_name_and_a_long_secret() {
        let (token, salt, stored) = new_token("alice.b_2").unwrap();
        let (name, secret) = parse_token(&token).unwrap();
        assert_eq!(name, "alice.b_2");
        assert_eq!(hash(&salt, secret), stored);
        assert!(!stored.contains(secret));
        let (_, other_salt, other_hash) = new_token("alice.b_2").unwrap();
        assert_ne!((salt, stored), (other_salt, other_hash));
        for bad in [
            "",
            "grp-",
            "grp-alice",
            "grp--abc",
            "alice-00",
            "grp-alice-short",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }
}
