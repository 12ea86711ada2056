//! Users and their token hashes, kept in memory for the request path: every request with a
//! user's token (and every request without one, to learn whether users exist) would otherwise
//! read the store.
//!
//! The copy is whole (`users/` read in one list) and is kept true two ways: where no one
//! writes the store but this process (redb, memory) it is valid while the store's generation
//! is unchanged; where others write it too (etcd, a cluster's nodes) it is read again after
//! [`USERS_FRESH_FOR`], so a token reset or a user removed on one node is refused on every
//! node within that time. This process's own changes drop the copy at once.

use std::collections::HashMap;
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
    /// The store's generation when it was read (stores that have one).
    generation: Option<u64>,
    read_at: Instant,
}

/// The copy, and one reader at a time.
#[derive(Default)]
pub(crate) struct UserCache {
    copy: RwLock<Option<Copy>>,
    reading: tokio::sync::Mutex<()>,
}

impl UserCache {
    fn fresh(&self, generation: Option<u64>) -> Option<Users> {
        let copy = self.copy.read().unwrap_or_else(|p| p.into_inner());
        let copy = copy.as_ref()?;
        let fresh = match (copy.generation, generation) {
            (Some(then), Some(now)) => then == now,
            (None, None) => copy.read_at.elapsed() < USERS_FRESH_FOR,
            _ => false,
        };
        fresh.then(|| copy.users.clone())
    }
}

impl Context {
    /// Every user, from memory while the copy is true (see the module).
    pub(crate) async fn users_now(&self) -> Result<Users> {
        let cache = &self.shared.users;
        if let Some(users) = cache.fresh(self.shared.store.generation()) {
            return Ok(users);
        }
        let _one = cache.reading.lock().await;
        // The generation before the read: a write meanwhile leaves the copy old, not believed.
        let generation = self.shared.store.generation();
        if let Some(users) = cache.fresh(generation) {
            return Ok(users);
        }
        let records: Vec<UserRecord> = self.read_all(keys::USERS).await?;
        let users: Users = Arc::new(records.into_iter().map(|u| (u.name.clone(), u)).collect());
        *cache.copy.write().unwrap_or_else(|p| p.into_inner()) = Some(Copy {
            users: users.clone(),
            generation,
            read_at: Instant::now(),
        });
        Ok(users)
    }

    /// Drops the copy: this process changed a user.
    pub(crate) fn forget_users(&self) {
        *self
            .shared
            .users
            .copy
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}
