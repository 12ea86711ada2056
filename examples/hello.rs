//! A bare axum handler: the baseline the API's throughput is measured against. `/` answers
//! `hello`; `/bytes/{n}` answers n bytes, so a baseline can carry as many bytes on the wire as
//! the endpoint it is compared with (on loopback the kernel's cost grows with them).
//!
//! ```text
//! cargo run --release --example hello -- 127.0.0.1:3000
//! ```

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

static FILLER: [u8; 65536] = [b'x'; 65536];

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let app =
        Router::new().route("/", get(|| async { "hello" })).route(
            "/bytes/{n}",
            get(|Path(n): Path<usize>| async move {
                Bytes::from_static(&FILLER[..n.min(FILLER.len())])
            }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
