//! The answers of the hot reads (a set's info, the list, the GPU map) kept as the bytes sent,
//! per caller and request, for as long as the store's generation is unchanged: every one of
//! them is a function of the records alone, and the generation moves with every write. So a
//! read that was answered before is answered again without reading the records, building the
//! views (a version's Docker view is most of an info's cost) or encoding JSON. Only stores
//! that no one writes but this process have a generation (redb, memory); on etcd every read
//! is made afresh.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use gpu_replica_core::{Engine, Error};
use serde::Serialize;

use crate::envelope::{ok, ApiError};

/// Answers kept at most; past it the oldest generation's are dropped all at once.
const MOST: usize = 4096;

/// Answers by caller and request, with the generation they were made at.
#[derive(Default)]
pub(crate) struct Replies {
    kept: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl Replies {
    fn get(&self, key: &str, generation: u64) -> Option<Bytes> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(key)
            .filter(|(made_at, _)| *made_at == generation)
            .map(|(_, bytes)| bytes.clone())
    }

    fn put(&self, key: String, generation: u64, bytes: Bytes) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MOST {
            kept.retain(|_, (made_at, _)| *made_at == generation);
            if kept.len() >= MOST {
                kept.clear();
            }
        }
        kept.insert(key, (generation, bytes));
    }
}

fn json(bytes: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// The answer to `request` (its path and query) for `engine`'s caller: kept, or made by
/// `make` (and kept when the store has a generation). Errors are never kept.
pub(crate) async fn answer<T, F>(
    replies: &Replies,
    engine: &Engine,
    request: &str,
    make: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: std::future::Future<Output = Result<T, Error>>,
{
    // Read before the records: a write meanwhile leaves what is made here under an older
    // generation, never believed again.
    let Some(generation) = engine.store().generation() else {
        return Ok(ok(make.await?).into_response());
    };
    let caller = engine.caller();
    let key = format!("{}\u{0}{:?}\u{0}{request}", caller.name, caller.role);
    if let Some(bytes) = replies.get(&key, generation) {
        return Ok(json(bytes));
    }
    let data = make.await?;
    let mut body = Vec::with_capacity(1024);
    serde_json::to_writer(&mut body, &ok(data))
        .map_err(|e| ApiError::new(Error::InvalidParams(format!("encoding the answer: {e}"))))?;
    let bytes = Bytes::from(body);
    replies.put(key, generation, bytes.clone());
    Ok(json(bytes))
}
