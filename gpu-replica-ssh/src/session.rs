//! One SSH connection: who logs in to which set, and its channels: a shell or a command
//! (Docker exec), the `sftp` subsystem, and direct TCP/IP to the container's own ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use gpu_replica_core::{Caller, Engine, Shell, ShellRequest};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, Disconnect};
use tokio::io::AsyncWriteExt;

use crate::relay::{self, Relay, RELAY_SEP};
use crate::Shared;

/// Environment variables a client may pass (as OpenSSH's `AcceptEnv LANG LC_*`).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "COLORTERM"
}

/// Hosts that name the set's container itself for `-L` and `-W`.
fn names_the_container(host: &str, set: &str) -> bool {
    matches!(
        host,
        "localhost" | "127.0.0.1" | "::1" | "[::1]" | "0.0.0.0" | "ip6-localhost"
    ) || host == set
}

/// What a session channel asks of the set's node.
enum Remote<'a> {
    Shell,
    Exec(&'a str),
    Subsystem(&'a str),
}

/// A session channel before its program starts.
#[derive(Default)]
struct Opening {
    channel: Option<Channel<Msg>>,
    /// Its other end on the set's node, for a relayed session.
    remote: Option<Channel<russh::client::Msg>>,
    /// (rows, cols, TERM) from a `pty-req`.
    pty: Option<(u16, u16, String)>,
    env: Vec<String>,
}

/// Who logged in.
struct LoggedIn {
    caller: Caller,
    engine: Engine,
    since: Instant,
    /// The login name and key it came with, asked again at every new channel: a key removed
    /// (or a user removed) opens nothing more.
    login: String,
    key: russh::keys::PublicKey,
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The set named as the login user.
    set: String,
    login: Option<LoggedIn>,
    opening: HashMap<ChannelId, Opening>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Set once a key let the connection in (the gateway ends connections that take too
    /// long to log in).
    pub(crate) logged_in: Arc<std::sync::atomic::AtomicBool>,
    /// Where the set lives when it is on another node: that node's gateway, and the login
    /// there once made.
    elsewhere: Option<(String, String)>,
    relay: Option<Relay>,
    /// Why a relayed session could not be made.
    relay_failed: Option<String>,
}

impl Connection {
    /// Whether the login still lets in (asked at every new channel).
    async fn still_allowed(&self) -> bool {
        match &self.login {
            Some(login) => self.who(&login.login, &login.key).await.is_some(),
            None => false,
        }
    }

    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr) -> Connection {
        Connection {
            shared,
            peer,
            set: String::new(),
            login: None,
            opening: HashMap::new(),
            watcher: None,
            logged_in: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            elsewhere: None,
            relay: None,
            relay_failed: None,
        }
    }

    /// Who may log in to `set` with `key`: `None` alike for an unknown key, a missing set and
    /// another user's set.
    async fn who(&self, set: &str, key: &russh::keys::PublicKey) -> Option<Caller> {
        if key.key_data() == self.shared.host_key.public_key().key_data() {
            // Another node of the cluster, bringing a user's session here.
            let (set, user) = set.split_once(RELAY_SEP)?;
            return self
                .shared
                .engine
                .ssh_login_relayed(set, user)
                .await
                .ok()
                .flatten();
        }
        let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        match self.shared.engine.ssh_login(set, &fingerprint).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "ssh: the store could not say who logs in");
                None
            }
        }
    }

    fn refuse(&self) -> Auth {
        self.shared.limiter.failed(Some(self.peer.ip()));
        Auth::reject()
    }

    fn engine(&self) -> Option<Engine> {
        self.login.as_ref().map(|l| l.engine.clone())
    }

    /// A channel of a set on another node: the request made there, the channel carried
    /// across; `None` when the set is here.
    async fn elsewhere(
        &mut self,
        id: ChannelId,
        channel: Channel<Msg>,
        remote: Option<Channel<russh::client::Msg>>,
        request: Remote<'_>,
        session: &mut Session,
    ) -> Result<Option<()>, russh::Error> {
        if let Some(mut remote) = remote {
            let sent = match request {
                Remote::Shell => remote.request_shell(true).await,
                Remote::Exec(command) => remote.exec(true, command.as_bytes()).await,
                Remote::Subsystem(name) => remote.request_subsystem(true, name).await,
            };
            if sent.is_ok() && relay::answered(&mut remote).await {
                session.channel_success(id)?;
                tokio::spawn(relay::carry(channel, remote));
            } else {
                session.channel_failure(id)?;
            }
            return Ok(Some(()));
        }
        if let Some(why) = self.relay_failed.clone() {
            session.channel_success(id)?;
            tokio::spawn(fail(channel, why));
            return Ok(Some(()));
        }
        Ok(None)
    }

    /// Starts the program of session channel `id`: the login shell, or `command` through
    /// `sh -c` (as sshd runs it through the user's shell).
    async fn start(
        &mut self,
        id: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(engine), Some(mut opening)) = (self.engine(), self.opening.remove(&id)) else {
            return session.channel_failure(id);
        };
        let Some(channel) = opening.channel.take() else {
            return session.channel_failure(id);
        };
        let request = match &command {
            Some(command) => Remote::Exec(command),
            None => Remote::Shell,
        };
        let remote = opening.remote.take();
        if remote.is_some() || self.relay_failed.is_some() {
            let channel_again = channel;
            self.elsewhere(id, channel_again, remote, request, session)
                .await?;
            return Ok(());
        }
        let mut env = opening.env;
        if let Some((_, _, term)) = &opening.pty {
            if !term.is_empty() {
                env.push(format!("TERM={term}"));
            }
        }
        let request = ShellRequest {
            argv: command
                .map(|c| vec!["sh".to_string(), "-c".into(), c])
                .unwrap_or_default(),
            env,
            workdir: None,
            user: None,
            tty: opening.pty.as_ref().map(|(rows, cols, _)| (*rows, *cols)),
            // Without a terminal, stderr goes on SSH's own stream, as sshd sends it.
            separate_stderr: opening.pty.is_none(),
        };
        match engine.open_shell(&self.set, request).await {
            Ok(shell) => {
                session.channel_success(id)?;
                tokio::spawn(carry(channel, shell));
                Ok(())
            }
            Err(e) => {
                session.channel_success(id)?;
                tokio::spawn(fail(channel, e.to_string()));
                Ok(())
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(login) = self.login.take() {
            self.shared.leave(&login.caller.name);
            let (set, from) = (self.set.clone(), self.peer.to_string());
            tokio::spawn(async move {
                login
                    .engine
                    .note_ssh_session(&set, &from, Some(login.since.elapsed()))
                    .await;
            });
        }
    }
}

/// Tells the client why its program did not start, on stderr, and ends the channel with
/// status 1.
async fn fail(channel: Channel<Msg>, why: String) {
    let _ = channel
        .extended_data(1, format!("gpu-replica: {why}\r\n").into_bytes().as_slice())
        .await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Carries a program's streams over its channel until it exits or the client goes; then
/// its exit status. Each direction runs on its own, so a program that writes while nobody
/// reads its input (or the reverse) never stalls the other.
async fn carry(channel: Channel<Msg>, shell: Shell) {
    let control = shell.control();
    let Shell {
        mut input,
        mut output,
        errors,
        ..
    } = shell;
    let (mut reader, writer) = channel.split();
    let from_client = async {
        let mut input_open = true;
        loop {
            match reader.wait().await {
                Some(ChannelMsg::Data { data }) if input_open => {
                    if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                        input_open = false;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    input_open = false;
                    let _ = input.shutdown().await;
                }
                Some(ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                }) => {
                    if let Err(e) = control.resize(clamp(row_height), clamp(col_width)).await {
                        tracing::debug!(error = %e, "ssh: resize failed");
                    }
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            }
        }
    };
    let errors_to_client = async {
        if let Some(mut errors) = errors {
            while let Some(Ok(bytes)) = errors.next().await {
                if writer.extended_data_bytes(1, bytes).await.is_err() {
                    return;
                }
            }
        }
    };
    let output_to_client = async {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(bytes) => {
                    if writer.data_bytes(bytes).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ssh: program output ended");
                    break;
                }
            }
        }
        true
    };
    let to_client = async {
        let (finished, ()) = tokio::join!(output_to_client, errors_to_client);
        finished
    };
    let finished = tokio::select! {
        _ = from_client => false,
        finished = to_client => finished,
    };
    if !finished {
        // The client went: its program is hung up, as sshd's would be.
        control.hang_up().await;
        return;
    }
    let code = control.exit_code().await.unwrap_or(-1);
    let _ = writer.exit_status(code.clamp(0, 255) as u32).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// Refuses a channel the login may not open.
async fn prohibited(reply: ChannelOpenHandle) -> Result<(), russh::Error> {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
}

fn clamp(n: u32) -> u16 {
    n.clamp(1, u32::from(u16::MAX)) as u16
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(russh::MethodSet::from(&[russh::MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let _ = (user, offer);
        if !self.shared.limiter.allows(Some(self.peer.ip())) {
            // Trying on while refused keeps the address refused.
            return Ok(self.refuse());
        }
        // Every key may try: who it lets in is decided once its holder has signed, so a
        // public key alone (they are public) tells nothing about which sets exist.
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.shared.limiter.allows(Some(self.peer.ip())) {
            return Ok(Auth::reject());
        }
        let Some(caller) = self.who(user, key.public_key).await else {
            return Ok(self.refuse());
        };
        if !self.shared.enter(&caller.name) {
            tracing::info!(user = %caller.name, "ssh: refused, too many sessions");
            return Ok(Auth::reject());
        }
        let engine = self.shared.engine.as_caller(caller.clone());
        let set = user.split_once(RELAY_SEP).map_or(user, |(set, _)| set);
        self.set = set.to_string();
        self.elsewhere = engine.ssh_elsewhere(set).await.ok().flatten();
        self.login = Some(LoggedIn {
            caller,
            engine,
            since: Instant::now(),
            login: user.to_string(),
            key: key.public_key.clone(),
        });
        self.logged_in
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        engine
            .note_ssh_session(&self.set, &self.peer.to_string(), None)
            .await;
        if let Some((node, addr)) = self.elsewhere.clone() {
            // The set's own node watches it; this gateway carries the channels there.
            let user = engine.caller().name.clone();
            match Relay::connect(&addr, self.shared.host_key.clone(), &self.set, &user).await {
                Ok(relay) => self.relay = Some(relay),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "ssh: no relay to the set's node");
                    self.relay_failed = Some(format!("'{}' lives on node '{node}': {e}", self.set));
                }
            }
            return Ok(());
        }
        // The session ends when its set stops, is deleted or moves to another container.
        let container = engine.running_container(&self.set).await.ok();
        let handle = session.handle();
        let set = self.set.clone();
        let mut events = engine.subscribe();
        self.watcher = Some(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.target != set => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
                let now = engine.running_container(&set).await.ok();
                if now.is_none() || now != container {
                    let _ = handle
                        .disconnect(
                            Disconnect::ByApplication,
                            format!("'{set}' stopped or changed; log in again"),
                            String::new(),
                        )
                        .await;
                    return;
                }
            }
        }));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.still_allowed().await {
            return prohibited(reply).await;
        }
        let remote = match &self.relay {
            Some(relay) => match relay.session().await {
                Ok(remote) => Some(remote),
                Err(e) => {
                    tracing::debug!(error = %e, "ssh: relayed session refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return Ok(());
                }
            },
            None => None,
        };
        self.opening.insert(
            channel.id(),
            Opening {
                channel: Some(channel),
                remote,
                ..Default::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.opening.get_mut(&channel) {
            Some(opening) => {
                let term: String = term
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect();
                if let Some(remote) = &opening.remote {
                    let _ = remote
                        .request_pty(false, &term, col_width, row_height, 0, 0, &[])
                        .await;
                }
                opening.pty = Some((clamp(row_height), clamp(col_width), term));
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(opening) = self.opening.get_mut(&channel) {
            if accepted_env(name) && !value.contains('\0') && opening.env.len() < 64 {
                if let Some(remote) = &opening.remote {
                    let _ = remote.set_env(false, name, value).await;
                }
                opening.env.push(format!("{name}={value}"));
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(engine), Some(mut opening)) = (self.engine(), self.opening.remove(&channel))
        else {
            return session.channel_failure(channel);
        };
        let Some(chan) = opening.channel.take() else {
            return session.channel_failure(channel);
        };
        if name != "sftp" {
            return session.channel_failure(channel);
        }
        let remote = opening.remote.take();
        if remote.is_some() || self.relay_failed.is_some() {
            self.elsewhere(channel, chan, remote, Remote::Subsystem(name), session)
                .await?;
            return Ok(());
        }
        match engine.open_files(&self.set).await {
            Ok(files) => {
                session.channel_success(channel)?;
                tokio::spawn(crate::sftp::serve(chan, files));
            }
            Err(e) => {
                session.channel_success(channel)?;
                tokio::spawn(fail(chan, e.to_string()));
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.still_allowed().await {
            return prohibited(reply).await;
        }
        if let Some(relay) = &self.relay {
            match relay
                .direct(host, port, originator_address, originator_port)
                .await
            {
                Ok(remote) => {
                    reply.accept().await;
                    tokio::spawn(async move {
                        let mut here = channel.into_stream();
                        let mut there = remote.into_stream();
                        let _ = tokio::io::copy_bidirectional(&mut here, &mut there).await;
                    });
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
            return Ok(());
        }
        let Some(engine) = self.engine() else {
            return prohibited(reply).await;
        };
        // Only the set's own container: the gateway is no way onto other hosts or sets.
        let (Ok(port), true) = (u16::try_from(port), names_the_container(host, &self.set)) else {
            return prohibited(reply).await;
        };
        match engine.connect_port(&self.set, port).await {
            Ok(mut tcp) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, port, "ssh: forward refused");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }
}
