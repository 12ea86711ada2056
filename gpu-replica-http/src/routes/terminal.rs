//! `GET /api/v1/replicaSet/{name}/terminal`: an interactive program in a set's container over
//! a WebSocket (beyond the contract).
//!
//! The program is opened before the upgrade, so a missing set (or another user's), a stopped
//! one or bad input is an ordinary error answer. Then:
//! - binary messages from the client are the program's input; binary messages from the server
//!   its output (stdout and stderr interleaved);
//! - text messages are JSON control: the client sends `{"type":"resize","rows":R,"cols":C}`
//!   and `{"type":"eof"}` (end of input); the server ends with `{"type":"exit","code":N}` and a
//!   close frame;
//! - the server pings every 20 seconds, so proxies do not cut an idle terminal.
//!
//! A client that goes away ends the program: the server hangs it up (SIGHUP to its session,
//! SIGKILL a second later), since Docker keeps an exec running after its streams go.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use gpu_replica_core::{Error, Shell, ShellRequest};
use tokio::io::AsyncWriteExt;

use crate::auth::Acting;
use crate::envelope::ApiError;
#[allow(unused_imports)]
use crate::envelope::ErrorReply;
use crate::wire::{TerminalMessage, TerminalQuery};

/// How often the server pings an open terminal.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);

/// Browsers open WebSockets to any site without asking (there is no CORS for them): a page of
/// another origin, or a page served from inside a container on a published port, must not get
/// a shell on a server that trusts its caller (no tokens, or a cookie someday). A request with
/// an `Origin` is taken only when it names the host the request was sent to; tools (the CLI,
/// websocat) send none.
pub(crate) fn same_origin(headers: &axum::http::HeaderMap) -> Result<(), Error> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or_default();
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(());
    }
    Err(Error::InvalidParams(format!(
        "a terminal is not opened for a page of another origin ({origin}, this server is {host})"
    )))
}

/// A query value holding a JSON array of strings (none: empty).
pub(crate) fn json_list(field: &str, text: Option<String>) -> Result<Vec<String>, Error> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|_| {
            Error::InvalidParams(format!(
                "{field} must be a JSON array of strings, like [\"ls\",\"-l\"]"
            ))
        }),
    }
}

/// The upgrade, or a plain request told that this is a WebSocket.
pub(crate) fn websocket(
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    upgrade.map_err(|e| {
        ApiError::new(Error::InvalidParams(format!(
            "the terminal is a WebSocket: {}",
            e.body_text()
        )))
    })
}

/// Opens a program in the set's container and carries it over a WebSocket: binary messages
/// are its input and output, text messages JSON control (`resize`, `eof`; `exit` last).
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/terminal", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name"), TerminalQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = "4XX", body = ErrorReply, description = "1000, 1016, 1047 (not running)"), (status = "5XX", body = ErrorReply, description = "1039")))]
pub async fn terminal(
    Acting(engine): Acting,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<TerminalQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let Query(query) = query?;
    let upgrade = websocket(upgrade)?;
    let tty = query.tty.unwrap_or(true);
    let request = ShellRequest {
        argv: json_list("cmd", query.cmd)?,
        env: json_list("env", query.env)?,
        workdir: query.work_dir,
        user: query.user,
        tty: tty.then(|| (query.rows.unwrap_or(24), query.cols.unwrap_or(80))),
        separate_stderr: false,
    };
    let shell = engine.open_shell(&name, request).await?;
    Ok(upgrade
        .on_upgrade(move |socket| carry(socket, shell))
        .into_response())
}

/// Carries the program's streams over the socket until it exits or the client goes.
async fn carry(socket: WebSocket, shell: Shell) {
    let control = shell.control();
    let Shell {
        mut input,
        mut output,
        ..
    } = shell;
    let (mut to_client, mut from_client) = socket.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut input_open = true;
    let mut gone = false;
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(bytes)) => {
                    if to_client.send(Message::Binary(bytes)).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "terminal output ended");
                    break;
                }
                None => break,
            },
            message = from_client.next() => match message {
                Some(Ok(Message::Binary(data))) if input_open => {
                    if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                        input_open = false;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<TerminalMessage>(text.as_str()) {
                        Ok(TerminalMessage::Resize { rows, cols }) => {
                            if let Err(e) = control.resize(rows, cols).await {
                                tracing::debug!(error = %e, "terminal resize failed");
                            }
                        }
                        Ok(TerminalMessage::Eof) => {
                            input_open = false;
                            let _ = input.shutdown().await;
                        }
                        _ => tracing::debug!("terminal: control message not understood"),
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    gone = true;
                    break;
                }
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if to_client.send(Message::Ping(Default::default())).await.is_err() {
                    gone = true;
                    break;
                }
            }
        }
    }
    if gone {
        // The client went: its program is hung up (Docker would keep it running).
        control.hang_up().await;
        return;
    }
    let code = control.exit_code().await.unwrap_or(-1);
    let exit = serde_json::to_string(&TerminalMessage::Exit { code }).unwrap_or_default();
    let _ = to_client.send(Message::Text(exit.into())).await;
    let _ = to_client
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "exited".into(),
        })))
        .await;
}
