//! What the web-service proxy asks before it carries a byte: who may reach port `P` of set
//! `S`, where that port is, and which of a set's ports serve anything.
//!
//! Access goes in two steps, both signed with one key kept in the store (the same on every
//! node): a **link** names a user, a set and a port and lives a minute ([`PROXY_LINK_TTL`]);
//! the API hands it to a signed-in user ([`Engine::proxy_link`]). The proxy redeems it for a
//! **cookie** naming the same three ([`Engine::proxy_redeem`]), good for
//! [`PROXY_COOKIE_TTL`], and admits a request only with a cookie for the set and port it asks
//! for ([`Engine::proxy_admit`]), while the user still exists, still has the token they had
//! (a reset signs them out) and may still reach the set. API tokens never travel to the proxy.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::access::{Caller, OPERATOR};
use crate::engine::encode;
use crate::error::{Error, Operation, Result};
use crate::keys;
use crate::model::Status;
use crate::ops::Engine;
use crate::store::Txn;

/// Ports of one set asked whether they answer HTTP, at most.
const MAX_PROBES: usize = 64;

/// How long a link may wait to be opened.
pub const PROXY_LINK_TTL: Duration = Duration::from_secs(60);
/// How long the proxy's cookie lets its holder in.
pub const PROXY_COOKIE_TTL: Duration = Duration::from_secs(12 * 3600);

/// A link's ticket, as [`Engine::proxy_link`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTicket {
    /// The signed ticket: URL-safe characters only.
    pub ticket: String,
    /// When it stops being good, seconds since the Unix epoch.
    pub expires: u64,
}

/// What a redeemed link grants: the cookie to set, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyGrant {
    /// The user let in.
    pub user: String,
    /// The set and port the grant is for.
    pub set: String,
    /// The port.
    pub port: u16,
    /// The link's one-time nonce (recorded in the store as opened).
    pub nonce: String,
    /// The cookie's value: URL-safe characters only.
    pub cookie: String,
    /// How long the cookie is good.
    pub max_age: Duration,
}

/// What a proxy cookie is worth for one service.
pub enum Admission {
    /// It lets its holder in: the engine acting for them.
    Admitted(Box<Engine>),
    /// Signed here, but not (or no longer) for this: expired, for another service, or of a
    /// user since removed or whose token was reset. Not a guess.
    Stale,
    /// Not signed with the proxy's key: made up (count it as a failed authentication).
    Forged,
}

/// Where a set's port is reached from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTarget {
    /// In a container of this node.
    Here(PortHere),
    /// Through node `node`, whose API is at `url`.
    Node {
        /// The node's name.
        node: String,
        /// Its advertised API URL.
        url: String,
    },
}

/// A port of a running container of this node, as [`Engine::proxy_target`] found it; only
/// the core makes one, so holding one means the caller was allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortHere {
    container: String,
    port: u16,
}

impl PortHere {
    /// The container and port, as one string: what connections to it may be pooled by (a new
    /// version is a new container, never served by the old one's connections).
    pub fn key(&self) -> String {
        format!("{}:{}", self.container, self.port)
    }
}

/// A TCP port of a running set, as the console lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetService {
    /// The port inside the container.
    pub port: u16,
    /// The host port it is published on, if it is.
    pub host_port: Option<u16>,
    /// Whether a program listens on it now.
    pub listening: bool,
    /// Whether it answered an HTTP request.
    pub http: bool,
}

/// A ticket's signed content.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// `link` or `cookie`: one is never taken for the other.
    k: String,
    /// User.
    u: String,
    /// The user's token generation (the start of its salt): a reset token ends it.
    g: String,
    /// Set.
    s: String,
    /// Port.
    p: u16,
    /// Expiry, Unix seconds.
    e: u64,
    /// Nonce, 128 random bits in hex.
    n: String,
}

const LINK: &str = "link";
const COOKIE: &str = "cookie";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// HMAC-SHA-256 (RFC 2104) of `message` under `key`.
fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Store(format!("no randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn sign(key: &[u8; 32], claims: &Claims) -> String {
    let body = serde_json::to_vec(claims).expect("claims serialize");
    let mac = hmac(key, &body);
    format!("{}.{}", b64().encode(&body), b64().encode(mac))
}

/// Whether `ticket` carries `key`'s signature (whatever it says).
fn signed(key: &[u8; 32], ticket: &str) -> bool {
    let Some((body, mac)) = ticket.split_once('.') else {
        return false;
    };
    let (Ok(body), Ok(mac)) = (b64().decode(body), b64().decode(mac)) else {
        return false;
    };
    bool::from(subtle::ConstantTimeEq::ct_eq(
        &hmac(key, &body)[..],
        &mac[..],
    ))
}

/// The claims of `ticket` if its signature is `key`'s, it is of `kind`, and it has not expired.
fn verify(key: &[u8; 32], ticket: &str, kind: &str) -> Option<Claims> {
    if !signed(key, ticket) {
        return None;
    }
    let body = b64().decode(ticket.split_once('.')?.0).ok()?;
    let claims: Claims = serde_json::from_slice(&body).ok()?;
    (claims.k == kind && claims.e > unix_now()).then_some(claims)
}

impl Engine {
    /// The key the proxy's tickets are signed with: read from the store, or made once there.
    async fn proxy_key(&self) -> Result<[u8; 32]> {
        let key = self
            .ctx
            .shared
            .proxy_key
            .get_or_try_init(|| async {
                let hex = match self.ctx.read::<String>(keys::PROXY_KEY).await? {
                    Some((hex, _)) => hex,
                    None => {
                        let made = random_hex(32)?;
                        let txn = Txn::new()
                            .absent(keys::PROXY_KEY)
                            .put(keys::PROXY_KEY, encode(&made));
                        if self.ctx.shared.store.commit(txn).await? {
                            made
                        } else {
                            // Another node made it first: theirs is the one.
                            self.ctx
                                .read::<String>(keys::PROXY_KEY)
                                .await?
                                .map(|(hex, _)| hex)
                                .ok_or_else(|| {
                                    Error::Store("the proxy key vanished as it was made".into())
                                })?
                        }
                    }
                };
                let mut key = [0u8; 32];
                for (i, byte) in key.iter_mut().enumerate() {
                    *byte = hex
                        .get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| Error::Store("the proxy key is not 64 hex digits".into()))?;
                }
                Ok::<_, Error>(key)
            })
            .await?;
        Ok(*key)
    }

    /// User `user` as a caller, with their token generation (the start of their salt: a
    /// reset token changes it; the operator has none); `None` once they are removed.
    async fn holder(&self, user: &str) -> Result<Option<(Caller, String)>> {
        if user == OPERATOR {
            return Ok(Some((Caller::operator(), String::new())));
        }
        Ok(self.ctx.user_record(user).await?.map(|u| {
            let generation = u.salt.chars().take(16).collect();
            (Caller::new(u.name, u.role), generation)
        }))
    }

    /// A link's ticket that lets the caller into port `port` of set `name` through the proxy
    /// (theirs, or any for an admin; another user's set answers as a missing one). The set
    /// need not run yet: the proxy says so when it is opened.
    pub async fn proxy_link(&self, name: &str, port: u16) -> Result<ProxyTicket> {
        if port == 0 {
            return Err(Error::InvalidParams("port must be 1 to 65535".into()));
        }
        self.ctx.head(name).await?;
        let key = self.proxy_key().await?;
        let expires = unix_now() + PROXY_LINK_TTL.as_secs();
        let user = self.ctx.caller.name.clone();
        let (_, generation) = self.holder(&user).await?.ok_or(Error::Unauthorized)?;
        let claims = Claims {
            k: LINK.into(),
            g: generation,
            u: user,
            s: name.to_string(),
            p: port,
            e: expires,
            n: random_hex(16)?,
        };
        Ok(ProxyTicket {
            ticket: sign(&key, &claims),
            expires,
        })
    }

    /// Redeems a link's `ticket` for port `port` of set `name`: the cookie to give its
    /// holder. A ticket that is not good (forged, expired, for another set or port, or of a
    /// user since removed or whose token was reset) is [`Error::Unauthorized`].
    pub async fn proxy_redeem(&self, ticket: &str, name: &str, port: u16) -> Result<ProxyGrant> {
        let key = self.proxy_key().await?;
        let claims = verify(&key, ticket, LINK)
            .filter(|c| c.s == name && c.p == port)
            .ok_or(Error::Unauthorized)?;
        match self.holder(&claims.u).await? {
            Some((_, generation)) if generation == claims.g => {}
            _ => return Err(Error::Unauthorized),
        }
        self.mark_opened(&claims).await?;
        let cookie = Claims {
            k: COOKIE.into(),
            u: claims.u.clone(),
            g: claims.g,
            s: claims.s.clone(),
            p: port,
            e: unix_now() + PROXY_COOKIE_TTL.as_secs(),
            n: random_hex(16)?,
        };
        Ok(ProxyGrant {
            user: claims.u,
            set: claims.s,
            port,
            nonce: claims.n,
            cookie: sign(&key, &cookie),
            max_age: PROXY_COOKIE_TTL,
        })
    }

    /// Records link `claims` opened; [`Error::Unauthorized`] if it was already (on any node).
    /// Records of links past their expiry are swept on the way.
    async fn mark_opened(&self, claims: &Claims) -> Result<()> {
        #[derive(Serialize, Deserialize)]
        struct Opened {
            nonce: String,
            expires: u64,
        }
        let now = unix_now();
        let opened: Vec<Opened> = self.ctx.read_all(keys::PROXY_LINKS_OPENED).await?;
        let expired: Vec<String> = opened
            .iter()
            .filter(|o| o.expires < now)
            .map(|o| keys::proxy_link_opened(&o.nonce))
            .collect();
        if !expired.is_empty() {
            let sweep = expired
                .iter()
                .fold(Txn::new(), |txn, key| txn.delete(key.clone()));
            let _ = self.ctx.shared.store.commit(sweep).await;
        }
        let key = keys::proxy_link_opened(&claims.n);
        let record = Opened {
            nonce: claims.n.clone(),
            expires: claims.e,
        };
        let txn = Txn::new().absent(&key).put(&key, encode(&record));
        if self.ctx.shared.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }

    /// Whether `ticket` (a link's or a cookie's) carries the proxy's signature, whatever it
    /// says and however old: a ticket without one was made up.
    pub async fn proxy_signed(&self, ticket: &str) -> bool {
        match self.proxy_key().await {
            Ok(key) => signed(&key, ticket),
            // No key to check against: count nothing as made up.
            Err(_) => true,
        }
    }

    /// Whom `cookie` lets into port `port` of set `name` (see [`Engine::proxy_redeem`] for
    /// what is checked).
    pub async fn proxy_admit(&self, cookie: &str, name: &str, port: u16) -> Result<Admission> {
        let key = self.proxy_key().await?;
        if !signed(&key, cookie) {
            return Ok(Admission::Forged);
        }
        let Some(claims) = verify(&key, cookie, COOKIE).filter(|c| c.s == name && c.p == port)
        else {
            return Ok(Admission::Stale);
        };
        match self.holder(&claims.u).await? {
            Some((caller, generation)) if generation == claims.g => {
                Ok(Admission::Admitted(Box::new(self.as_caller(caller))))
            }
            _ => Ok(Admission::Stale),
        }
    }

    /// Where port `port` of set `name` is reached (the caller's set, or any for an admin;
    /// another user's answers as a missing one): a running container of this node, or the
    /// node the set lives on. A set here that is not running is refused, saying so.
    pub async fn proxy_target(&self, name: &str, port: u16) -> Result<ProxyTarget> {
        let (head, _) = self.ctx.head(name).await?;
        if head.node != self.ctx.node_name() {
            return match self.node_location(&head.node).await? {
                crate::cluster::Location::Node { name, url } => {
                    Ok(ProxyTarget::Node { node: name, url })
                }
                crate::cluster::Location::Here => Err(Error::NodeLost(head.node)),
            };
        }
        if head.status != Status::Running {
            return Err(Error::refused(
                Operation::Exec,
                format!("'{name}' is not running; continue or restart it first"),
            ));
        }
        Ok(ProxyTarget::Here(PortHere {
            container: crate::names::container(name, head.current),
            port,
        }))
    }

    /// A new TCP connection to `target`, as the container's own programs reach it.
    pub async fn proxy_connect(&self, target: &PortHere) -> Result<tokio::net::TcpStream> {
        self.ctx
            .shared
            .runtime
            .connect_port(&target.container, target.port)
            .await
    }

    /// The TCP ports of running set `name` (the caller's, or any for an admin): those
    /// published on host ports and those a program listens on, each asked for `/` over HTTP
    /// (a second at most) to tell which serve web pages.
    pub async fn set_services(&self, name: &str) -> Result<Vec<SetService>> {
        let (container, head) = self.running_head(name, "its ports").await?;
        let runtime = self.ctx.shared.runtime.clone();
        let listening = runtime.listening_ports(&container).await?;
        let mut services: std::collections::BTreeMap<u16, SetService> = Default::default();
        for mapping in &head.ports {
            let Some(port) = mapping
                .container_port
                .strip_suffix("/tcp")
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            services.insert(
                port,
                SetService {
                    port,
                    host_port: Some(mapping.host_port),
                    listening: false,
                    http: false,
                },
            );
        }
        for port in listening {
            services
                .entry(port)
                .or_insert(SetService {
                    port,
                    host_port: None,
                    listening: true,
                    http: false,
                })
                .listening = true;
        }
        // A container may listen on thousands of ports: the first few are asked, a few at a
        // time, so no user turns this into a flood of connections.
        use futures_util::StreamExt;
        let probes: Vec<u16> = services
            .values()
            .filter(|s| s.listening)
            .map(|s| s.port)
            .take(MAX_PROBES)
            .collect();
        let answers: Vec<(u16, bool)> = futures_util::stream::iter(probes)
            .map(|port| {
                let runtime = runtime.clone();
                let container = container.clone();
                async move { (port, answers_http(runtime.as_ref(), &container, port).await) }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (port, http) in answers {
            if let Some(service) = services.get_mut(&port) {
                service.http = http;
            }
        }
        Ok(services.into_values().collect())
    }
}

/// Whether port `port` of `container` answers a `GET /` with an HTTP status line within a
/// second.
async fn answers_http(
    runtime: &dyn crate::runtime::ContainerRuntime,
    container: &str,
    port: u16,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = runtime.connect_port(container, port).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: gpu-replica\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/")
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2's key is shorter than a block: padded with zeros, as here.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn claims(kind: &str, expires: u64) -> Claims {
        Claims {
            k: kind.into(),
            u: "alice".into(),
            g: "ab".into(),
            s: "lab".into(),
            p: 8888,
            e: expires,
            n: "00".into(),
        }
    }

    #[test]
    fn a_ticket_is_good_only_unchanged_unexpired_and_of_its_kind() {
        let key = [7u8; 32];
        let later = unix_now() + 60;
        let ticket = sign(&key, &claims(LINK, later));
        assert!(verify(&key, &ticket, LINK).is_some());
        assert!(
            verify(&key, &ticket, COOKIE).is_none(),
            "a link is no cookie"
        );
        assert!(verify(&[8u8; 32], &ticket, LINK).is_none(), "another key");
        let expired = sign(&key, &claims(LINK, unix_now() - 1));
        assert!(verify(&key, &expired, LINK).is_none());
        // Another user's name under the same signature.
        let (body, mac) = ticket.split_once('.').unwrap();
        let text = String::from_utf8(b64().decode(body).unwrap()).unwrap();
        let forged = format!(
            "{}.{mac}",
            b64().encode(text.replace("alice", "admin").as_bytes())
        );
        assert!(verify(&key, &forged, LINK).is_none());
        assert!(verify(&key, "garbage", LINK).is_none());
        assert!(ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
}
