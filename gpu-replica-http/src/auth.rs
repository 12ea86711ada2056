//! Bearer-token authentication for every route but `/ping`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpu_replica_core::Error;

use crate::envelope::ApiError;

/// The expected token; never logged (its `Debug` hides it).
pub struct Token(String);

impl Token {
    /// Wraps the token.
    pub fn new(token: String) -> Token {
        Token(token)
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Lets the request through only with `Authorization: Bearer <token>`.
pub async fn require_token(
    State(token): State<Arc<Token>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token.matches(g)) {
        return next.run(request).await;
    }
    (
        [(header::WWW_AUTHENTICATE, "Bearer")],
        ApiError::new(Error::Unauthorized),
    )
        .into_response()
}
