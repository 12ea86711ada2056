//! Users and their token hashes, kept in memory for the request path: every request with a
//! user's token (and every request without one, to learn whether users exist) would otherwise
//! read the store.
//!
//! The copy is whole (`users/` read in one list) and is kept true two ways: this process's own
//! changes of a user drop it at once (a copy read while one was being made is not believed);
//! where others write the store too (etcd, a cluster's nodes: stores without a generation) it
//! is also read again after [`USERS_FRESH_FOR`], so a token reset or a user removed on one node
//! is refused on every node within that time. Where no one else writes (redb, memory) other
//! writes (a patch's) leave it alone: reads never wait for it to be read again under load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::engine::access::UserRecord;
use crate::engine::Context;
use crate::error::Result;
use crate::keys;

/// How long a copy read from a store others write too is believed.
pub(crate) const USERS_FRESH_FOR: Duration = Duration::from_millis(500);

/// Every user by name.
pub(crate) type Users = Arc<HashMap<String, UserRecord>>;

struct Copy {
    users: Users,
    /// [`UserCache::changes`] when it was read.
    changes: u64,
    read_at: Instant,
}

/// The copy, and one reader at a time.
#[derive(Default)]
pub(crate) struct UserCache {
    copy: RwLock<Option<Copy>>,
    /// Changes of a user made by this process so far.
    changes: AtomicU64,
    reading: tokio::sync::Mutex<()>,
}

impl UserCache {
    /// The copy, if it is still true; `only_writer`: no one else writes the store.
    fn fresh(&self, only_writer: bool) -> Option<Users> {
        let copy = self.copy.read().unwrap_or_else(|p| p.into_inner());
        let copy = copy.as_ref()?;
        let fresh = copy.changes == self.changes.load(Ordering::SeqCst)
            && (only_writer || copy.read_at.elapsed() < USERS_FRESH_FOR);
        fresh.then(|| copy.users.clone())
    }
}

impl Context {
    /// Every user, from memory while the copy is true (see the module).
    pub(crate) async fn users_now(&self) -> Result<Users> {
        let cache = &self.shared.users;
        let only_writer = self.shared.store.generation().is_some();
        if let Some(users) = cache.fresh(only_writer) {
            return Ok(users);
        }
        let _one = cache.reading.lock().await;
        if let Some(users) = cache.fresh(only_writer) {
            return Ok(users);
        }
        // Counted before the read: a change meanwhile leaves this copy not believed.
        let changes = cache.changes.load(Ordering::SeqCst);
        let records: Vec<UserRecord> = self.read_all(keys::USERS).await?;
        let users: Users = Arc::new(records.into_iter().map(|u| (u.name.clone(), u)).collect());
        *cache.copy.write().unwrap_or_else(|p| p.into_inner()) = Some(Copy {
            users: users.clone(),
            changes,
            read_at: Instant::now(),
        });
        Ok(users)
    }

    /// The copy, if it is true now; never reads the store.
    pub(crate) fn users_if_fresh(&self) -> Option<Users> {
        let only_writer = self.shared.store.generation().is_some();
        self.shared.users.fresh(only_writer)
    }

    /// Drops the copy: this process changed a user (call it once the change is written, or
    /// failed).
    pub(crate) fn forget_users(&self) {
        let cache = &self.shared.users;
        cache.changes.fetch_add(1, Ordering::SeqCst);
        *cache.copy.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
