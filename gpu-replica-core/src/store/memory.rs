//! In-memory store: for tests and for trying the engine without a file.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Condition, Entry, StateStore, Txn, Write};
use crate::error::{Error, Result};

/// A [`StateStore`] held in process memory; lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    revision: u64,
    entries: BTreeMap<String, (Vec<u8>, u64)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Store("memory store lock poisoned".into()))
    }
}

impl Inner {
    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::Absent(key) => !self.entries.contains_key(key),
            Condition::Revision(key, revision) => {
                self.entries.get(key).map(|(_, r)| r) == Some(revision)
            }
        }
    }

    fn apply(&mut self, write: Write) {
        match write {
            Write::Put(key, value) => {
                self.entries.insert(key, (value, self.revision));
            }
            Write::Delete(key) => {
                self.entries.remove(&key);
            }
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let inner = self.lock()?;
        Ok(inner.entries.get(key).map(|(value, revision)| Entry {
            key: key.to_string(),
            value: value.clone(),
            revision: *revision,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let inner = self.lock()?;
        Ok(inner
            .entries
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (value, revision))| Entry {
                key: key.clone(),
                value: value.clone(),
                revision: *revision,
            })
            .collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64> {
        let mut inner = self.lock()?;
        inner.revision += 1;
        inner.apply(Write::Put(key.to_string(), value));
        Ok(inner.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut inner = self.lock()?;
        inner.revision += 1;
        Ok(inner.entries.remove(key).is_some())
    }

    async fn commit(&self, txn: Txn) -> Result<bool> {
        let mut inner = self.lock()?;
        if !txn.conditions.iter().all(|c| inner.holds(c)) {
            return Ok(false);
        }
        inner.revision += 1;
        for write in txn.writes {
            inner.apply(write);
        }
        Ok(true)
    }

    fn describe(&self) -> String {
        "memory (not persisted)".into()
    }

    fn generation(&self) -> Option<u64> {
        Some(
            self.inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .revision,
        )
    }
}
