//! An SSH gateway into sets, built into the server: `ssh -p 2222 SET@host` logs in to set
//! `SET` with one of its owner's public keys (an admin's key opens any set). Nothing runs in
//! the image for it: a shell or a command is a Docker exec, `scp` and `sftp` are served by
//! the gateway's own SFTP over Docker's archive API, and `-L`/`-W` reach the container's own
//! ports (its loopback included) from inside its network namespace.
//!
//! ```no_run
//! # async fn run(engine: std::sync::Arc<gpu_replica_core::Engine>) -> std::io::Result<()> {
//! let gateway = gpu_replica_ssh::Gateway::new(engine, gpu_replica_ssh::SshPolicy::default())
//!     .await
//!     .map_err(std::io::Error::other)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2222").await?;
//! gateway.serve(listener).await;
//! # Ok(()) }
//! ```
//!
//! Who may log in is the core's answer ([`gpu_replica_core::Engine::ssh_login`]): a missing
//! set, another user's set and an unknown key are the same refusal. Failed logins count
//! against the client's address as failed API tokens do.

#![warn(missing_docs)]

mod relay;
mod session;
mod sftp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpu_replica_core::limits::FailureLimiter;
use gpu_replica_core::{Engine, Error};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PrivateKey};
use tokio::net::TcpListener;

/// Limits of the gateway's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshPolicy {
    /// A connection with nothing from its client for this long is closed.
    pub idle: Duration,
    /// Connections one user may hold at once.
    pub sessions_per_user: usize,
}

impl Default for SshPolicy {
    fn default() -> SshPolicy {
        SshPolicy {
            idle: Duration::from_secs(30 * 60),
            sessions_per_user: 16,
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    /// The engine, acting for the admin (a login narrows it to its user).
    pub engine: Arc<Engine>,
    pub policy: SshPolicy,
    /// Failed logins per client address.
    pub limiter: Arc<FailureLimiter>,
    /// Open connections per user.
    pub sessions: Mutex<HashMap<String, usize>>,
    /// The cluster's host key: what this gateway logs in to another node's with.
    pub host_key: Arc<PrivateKey>,
    /// Open connections per client address.
    pub connections: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// Connections one address may hold open at once (logged in or not).
const CONNECTIONS_PER_ADDRESS: usize = 64;
/// How long a connection may take to log in.
const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// A connection counted against its address until it ends.
struct Counted {
    shared: Arc<Shared>,
    address: std::net::IpAddr,
}

impl Counted {
    fn new(shared: &Arc<Shared>, address: std::net::IpAddr) -> Option<Counted> {
        let mut open = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Counted {
            shared: shared.clone(),
            address,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Shared {
    /// Counts a connection of `user`; false (and nothing counted) at the limit.
    pub fn enter(&self, user: &str) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let open = sessions.entry(user.to_string()).or_insert(0);
        if *open >= self.policy.sessions_per_user {
            return false;
        }
        *open += 1;
        true
    }

    /// Forgets a connection of `user`.
    pub fn leave(&self, user: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = sessions.get_mut(user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                sessions.remove(user);
            }
        }
    }
}

/// The SSH gateway: its host key, configuration and shared state.
pub struct Gateway {
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    fingerprint: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("host_key", &self.fingerprint)
            .finish()
    }
}

/// A fresh Ed25519 host key as OpenSSH private key text.
fn make_host_key() -> gpu_replica_core::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::Store(format!("no randomness for the SSH host key: {e}")))?;
    let key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        "gpu-replica",
    )
    .map_err(|e| Error::Store(format!("making the SSH host key: {e}")))?;
    key.to_openssh(LineEnding::LF)
        .map(|text| text.to_string())
        .map_err(|e| Error::Store(format!("writing the SSH host key: {e}")))
}

impl Gateway {
    /// A gateway for `engine` (acting for the admin): its host key read from the store, made
    /// there the first time.
    pub async fn new(engine: Arc<Engine>, policy: SshPolicy) -> gpu_replica_core::Result<Gateway> {
        let text = engine.ssh_host_key(make_host_key).await?;
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| Error::Store(format!("the stored SSH host key does not read: {e}")))?;
        let fingerprint = key
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        let host_key = Arc::new(key.clone());
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-gpu-replica".into()),
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            inactivity_timeout: Some(policy.idle),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            max_auth_attempts: 6,
            ..Default::default()
        };
        Ok(Gateway {
            shared: Arc::new(Shared {
                engine,
                policy,
                limiter: Arc::new(FailureLimiter::default()),
                sessions: Mutex::new(HashMap::new()),
                host_key,
                connections: Mutex::new(HashMap::new()),
            }),
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// The same gateway counting failed logins in `limiter` (the API's, so that a client
    /// does not get twice the tries by using both doors).
    pub fn with_limiter(mut self, limiter: Arc<FailureLimiter>) -> Gateway {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.limiter = limiter;
        }
        self
    }

    /// Tells the other nodes of a cluster that this gateway is reached at `addr`
    /// (`host:port`): they bring their users' sessions to this node's sets here.
    pub async fn advertise(&self, addr: &str) -> gpu_replica_core::Result<()> {
        self.shared.engine.advertise_ssh(addr).await
    }

    /// The host key's fingerprint, `SHA256:…`, as `ssh` shows it on first connection.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // An address past its failed logins is turned away before the handshake, as the
            // API answers 429 before reading a token.
            if !self.shared.limiter.allows(Some(peer.ip())) {
                tracing::info!(%peer, "ssh: refused, too many failed logins from this address");
                drop(socket);
                continue;
            }
            let Some(counted) = Counted::new(&self.shared, peer.ip()) else {
                tracing::info!(%peer, "ssh: refused, {CONNECTIONS_PER_ADDRESS} connections from this address are open");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let connection = self.connection(socket, peer);
            tokio::spawn(async move {
                connection.await;
                drop(counted);
            });
        }
    }

    fn connection(
        &self,
        socket: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handler = session::Connection::new(self.shared.clone(), peer);
        let logged_in = handler.logged_in.clone();
        let config = self.config.clone();
        async move {
            match russh::server::run_stream(config, socket, handler).await {
                Ok(session) => {
                    // A connection that does not log in within the grace time is closed.
                    let handle = session.handle();
                    let grace = tokio::spawn(async move {
                        tokio::time::sleep(LOGIN_GRACE).await;
                        if !logged_in.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = handle
                                .disconnect(
                                    russh::Disconnect::ByApplication,
                                    "no login in time".into(),
                                    String::new(),
                                )
                                .await;
                        }
                    });
                    let ended = session.await;
                    grace.abort();
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = ?e, "ssh: session ended");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = ?e, "ssh: handshake failed"),
            }
        }
    }
}
