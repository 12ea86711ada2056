//! The state store: a small key/value interface with revisions and one compare-and-swap
//! transaction, shaped by what etcd offers and what redb can give in one write transaction.
//!
//! Every claim the engine makes (a GPU, a host port, a name) is a [`Txn`] whose conditions say
//! "this key is still absent" or "this key still has the revision I read". Two engines on one
//! store therefore never hand out the same GPU: exactly one transaction wins.

mod memory;
mod redb;

#[cfg(feature = "etcd")]
mod etcd;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

#[cfg(feature = "etcd")]
pub use self::etcd::{EtcdAccess, EtcdStore};

use async_trait::async_trait;

use crate::error::Result;

/// A stored value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the last write to this key (never 0 for a present key).
    pub revision: u64,
}

/// What must hold for a [`Txn`] to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at this revision.
    Revision(String, u64),
}

/// One write inside a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set the key to the value.
    Put(String, Vec<u8>),
    /// Remove the key (no error if absent).
    Delete(String),
}

/// A compare-and-swap transaction: all writes apply if and only if all conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions checked atomically before writing.
    pub conditions: Vec<Condition>,
    /// Writes applied atomically when the conditions hold.
    pub writes: Vec<Write>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Requires `key` to be absent.
    pub fn absent(mut self, key: impl Into<String>) -> Txn {
        self.conditions.push(Condition::Absent(key.into()));
        self
    }

    /// Requires `key` to still have `revision`.
    pub fn unchanged(mut self, key: impl Into<String>, revision: u64) -> Txn {
        self.conditions
            .push(Condition::Revision(key.into(), revision));
        self
    }

    /// Writes `value` at `key`.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Txn {
        self.writes.push(Write::Put(key.into(), value));
        self
    }

    /// Deletes `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.writes.push(Write::Delete(key.into()));
        self
    }
}

/// Persistent key/value state with revisions.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// Reads every key that starts with `prefix`, in key order, in one round trip.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Writes one key unconditionally; returns its new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64>;
    /// Removes one key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Applies `txn` if its conditions hold; returns whether it applied.
    async fn commit(&self, txn: Txn) -> Result<bool>;
    /// Writes `key` bound to a fresh lease of `ttl`: the key disappears when the lease is not
    /// renewed ([`StateStore::renew`]) in time. Returns the lease. Only stores shared by several
    /// processes have leases (etcd); the others answer an error.
    async fn put_leased(
        &self,
        key: &str,
        _value: Vec<u8>,
        _ttl: std::time::Duration,
    ) -> Result<u64> {
        Err(crate::error::Error::Store(format!(
            "{}: leases (a cluster of nodes) need the etcd store",
            key
        )))
    }
    /// Renews a lease; `false` when it had already expired (its keys are gone).
    async fn renew(&self, _lease: u64) -> Result<bool> {
        Err(crate::error::Error::Store(
            "leases need the etcd store".into(),
        ))
    }
    /// A short description for logs and the startup summary.
    fn describe(&self) -> String;
    /// A number that changes with every write, for stores that no one writes to but through
    /// this object (redb locks its file; memory is in-process): reads may then be cached until
    /// it changes. `None` where others may write too (etcd).
    fn generation(&self) -> Option<u64> {
        None
    }
}
