//! The web console at `/ui`: one page of plain HTML, CSS and JavaScript, embedded in the binary
//! (no CDN, no build step, nothing fetched at run time). It signs in with a token and speaks
//! the same API as the CLI, so a user sees and does exactly what the API lets them; the assets
//! themselves need no token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::Auth;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const TERMINAL: &str = include_str!("../ui/terminal.js");
const STYLE: &str = include_str!("../ui/style.css");
pub(crate) const ICON: &str = include_str!("../ui/favicon.svg");

/// Only this page's own script, style and API: no inline script, nothing from elsewhere, never
/// framed.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn terminal() -> Response {
    asset(TERMINAL, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

/// `{"tokenRequired": bool}`: whether the API needs a token now, so that the page asks for
/// one without first sending a request it knows will fail.
async fn session(State(auth): State<Arc<Auth>>) -> Response {
    let required = auth.token_required().await;
    axum::Json(serde_json::json!({ "tokenRequired": required })).into_response()
}

/// The console's routes; none needs a token (the page asks for one, the API checks it).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(auth: Arc<Auth>) -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/terminal.js", get(terminal))
        .route("/ui/style.css", get(style))
        .route("/ui/favicon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .route("/ui/session", get(session).with_state(auth))
}
