//! The periodic measurement of sets' writable layers (see `engine/disk.rs`): one pass every
//! [`crate::RootfsPolicy::measure_interval`], off the request path.

use crate::engine::Context;

impl Context {
    /// Measures every set's writable layer each `measure_interval` until the engine is closed
    /// or dropped; a failed pass (Docker away) is logged and the next one tries again.
    pub fn spawn_rootfs_meter(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.downgrade();
        let interval = self.shared.config.rootfs.measure_interval;
        let mut closing = self.closing_receiver();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = closing.wait_for(|c| *c) => break,
                }
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                if let Err(e) = engine.measure_rootfs().await {
                    tracing::warn!(error = %e, "measuring root filesystems failed; the next pass retries");
                }
            }
        })
    }
}
