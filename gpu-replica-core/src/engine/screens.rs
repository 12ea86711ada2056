//! The web terminals' sessions this engine holds: each a program with a terminal emulated here
//! ([`crate::screen::Emulator`]), found again by an unguessable id so that a page reloaded or
//! reconnected reattaches to the same screen.
//!
//! A session belongs to whoever opened it. It lives while its program runs; with no page
//! attached it is kept for [`crate::screen::ScreenPolicy::keep`], then its program is ended (its
//! streams dropped: the terminal hangs up) and it is forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::screen::{Emulator, Frame};

/// Every live session, by id.
#[derive(Default)]
pub(crate) struct Screens {
    sessions: Mutex<HashMap<String, Arc<ScreenSession>>>,
}

impl Screens {
    /// Adds `session` unless its owner holds `cap` sessions already; the number they hold
    /// otherwise.
    pub(crate) fn insert(&self, session: Arc<ScreenSession>, cap: usize) -> Result<(), usize> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let held = sessions
            .values()
            .filter(|s| s.owner == session.owner)
            .count();
        if held >= cap {
            return Err(held);
        }
        sessions.insert(session.id.clone(), session);
        Ok(())
    }

    /// The session `id`, if it lives.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<ScreenSession>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).cloned()
    }

    /// How many sessions `owner` holds.
    pub(crate) fn held_by(&self, owner: &str) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.values().filter(|s| s.owner == owner).count()
    }

    /// Forgets session `id`.
    pub(crate) fn remove(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(id);
    }
}

/// One program with its emulated terminal.
pub(crate) struct ScreenSession {
    /// The unguessable id a page reattaches with.
    pub(crate) id: String,
    /// Who opened it.
    pub(crate) owner: String,
    /// The set it runs in.
    pub(crate) set: String,
    /// Docker's id of the program's exec (to resize its terminal).
    pub(crate) exec: String,
    state: Mutex<State>,
    /// Bumped on every change of the screen or the session; attached pages wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Input for the program, written by the session's task.
    input: tokio::sync::mpsc::Sender<Bytes>,
    /// Turned true to end the program.
    end: tokio::sync::watch::Sender<bool>,
    keep: Duration,
}

struct State {
    emulator: Emulator,
    /// The exit code, once the program ended.
    exit: Option<i64>,
    /// Pages attached now.
    attached: usize,
    /// Counts detachments down to none: a keep timer ends the session only if no page came
    /// and went since it started.
    detached: u64,
}

/// What a page reads of a session at one moment.
pub(crate) struct Snapshot {
    /// The change counter the frame was taken at.
    pub(crate) seen: u64,
    /// The screen.
    pub(crate) frame: Frame,
    /// The exit code, once the program ended.
    pub(crate) exit: Option<i64>,
}

impl ScreenSession {
    /// A session of `owner`'s program (Docker's exec `exec`) in `set`, drawn on `emulator`,
    /// taking input through `input`; returns it with the receiver that tells its task to end
    /// the program.
    pub(crate) fn new(
        id: String,
        owner: String,
        set: String,
        exec: String,
        emulator: Emulator,
        input: tokio::sync::mpsc::Sender<Bytes>,
        keep: Duration,
    ) -> (Arc<ScreenSession>, tokio::sync::watch::Receiver<bool>) {
        let (end, ended) = tokio::sync::watch::channel(false);
        let session = ScreenSession {
            id,
            owner,
            set,
            exec,
            state: Mutex::new(State {
                emulator,
                exit: None,
                attached: 0,
                detached: 0,
            }),
            changes: tokio::sync::watch::Sender::new(0),
            input,
            end,
            keep,
        };
        (Arc::new(session), ended)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Feeds the program's output to the terminal; what the program asked the terminal to
    /// answer.
    pub(crate) fn output(&self, bytes: &[u8]) -> Vec<u8> {
        let replies = self.state().emulator.feed(bytes);
        self.changed();
        replies
    }

    /// Gives the terminal (the emulator's side) `rows` × `cols`.
    pub(crate) fn resize(&self, rows: u16, cols: u16) {
        self.state().emulator.resize(rows, cols);
        self.changed();
    }

    /// The process id the program announced, once it did.
    pub(crate) fn program_pid(&self) -> Option<u32> {
        self.state().emulator.program_pid()
    }

    /// Rows and columns of the terminal.
    pub(crate) fn size(&self) -> (u16, u16) {
        self.state().emulator.size()
    }

    /// Records that the program ended with `code`.
    pub(crate) fn exited(&self, code: i64) {
        self.state().exit = Some(code);
        self.changed();
    }

    /// Sends `bytes` to the program; false once it no longer reads.
    pub(crate) async fn write(&self, bytes: Bytes) -> bool {
        self.input.send(bytes).await.is_ok()
    }

    /// Ends the program now.
    pub(crate) fn end(&self) {
        self.end.send_replace(true);
    }

    /// The screen now, with the change counter it was taken at.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            seen: *self.changes.borrow(),
            frame: state.emulator.frame(),
            exit: state.exit,
        }
    }

    /// A receiver of the change counter.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A page attached.
    pub(crate) fn attach(&self) {
        self.state().attached += 1;
    }

    /// A page went: once none is left, the program is ended after the keep time unless a
    /// page attaches meanwhile.
    pub(crate) fn detach(self: &Arc<Self>) {
        let epoch = {
            let mut state = self.state();
            state.attached = state.attached.saturating_sub(1);
            if state.attached > 0 || state.exit.is_some() {
                return;
            }
            state.detached += 1;
            state.detached
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.end();
            return;
        };
        let session = Arc::downgrade(self);
        let keep = self.keep;
        runtime.spawn(async move {
            tokio::time::sleep(keep).await;
            let Some(session) = session.upgrade() else {
                return;
            };
            let idle = {
                let state = session.state();
                state.attached == 0 && state.detached == epoch
            };
            if idle {
                tracing::info!(session = %session.id, set = %session.set, "web terminal unattached for {keep:?}: ended");
                session.end();
            }
        });
    }
}
