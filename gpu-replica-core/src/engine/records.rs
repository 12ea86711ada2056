//! Typed access to the records: decode on read, encode on write, and transactions that must
//! not lose a race. Keys are made in [`crate::keys`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{ReplicaSet, Version};
use crate::store::Txn;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(format!("record {key} is not readable: {e}")))
}

impl Context {
    /// Reads and decodes one record with its revision.
    pub(crate) async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.shared.store.get(key).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((decode(key, &entry.value)?, entry.revision))),
        }
    }

    /// Reads and decodes every record under `prefix`, in key order.
    pub(crate) async fn read_all<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.shared
            .store
            .list(prefix)
            .await?
            .iter()
            .map(|e| decode(&e.key, &e.value))
            .collect()
    }

    /// Applies a transaction that must not lose a race (its conditions are only revisions
    /// this caller holds the lock for); a lost race is an error.
    pub(crate) async fn commit(&self, txn: Txn) -> Result<()> {
        if self.shared.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(
                "the records changed under this request (another engine on the same store?)".into(),
            ))
        }
    }

    /// Replica set `name`'s head with its revision, if this caller may reach it (another
    /// user's set is missing, as one that does not exist).
    pub(crate) async fn head(&self, name: &str) -> Result<(ReplicaSet, u64)> {
        let (head, revision): (ReplicaSet, u64) = self
            .read(&keys::replica_set(name))
            .await?
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        self.reachable_set(name, &head)?;
        Ok((head, revision))
    }

    /// Every replicaSet that lives on this engine's node (every one on a single host): what
    /// recovery, the reconciler and the timers look after.
    pub(crate) async fn own_sets(&self) -> Result<Vec<ReplicaSet>> {
        let mut heads: Vec<ReplicaSet> = self.read_all(keys::REPLICA_SETS).await?;
        let node = self.node_name();
        heads.retain(|h| h.node == node);
        Ok(heads)
    }

    pub(crate) async fn version_record(&self, name: &str, version: u32) -> Result<Version> {
        self.read(&keys::version(name, version))
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| Error::Store(format!("version {version} of '{name}' has no record")))
    }
}

impl Context {
    /// Whether container `name` here was found unknown (and left alone) at an earlier start.
    pub(crate) async fn marked_unknown(&self, name: &str) -> Result<bool> {
        let key = keys::unknown_container(self.node_name(), name);
        Ok(self.shared.store.get(&key).await?.is_some())
    }
}
