//! The connection policy: how the router is served on a listener, with the deadlines, limits,
//! TLS and shutdown a server reachable by strangers needs. [`serve`] is what `gpu-replica serve`
//! runs; embedders call it the same way.
//!
//! - **Deadlines.** A request head must arrive within `header_timeout` of the connection's
//!   start (the first head) or of its first byte (later ones); a connection kept alive with
//!   nothing to do (no request in flight, nothing received) is closed after `idle_timeout`; and a request body must arrive whole within `body_timeout` of its head (else
//!   408 and the connection is closed). A TLS handshake counts as part of the first head. The
//!   head and idle deadlines are looked at every quarter of the shorter of the two (a request
//!   wakes no watchdog), so each is kept within a quarter of its length.
//! - **Descriptors.** At most `max_connections` connections are held; past that, new ones wait
//!   in the kernel's backlog until one closes, so the descriptors the engine needs for Docker
//!   and the store are never taken by clients. An accept that fails for lack of descriptors is
//!   retried shortly, never fatal. [`raise_open_files_limit`] lifts the soft limit first.
//! - **Shutdown.** When `shutdown` resolves, the listener closes, connections that are idle or
//!   still sending a head are closed at once, requests in flight may finish for up to
//!   `shutdown_timeout`, then whatever is left is cut off and [`serve`] returns.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::envelope::BodyTimedOut;
use crate::tls::ReloadableTls;

/// An answer of at most this many bytes, whole in memory, counts as sent once made (a
/// socket's buffer takes it at once): its connection is idle from then on.
const SENT_AT_ONCE: u64 = 16 * 1024;

/// Descriptors kept back from connections for the engine (Docker, the store, NVML, logs).
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How connections are served; [`ServeOptions::default`] gives what users expect.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest from a head's first byte to its end (default 30 s).
    pub header_timeout: Duration,
    /// Longest from a head to the end of its body (default 60 s).
    pub body_timeout: Duration,
    /// Longest a connection may sit with nothing to do (default 60 s).
    pub idle_timeout: Duration,
    /// Connections held at once (default 1024; see [`default_max_connections`]).
    pub max_connections: usize,
    /// Longest requests in flight may take to finish once shutdown began (default 30 s).
    pub shutdown_timeout: Duration,
    /// TLS, when the server speaks HTTPS.
    pub tls: Option<ReloadableTls>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Connections a process may hold with `open_files` descriptors: all but
/// [`RESERVED_DESCRIPTORS`], and at least 16.
pub fn default_max_connections(open_files: u64) -> usize {
    open_files.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize
}

/// Raises the soft limit on open files to the hard limit; returns (soft before, soft now,
/// hard).
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((before, limit.rlim_cur, limit.rlim_max))
}

/// Where connections come from.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket; client addresses are known (failed authentications are limited by them).
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener),
}

/// A connection as accepted, before TLS.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Stream::Tcp(s), Some(a))),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| (Stream::Unix(s), None)),
        }
    }
}

/// What a connection is doing, for its deadlines.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Nothing in flight and nothing received since.
    Idle(Instant),
    /// Receiving a head since then.
    Head(Instant),
    /// Requests in flight (their responses not yet fully sent).
    Busy(usize),
}

/// A connection's phase, shared by its stream, its service and its watchdog. Changing it
/// wakes no one: the watchdog looks again at its own pace (see [`Activity::expired`]), so a
/// request costs three uncontended locks and no wake-up of its connection's task.
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    /// A new connection owes its first head: the head deadline runs from now.
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Head(Instant::now())),
        })
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        *phase = f(*phase);
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn received(&self) {
        self.update(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
    }

    fn request_finished(&self) {
        self.update(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// Resolves when the phase has outlived its deadline; says which. It looks at the phase
    /// at least every quarter of the shorter deadline, so a deadline is kept within a quarter
    /// of its length (a head that began while it slept toward an idle deadline, say).
    async fn expired(&self, options: &ServeOptions) -> &'static str {
        let look_every =
            (options.header_timeout.min(options.idle_timeout) / 4).max(Duration::from_millis(10));
        loop {
            let now = Instant::now();
            let (deadline, what) = match self.phase() {
                Phase::Idle(since) => (since + options.idle_timeout, "idle"),
                Phase::Head(since) => (since + options.header_timeout, "request head"),
                Phase::Busy(_) => (now + look_every, ""),
            };
            if deadline <= now {
                return what;
            }
            tokio::time::sleep_until(deadline.min(now + look_every)).await;
        }
    }
}

/// A stream that tells its connection's [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passed. The timer is made the first time the
/// body has to wait for bytes: a body that is there whole (or is empty) never makes one.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` under `options` until `shutdown` resolves and the connections
/// are done (or cut off after `options.shutdown_timeout`).
pub async fn serve(
    listener: Listener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let mut warned_at: Option<Instant> = None;
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap what finished, so the set does not grow with the connections ever served.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or a connection that died in the backlog): wait a little
                // for some to come back, and never stop serving the connections held.
                if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("accept failed: {e}; retrying");
                    warned_at = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let options = options.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, app, options, stopping).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            "shutting down: waiting for {open} connection(s), at most {:?}",
            options.shutdown_timeout
        );
    }
    let drained = tokio::time::timeout(options.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connection(s) still busy after {:?}: cut off",
            connections.len(),
            options.shutdown_timeout
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

async fn serve_connection(
    stream: Stream,
    peer: Option<SocketAddr>,
    app: Router,
    options: Arc<ServeOptions>,
    stopping: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    match (stream, &options.tls) {
        (Stream::Tcp(tcp), Some(tls)) => {
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tracked = Tracked {
                inner: tcp,
                activity: activity.clone(),
            };
            // The handshake is part of the first head: the same deadline.
            match tokio::time::timeout(options.header_timeout, acceptor.accept(tracked)).await {
                Ok(Ok(tls)) => run_http(tls, peer, app, &options, activity, stopping).await,
                Ok(Err(e)) => tracing::debug!(?peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
            }
        }
        (Stream::Tcp(tcp), None) => {
            let _ = tcp.set_nodelay(true);
            let tracked = Tracked {
                inner: tcp,
                activity: activity.clone(),
            };
            run_http(tracked, peer, app, &options, activity, stopping).await;
        }
        (Stream::Unix(unix), _) => {
            let tracked = Tracked {
                inner: unix,
                activity: activity.clone(),
            };
            run_http(tracked, peer, app, &options, activity, stopping).await;
        }
    }
}

async fn run_http<S>(
    stream: S,
    peer: Option<SocketAddr>,
    app: Router,
    options: &ServeOptions,
    activity: Arc<Activity>,
    mut stopping: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = options.body_timeout;
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let activity = service_activity.clone();
        activity.request_started();
        let (mut parts, body) = request.into_parts();
        if let Some(peer) = peer {
            parts.extensions.insert(ConnectInfo(peer));
        }
        // A migration's archive streams between nodes for as long as the handler may take.
        let deadline = if parts.uri.path().starts_with(crate::link::INTERNAL) {
            crate::REQUEST_TIMEOUT
        } else {
            body_timeout
        };
        let body = if hyper::body::Body::is_end_stream(&body) {
            axum::body::Body::empty()
        } else {
            axum::body::Body::new(DeadlineBody {
                inner: body,
                deadline: Instant::now() + deadline,
                timer: None,
            })
        };
        let request = hyper::Request::from_parts(parts, body);
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await?;
            let (parts, body) = response.into_parts();
            // A small answer held whole in memory is written at once: done now.
            let small = hyper::body::Body::size_hint(&body)
                .exact()
                .is_some_and(|n| n <= SENT_AT_ONCE);
            if small {
                activity.request_finished();
                return Ok(hyper::Response::from_parts(parts, body));
            }
            // Otherwise the request is in flight until its response is sent whole (or
            // dropped).
            let finished = Finished(activity);
            let body = body.map_frame(move |frame| {
                let _ = &finished;
                frame
            });
            Ok::<_, std::convert::Infallible>(hyper::Response::from_parts(
                parts,
                axum::body::Body::new(body),
            ))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        // A terminal's WebSocket takes the connection over once upgraded.
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = *stopping.borrow();
    loop {
        if draining && !matches!(activity.phase(), Phase::Busy(_)) {
            // Shutting down: nothing in flight here, so nothing is lost by closing now.
            return;
        }
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(?peer, "connection ended: {e}");
                }
                return;
            }
            what = activity.expired(options) => {
                tracing::debug!(?peer, "closing the connection: {what} deadline passed");
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Marks its connection's request finished when dropped (its response body was sent or
/// abandoned).
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}
