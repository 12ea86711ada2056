//! `gpu-replica shell NAME` and `gpu-replica exec -it NAME -- CMD…`: a program in the set with
//! this terminal attached, as `docker exec -it` behaves. In raw mode every key goes to the
//! program (Ctrl-C included); the window size is sent at start and on every SIGWINCH; the
//! terminal is restored however the session ends; the program's exit code is ours.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use gpu_replica_http::client::{Client, ClientError};
use gpu_replica_http::wire::{TerminalMessage, TerminalQuery};
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::Message;

/// The terminal's settings before raw mode, put back on drop (a panic unwinds through it too).
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on standard input: no echo, no line editing, no signals from keys.
    fn enter() -> std::io::Result<RawMode> {
        // SAFETY: tcgetattr fills the struct it is given; fd 0 is ours.
        let mut settings: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut settings) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = settings;
        // SAFETY: cfmakeraw only changes the struct; tcsetattr reads it.
        unsafe { libc::cfmakeraw(&mut settings) };
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &settings) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: puts back what tcgetattr read.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// The size of the terminal on standard output (or input), rows and columns.
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ fills a winsize; a descriptor that is no terminal fails.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_row > 0 {
            return Some((size.ws_row, size.ws_col));
        }
    }
    None
}

/// Runs `cmd` (empty: the image's shell) in set `name`, attached to this process's standard
/// streams; with `tty`, through a terminal in raw mode.
pub async fn attach(
    client: &Client,
    name: &str,
    cmd: Vec<String>,
    workdir: Option<String>,
    tty: bool,
) -> Result<ExitCode, ClientError> {
    if tty && !std::io::stdin().is_terminal() {
        return Err(ClientError::Transport(
            "the input device is not a terminal: leave out -t (or use exec without -it)".into(),
        ));
    }
    let size = if tty { window_size() } else { None };
    let query = TerminalQuery {
        cmd: (!cmd.is_empty()).then(|| serde_json::to_string(&cmd).unwrap_or_default()),
        tty: Some(tty),
        rows: size.map(|s| s.0),
        cols: size.map(|s| s.1),
        work_dir: workdir,
        ..TerminalQuery::default()
    };
    let socket = client.terminal(name, &query).await?;
    let raw = if tty {
        Some(RawMode::enter().map_err(|e| ClientError::Transport(format!("raw mode: {e}")))?)
    } else {
        None
    };
    let code = carry(socket, tty).await;
    drop(raw);
    let code = code?;
    Ok(ExitCode::from(
        u8::try_from(code.rem_euclid(256)).unwrap_or(1),
    ))
}

/// Moves bytes both ways until the program exits; its exit code.
async fn carry(socket: gpu_replica_http::client::Terminal, tty: bool) -> Result<i64, ClientError> {
    let lost = |e: tokio_tungstenite::tungstenite::Error| {
        ClientError::Transport(format!("the terminal's connection: {e}"))
    };
    let (mut to_server, mut from_server) = socket.split();
    // Standard input on a thread of its own: a blocking read that never holds up the exit.
    let (keys, mut typed) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 4096];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = keys.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if keys.blocking_send(Some(buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resized = signal(SignalKind::window_change())
        .map_err(|e| ClientError::Transport(format!("SIGWINCH: {e}")))?;
    let mut hung_up =
        signal(SignalKind::hangup()).map_err(|e| ClientError::Transport(format!("SIGHUP: {e}")))?;
    let mut terminated = signal(SignalKind::terminate())
        .map_err(|e| ClientError::Transport(format!("SIGTERM: {e}")))?;
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    loop {
        tokio::select! {
            message = from_server.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let _ = stdout.write_all(&data);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(TerminalMessage::Exit { code }) = serde_json::from_str(text.as_str()) {
                        return Ok(code);
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ClientError::Transport(
                        "the terminal closed without an exit code".into(),
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(e)),
            },
            key = typed.recv(), if input_open => match key.flatten() {
                Some(bytes) => to_server.send(Message::Binary(bytes.into())).await.map_err(lost)?,
                None => {
                    input_open = false;
                    // Without a terminal, end of input is the program's too (`exec -i … < file`);
                    // with one, the user types Ctrl-D.
                    if !tty {
                        let eof = serde_json::to_string(&TerminalMessage::Eof).unwrap_or_default();
                        to_server.send(Message::Text(eof.into())).await.map_err(lost)?;
                    }
                }
            },
            _ = resized.recv() => {
                if let Some((rows, cols)) = window_size() {
                    let resize = serde_json::to_string(&TerminalMessage::Resize { rows, cols })
                        .unwrap_or_default();
                    to_server.send(Message::Text(resize.into())).await.map_err(lost)?;
                }
            }
            _ = hung_up.recv() => return Ok(129),
            _ = terminated.recv() => return Ok(143),
        }
    }
}
