//! Users' SSH public keys, and who a key lets in: what the SSH gateway asks before it opens
//! anything. A key belongs to one user (adding a key another user holds is refused), so a
//! login by key names one person. Logging in to set `S` with a key is allowed when the key's
//! holder owns `S` or is an admin; any other case (a missing set, another user's set, an
//! unknown key) is the same refusal.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::access::{Caller, OPERATOR};
use crate::engine::encode;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{now, ReplicaSet};
use crate::ops::Engine;
use crate::store::Txn;

/// Keys one user may hold.
pub const MAX_KEYS_PER_USER: usize = 32;

/// Key types taken: what current OpenSSH makes and offers.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A user's SSH public key as kept and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshKey {
    /// `SHA256:` and the unpadded base64 of the key's SHA-256, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Key type, e.g. `ssh-ed25519`.
    pub kind: String,
    /// The key's comment (often `user@host`); may be empty.
    pub comment: String,
    /// The key as one `authorized_keys` line: type, base64, comment.
    pub key: String,
    /// When it was added, `YYYY-MM-DD HH:MM:SS` UTC.
    pub added_at: String,
}

/// A parsed `authorized_keys` line: (type, key blob, comment).
fn parse_line(line: &str) -> Result<(String, Vec<u8>, String)> {
    let bad = |why: &str| {
        Error::InvalidParams(format!(
            "not an SSH public key ({why}); give one line of a .pub file, like \
             'ssh-ed25519 AAAAC3Nz... you@laptop'"
        ))
    };
    let line = line.trim();
    if line.contains(['\n', '\r', '\0']) {
        return Err(bad("more than one line"));
    }
    let mut fields = line.splitn(3, char::is_whitespace);
    let kind = fields.next().unwrap_or_default().to_string();
    let blob = fields.next().unwrap_or_default();
    let comment = fields.next().unwrap_or_default().trim().to_string();
    if !KEY_TYPES.contains(&kind.as_str()) {
        return Err(bad(&format!(
            "type '{kind}' is not one of {}",
            KEY_TYPES.join(", ")
        )));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| bad("its key is not base64"))?;
    // The blob starts with its own type as an SSH string.
    let named = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) || blob.len() < 4 + kind.len() + 16 {
        return Err(bad("its key does not match its type"));
    }
    Ok((kind, blob, comment))
}

/// Hex of the SHA-256 of a key blob: the key's name in the store.
fn hex_fingerprint(blob: &[u8]) -> String {
    Sha256::digest(blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint OpenSSH shows for a key blob: `SHA256:` + unpadded base64.
pub fn fingerprint(blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(blob))
    )
}

/// The store's name for a key given by its `SHA256:` fingerprint.
fn hex_of(fingerprint: &str) -> Option<String> {
    let b64 = fingerprint.strip_prefix("SHA256:").unwrap_or(fingerprint);
    let digest = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()?;
    (digest.len() == 32).then(|| digest.iter().map(|b| format!("{b:02x}")).collect())
}

impl Engine {
    fn reach_user(&self, name: &str) -> Result<()> {
        if self.ctx.caller.may_reach(name) {
            Ok(())
        } else {
            Err(Error::UserNotFound(name.to_string()))
        }
    }

    async fn check_user_exists(&self, name: &str) -> Result<()> {
        if name == OPERATOR || self.ctx.user_record(name).await?.is_some() {
            Ok(())
        } else {
            Err(Error::UserNotFound(name.to_string()))
        }
    }

    /// Adds SSH public key `line` (one line of a `.pub` file) to user `name`: their own, or
    /// anyone's for an admin. A key another user holds is refused; one they hold already is
    /// answered as it is.
    pub async fn add_ssh_key(&self, name: &str, line: &str) -> Result<SshKey> {
        self.reach_user(name)?;
        self.check_user_exists(name).await?;
        let (kind, blob, comment) = parse_line(line)?;
        let hex = hex_fingerprint(&blob);
        let key = SshKey {
            fingerprint: fingerprint(&blob),
            key: format!(
                "{kind} {}{}{comment}",
                base64::engine::general_purpose::STANDARD.encode(&blob),
                if comment.is_empty() { "" } else { " " }
            ),
            kind,
            comment,
            added_at: now(),
        };
        if let Some((holder, _)) = self.ctx.read::<String>(&keys::ssh_key_holder(&hex)).await? {
            if holder == name {
                if let Some((kept, _)) = self.ctx.read::<SshKey>(&keys::ssh_key(name, &hex)).await?
                {
                    return Ok(kept);
                }
            } else {
                return Err(Error::KeyTaken(format!(
                    "{} is another user's; each key lets one person in",
                    key.fingerprint
                )));
            }
        }
        if self
            .ctx
            .shared
            .store
            .list(&keys::ssh_keys(name))
            .await?
            .len()
            >= MAX_KEYS_PER_USER
        {
            return Err(Error::QuotaExceeded(format!(
                "'{name}' holds {MAX_KEYS_PER_USER} SSH keys, the most one user may; remove one first"
            )));
        }
        let txn = Txn::new()
            .absent(keys::ssh_key_holder(&hex))
            .put(keys::ssh_key_holder(&hex), encode(&name.to_string()))
            .put(keys::ssh_key(name, &hex), encode(&key));
        if !self.ctx.shared.store.commit(txn).await? {
            return Err(Error::Conflict(format!(
                "SSH key {} was added by someone else meanwhile",
                key.fingerprint
            )));
        }
        self.ctx
            .emit("user.key.add", name, true, key.fingerprint.clone())
            .await;
        Ok(key)
    }

    /// User `name`'s SSH public keys, oldest first.
    pub async fn ssh_keys(&self, name: &str) -> Result<Vec<SshKey>> {
        self.reach_user(name)?;
        self.check_user_exists(name).await?;
        let mut keys: Vec<SshKey> = self.ctx.read_all(&keys::ssh_keys(name)).await?;
        keys.sort_by(|a, b| a.added_at.cmp(&b.added_at).then(a.key.cmp(&b.key)));
        Ok(keys)
    }

    /// Removes user `name`'s key `fingerprint` (`SHA256:…`, as listed).
    pub async fn remove_ssh_key(&self, name: &str, fingerprint: &str) -> Result<()> {
        self.reach_user(name)?;
        self.check_user_exists(name).await?;
        let missing = || Error::KeyNotFound(format!("'{name}' has no key {fingerprint}"));
        let hex = hex_of(fingerprint).ok_or_else(missing)?;
        let (_, revision) = self
            .ctx
            .read::<SshKey>(&keys::ssh_key(name, &hex))
            .await?
            .ok_or_else(missing)?;
        let txn = Txn::new()
            .unchanged(keys::ssh_key(name, &hex), revision)
            .delete(keys::ssh_key(name, &hex))
            .delete(keys::ssh_key_holder(&hex));
        self.ctx.commit(txn).await?;
        self.ctx
            .emit("user.key.remove", name, true, fingerprint.to_string())
            .await;
        Ok(())
    }

    /// Deletes of every SSH key of `name`, for the transaction that removes the user.
    pub(crate) async fn drop_ssh_keys(&self, name: &str, mut txn: Txn) -> Result<Txn> {
        for entry in self.ctx.shared.store.list(&keys::ssh_keys(name)).await? {
            if let Some(hex) = entry.key.rsplit('/').next() {
                txn = txn.delete(keys::ssh_key_holder(hex));
            }
            txn = txn.delete(entry.key);
        }
        Ok(txn)
    }

    /// Who may log in to set `set` with the key of fingerprint `fingerprint` (`SHA256:…`):
    /// the key's holder when they own the set or are an admin. `None` in every other case
    /// (an unknown key, a missing set, another user's set), alike.
    pub async fn ssh_login(&self, set: &str, fingerprint: &str) -> Result<Option<Caller>> {
        let Some(hex) = hex_of(fingerprint) else {
            return Ok(None);
        };
        let Some((holder, _)) = self.ctx.read::<String>(&keys::ssh_key_holder(&hex)).await? else {
            return Ok(None);
        };
        let caller = if holder == OPERATOR {
            Caller::operator()
        } else {
            match self.ctx.user_record(&holder).await? {
                Some(user) => Caller::new(user.name, user.role),
                None => return Ok(None),
            }
        };
        if crate::names::check(set, Error::NameEmpty, |_| Error::NameEmpty).is_err() {
            return Ok(None);
        }
        let Some((head, _)) = self.ctx.read::<ReplicaSet>(&keys::replica_set(set)).await? else {
            return Ok(None);
        };
        Ok(caller.may_reach(&head.owner).then_some(caller))
    }

    /// Who a gateway of another node of the cluster logs in as, when it brings a user's
    /// session to set `set` here: user `user` (checked by that node), if they may reach the
    /// set. `None` otherwise, as for [`Engine::ssh_login`].
    pub async fn ssh_login_relayed(&self, set: &str, user: &str) -> Result<Option<Caller>> {
        let caller = if user == OPERATOR {
            Caller::operator()
        } else {
            match self.ctx.user_record(user).await? {
                Some(record) => Caller::new(record.name, record.role),
                None => return Ok(None),
            }
        };
        let Some((head, _)) = self.ctx.read::<ReplicaSet>(&keys::replica_set(set)).await? else {
            return Ok(None);
        };
        Ok(caller.may_reach(&head.owner).then_some(caller))
    }

    /// Tells the cluster that this node's SSH gateway is reached at `addr` (`host:port`), so
    /// that the others bring sessions to its sets there. Nothing on a single host.
    pub async fn advertise_ssh(&self, addr: &str) -> Result<()> {
        let node = self.ctx.node_name();
        if node.is_empty() {
            return Ok(());
        }
        self.ctx
            .shared
            .store
            .put(&keys::node_ssh(node), encode(&addr.to_string()))
            .await?;
        Ok(())
    }

    /// Where set `set` is served by another node's SSH gateway: that node's name and its
    /// gateway's address; `None` when the set is here (or not this caller's, or the node
    /// serves no gateway).
    pub async fn ssh_elsewhere(&self, set: &str) -> Result<Option<(String, String)>> {
        let crate::cluster::Location::Node { name, .. } = self.locate(set).await? else {
            return Ok(None);
        };
        Ok(self
            .ctx
            .read::<String>(&keys::node_ssh(&name))
            .await?
            .map(|(addr, _)| (name, addr)))
    }

    /// Records an SSH session to set `set` from `from` as an event (`ssh`): opened
    /// (`ended` is `None`) or ended after `ended`.
    pub async fn note_ssh_session(
        &self,
        set: &str,
        from: &str,
        ended: Option<std::time::Duration>,
    ) {
        let who = self.ctx.caller.name.clone();
        let message = match ended {
            None => format!("{who} logged in from {from}"),
            Some(took) => format!("{who} from {from} left after {}s", took.as_secs()),
        };
        self.ctx.emit("ssh", set, true, message).await;
    }

    /// The SSH gateway's host key (OpenSSH private key text), made by `make` the first time
    /// and kept in the store, so every node of a cluster presents the same one.
    pub async fn ssh_host_key(&self, make: impl FnOnce() -> Result<String>) -> Result<String> {
        if let Some((key, _)) = self.ctx.read::<String>(keys::SSH_HOST_KEY).await? {
            return Ok(key);
        }
        let key = make()?;
        let txn = Txn::new()
            .absent(keys::SSH_HOST_KEY)
            .put(keys::SSH_HOST_KEY, encode(&key));
        if self.ctx.shared.store.commit(txn).await? {
            return Ok(key);
        }
        // Another node made it first: theirs is the one.
        self.ctx
            .read::<String>(keys::SSH_HOST_KEY)
            .await?
            .map(|(key, _)| key)
            .ok_or_else(|| Error::Store("the SSH host key vanished as it was made".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

    #[test]
    fn a_pub_line_parses_and_its_fingerprint_is_openssh_s() {
        let (kind, blob, comment) = parse_line(ED).unwrap();
        assert_eq!(kind, "ssh-ed25519");
        assert_eq!(comment, "alice@laptop");
        let fp = fingerprint(&blob);
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 43, "{fp}");
        assert_eq!(hex_of(&fp).unwrap(), hex_fingerprint(&blob));
    }

    #[test]
    fn what_is_not_a_key_is_refused_with_a_hint() {
        for bad in [
            "",
            "hello",
            "ssh-ed25519 !!!",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-dss AAAAB3NzaC1kc3M=",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\nssh-ed25519 AAAA",
        ] {
            let e = parse_line(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidParams(_)), "{bad}: {e}");
        }
    }
}
