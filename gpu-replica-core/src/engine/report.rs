//! What a start-up recovery did, as the engine keeps it for `/status` and the log: a report of
//! the supervisor's, kept down here because the engine's shared state holds the last one.

use std::fmt;

/// What [`crate::Engine::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Operations finished ("patch of foo to version 3").
    pub finished: Vec<String>,
    /// Operations undone.
    pub undone: Vec<String>,
    /// Docker objects removed because no record refers to them.
    pub orphans_removed: Vec<String>,
    /// Problems that need a person: a current container that is gone or does not start (its
    /// set is shown `exited`).
    pub missing: Vec<String>,
    /// Drift between the records and Docker settled at start (a container started again, a
    /// claim without a holder released).
    #[serde(default)]
    pub reconciled: Vec<String>,
    /// Docker objects carrying this store's label that its records never knew (made after
    /// the backup the store was restored from): left alone, never removed.
    #[serde(default)]
    pub unknown: Vec<String>,
    /// The backup the store was restored from, when this is the first start after a restore.
    #[serde(default)]
    pub restored: Option<String>,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} finished, {} undone, {} orphans removed, {} missing, {} reconciled, {} unknown left alone",
            self.finished.len(),
            self.undone.len(),
            self.orphans_removed.len(),
            self.missing.len(),
            self.reconciled.len(),
            self.unknown.len()
        )?;
        if let Some(restored) = &self.restored {
            write!(f, "; restored from {restored}")?;
        }
        for line in self
            .finished
            .iter()
            .chain(&self.undone)
            .chain(&self.orphans_removed)
            .chain(&self.missing)
            .chain(&self.reconciled)
            .chain(&self.unknown)
        {
            write!(f, "; {line}")?;
        }
        Ok(())
    }
}
