//! Resources in proportion to GPUs: CPUs, memory and shared memory per GPU, and a base share
//! for cardless containers. A run or patch may ask for less than its share, never more.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Docker refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// CPU, memory and shared-memory limits of one container; `None` leaves one unlimited (shm:
/// Docker's 64 MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// CPUs in thousandths (1500 = one and a half CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u64>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Size of `/dev/shm` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<u64>,
}

impl Limits {
    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// Each field of `self` where set, else `other`'s.
    pub fn or(self, other: Limits) -> Limits {
        Limits {
            millicpus: self.millicpus.or(other.millicpus),
            memory: self.memory.or(other.memory),
            shm: self.shm.or(other.shm),
        }
    }

    fn times(self, n: u64) -> Limits {
        Limits {
            millicpus: self.millicpus.map(|v| v.saturating_mul(n)),
            memory: self.memory.map(|v| v.saturating_mul(n)),
            shm: self.shm.map(|v| v.saturating_mul(n)),
        }
    }

    fn fields(&self) -> [(&'static str, Option<u64>); 3] {
        [
            ("cpus", self.millicpus),
            ("memory", self.memory),
            ("shm", self.shm),
        ]
    }
}

/// How far a set's writable layer (its root filesystem's changes) may grow, and how often it is
/// measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsPolicy {
    /// Bytes per set (default 100 GB). Enforced where the storage driver can (overlay2 on xfs
    /// with `pquota`, btrfs, zfs, devicemapper); elsewhere a set over it gets an event and
    /// its patches and commits are refused until it is under again. `None`: no limit.
    pub size: Option<u64>,
    /// How often every container's writable layer is measured (default 5 minutes; Docker
    /// walks each layer's files to answer).
    pub measure_interval: std::time::Duration,
}

impl Default for RootfsPolicy {
    fn default() -> RootfsPolicy {
        RootfsPolicy {
            size: Some(100 << 30),
            measure_interval: std::time::Duration::from_secs(300),
        }
    }
}

/// How much of the host a container gets for its GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePolicy {
    /// What each GPU brings; a container with N GPUs gets N times this.
    pub per_gpu: Limits,
    /// What a container without GPUs gets.
    pub cardless: Limits,
    /// Run an init process (tini) as PID 1, so orphaned processes are reaped and release their
    /// GPU memory (default on).
    pub init: bool,
}

impl Default for ResourcePolicy {
    fn default() -> ResourcePolicy {
        ResourcePolicy {
            per_gpu: Limits::default(),
            cardless: Limits::default(),
            init: true,
        }
    }
}

impl ResourcePolicy {
    /// The share of a container with `gpus` GPUs.
    pub fn share(&self, gpus: u32) -> Limits {
        if gpus == 0 {
            self.cardless
        } else {
            self.per_gpu.times(u64::from(gpus))
        }
    }

    /// The limits for `gpus` GPUs when the user asks for `asked`: each asked field must fit
    /// the share; unasked fields get the share.
    pub fn grant(&self, gpus: u32, asked: &Limits) -> Result<Limits> {
        if asked.memory.is_some_and(|m| m < MIN_MEMORY) {
            return Err(Error::InvalidParams(
                "memory must be at least 6MB (Docker's minimum)".into(),
            ));
        }
        if asked.millicpus == Some(0) || asked.shm == Some(0) {
            return Err(Error::InvalidParams(
                "cpus and shm, when given, must be more than 0".into(),
            ));
        }
        let share = self.share(gpus);
        for ((what, asked), (_, allowed)) in asked.fields().into_iter().zip(share.fields()) {
            if let (Some(asked), Some(allowed)) = (asked, allowed) {
                if asked > allowed {
                    return Err(Error::OverShare(format!(
                        "{what} {} is more than the share of {gpus} GPU(s), {}",
                        show(what, asked),
                        show(what, allowed)
                    )));
                }
            }
        }
        Ok(asked.or(share))
    }

    /// Like [`ResourcePolicy::grant`] for limits asked earlier (a patch that changes the GPU
    /// count, a rollback, a changed policy): what no longer fits is cut to the share.
    pub fn fit(&self, gpus: u32, asked: &Limits) -> Limits {
        let share = self.share(gpus);
        let cut = |a: Option<u64>, s: Option<u64>| match (a, s) {
            (Some(a), Some(s)) => Some(a.min(s)),
            (a, s) => a.or(s),
        };
        Limits {
            millicpus: cut(asked.millicpus, share.millicpus),
            memory: cut(asked.memory, share.memory),
            shm: cut(asked.shm, share.shm),
        }
    }
}

/// Parses a CPU count, `1.5` → 1500 thousandths.
pub fn parse_cpus(text: &str) -> Result<u64> {
    let cpus: f64 = text.trim().parse().map_err(|_| {
        Error::InvalidParams(format!("cpus '{text}' is not a number (1, 0.5, 2.25)"))
    })?;
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 1_000_000.0 {
        return Err(Error::InvalidParams(format!(
            "cpus '{text}' must be more than 0"
        )));
    }
    Ok((cpus * 1000.0).round() as u64)
}

fn show(what: &str, value: u64) -> String {
    if what == "cpus" {
        format!("{}", value as f64 / 1000.0)
    } else {
        format!("{}MB", value / (1024 * 1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1024 * 1024 * 1024;

    fn policy() -> ResourcePolicy {
        ResourcePolicy {
            per_gpu: Limits {
                millicpus: Some(4000),
                memory: Some(16 * GB),
                shm: Some(2 * GB),
            },
            cardless: Limits {
                millicpus: Some(1000),
                memory: Some(2 * GB),
                shm: None,
            },
            init: true,
        }
    }

    #[test]
    fn the_share_grows_with_the_gpus_and_cardless_gets_the_base() {
        let p = policy();
        assert_eq!(p.share(2).millicpus, Some(8000));
        assert_eq!(p.share(2).memory, Some(32 * GB));
        assert_eq!(p.share(0), p.cardless);
        assert_eq!(ResourcePolicy::default().share(8), Limits::default());
    }

    #[test]
    fn a_request_may_ask_less_never_more() {
        let p = policy();
        let less = Limits {
            millicpus: Some(2000),
            ..Default::default()
        };
        let granted = p.grant(1, &less).unwrap();
        assert_eq!(granted.millicpus, Some(2000));
        assert_eq!(granted.memory, Some(16 * GB));
        let more = Limits {
            memory: Some(17 * GB),
            ..Default::default()
        };
        assert_eq!(p.grant(1, &more).unwrap_err().code(), 1043);
        assert!(p.grant(2, &more).is_ok());
        let tiny = Limits {
            memory: Some(1024),
            ..Default::default()
        };
        assert_eq!(p.grant(1, &tiny).unwrap_err().code(), 1000);
    }

    #[test]
    fn earlier_requests_are_cut_to_a_smaller_share() {
        let p = policy();
        let asked = Limits {
            millicpus: Some(6000),
            ..Default::default()
        };
        assert_eq!(p.fit(1, &asked).millicpus, Some(4000));
        assert_eq!(p.fit(2, &asked).millicpus, Some(6000));
    }

    #[test]
    fn cpus_parse_to_thousandths() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        for bad in ["0", "-1", "x", "NaN"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }
}

/// Failed authentications allowed from one address in a burst.
pub const FAILURE_BURST: f64 = 10.0;
/// Failed authentications per second one address earns back.
pub const FAILURES_PER_SECOND: f64 = 3.0;

/// A token bucket of failed authentications per client address: the API's tokens and the
/// SSH gateway's keys are limited alike.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
    /// Whether any failure was ever counted: until then, every address is allowed without
    /// taking the lock (the request path of a server no one guesses tokens at).
    any: std::sync::atomic::AtomicBool,
}

impl FailureLimiter {
    fn allowance(&self, address: Option<IpAddr>, now: Instant) -> f64 {
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return FAILURE_BURST;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(&address) {
            None => FAILURE_BURST,
            Some((left, at)) => refill(*left, *at, now),
        }
    }

    /// Whether `address` may try to authenticate now.
    pub fn allows(&self, address: Option<IpAddr>) -> bool {
        self.allowance(address, Instant::now()) >= 1.0
    }

    /// Counts one failure of `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        if buckets.len() > 10_000 {
            // Forget addresses whose allowance is full again.
            buckets.retain(|_, (left, at)| refill(*left, *at, now) < FAILURE_BURST);
        }
        let left = match buckets.get(&address) {
            None => FAILURE_BURST,
            Some((left, at)) => refill(*left, *at, now),
        };
        buckets.insert(address, ((left - 1.0).max(0.0), now));
    }
}

fn refill(left: f64, at: Instant, now: Instant) -> f64 {
    (left + now.duration_since(at).as_secs_f64() * FAILURES_PER_SECOND).min(FAILURE_BURST)
}
