//! Timers that stop a replicaSet on their own: after its GPUs have been idle for a while, or
//! at a set time. Both are stored in the replicaSet's head, so they survive a restart; a timer
//! stops the set as [`Engine::stop`] does, releasing its GPUs and ports.
//!
//! [`Engine::tick_timers`] is one pass; [`Engine::spawn_timers`] runs it every
//! [`crate::EngineConfig::timer_interval`]. Idleness is read from the GPU inventory (NVML's
//! utilization; fake GPUs report what [`crate::StaticInventory::set_utilization`] sets) and
//! counted in memory, so after a restart an idle set gets its full grace again.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::engine::encode;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{rfc3339, ReplicaSet, Status, Timers};
use crate::ops::Engine;
use crate::store::Txn;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Parses a duration: a whole number with `s`, `m`, `h` or `d` (`90s`, `30m`, `2h`).
pub fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    // The unit is the last character, whatever its width (the text is the user's).
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if factor > 0 && n > 0 => Ok(n.saturating_mul(factor)),
        _ => Err(Error::InvalidParams(format!(
            "duration '{text}' is not a whole number above 0 with s, m, h or d (30m, 2h)"
        ))),
    }
}

/// Parses an RFC 3339 time (`2026-11-23T08:00:00Z`) to seconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            Error::InvalidParams(format!(
                "time '{text}' is not RFC 3339 (2026-11-23T08:00:00Z)"
            ))
        })
}

impl Engine {
    /// Replaces the timers of `name` (an empty [`Timers`] clears them). A stop time must lie
    /// in the future.
    pub async fn set_timers(&self, name: &str, timers: Timers) -> Result<Timers> {
        let outcome = async {
            if timers.idle_stop_secs == Some(0) {
                return Err(Error::InvalidParams(
                    "the idle time must be more than 0".into(),
                ));
            }
            if let Some(at) = timers.stop_at.filter(|at| *at <= unix_now()) {
                return Err(Error::StopTimePast(rfc3339(at)));
            }
            let _guard = self.ctx.lock_set(name).await;
            self.ctx.settle(name).await?;
            let (mut head, revision) = self.ctx.head(name).await?;
            head.timers = timers.clone();
            let txn = Txn::new()
                .unchanged(keys::replica_set(name), revision)
                .put(keys::replica_set(name), encode(&head));
            self.ctx.commit(txn).await?;
            Ok(timers)
        };
        self.ctx
            .recorded("timers", name, describe_timers, outcome)
            .await
    }

    /// One pass over every replicaSet with timers: stops those whose stop time has come or
    /// whose GPUs have been idle long enough. Returns the names it stopped.
    pub async fn tick_timers(&self) -> Result<Vec<String>> {
        let heads: Vec<ReplicaSet> = self
            .ctx
            .own_sets()
            .await?
            .into_iter()
            .filter(|h| !h.timers.is_empty())
            .collect();
        let watch_idle = heads.iter().any(|h| {
            h.timers.idle_stop_secs.is_some() && h.status == Status::Running && !h.gpus.is_empty()
        });
        let utilization: HashMap<String, Option<u32>> = if watch_idle {
            match self.ctx.shared.inventory.gpus().await {
                Ok(gpus) => gpus.into_iter().map(|g| (g.uuid, g.utilization)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "GPU utilization not readable; idle timers wait");
                    HashMap::new()
                }
            }
        } else {
            HashMap::new()
        };
        let now = unix_now();
        let mut stopped = Vec::new();
        for head in &heads {
            let name = head.name.as_str();
            if let Some(at) = head.timers.stop_at.filter(|at| *at <= now) {
                if head.status != Status::Stopped {
                    let outcome = self.stop_set(name).await;
                    let message = match &outcome {
                        Ok(()) => format!("stopped at {}; GPUs and ports released", rfc3339(at)),
                        Err(e) => e.to_string(),
                    };
                    self.ctx
                        .emit("timer.at", name, outcome.is_ok(), message)
                        .await;
                    if outcome.is_err() {
                        continue;
                    }
                    stopped.push(name.to_string());
                }
                self.clear_stop_at(name, at).await?;
                continue;
            }
            let idle = head.status == Status::Running
                && !head.gpus.is_empty()
                && head
                    .gpus
                    .iter()
                    .all(|g| utilization.get(g).copied().flatten() == Some(0));
            let limit = match head.timers.idle_stop_secs {
                Some(secs) if idle => secs,
                _ => {
                    self.idle_clock().remove(name);
                    continue;
                }
            };
            let since = *self
                .idle_clock()
                .entry(name.to_string())
                .or_insert_with(Instant::now);
            if since.elapsed().as_secs() < limit {
                continue;
            }
            let outcome = self.stop_set(name).await;
            let message = match &outcome {
                Ok(()) => format!("GPUs idle for {limit} s; stopped, GPUs and ports released"),
                Err(e) => e.to_string(),
            };
            self.ctx
                .emit("timer.idle", name, outcome.is_ok(), message)
                .await;
            if outcome.is_ok() {
                self.idle_clock().remove(name);
                stopped.push(name.to_string());
            }
        }
        // Forget sets that no longer have an idle timer.
        self.idle_clock()
            .retain(|name, _| heads.iter().any(|h| &h.name == name));
        Ok(stopped)
    }

    /// Runs [`Engine::tick_timers`] every `timer_interval` until the engine is dropped.
    pub fn spawn_timers(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine: Weak<Engine> = Arc::downgrade(self);
        let interval = self.ctx.shared.config.timer_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if let Err(e) = engine.tick_timers().await {
                    tracing::warn!(error = %e, "timer pass failed; next pass retries");
                }
            }
        })
    }

    fn idle_clock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.ctx
            .shared
            .idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Clears a stop time that fired, unless the user set another one meanwhile.
    async fn clear_stop_at(&self, name: &str, fired: i64) -> Result<()> {
        let _guard = self.ctx.lock_set(name).await;
        let Some((mut head, revision)) = self
            .ctx
            .read::<ReplicaSet>(&keys::replica_set(name))
            .await?
        else {
            return Ok(());
        };
        if head.timers.stop_at != Some(fired) {
            return Ok(());
        }
        head.timers.stop_at = None;
        let txn = Txn::new()
            .unchanged(keys::replica_set(name), revision)
            .put(keys::replica_set(name), encode(&head));
        self.ctx.commit(txn).await
    }
}

fn describe_timers(timers: &Timers) -> String {
    let mut parts = Vec::new();
    if let Some(secs) = timers.idle_stop_secs {
        parts.push(format!("stop after {secs} s of GPU idleness"));
    }
    if let Some(at) = timers.stop_at {
        parts.push(format!("stop at {}", rfc3339(at)));
    }
    if parts.is_empty() {
        "timers cleared".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_any_characters_are_judged_not_panicked_on() {
        for odd in ["\u{80}", "é", "5é", "日", ""] {
            assert_eq!(parse_duration(odd).unwrap_err().code(), 1000, "{odd}");
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        for bad in ["", "0m", "10", "m", "1.5h", "-3m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        let at = parse_time("2026-11-23T08:00:00Z").unwrap();
        assert_eq!(rfc3339(at), "2026-11-23T08:00:00Z");
        assert!(parse_time("tomorrow").is_err());
    }
}
