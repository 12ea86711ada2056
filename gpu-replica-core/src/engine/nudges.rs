//! The sets the reconciler should look at soon: named by Docker's events or by a request that
//! found drift, or everything at once when Docker came back. Kept with the engine's shared
//! state; the reconciler (`supervise/reconcile.rs`) takes them.

use std::collections::HashSet;

/// The sets named by events or by a failed request, waiting for the reconciler.
#[derive(Default)]
pub(crate) struct Nudges {
    names: std::sync::Mutex<HashSet<String>>,
    /// Set when everything should be looked at (Docker came back).
    everything: std::sync::atomic::AtomicBool,
    pub(crate) notify: tokio::sync::Notify,
}

impl Nudges {
    pub(crate) fn push(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        self.notify.notify_one();
    }

    pub(crate) fn push_everything(&self) {
        self.everything
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    pub(crate) fn take_everything(&self) -> bool {
        self.everything
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn take(&self) -> Vec<String> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.drain().collect()
    }
}
