//! Sessions to a set on another node of the cluster: the gateway the user reached logs in to
//! that node's gateway for them and carries each channel across.
//!
//! The gateways of a cluster share one host key (it is kept in the store), and that key is
//! how one gateway proves to another that it is a node of the same cluster: a login offering
//! the host key as `SET+USER` is a node bringing `USER`'s session to `SET` (the first node
//! checked the user's own key). Whoever holds the host key holds the store already.

use std::sync::Arc;

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{client, server, Channel, ChannelMsg};

/// Separates the set from the user in a relayed login's user name (names hold no `+`).
pub(crate) const RELAY_SEP: char = '+';

/// Trusts only the cluster's own host key.
struct Trust {
    host: PublicKey,
}

impl client::Handler for Trust {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.host.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// A login to another node's gateway, acting for a user.
pub(crate) struct Relay {
    handle: client::Handle<Trust>,
}

impl Relay {
    /// Logs in to the gateway at `addr` as the node bringing `user` to `set`.
    pub(crate) async fn connect(
        addr: &str,
        host_key: Arc<PrivateKey>,
        set: &str,
        user: &str,
    ) -> Result<Relay, String> {
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| format!("the gateway of its node ({addr}) did not answer"))?
        .map_err(|e| format!("the gateway of its node ({addr}): {e}"))?;
        let _ = tcp.set_nodelay(true);
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            ..Default::default()
        });
        let trust = Trust {
            host: host_key.public_key().clone(),
        };
        let mut handle = client::connect_stream(config, tcp, trust)
            .await
            .map_err(|e| format!("the gateway of its node ({addr}): {e}"))?;
        let auth = handle
            .authenticate_publickey(
                format!("{set}{RELAY_SEP}{user}"),
                PrivateKeyWithHashAlg::new(host_key, None),
            )
            .await
            .map_err(|e| format!("the gateway of its node ({addr}): {e}"))?;
        if !auth.success() {
            return Err(format!(
                "the gateway of its node ({addr}) refused the relay"
            ));
        }
        Ok(Relay { handle })
    }

    /// A session channel on the other side.
    pub(crate) async fn session(&self) -> Result<Channel<client::Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }

    /// A direct TCP/IP channel on the other side.
    pub(crate) async fn direct(
        &self,
        host: &str,
        port: u32,
        from: &str,
        from_port: u32,
    ) -> Result<Channel<client::Msg>, russh::Error> {
        self.handle
            .channel_open_direct_tcpip(host, port, from, from_port)
            .await
    }
}

/// Waits for the other side's answer to a request sent with `want_reply`.
pub(crate) async fn answered(remote: &mut Channel<client::Msg>) -> bool {
    loop {
        match remote.wait().await {
            Some(ChannelMsg::Success) => return true,
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => return false,
            Some(_) => {}
        }
    }
}

/// Carries a session channel both ways until either side ends it: data, end of input and
/// window changes across; output, errors, end of output and the exit status back.
pub(crate) async fn carry(user: Channel<server::Msg>, remote: Channel<client::Msg>) {
    let (mut from_user, to_user) = user.split();
    let (mut from_remote, to_remote) = remote.split();
    let up = async {
        loop {
            let sent = match from_user.wait().await {
                Some(ChannelMsg::Data { data }) => to_remote.data_bytes(data).await,
                Some(ChannelMsg::Eof) => to_remote.eof().await,
                Some(ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                }) => {
                    to_remote
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    };
    let down = async {
        loop {
            let sent = match from_remote.wait().await {
                Some(ChannelMsg::Data { data }) => to_user.data_bytes(data).await,
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    to_user.extended_data_bytes(ext, data).await
                }
                Some(ChannelMsg::Eof) => to_user.eof().await,
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    to_user.exit_status(exit_status).await
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    let _ = to_remote.close().await;
    let _ = to_user.close().await;
}
