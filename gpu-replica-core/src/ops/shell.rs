//! An interactive program in a set's container: a shell, an editor, `top`. The server reaches
//! the container through Docker's exec API; nothing is installed in the image.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Operation, Result};
use crate::model::Status;
use crate::ops::Engine;
use crate::runtime::{ContainerRuntime, ExecRequest};

/// Ends a program as a hangup would: SIGHUP to every process of its session (a program with
/// a terminal leads its session, so its id is the session's) and to the program itself,
/// SIGKILL a second later. Docker keeps an exec's terminal open after its streams are
/// dropped, so nothing hangs up by itself.
pub(crate) const HANG_UP: &str = r#"s=$1; for sig in HUP KILL; do kill -$sig "$s" 2>/dev/null; for d in /proc/[0-9]*; do read -r l < "$d/stat" 2>/dev/null || continue; set -- ${l##*) }; [ "$4" = "$s" ] && kill -$sig "${d#/proc/}" 2>/dev/null; done; [ $sig = KILL ] || sleep 1; done; true"#;

/// The id a host process `pid` has in its own PID namespace (the last of `NSpid` in its
/// status); `None` when it cannot be read (not on this host, or not root).
fn namespaced_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// What to open in a set's container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellRequest {
    /// The program and its arguments; empty: the image's `bash`, else `sh`.
    pub argv: Vec<String>,
    /// `KEY=value` on top of the container's environment (`TERM` is set for a terminal unless
    /// given).
    pub env: Vec<String>,
    /// Working directory, absolute (`None`: the container's).
    pub workdir: Option<String>,
    /// User to run as, `name` or `uid[:gid]` (`None`: the container's).
    pub user: Option<String>,
    /// A terminal of (rows, columns); `None`: plain pipes.
    pub tty: Option<(u16, u16)>,
    /// Without a terminal, standard error apart ([`Shell::errors`]) instead of interleaved
    /// with the output (what SSH carries on its own stream).
    pub separate_stderr: bool,
}

/// A program running in a set's container with its streams attached. Its output ends when it
/// exits, or when the set stops or is deleted (Docker ends every process of a stopped
/// container).
pub struct Shell {
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
    /// Docker's ID of the exec.
    pub id: String,
    /// What it was started as (the default shell resolved).
    pub argv: Vec<String>,
    /// Its standard input; shutting it down sends end-of-file.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// What it writes, stdout and stderr interleaved (only stdout with
    /// [`ShellRequest::separate_stderr`]).
    pub output: futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>,
    /// Its standard error, when asked for apart.
    pub errors: Option<futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("id", &self.id)
            .field("argv", &self.argv)
            .finish()
    }
}

/// What outlives a [`Shell`] split into its streams: resizing and the exit code.
#[derive(Clone)]
pub struct ShellControl {
    runtime: Arc<dyn ContainerRuntime>,
    id: String,
    container: String,
}

impl Shell {
    /// The handle that resizes the terminal and reads the exit code, kept apart from the
    /// streams (which a caller moves into its own tasks).
    pub fn control(&self) -> ShellControl {
        ShellControl {
            runtime: self.runtime.clone(),
            id: self.id.clone(),
            container: self.container.clone(),
        }
    }
}

impl ShellControl {
    /// Gives the terminal `rows` × `cols`.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.runtime.exec_resize(&self.id, rows, cols).await
    }

    /// Ends the program if it still runs, as a terminal's hangup would (what a client that
    /// went away means): SIGHUP to its session, SIGKILL a second later.
    pub async fn hang_up(&self) {
        let Ok(Some(pid)) = self.runtime.exec_pid(&self.id).await else {
            return;
        };
        let Some(inner) = namespaced_pid(pid) else {
            tracing::warn!(exec = %self.id, pid, "cannot end a program whose client went: its process is not readable here");
            return;
        };
        let argv = ["sh", "-c", HANG_UP, "sh", &inner.to_string()].map(str::to_string);
        if let Err(e) = self.runtime.exec(&self.container, &argv, None).await {
            tracing::warn!(error = %e, container = %self.container, "a program whose client went was not ended");
        }
    }

    /// The exit code, once the program has ended (call it when its output ended: Docker may
    /// take a moment to say). -1 when Docker never said.
    pub async fn exit_code(&self) -> Result<i64> {
        for _ in 0..50 {
            if let Some(code) = self.runtime.exec_exit_code(&self.id).await? {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(-1)
    }
}

impl Engine {
    /// Opens `request` in the current container of set `name` (which must run): the caller's
    /// own set, or any set for an admin; another user's set answers as a missing one.
    pub async fn open_shell(&self, name: &str, request: ShellRequest) -> Result<Shell> {
        crate::input::os_strings("cmd", &request.argv)?;
        crate::input::os_strings("env", &request.env)?;
        if let Some(bad) = request.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::InvalidParams(format!(
                "env entry '{bad}' is not KEY=value"
            )));
        }
        let workdir = request.workdir.clone().filter(|d| !d.is_empty());
        if let Some(dir) = &workdir {
            crate::input::work_dir(dir)?;
        }
        if let Some(user) = &request.user {
            crate::input::os_strings("user", std::slice::from_ref(user))?;
        }
        self.ctx.check_env_for_toolkit(&request.env)?;
        let container = self.running_here(name, "its terminal").await?;
        let runtime = self.ctx.shared.runtime.clone();
        let argv = match request.argv.first() {
            Some(program) if !program.is_empty() => request.argv.clone(),
            Some(_) => return Err(Error::InvalidParams("cmd must name a program".into())),
            None => vec![self.default_shell(&container).await?],
        };
        let mut env = request.env.clone();
        if request.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm-256color".into());
        }
        let exec = ExecRequest {
            argv: argv.clone(),
            env,
            workdir,
            user: request.user.clone(),
            tty: request.tty,
            separate_stderr: request.separate_stderr,
        };
        let session = match runtime.exec_start(&container, &exec).await {
            Err(Error::NotRunning(_)) => {
                self.ctx.nudge_reconcile(name);
                return Err(Error::refused(
                    Operation::Exec,
                    format!("the container {container} of '{name}' is not running"),
                ));
            }
            other => other.map_err(|e| e.during(Operation::Exec))?,
        };
        let actor = self.ctx.caller.name.clone();
        self.ctx
            .emit(
                "shell",
                name,
                true,
                format!("{actor} opened {} in {container}", argv.join(" ")),
            )
            .await;
        Ok(Shell {
            runtime,
            container,
            id: session.id,
            argv,
            input: session.input,
            output: session.output,
            errors: session.errors,
        })
    }

    /// The running container of set `name` where its shells and files are reached: the
    /// caller's set (or any for an admin), living on this node and running; refused
    /// otherwise (another user's set answers as a missing one).
    pub async fn running_container(&self, name: &str) -> Result<String> {
        self.running_here(name, "it").await
    }

    /// As [`Engine::running_container`]; `what` names what is refused ("its terminal").
    pub(crate) async fn running_here(&self, name: &str, what: &str) -> Result<String> {
        Ok(self.running_head(name, what).await?.0)
    }

    /// As [`Engine::running_here`], with the set's head as read.
    pub(crate) async fn running_head(
        &self,
        name: &str,
        what: &str,
    ) -> Result<(String, crate::model::ReplicaSet)> {
        let (head, _) = self.ctx.head(name).await?;
        if head.node != self.ctx.node_name() {
            return Err(Error::refused(
                Operation::Exec,
                format!(
                    "'{name}' lives on node '{}': open {what} through that node",
                    head.node
                ),
            ));
        }
        if head.status != Status::Running {
            return Err(Error::refused(
                Operation::Exec,
                format!("'{name}' is not running; continue or restart it first"),
            ));
        }
        Ok((crate::names::container(name, head.current), head))
    }

    /// `bash` when the image has it, else `sh`.
    async fn default_shell(&self, container: &str) -> Result<String> {
        let probe = ["sh", "-c", "command -v bash"].map(str::to_string);
        let found = self
            .ctx
            .shared
            .runtime
            .exec(container, &probe, None)
            .await
            .map_err(|e| e.during(Operation::Exec))?;
        Ok(if found.exit_code == 0 && !found.output.trim().is_empty() {
            "bash".into()
        } else {
            "sh".into()
        })
    }
}
