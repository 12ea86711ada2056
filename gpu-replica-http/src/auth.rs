//! Who is asking: every route but `/ping` goes through [`Auth`] (in [`crate::gate::Gate`]),
//! which turns the bearer token into a [`Caller`] (the server's own token is the built-in admin, a user's
//! token is that user) and hands handlers an engine acting for them ([`Acting`]).
//!
//! Without a server token and before any user exists, requests need no token and act as the
//! admin, as a single-user server always did. Failed authentications are limited per client
//! address: past a short burst, that address gets 429 until its allowance refills.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use gpu_replica_core::{Caller, Engine, Error};

use crate::envelope::ApiError;

/// The server's own token; never logged (its `Debug` hides it).
pub struct Token(String);

impl Token {
    /// Wraps the token.
    pub fn new(token: String) -> Token {
        Token(token)
    }

    /// Compares in time independent of where the first difference is.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

pub use gpu_replica_core::limits::FailureLimiter;

/// What [`authenticate`] needs.
pub struct Auth {
    /// The engine, acting for the admin.
    pub engine: Arc<Engine>,
    /// The server's own token, if it has one.
    pub token: Option<Token>,
    /// The token that may only read `/metrics`.
    pub metrics_token: Option<Token>,
    /// Failed attempts per address.
    pub limiter: FailureLimiter,
}

impl Auth {
    /// Whether a request without a token is refused now: the server has a token, or users
    /// exist (a store that cannot be read counts as yes).
    pub async fn token_required(&self) -> bool {
        self.token.is_some() || self.engine.has_users().await.unwrap_or(true)
    }
}

fn unauthorized(error: Error) -> Response {
    let retry = matches!(error, Error::TooManyAttempts);
    let mut response =
        ([(header::WWW_AUTHENTICATE, "Bearer")], ApiError::new(error)).into_response();
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The token a browser sent as a WebSocket subprotocol (it cannot set headers on one):
/// `gpu-replica.bearer.<the token's bytes in hex>`, on an upgrade request only. A page of
/// another origin cannot read the console's token, and the routes that upgrade refuse other
/// origins anyway.
fn websocket_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(crate::wire::TOKEN_PROTOCOL_PREFIX))
        .map(|hex| unhex(hex).unwrap_or_default())
}

/// Lowercase or uppercase hex to text; `None` when it is not hex of UTF-8.
fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The token a request carries: its bearer token, or a browser's WebSocket subprotocol.
fn given_token(headers: &axum::http::HeaderMap) -> Option<Cow<'_, str>> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| Cow::Borrowed(v.strip_prefix("Bearer ").unwrap_or("").trim()))
        .or_else(|| websocket_token(headers).map(Cow::Owned))
}

/// Who a request without a token acts for: the admin until users exist (on a server without
/// a token of its own), no one after.
fn anonymous(users_exist: bool) -> Result<Caller, Error> {
    if users_exist {
        Err(Error::Unauthorized)
    } else {
        Ok(Caller::operator())
    }
}

/// What [`Auth`] can say of a request without waiting.
pub(crate) enum Decision {
    /// It acts for this caller.
    Pass(Caller),
    /// It is refused with this error.
    Refuse(Error),
    /// The users must be read first (the copy in memory is not known to be true): the token
    /// given, if any.
    Ask(Option<String>),
}

impl Auth {
    /// Who `request` acts for, from what is in memory.
    pub(crate) fn decide_now(&self, request: &Request, address: Option<IpAddr>) -> Decision {
        if !self.limiter.allows(address) {
            return Decision::Refuse(Error::TooManyAttempts);
        }
        let found = match given_token(request.headers()) {
            Some(token) if self.token.as_ref().is_some_and(|t| t.matches(&token)) => {
                Ok(Caller::operator())
            }
            // Read-only by where it is accepted: the scrape, nowhere else.
            Some(token)
                if request.uri().path() == "/metrics"
                    && self
                        .metrics_token
                        .as_ref()
                        .is_some_and(|t| t.matches(&token)) =>
            {
                Ok(Caller::operator())
            }
            Some(token) => match self.engine.authenticate_now(&token) {
                Some(found) => found,
                None => return Decision::Ask(Some(token.into_owned())),
            },
            None if self.token.is_some() => Err(Error::Unauthorized),
            None => match self.engine.has_users_now() {
                Some(users) => anonymous(users),
                None => return Decision::Ask(None),
            },
        };
        match found {
            Ok(caller) => Decision::Pass(caller),
            Err(e) => Decision::Refuse(e),
        }
    }

    /// Who a request that gave `token` acts for, reading the users when they must be read.
    pub(crate) async fn decide_later(&self, token: Option<String>) -> Result<Caller, Error> {
        match token {
            Some(token) => self.engine.authenticate(&token).await,
            None => anonymous(self.engine.has_users().await?),
        }
    }

    /// The answer to a request refused with `error` (a failed authentication is counted
    /// against `address`).
    pub(crate) fn refusal(&self, error: Error, address: Option<IpAddr>) -> Response {
        match error {
            Error::Unauthorized => {
                self.limiter.failed(address);
                unauthorized(Error::Unauthorized)
            }
            Error::TooManyAttempts => unauthorized(Error::TooManyAttempts),
            other => ApiError::new(other).into_response(),
        }
    }
}

/// The engine acting for whoever [`crate::gate::Gate`] found (the admin where no
/// authentication ran).
pub struct Acting(pub Engine);

impl FromRequestParts<Arc<Engine>> for Acting {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        engine: &Arc<Engine>,
    ) -> Result<Acting, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::operator);
        Ok(Acting(engine.as_caller(caller)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_with(protocols: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocols).unwrap(),
        );
        headers
    }

    #[test]
    fn a_browser_sends_its_token_as_a_websocket_subprotocol() {
        let hex: String = "grp-ann-1f".bytes().map(|b| format!("{b:02x}")).collect();
        let headers = upgrade_with(&format!("gpu-replica, gpu-replica.bearer.{hex}"));
        assert_eq!(websocket_token(&headers).as_deref(), Some("grp-ann-1f"));
        // Not hex: a wrong token (empty), never the raw text.
        let headers = upgrade_with("gpu-replica, gpu-replica.bearer.zz");
        assert_eq!(websocket_token(&headers).as_deref(), Some(""));
        // Only on an upgrade.
        let mut plain = upgrade_with(&format!("gpu-replica.bearer.{hex}"));
        plain.remove(header::UPGRADE);
        assert_eq!(websocket_token(&plain), None);
        assert_eq!(websocket_token(&upgrade_with("gpu-replica")), None);
    }
}
