//! Backups of the state store, and the schema version its records follow.
//!
//! A backup is every record of the store read at one point in time (one read transaction in
//! redb, one ranged read at one revision in etcd), written as lines of JSON: a [`Header`], one
//! line per record (key and base64 value), and a trailer with the number of records and the
//! SHA-256 of every byte before it, so a cut or altered file is refused instead of restored in
//! part. Keys bound to a lease (a node's liveness) are left out: they belong to a running
//! process, not to the state.
//!
//! [`restore`] writes a backup into an empty store and marks it ([`keys::RESTORED`]): the next
//! start's recovery says so, and, as at every start, it removes only Docker objects the records
//! prove it made and let go; containers, snapshots and volumes made after the backup are
//! reported and left alone.
//!
//! The store carries the version of its records' schema ([`keys::SCHEMA`]). [`upgrade`] runs at
//! start: a store of an older schema is backed up next to the store and migrated forward in one
//! transaction; a store of a newer schema than this binary knows stops the start with the
//! version it needs.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys;
use crate::store::{Entry, StateStore, Txn};

/// The first field of every backup.
pub const FORMAT: &str = "gpu-replica-backup";

/// The version of the backup file's layout (not of the records in it: see [`SCHEMA`]).
pub const FORMAT_VERSION: u32 = 1;

/// The version of the records' schema this binary writes. Raised by one with every change of
/// a record that an older binary would misread, together with a step in [`MIGRATIONS`].
pub const SCHEMA: u32 = 1;

/// Records written per transaction by [`restore`] (etcd takes at most 128 operations in one).
const RESTORE_BATCH: usize = 100;

/// A migration of every record from schema `n` to `n + 1`: given the records, the writes.
type Migration = fn(&[Entry]) -> Vec<crate::store::Write>;

/// `MIGRATIONS[n]` takes schema `n` to `n + 1`. Schema 0 is a store written before stores
/// carried a version: its records are read as they are (every field added since has a
/// default), so its step writes nothing but the version.
const MIGRATIONS: [Migration; SCHEMA as usize] = [|_| Vec::new()];

/// What a backup says about itself (its first line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The file's layout, [`FORMAT_VERSION`] when written by this binary.
    pub format_version: u32,
    /// The records' schema ([`SCHEMA`] of the binary that wrote the store).
    pub schema: u32,
    /// When it was taken, RFC 3339.
    pub created: String,
    /// When it was taken, seconds since the epoch.
    pub created_unix: i64,
    /// The gpu-replica version that took it.
    pub written_by: String,
    /// The store it was taken from, as [`StateStore::describe`] says.
    pub store: String,
    /// The store's identity (the label on every Docker object it made), if it had one.
    pub store_id: Option<String>,
    /// The nodes recorded in it (a cluster's), by name.
    pub nodes: Vec<String>,
    /// How many records follow.
    pub records: usize,
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trailer {
    end: usize,
    sha256: String,
}

/// A backup read back and checked: its header and its records.
#[derive(Debug, Clone)]
pub struct Backup {
    /// What it says about itself.
    pub header: Header,
    /// Every record, in key order.
    pub records: Vec<(String, Vec<u8>)>,
}

/// Whether `key` belongs in a backup (leased keys belong to running processes).
fn kept(key: &str) -> bool {
    !key.starts_with(keys::NODES_ALIVE) && key != keys::RESTORED
}

/// The store's schema version, from its version record `entry`: `None` on an empty store, 0
/// on one written before stores carried a version.
async fn schema_of(store: &dyn StateStore, entry: Option<&Entry>) -> Result<Option<u32>> {
    if let Some(entry) = entry {
        let text = String::from_utf8_lossy(&entry.value);
        return text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Store(format!("{} holds '{text}', not a number", keys::SCHEMA)));
    }
    let any = store.get(keys::STORE_ID).await?.is_some()
        || !store.list(keys::REPLICA_SETS).await?.is_empty()
        || !store.list(keys::USERS).await?.is_empty();
    Ok(any.then_some(0))
}

/// Takes a backup of `store` (every record at one point in time): its header and the bytes of
/// the file.
pub async fn take(store: &dyn StateStore) -> Result<(Header, Vec<u8>)> {
    let entries = store.list("").await?;
    let schema = entries
        .iter()
        .find(|e| e.key == keys::SCHEMA)
        .and_then(|e| String::from_utf8_lossy(&e.value).trim().parse().ok())
        .unwrap_or(0);
    let store_id = entries
        .iter()
        .find(|e| e.key == keys::STORE_ID)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    let nodes = entries
        .iter()
        .filter_map(|e| e.key.strip_prefix(keys::NODES))
        .map(str::to_string)
        .collect();
    let kept: Vec<&Entry> = entries.iter().filter(|e| kept(&e.key)).collect();
    let now = unix_now();
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        schema,
        created: crate::model::rfc3339(now),
        created_unix: now,
        written_by: env!("CARGO_PKG_VERSION").into(),
        store: store.describe(),
        store_id,
        nodes,
        records: kept.len(),
    };
    let mut out = Vec::with_capacity(kept.iter().map(|e| e.key.len() + e.value.len()).sum());
    push(&mut out, &header);
    let b64 = base64::engine::general_purpose::STANDARD;
    for entry in kept {
        let line = Line {
            key: entry.key.clone(),
            value: b64.encode(&entry.value),
        };
        push(&mut out, &line);
    }
    let trailer = Trailer {
        end: header.records,
        sha256: hex(&Sha256::digest(&out)),
    };
    push(&mut out, &trailer);
    Ok((header, out))
}

/// Appends `value` as one line of JSON.
fn push(out: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(&mut *out, value).expect("JSON into memory");
    out.push(b'\n');
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and checks a backup file's bytes: the header's format, every line, the count and the
/// checksum. Nothing is written anywhere.
pub fn read(bytes: &[u8]) -> Result<Backup> {
    let bad = |why: String| Error::InvalidParams(format!("not a usable backup: {why}"));
    let body_end = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .ok_or_else(|| bad("it has fewer than two lines (cut short?)".into()))?;
    let (body, last) = bytes.split_at(body_end);
    let trailer: Trailer = serde_json::from_slice(last)
        .map_err(|_| bad("its last line is not the end mark (cut short?)".into()))?;
    if hex(&Sha256::digest(body)) != trailer.sha256 {
        return Err(bad(
            "its checksum does not match (the file was altered or damaged)".into(),
        ));
    }
    let mut lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let header: Header = lines
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .ok_or_else(|| bad("its first line is not a gpu-replica backup header".into()))?;
    if header.format != FORMAT {
        return Err(bad(format!("its format is '{}'", header.format)));
    }
    if header.format_version > FORMAT_VERSION {
        return Err(bad(format!(
            "it was written in backup format {} by gpu-replica {}; this one reads format {} (use a newer release)",
            header.format_version, header.written_by, FORMAT_VERSION
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut records = Vec::with_capacity(header.records);
    for (n, line) in lines.enumerate() {
        let line: Line =
            serde_json::from_slice(line).map_err(|e| bad(format!("record {}: {e}", n + 1)))?;
        let value = b64
            .decode(line.value.as_bytes())
            .map_err(|e| bad(format!("record {} ({}): {e}", n + 1, line.key)))?;
        records.push((line.key, value));
    }
    if records.len() != header.records || trailer.end != header.records {
        return Err(bad(format!(
            "the header announces {} records, the file holds {}",
            header.records,
            records.len()
        )));
    }
    Ok(Backup { header, records })
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup's header.
    pub header: Header,
    /// Records written.
    pub records: usize,
    /// Where the store file it replaced was kept ([`restore_file`] with `replace`).
    pub kept_aside: Option<PathBuf>,
}

/// Writes `backup` into `store`, which must hold no records (a new redb file, an unused etcd
/// prefix) unless `replace`, which first removes every record it holds. The server using the
/// store must be stopped. Marks the store restored (see the module).
pub async fn restore(store: &dyn StateStore, backup: &Backup, replace: bool) -> Result<Restored> {
    if backup.header.schema > SCHEMA {
        return Err(Error::InvalidParams(format!(
            "the backup holds records of schema {}; this gpu-replica ({}) knows schema {} at most: restore it with a newer release",
            backup.header.schema,
            env!("CARGO_PKG_VERSION"),
            SCHEMA
        )));
    }
    let present = store.list("").await?;
    if !present.is_empty() {
        if !replace {
            return Err(Error::InvalidParams(format!(
                "{} already holds {} records; restore into an empty store, or replace them (--replace)",
                store.describe(),
                present.len()
            )));
        }
        for chunk in present.chunks(RESTORE_BATCH) {
            let txn = chunk
                .iter()
                .fold(Txn::new(), |t, e| t.delete(e.key.as_str()));
            store.commit(txn).await?;
        }
    }
    for chunk in backup.records.chunks(RESTORE_BATCH) {
        let txn = chunk
            .iter()
            .filter(|(key, _)| kept(key))
            .fold(Txn::new(), |t, (key, value)| {
                t.absent(key.as_str()).put(key.as_str(), value.clone())
            });
        if !store.commit(txn).await? {
            return Err(Error::Store(
                "records appeared in the store while restoring: is a server using it?".into(),
            ));
        }
    }
    let marker = serde_json::to_vec(&backup.header).expect("JSON into memory");
    store.put(keys::RESTORED, marker).await?;
    Ok(Restored {
        header: backup.header.clone(),
        records: backup.records.len(),
        kept_aside: None,
    })
}

/// [`restore`] into the redb file at `path` (made when missing). With `replace`, a file that
/// holds records is first moved aside (`NAME.before-restore-TIME`) rather than emptied, so the
/// store it held is kept. A file a running server holds open is refused.
pub async fn restore_file(path: &Path, backup: &Backup, replace: bool) -> Result<Restored> {
    let open = || {
        crate::store::RedbStore::open(path).map_err(|e| {
            if e.to_string().contains("already open") {
                Error::Store(format!(
                    "{} is open in a running server: stop the server first",
                    path.display()
                ))
            } else {
                e
            }
        })
    };
    let mut kept_aside = None;
    if replace && path.exists() {
        let held = open()?.list("").await?.len();
        if held > 0 {
            let aside = path.with_file_name(format!(
                "{}.before-restore-{}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                unix_now()
            ));
            std::fs::rename(path, &aside)
                .map_err(|e| Error::Store(format!("cannot move {} aside: {e}", path.display())))?;
            kept_aside = Some(aside);
        }
    }
    let mut done = restore(&open()?, backup, false).await?;
    done.kept_aside = kept_aside;
    Ok(done)
}

/// What [`upgrade`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// A new store: stamped with [`SCHEMA`].
    Fresh,
    /// Already at [`SCHEMA`].
    Current,
    /// Migrated from schema `from`; the store as it was is in `backup` (when a folder was
    /// given).
    Migrated {
        /// The schema found.
        from: u32,
        /// The backup written before migrating.
        backup: Option<PathBuf>,
    },
}

/// Brings the store to [`SCHEMA`] at start: an older one is backed up into `backup_dir` (when
/// given) and migrated in one transaction (several engines starting at once: one migrates, the
/// others find it done); a newer one is refused with the version it needs.
pub async fn upgrade(store: &dyn StateStore, backup_dir: Option<&Path>) -> Result<Upgrade> {
    loop {
        let entry = store.get(keys::SCHEMA).await?;
        let found = schema_of(store, entry.as_ref()).await?;
        let stamp = |txn: Txn| match &entry {
            Some(e) => txn.unchanged(keys::SCHEMA, e.revision),
            None => txn.absent(keys::SCHEMA),
        };
        match found {
            None => {
                let txn = stamp(Txn::new()).put(keys::SCHEMA, SCHEMA.to_string().into_bytes());
                if store.commit(txn).await? {
                    return Ok(Upgrade::Fresh);
                }
            }
            Some(found) if found == SCHEMA => return Ok(Upgrade::Current),
            Some(found) if found > SCHEMA => {
                return Err(Error::Store(format!(
                    "this store holds records of schema {found}, written by a newer gpu-replica; this one ({}) reads schema {SCHEMA} at most: run a release that reads schema {found} (or restore a backup taken before the upgrade)",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            Some(found) => {
                let backup = match backup_dir {
                    Some(dir) => {
                        let (_, bytes) = take(store).await?;
                        std::fs::create_dir_all(dir).map_err(|e| {
                            Error::Store(format!("cannot create {}: {e}", dir.display()))
                        })?;
                        let path = dir.join(format!(
                            "before-schema-{SCHEMA}-{}.backup",
                            unix_now()
                        ));
                        write_file(&path, &bytes).map_err(|e| {
                            let text = format!("cannot write {}: {e}", path.display());
                            if e.raw_os_error() == Some(28) {
                                Error::StoreFull(text)
                            } else {
                                Error::Store(text)
                            }
                        })?;
                        Some(path)
                    }
                    None => None,
                };
                let entries = store.list("").await?;
                let txn = (found..SCHEMA)
                    .flat_map(|n| MIGRATIONS[n as usize](&entries))
                    .fold(stamp(Txn::new()), |mut t, w| {
                        t.writes.push(w);
                        t
                    })
                    .put(keys::SCHEMA, SCHEMA.to_string().into_bytes());
                if store.commit(txn).await? {
                    tracing::warn!(
                        from = found,
                        to = SCHEMA,
                        backup = ?backup,
                        "the store's records were migrated to this release's schema"
                    );
                    return Ok(Upgrade::Migrated {
                        from: found,
                        backup,
                    });
                }
            }
        }
        // Another engine stamped or migrated it meanwhile: look again.
    }
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, synced, renamed.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    async fn filled() -> MemoryStore {
        let store = MemoryStore::new();
        store.put(keys::STORE_ID, b"abc".to_vec()).await.unwrap();
        store.put(keys::SCHEMA, b"1".to_vec()).await.unwrap();
        store
            .put("replicasets/a", br#"{"x":1}"#.to_vec())
            .await
            .unwrap();
        store.put("nodes/n1", b"{}".to_vec()).await.unwrap();
        store.put("nodes-alive/n1", b"url".to_vec()).await.unwrap();
        store.put("proxy/key", vec![0, 255, 10, 13]).await.unwrap();
        store
    }

    #[tokio::test]
    async fn a_backup_restores_every_record_but_leases_and_marks_the_store() {
        let bytes = take(&filled().await).await.unwrap().1;
        let backup = read(&bytes).unwrap();
        assert_eq!(backup.header.records, 5);
        assert_eq!(backup.header.nodes, vec!["n1".to_string()]);
        assert_eq!(backup.header.store_id.as_deref(), Some("abc"));
        assert_eq!(backup.header.schema, 1);
        let into = MemoryStore::new();
        let done = restore(&into, &backup, false).await.unwrap();
        assert_eq!(done.records, 5);
        assert_eq!(
            into.get("proxy/key").await.unwrap().unwrap().value,
            vec![0, 255, 10, 13]
        );
        assert!(into.get("nodes-alive/n1").await.unwrap().is_none());
        assert!(into.get(keys::RESTORED).await.unwrap().is_some());
        // Not over records, unless asked.
        assert!(matches!(
            restore(&into, &backup, false).await,
            Err(Error::InvalidParams(_))
        ));
        into.put("replicasets/b", b"{}".to_vec()).await.unwrap();
        restore(&into, &backup, true).await.unwrap();
        assert!(into.get("replicasets/b").await.unwrap().is_none());
        // A backup of a restored store does not carry the mark.
        let again = read(&take(&into).await.unwrap().1).unwrap();
        assert_eq!(again.records.len(), 5);
    }

    #[tokio::test]
    async fn a_cut_or_altered_backup_is_refused() {
        let bytes = take(&filled().await).await.unwrap().1;
        for cut in [10, bytes.len() / 2, bytes.len() - 5] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let text = String::from_utf8(bytes.clone()).unwrap();
        let altered = text.replacen("replicasets/a", "replicasets/z", 1);
        let err = read(altered.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(read(b"hello\nworld\n").is_err());
    }

    #[tokio::test]
    async fn the_schema_is_stamped_migrated_or_refused() {
        let store = MemoryStore::new();
        assert_eq!(upgrade(&store, None).await.unwrap(), Upgrade::Fresh);
        assert_eq!(upgrade(&store, None).await.unwrap(), Upgrade::Current);
        // A store from before versions: migrated, with a backup beside it.
        let old = MemoryStore::new();
        old.put(keys::STORE_ID, b"old".to_vec()).await.unwrap();
        old.put("replicasets/a", b"{}".to_vec()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let Upgrade::Migrated { from, backup } = upgrade(&old, Some(dir.path())).await.unwrap()
        else {
            panic!("not migrated")
        };
        assert_eq!(from, 0);
        let saved = read(&std::fs::read(backup.unwrap()).unwrap()).unwrap();
        assert_eq!(saved.header.schema, 0);
        assert_eq!(saved.records.len(), 2);
        assert_eq!(
            old.get(keys::SCHEMA).await.unwrap().unwrap().value,
            SCHEMA.to_string().into_bytes()
        );
        // A newer store stops this binary, saying what it needs.
        old.put(keys::SCHEMA, b"99".to_vec()).await.unwrap();
        let err = upgrade(&old, None).await.unwrap_err().to_string();
        assert!(err.contains("schema 99"), "{err}");
    }
}
