//! Failpoints: `GPU_REPLICA_FAILPOINT=<name>` makes the process exit abruptly (no destructors,
//! no graceful shutdown) right after the named step, so tests can check that a restarted engine
//! finishes or undoes what was in flight. Unset, a failpoint costs one cached comparison.

use std::sync::OnceLock;

/// Exit code of a process stopped by a failpoint.
pub const FAILPOINT_EXIT_CODE: i32 = 86;

/// Every failpoint, in the order its operation passes them.
pub const FAILPOINTS: &[&str] = &[
    "run.recorded",
    "run.created",
    "run.started",
    "version.recorded",
    "version.stopped",
    "version.committed",
    "version.created",
    "version.started",
    "version.old_removed",
    "image.carrying",
    "image.carried",
    "stop.recorded",
    "stop.stopped",
    "pause.recorded",
    "pause.stopped",
    "continue.recorded",
    "continue.started",
    "delete.recorded",
    "delete.containers_removed",
    "delete.records_removed",
    "resize.recorded",
    "resize.volume_created",
    "resize.prepared",
    "resize.copied",
    "resize.started",
    "resize.finished",
    "clone.recorded",
    "clone.based",
    "clone.created",
    "migrate.recorded",
    "migrate.stopped",
    "migrate.committed",
    "migrate.sent",
    "migrate.moved",
    "migrate.claimed",
    "migrate.created",
    "migrate.target_started",
    "migrate.switched",
];

/// Exits the process if `name` is the armed failpoint.
pub(crate) fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("GPU_REPLICA_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: exiting abruptly");
        std::process::exit(FAILPOINT_EXIT_CODE);
    }
}
