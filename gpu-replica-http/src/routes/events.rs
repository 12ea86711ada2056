//! `GET /api/v1/events`: the event log as Server-Sent Events.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};
use gpu_replica_core::{Event, KEEP_EVENTS};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Acting;
use crate::envelope::ApiError;
#[allow(unused_imports)]
use crate::envelope::ErrorReply;
#[allow(unused_imports)]
use crate::wire::SseItem;
use crate::wire::{EventView, EventsQuery};

fn to_sse(event: Event) -> SseEvent {
    let id = event.seq.to_string();
    SseEvent::default()
        .id(id)
        .json_data(EventView::from(event))
        .unwrap_or_default()
}

/// Lifecycle events (run, patch, rollback, stop, timers firing, volume resizes, recovery…)
/// as `text/event-stream`: the newest `replay` stored events first (or, with a
/// `Last-Event-ID` header, every stored event after it), then live ones as they happen unless
/// `follow=false`. Each event's `id` is its `seq`; its `data` is the event as JSON.
#[utoipa::path(get, path = "/api/v1/events", tag = "instance",
    params(("replay" = Option<usize>, Query, description = "Stored events sent first (default 20)"),
        ("follow" = Option<bool>, Query, description = "Stay open for live events (default true)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (the `id` of the last one read; anything else replays as without it)")),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-Sent Events, one per lifecycle change (see SseItem): `id` is its seq, `event` its kind, `data` an EventView as JSON"), (status = 400, body = ErrorReply, description = "1000: a query value is malformed")))]
pub async fn events(
    Acting(engine): Acting,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Subscribe before reading the store, so no event falls between the two.
    let live = engine.subscribe();
    let replay = match resume_after {
        Some(after) => engine.events(KEEP_EVENTS, Some(after)).await?,
        None => engine.events(query.replay, None).await?,
    };
    let last = replay.last().map(|e| e.seq).or(resume_after).unwrap_or(0);
    let replayed = stream::iter(replay.into_iter().map(to_sse));
    if !query.follow {
        return Ok(Sse::new(replayed.map(Ok::<_, Infallible>)).into_response());
    }
    let closing = engine.clone();
    let live = stream::unfold((live, last), move |(mut receiver, last)| {
        let engine = engine.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(event) if event.seq <= last || !engine.sees(&event) => continue,
                    Ok(event) => {
                        let seq = event.seq;
                        return Some((to_sse(event), (receiver, seq)));
                    }
                    // Too slow a reader: say how many were missed; they can be read back with
                    // Last-Event-ID.
                    Err(RecvError::Lagged(missed)) => {
                        let note = SseEvent::default().event("lagged").data(missed.to_string());
                        return Some((note, (receiver, last)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let live = live.take_until(async move { closing.closed().await });
    Ok(Sse::new(replayed.chain(live).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response())
}
