//! `GET /api/v1/replicaSet/{name}/screen`: the console's web terminal over a WebSocket (beyond
//! the contract). The terminal is emulated on the server; the page draws what it is sent.
//!
//! The session is opened (or attached to again) before the upgrade, so a missing set (or
//! another user's), a stopped one or bad input is an ordinary error answer. Then:
//! - the server sends JSON text: `session` first (its id, to attach again with `?session=`),
//!   then `screen` updates (the whole screen, then the rows that changed), `exit` last;
//! - the page sends binary messages (its keys and pastes, the program's input) and JSON text
//!   control (`resize`, `close`);
//! - the server pings every 20 seconds, so proxies do not cut an idle terminal.
//!
//! A page that goes leaves the session running, to be attached again for the server's
//! `--terminal-keep`. Browsers cannot set headers on a WebSocket: a page may send its token as
//! the subprotocol `gpu-replica.bearer.<hex>` beside `gpu-replica`, which the server picks.

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use gpu_replica_core::{ScreenAttachment, ScreenRequest};

use crate::auth::Acting;
use crate::envelope::ApiError;
#[allow(unused_imports)]
use crate::envelope::ErrorReply;
use crate::routes::terminal::{json_list, same_origin, websocket, PING_EVERY};
use crate::wire::{ScreenControl, ScreenMessage, ScreenQuery, SCREEN_PROTOCOL};

/// Opens a web terminal on the set, or attaches to one again, and carries its screen over a
/// WebSocket: JSON text from the server (`session`, `screen`, `exit`), binary input and JSON
/// control (`resize`, `close`) from the page.
#[utoipa::path(get, path = "/api/v1/replicaSet/{name}/screen", tag = "instance",
    params(("name" = String, Path, description = "ReplicaSet name"), ScreenQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol; messages are ScreenMessage (server) and ScreenControl (page)"), (status = "4XX", body = ErrorReply, description = "1000, 1006 (too many terminals), 1016, 1047 (not running)"), (status = "5XX", body = ErrorReply, description = "1039")))]
pub async fn screen(
    Acting(engine): Acting,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<ScreenQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let Query(query) = query?;
    let upgrade = websocket(upgrade)?;
    let request = ScreenRequest {
        session: query.session,
        argv: json_list("cmd", query.cmd)?,
        rows: query.rows.unwrap_or(0),
        cols: query.cols.unwrap_or(0),
    };
    let attachment = engine.open_screen(&name, request).await?;
    Ok(upgrade
        .protocols([SCREEN_PROTOCOL])
        .on_upgrade(move |socket| carry(socket, attachment))
        .into_response())
}

fn text(message: &ScreenMessage) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

/// Carries the screen to the page and its keys to the program, until the program ends or the
/// page goes (the session then stays, detached).
async fn carry(socket: WebSocket, mut attachment: ScreenAttachment) {
    let (mut to_page, mut from_page) = socket.split();
    let hello = ScreenMessage::Session {
        id: attachment.id().to_string(),
        reattached: attachment.reattached(),
    };
    if to_page.send(text(&hello)).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            event = attachment.next() => match event {
                Some(event) => {
                    let message = ScreenMessage::from(event);
                    let last = matches!(message, ScreenMessage::Exit { .. });
                    if to_page.send(text(&message)).await.is_err() {
                        return;
                    }
                    if last {
                        break;
                    }
                }
                None => break,
            },
            message = from_page.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if let Err(e) = attachment.write(data).await {
                        tracing::debug!(error = %e, "web terminal input not written");
                    }
                }
                Some(Ok(Message::Text(control))) => {
                    match serde_json::from_str::<ScreenControl>(control.as_str()) {
                        Ok(ScreenControl::Resize { rows, cols }) => {
                            if let Err(e) = attachment.resize(rows, cols).await {
                                tracing::debug!(error = %e, "web terminal resize failed");
                            }
                        }
                        Ok(ScreenControl::Close) => attachment.close(),
                        Err(_) => tracing::debug!("web terminal: control message not understood"),
                    }
                }
                // The page went: the session stays, to be attached again.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if to_page.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = to_page
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "exited".into(),
        })))
        .await;
}
