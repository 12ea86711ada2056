//! Bytes both ways between two connections, with an idle limit: what the web-service proxy
//! (a WebSocket) and the node tunnel (a port of a set on another node) are made of.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copies bytes both ways between `a` and `b` (each side's end passed on as a half close)
/// until both ended, or nothing moved either way for `idle`. The two directions run apart, so
/// a side that stops reading holds up only its own direction (and is cut at the idle limit).
pub(crate) async fn join<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = tokio::time::Instant::now();
    // Milliseconds since `start` at the last byte moved.
    let moved = AtomicU64::new(0);
    let stamp = || moved.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    async fn pipe(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        stamp: &(impl Fn() + Sync),
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    stamp();
                    if to.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    stamp();
                }
            }
        }
        let _ = to.shutdown().await;
    }
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let both = async {
        tokio::join!(pipe(a_read, b_write, &stamp), pipe(b_read, a_write, &stamp));
    };
    let watchdog = async {
        loop {
            let last = start + Duration::from_millis(moved.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                tracing::debug!("a proxied connection idle for {idle:?}: closed");
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    };
    tokio::select! {
        _ = both => {}
        _ = watchdog => {}
    }
}
