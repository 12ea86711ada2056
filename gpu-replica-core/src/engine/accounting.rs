//! GPU-time: every transaction that takes or gives back GPU claims of a replicaSet also writes
//! a record of the change (`+2` at run, `-2` at stop, `+1` when a patch claims one more GPU,
//! `-1` when it gives one back), stamped by the engine's [`Clock`]. A set's GPU count at any
//! moment is the sum of its records up to then, so GPU-seconds are exact across versions (a
//! GPU kept by a patch is one claim, never counted twice) and survive restarts: they live in
//! the store, written in the same transaction as the claims they describe.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::records::encode;
use crate::engine::Context;
use crate::keys;
use crate::model::ReplicaSet;
use crate::store::Txn;

/// Where the engine reads the time of GPU claims from.
pub trait Clock: Send + Sync {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).max(0) as u64
    }
}

/// A clock that moves only when told: a test scripts a timeline with it.
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    /// A clock showing `secs` seconds since the epoch.
    pub fn at(secs: u64) -> ManualClock {
        ManualClock {
            micros: AtomicU64::new(secs * 1_000_000),
        }
    }

    /// Sets the time to `secs` seconds since the epoch.
    pub fn set(&self, secs: u64) {
        self.micros.store(secs * 1_000_000, Ordering::SeqCst);
    }

    /// Moves the time on by `secs` seconds.
    pub fn advance(&self, secs: u64) {
        self.micros.fetch_add(secs * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// One change of a replicaSet's GPU claims, as stored under `gpu-time/{owner}/{set id}/…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GpuTime {
    /// The set's name when it happened.
    pub name: String,
    /// GPUs claimed (positive) or given back (negative).
    pub delta: i64,
    /// When, in microseconds since the epoch.
    pub at: u64,
}

/// Makes record keys unique within a process when the clock stands still.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Context {
    /// Adds to `txn` the record of `head`'s set taking (`delta > 0`) or giving back GPUs.
    pub(crate) fn account(&self, txn: Txn, head: &ReplicaSet, delta: i64) -> Txn {
        if delta == 0 {
            return txn;
        }
        let at = self.shared.clock.now_micros();
        let unique = format!(
            "{}{:08x}",
            self.shared.instance,
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let record = GpuTime {
            name: head.name.clone(),
            delta,
            at,
        };
        txn.put(
            keys::gpu_time(&head.owner, &head.image_id(), at, &unique),
            encode(&record),
        )
    }
}
