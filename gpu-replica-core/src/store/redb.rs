//! The embedded default store: one redb file, no server.
//!
//! redb is synchronous. Reads are served from memory-mapped pages in microseconds and run in
//! place; writes wait for the disk (fsync) and run on tokio's blocking pool. A write
//! transaction is exclusive, so checking a [`Txn`]'s conditions and applying its writes inside
//! one is atomic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Condition, Entry, StateStore, Txn, Write};
use crate::error::{Error, Result};

/// key → (revision, value bytes)
const ENTRIES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("entries");
/// "revision" → the last revision handed out
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A [`StateStore`] in one redb file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Writes attempted, counted once each is over (see [`StateStore::generation`]).
    writes: Arc<std::sync::atomic::AtomicU64>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`; its folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)
            .map_err(|e| Error::Store(format!("cannot open {}: {e}", path.display())))?;
        // Create both tables up front so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(ENTRIES).map_err(store_err)?;
        txn.open_table(META).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(RedbStore {
            db: Arc::new(db),
            path,
            writes: Arc::default(),
        })
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(store_err)?
    }

    /// Like [`RedbStore::blocking`] for a write: the generation moves once the write is over,
    /// even if the caller stopped waiting for it.
    async fn writing<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let writes = self.writes.clone();
        self.blocking(move |db| {
            let result = work(db);
            writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            result
        })
        .await
    }

    /// Runs `txn` inside one write transaction; `None` when a condition fails.
    fn write(db: &Database, txn: Txn) -> Result<Option<u64>> {
        let tx = db.begin_write().map_err(store_err)?;
        let revision = {
            let mut entries = tx.open_table(ENTRIES).map_err(store_err)?;
            for condition in &txn.conditions {
                let holds = match condition {
                    Condition::Absent(key) => {
                        entries.get(key.as_str()).map_err(store_err)?.is_none()
                    }
                    Condition::Revision(key, revision) => {
                        entries
                            .get(key.as_str())
                            .map_err(store_err)?
                            .map(|v| v.value().0)
                            == Some(*revision)
                    }
                };
                if !holds {
                    return Ok(None);
                }
            }
            let mut meta = tx.open_table(META).map_err(store_err)?;
            let revision = meta
                .get("revision")
                .map_err(store_err)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("revision", revision).map_err(store_err)?;
            for write in &txn.writes {
                match write {
                    Write::Put(key, value) => {
                        entries
                            .insert(key.as_str(), (revision, value.as_slice()))
                            .map_err(store_err)?;
                    }
                    Write::Delete(key) => {
                        entries.remove(key.as_str()).map_err(store_err)?;
                    }
                }
            }
            revision
        };
        tx.commit().map_err(store_err)?;
        Ok(Some(revision))
    }
}

#[async_trait]
impl StateStore for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let entries = tx.open_table(ENTRIES).map_err(store_err)?;
        Ok(entries.get(key).map_err(store_err)?.map(|v| {
            let (revision, value) = v.value();
            Entry {
                key: key.to_string(),
                value: value.to_vec(),
                revision,
            }
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let entries = tx.open_table(ENTRIES).map_err(store_err)?;
        let mut found = Vec::new();
        for item in entries.range(prefix..).map_err(store_err)? {
            let (key, value) = item.map_err(store_err)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            let (revision, bytes) = value.value();
            found.push(Entry {
                key: key.value().to_string(),
                value: bytes.to_vec(),
                revision,
            });
        }
        Ok(found)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64> {
        let txn = Txn::new().put(key, value);
        self.writing(move |db| {
            RedbStore::write(db, txn)?
                .ok_or_else(|| Error::Store("unconditional put refused".into()))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.writing(move |db| {
            let tx = db.begin_write().map_err(store_err)?;
            let existed = {
                let mut entries = tx.open_table(ENTRIES).map_err(store_err)?;
                let existed = entries.remove(key.as_str()).map_err(store_err)?.is_some();
                existed
            };
            tx.commit().map_err(store_err)?;
            Ok(existed)
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<bool> {
        self.writing(move |db| Ok(RedbStore::write(db, txn)?.is_some()))
            .await
    }

    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.writes.load(std::sync::atomic::Ordering::SeqCst))
    }
}
