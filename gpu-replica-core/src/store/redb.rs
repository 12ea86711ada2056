//! The embedded default store: one redb file, no server.
//!
//! redb is synchronous. Reads are served from memory-mapped pages in microseconds and run in
//! place; writes wait for the disk (fsync) and run on tokio's blocking pool. A write
//! transaction is exclusive, so checking a [`Txn`]'s conditions and applying its writes inside
//! one is atomic.
//!
//! A write that fails on I/O (a full disk) leaves redb refusing every later write until the
//! file is opened again ("Previous I/O error"); the store then opens it again by itself before
//! the next operation, so writes work once there is room, without a restart. A full disk is
//! [`Error::StoreFull`]; nothing of the failed write is kept (redb commits atomically).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
    /// The open file; `None` only while it is being opened again.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: PathBuf,
    /// Writes attempted, counted once each is over (see [`StateStore::generation`]).
    writes: Arc<std::sync::atomic::AtomicU64>,
    /// Set when an operation failed on I/O: the file is opened again before the next one.
    broken: Arc<AtomicBool>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        return Error::StoreFull(text);
    }
    Error::Store(text)
}

/// Whether `e` leaves redb refusing writes until the file is opened again.
fn breaks_the_file(e: &Error) -> bool {
    match e {
        Error::StoreFull(_) => true,
        Error::Store(text) => text.contains("I/O error") || text.contains("Previous I/O"),
        _ => false,
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`; its folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        let db = RedbStore::open_file(&path)?;
        Ok(RedbStore {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path,
            writes: Arc::default(),
            broken: Arc::default(),
        })
    }

    fn open_file(path: &Path) -> Result<Database> {
        let db = Database::create(path).map_err(|e| {
            let e = store_err(e);
            match e {
                Error::StoreFull(_) => e,
                _ => Error::Store(format!("cannot open {}: {e}", path.display())),
            }
        })?;
        // Create both tables up front so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(ENTRIES).map_err(store_err)?;
        txn.open_table(META).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(db)
    }

    /// The open file, opened again first if an operation broke it (this may wait: call it on
    /// a blocking thread, or after [`RedbStore::ready`]).
    fn db(&self) -> Result<Arc<Database>> {
        if self.broken.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::Store("the store file is being opened again".into()))
    }

    /// Closes and opens the file again (redb's way out of a failed I/O), once the operations
    /// still using the old handle are done (a few seconds at most; else a later call tries).
    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(()); // another caller did it
        }
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(Error::Store(
                            "the store file is busy; it is opened again at the next request".into(),
                        ));
                    }
                }
            }
        }
        match RedbStore::open_file(&self.path) {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                self.broken.store(false, Ordering::SeqCst);
                tracing::warn!(path = %self.path.display(), "the store file was opened again after an I/O error");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the file again, off the async threads, if an operation broke it.
    async fn ready(&self) -> Result<()> {
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.reopen())
            .await
            .map_err(store_err)?
    }

    /// Notes an operation's failure that leaves the file to be opened again.
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if breaks_the_file(e) {
                self.broken.store(true, Ordering::SeqCst);
            }
        }
        result
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = store.db()?;
            let result = work(&db);
            drop(db);
            store.note(result)
        })
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
        self.ready().await?;
        let db = self.db()?;
        let tx = db.begin_read().map_err(store_err)?;
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
        self.ready().await?;
        let db = self.db()?;
        let tx = db.begin_read().map_err(store_err)?;
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
