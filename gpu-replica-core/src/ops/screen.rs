//! The console's web terminal: a program in a set's container whose terminal is emulated on
//! the server. The program is opened through [`Engine::open_shell`] (the one door into a
//! container); its output feeds a [`crate::screen::Emulator`] in a task of its own, and a page
//! attached to the session reads screen updates (the full screen first, then the rows that
//! changed, at most one update per [`FRAME_GAP`] while output streams).
//!
//! The session outlives the page: a page that reloads, or whose connection dropped, attaches
//! again by the session's id and finds the screen as it was. It ends when its program exits
//! (the set stopping or being deleted ends it too), when a page closes it, or once no page has
//! been attached for [`crate::ScreenPolicy::keep`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine::screens::{ScreenSession, Screens};
use crate::error::{Error, Operation, Result};
use crate::ops::shell::{Shell, ShellRequest};
use crate::ops::Engine;
use crate::runtime::ContainerRuntime;
use crate::screen::{Emulator, Frame, ScreenUpdate, MAX_SIDE};

/// The least time between two updates to one page: output that streams is drawn at most this
/// often, and a keystroke's echo after a quiet moment goes at once.
pub const FRAME_GAP: Duration = Duration::from_millis(12);

/// What a session runs: the program (the image's `bash`, else `sh`, when none is named),
/// after announcing its process id ([`crate::screen::PID_OSC`]) so that the session can end
/// it. Docker keeps an exec's terminal open after its streams are dropped, so nothing hangs
/// up by itself.
const LAUNCH: &str = r#"printf '\033]7770;%s\007' "$$"; [ $# -gt 0 ] || set -- "$(command -v bash || echo sh)"; exec "$@""#;

/// A web terminal to open, or to attach to again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScreenRequest {
    /// A session to attach to again, by the id it was opened with. When it is no longer
    /// there (it ended, was never this caller's, or is of another set) a new one is opened.
    pub session: Option<String>,
    /// The program and its arguments for a new session; empty: the image's `bash`, else `sh`.
    pub argv: Vec<String>,
    /// The page's rows (0: 24).
    pub rows: u16,
    /// The page's columns (0: 80).
    pub cols: u16,
}

/// What an attached page reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenEvent {
    /// The screen changed.
    Update(ScreenUpdate),
    /// The program ended with this code (-1 when Docker did not say, or the server ended it);
    /// nothing follows.
    Exit(i64),
}

/// A page attached to a web terminal session. Dropping it detaches the page; the session
/// stays for the configured keep time.
pub struct ScreenAttachment {
    session: Arc<ScreenSession>,
    runtime: Arc<dyn ContainerRuntime>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The change counter of the screen last read, and what the page shows.
    seen: Option<u64>,
    shown: Option<Frame>,
    last_sent: Option<Instant>,
    exit: Option<i64>,
    exit_sent: bool,
    reattached: bool,
}

impl std::fmt::Debug for ScreenAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScreenAttachment")
            .field("session", &self.session.id)
            .field("set", &self.session.set)
            .field("reattached", &self.reattached)
            .finish()
    }
}

impl ScreenAttachment {
    fn new(
        session: Arc<ScreenSession>,
        runtime: Arc<dyn ContainerRuntime>,
        reattached: bool,
    ) -> ScreenAttachment {
        session.attach();
        ScreenAttachment {
            changes: session.watch(),
            session,
            runtime,
            seen: None,
            shown: None,
            last_sent: None,
            exit: None,
            exit_sent: false,
            reattached,
        }
    }

    /// The session's id, for attaching again later.
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// Whether this attached to a session that was already open.
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// The next thing to show: the whole screen first, then what changed, then the exit; `None`
    /// after the exit. Cancel-safe (a `select!` may drop it at any await).
    pub async fn next(&mut self) -> Option<ScreenEvent> {
        loop {
            if self.exit_sent {
                return None;
            }
            let now = *self.changes.borrow_and_update();
            if self.seen != Some(now) {
                if let Some(at) = self.last_sent {
                    let gap = FRAME_GAP.saturating_sub(at.elapsed());
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                }
                let snapshot = self.session.snapshot();
                self.seen = Some(snapshot.seen);
                self.exit = snapshot.exit;
                let update = snapshot.frame.update_from(self.shown.as_ref());
                self.shown = Some(snapshot.frame);
                if let Some(update) = update {
                    self.last_sent = Some(Instant::now());
                    return Some(ScreenEvent::Update(update));
                }
            } else if let Some(code) = self.exit {
                self.exit_sent = true;
                return Some(ScreenEvent::Exit(code));
            } else if self.changes.changed().await.is_err() {
                self.exit = Some(-1);
            }
        }
    }

    /// Sends `bytes` (keys, a paste) to the program.
    pub async fn write(&self, bytes: Bytes) -> Result<()> {
        if self.session.write(bytes).await {
            Ok(())
        } else {
            Err(Error::refused(
                Operation::Exec,
                "the terminal's program has ended",
            ))
        }
    }

    /// Gives the terminal `rows` × `cols` (each kept within 1..=1000): the emulator first, so
    /// that what the program redraws on the change is drawn at the new size.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let (rows, cols) = (rows.clamp(1, MAX_SIDE), cols.clamp(1, MAX_SIDE));
        if self.session.size() == (rows, cols) {
            return Ok(());
        }
        self.session.resize(rows, cols);
        self.runtime
            .exec_resize(&self.session.exec, rows, cols)
            .await
            .map_err(|e| e.during(Operation::Exec))
    }

    /// Ends the program now (the page closed the terminal for good).
    pub fn close(&self) {
        self.session.end();
    }
}

impl Drop for ScreenAttachment {
    fn drop(&mut self) {
        self.session.detach();
    }
}

impl Engine {
    /// Attaches to the caller's session `request.session` of set `name` when it is still
    /// there, or opens `request.argv` in the set with a terminal emulated here: the caller's
    /// own set, or any for an admin (another user's set answers as a missing one, and another
    /// user's session as one that ended).
    pub async fn open_screen(
        &self,
        name: &str,
        request: ScreenRequest,
    ) -> Result<ScreenAttachment> {
        let rows = if request.rows == 0 { 24 } else { request.rows };
        let cols = if request.cols == 0 { 80 } else { request.cols };
        if let Some(id) = request.session.as_deref().filter(|id| !id.is_empty()) {
            if let Some(session) = self.find_screen(name, id).await? {
                let attachment =
                    ScreenAttachment::new(session, self.ctx.shared.runtime.clone(), true);
                if request.rows > 0 && request.cols > 0 {
                    attachment.resize(rows, cols).await?;
                }
                return Ok(attachment);
            }
        }
        let policy = &self.ctx.shared.config.screens;
        let owner = self.ctx.caller.name.clone();
        let screens = self.ctx.shared.screens.clone();
        let too_many = || {
            Error::refused(
                Operation::Exec,
                format!(
                    "{owner} has {} web terminals open already; close one (or wait until an \
                     unattached one is ended) first",
                    policy.per_user
                ),
            )
        };
        if screens.held_by(&owner) >= policy.per_user {
            return Err(too_many());
        }
        let (rows, cols) = (rows.clamp(1, MAX_SIDE), cols.clamp(1, MAX_SIDE));
        crate::input::os_strings("cmd", &request.argv)?;
        if request.argv.first().is_some_and(|p| p.is_empty()) {
            return Err(Error::InvalidParams("cmd must name a program".into()));
        }
        let argv = ["sh", "-c", LAUNCH, "sh"]
            .into_iter()
            .map(str::to_string)
            .chain(request.argv)
            .collect();
        let shell = self
            .open_shell(
                name,
                ShellRequest {
                    argv,
                    tty: Some((rows, cols)),
                    ..ShellRequest::default()
                },
            )
            .await?;
        let (head, _) = self.ctx.head(name).await?;
        let container = crate::names::container(name, head.current);
        let (input, inputs) = tokio::sync::mpsc::channel(64);
        let (session, ended) = ScreenSession::new(
            crate::names::new_id()?,
            owner.clone(),
            name.to_string(),
            shell.id.clone(),
            Emulator::new(rows, cols),
            input,
            policy.keep,
        );
        screens
            .insert(session.clone(), policy.per_user)
            .map_err(|_| too_many())?;
        // Attached before the task starts: a program that ends at once is still seen.
        let attachment =
            ScreenAttachment::new(session.clone(), self.ctx.shared.runtime.clone(), false);
        let hang_up = HangUp {
            runtime: self.ctx.shared.runtime.clone(),
            container,
        };
        tokio::spawn(carry(session, screens, shell, inputs, ended, hang_up));
        Ok(attachment)
    }

    /// Attaches to the caller's session `id` of set `name`; a session that ended, another
    /// user's, or another set's is refused alike.
    pub async fn attach_screen(&self, name: &str, id: &str) -> Result<ScreenAttachment> {
        match self.find_screen(name, id).await? {
            Some(session) => Ok(ScreenAttachment::new(
                session,
                self.ctx.shared.runtime.clone(),
                true,
            )),
            None => Err(Error::refused(
                Operation::Exec,
                format!("no web terminal {id} of '{name}': it ended, or was never opened"),
            )),
        }
    }

    /// The session `id` of set `name` if this caller may reach both.
    async fn find_screen(&self, name: &str, id: &str) -> Result<Option<Arc<ScreenSession>>> {
        // The set first: another user's set answers as a missing one here as everywhere.
        self.ctx.head(name).await?;
        Ok(self
            .ctx
            .shared
            .screens
            .get(id)
            .filter(|s| s.set == name && self.ctx.caller.may_reach(&s.owner)))
    }
}

/// How a session's task ends its program: in the container it runs in.
struct HangUp {
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
}

impl HangUp {
    async fn program(&self, pid: Option<u32>) {
        let Some(pid) = pid else {
            return;
        };
        let argv = [
            "sh",
            "-c",
            crate::ops::shell::HANG_UP,
            "sh",
            &pid.to_string(),
        ]
        .map(str::to_string);
        if let Err(e) = self.runtime.exec(&self.container, &argv, None).await {
            tracing::warn!(error = %e, container = %self.container, pid, "web terminal's program not ended");
        }
    }
}

/// The session's task: feeds the program's output to the emulator and its input to the
/// program, until the program exits or the session is ended; then forgets the session and
/// records the exit code.
async fn carry(
    session: Arc<ScreenSession>,
    screens: Arc<Screens>,
    shell: Shell,
    mut inputs: tokio::sync::mpsc::Receiver<Bytes>,
    mut ended: tokio::sync::watch::Receiver<bool>,
    hang_up: HangUp,
) {
    let control = shell.control();
    let Shell {
        mut input,
        mut output,
        ..
    } = shell;
    let mut writable = true;
    let ended_here = loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(bytes)) => {
                    let replies = session.output(&bytes);
                    if !replies.is_empty() && writable
                        && (input.write_all(&replies).await.is_err() || input.flush().await.is_err())
                    {
                        writable = false;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "web terminal output ended");
                    break false;
                }
                None => break false,
            },
            // Input that can no longer be written is read all the same (and dropped), so
            // that a page sending it never waits.
            Some(bytes) = inputs.recv() => {
                if writable && (input.write_all(&bytes).await.is_err() || input.flush().await.is_err()) {
                    writable = false;
                }
            }
            _ = async { ended.wait_for(|end| *end).await.is_ok() } => break true,
        }
    };
    screens.remove(&session.id);
    // The streams dropped: the program's terminal hangs up.
    drop(input);
    drop(output);
    let code = if ended_here {
        hang_up.program(session.program_pid()).await;
        -1
    } else {
        control.exit_code().await.unwrap_or(-1)
    };
    session.exited(code);
}
