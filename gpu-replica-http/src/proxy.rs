//! The web-service proxy: a set's HTTP services (JupyterLab, TensorBoard, a model server) at
//! one address, behind the same users as the API, on an origin of its own.
//!
//! Served on its own listener (`--proxy-addr`), never on the API's: a proxied application runs
//! its own script in the user's browser, and on the console's origin that script could read
//! the console's token. Two ways to name a service:
//! - **paths**: `/{set}/{port}/…` on the proxy's address; the request reaches the application
//!   with its path whole and `X-Forwarded-Prefix: /{set}/{port}`, so an application told its
//!   base path (`jupyter lab --ServerApp.base_url=/{set}/8888/`) builds its links under it;
//! - **host names** (with a domain, `--proxy-domain`): `{set}-{port}.{domain}`, for
//!   applications that cannot live under a path; each service is then an origin of its own.
//!
//! Access: `GET …/_gpu-replica/open?ticket=T` (the link the API hands out, good for a minute,
//! once) sets an HttpOnly cookie scoped to that service and sends the browser on to it. Every
//! request is then let through with that cookie only, while its user exists, keeps their token
//! and may reach the set; the cookie is taken out before the request goes on, and no API
//! token ever comes here. Without a good cookie the answer is the same for a set that exists,
//! one of another user and one that does not.
//!
//! Bodies stream both ways; WebSocket upgrades are carried as they are; connections to a
//! container's port are kept for reuse (a new version is a new container, so a new pool). A
//! set on another node of a cluster is reached through a byte tunnel to that node
//! ([`crate::link`]'s port route, behind the cluster's secret).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gpu_replica_core::{Admission, Engine, Error, PortHere, ProxyTarget};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::forward::NodeClient;

/// The proxy's cookie (one per service: scoped by path, or by host name).
pub const COOKIE: &str = "gpu_replica_proxy";
/// Where the proxy's own pages live (a set name never starts with `_`).
pub const OPEN_PATH: &str = "/_gpu-replica/open";

/// How the proxy serves.
#[derive(Clone)]
pub struct ProxyOptions {
    /// With a domain, `{set}-{port}.{domain}` names a service too.
    pub domain: Option<String>,
    /// Whether browsers reach the proxy over HTTPS (its own TLS, or one in front of it):
    /// cookies are then `Secure` and the application is told `X-Forwarded-Proto: https`.
    pub https: bool,
    /// Requests and WebSockets one user may have going through the proxy at once.
    pub connections_per_user: usize,
    /// Longest a proxied exchange may go without a byte either way (an answer's head, a
    /// body, a WebSocket: one that pings is never idle).
    pub idle_timeout: Duration,
    /// How sets on other nodes are reached.
    pub nodes: NodeClient,
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            domain: None,
            https: false,
            connections_per_user: 64,
            idle_timeout: Duration::from_secs(600),
            nodes: NodeClient::plain(),
        }
    }
}

/// Where the proxy is reached from a browser, as the API's `open` route writes its links.
#[derive(Debug, Clone, Default)]
pub struct ProxyAddress {
    /// The proxy's base URL (`https://apps.example.com`); without one, links name the host
    /// the API was reached by, on `port`.
    pub url: Option<String>,
    /// The proxy listener's port (for links without `url`).
    pub port: u16,
    /// Whether the proxy speaks HTTPS itself (for links without `url`).
    pub https: bool,
    /// As [`ProxyOptions::domain`].
    pub domain: Option<String>,
}

impl ProxyAddress {
    /// The link that opens port `port` of set `set` with `ticket`, the API having been
    /// reached at `api_host` (its `Host` header).
    pub fn link(&self, api_host: &str, set: &str, port: u16, ticket: &str) -> String {
        match self.origin(api_host, set, port) {
            (origin, true) => format!("{origin}{OPEN_PATH}?ticket={ticket}"),
            (origin, false) => format!("{origin}{OPEN_PATH}/{set}/{port}?ticket={ticket}"),
        }
    }

    /// Where port `port` of set `set` is served once its link is opened.
    pub fn service(&self, api_host: &str, set: &str, port: u16) -> String {
        match self.origin(api_host, set, port) {
            (origin, true) => format!("{origin}/"),
            (origin, false) => format!("{origin}/{set}/{port}/"),
        }
    }

    /// The origin that serves port `port` of set `set`, and whether it is the service's own
    /// host name (else the proxy's, with the service under a path).
    fn origin(&self, api_host: &str, set: &str, port: u16) -> (String, bool) {
        let base = match &self.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let host = host_only(api_host);
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                let scheme = if self.https { "https" } else { "http" };
                format!("{scheme}://{host}:{}", self.port)
            }
        };
        match &self.domain {
            Some(domain) if host_label(set) => {
                // The scheme and port of the base, the service's own host name.
                let (scheme, rest) = base.split_once("://").unwrap_or(("http", &base));
                let listener = rest
                    .rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map(|(_, p)| format!(":{p}"))
                    .unwrap_or_default();
                (format!("{scheme}://{set}-{port}.{domain}{listener}"), true)
            }
            _ => (base, false),
        }
    }
}

/// Whether set name `set` can be a host name's label as it is (browsers lower-case host
/// names; dots would make more labels).
fn host_label(set: &str) -> bool {
    set.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && set.len() <= 56
}

/// `host` without its port.
fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A service of a set, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Service {
    set: String,
    port: u16,
    /// By host name (no prefix), or under `/{set}/{port}`.
    by_host: bool,
}

impl Service {
    fn prefix(&self) -> String {
        if self.by_host {
            String::new()
        } else {
            format!("/{}/{}", self.set, self.port)
        }
    }

    fn cookie_path(&self) -> String {
        if self.by_host {
            "/".into()
        } else {
            self.prefix()
        }
    }
}

/// What a request asks of the proxy.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// Open a link: redeem its ticket.
    Open(Service),
    /// A path of a service (its prefix, if any, included).
    Pass(Service),
    /// `/{set}/{port}` without its slash: sent on to the slash.
    Slash(Service),
    /// Anything else: the proxy's own page.
    Home,
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// What `host` and `path` ask, with `domain` for host names.
fn asked(domain: Option<&str>, host: &str, path: &str) -> Asked {
    if let Some(domain) = domain {
        let host = host_only(host).to_ascii_lowercase();
        if let Some(label) = host
            .strip_suffix(&domain.to_ascii_lowercase())
            .and_then(|h| h.strip_suffix('.'))
        {
            if let Some((set, port)) = label.rsplit_once('-') {
                if let (false, Some(port)) =
                    (set.is_empty() || label.contains('.'), parse_port(port))
                {
                    let service = Service {
                        set: set.to_string(),
                        port,
                        by_host: true,
                    };
                    return if path == OPEN_PATH {
                        Asked::Open(service)
                    } else {
                        Asked::Pass(service)
                    };
                }
            }
        }
    }
    let service = |set: &str, port: &str| {
        let first_ok = set
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        parse_port(port).filter(|_| first_ok).map(|port| Service {
            set: set.to_string(),
            port,
            by_host: false,
        })
    };
    if let Some(rest) = path
        .strip_prefix(OPEN_PATH)
        .and_then(|r| r.strip_prefix('/'))
    {
        if let Some((set, port)) = rest.split_once('/') {
            if let Some(s) = service(set, port.trim_end_matches('/')) {
                return Asked::Open(s);
            }
        }
        return Asked::Home;
    }
    let mut parts = path.splitn(4, '/').skip(1);
    let (Some(set), Some(port)) = (parts.next(), parts.next()) else {
        return Asked::Home;
    };
    match (service(set, port), parts.next()) {
        (Some(s), None) => Asked::Slash(s),
        (Some(s), Some(_)) => Asked::Pass(s),
        (None, _) => Asked::Home,
    }
}

/// Where pooled connections go, by the key their URI's host carries.
#[derive(Clone)]
enum Upstream {
    Here(PortHere),
    Node { url: String, set: String, port: u16 },
}

impl Upstream {
    fn key(&self) -> String {
        match self {
            Upstream::Here(here) => format!("h{}", here.key()),
            Upstream::Node { url, set, port } => format!("n{url} {set}:{port}"),
        }
    }
}

/// The proxy's state.
struct Proxy {
    engine: Arc<Engine>,
    options: ProxyOptions,
    client: hyper_util::client::legacy::Client<Connector, Body>,
    upstreams: Arc<Mutex<HashMap<String, Upstream>>>,
    /// Requests and WebSockets in flight, per user.
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// Made-up links and cookies, per client address: limited as the API's tokens are.
    failures: gpu_replica_core::limits::FailureLimiter,
    /// Recent admissions: (cookie, set, port) → (user, upstream, until).
    admitted: Mutex<HashMap<AdmissionKey, (String, Upstream, Instant)>>,
}

/// A cookie, and the set and port it was shown for.
type AdmissionKey = (String, String, u16);

/// How long an admission is kept (see [`admit`]).
const ADMISSION_TTL: Duration = Duration::from_secs(1);

/// The proxy's router over `engine`: serve it on a listener of its own, with
/// [`crate::serve`] (connect info on, so the application learns its client's address).
pub fn proxy_router(engine: Arc<Engine>, options: ProxyOptions) -> Router {
    let upstreams: Arc<Mutex<HashMap<String, Upstream>>> = Arc::default();
    let connector = Connector {
        engine: engine.clone(),
        nodes: options.nodes.clone(),
        upstreams: upstreams.clone(),
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(connector);
    let proxy = Arc::new(Proxy {
        engine,
        options,
        client,
        upstreams,
        open: Arc::default(),
        failures: Default::default(),
        admitted: Mutex::default(),
    });
    Router::new().fallback(handle).with_state(proxy)
}

/// A plain page of the proxy's own.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{}</title>\
         <body style=\"font:15px system-ui,sans-serif;margin:3em\"><h1>{}</h1><p>{}</p>",
        escape(title),
        escape(title),
        escape(text)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_admitted(service: &Service) -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Open this service from gpu-replica",
        &format!(
            "Port {} of '{}' is reached through a link: open it from the console's Services, \
             or run `gpu-replica open {} {}`.",
            service.port, service.set, service.set, service.port
        ),
    )
}

fn error_page(e: &Error, service: &Service) -> Response {
    match e {
        Error::NotFound(_) => page(
            StatusCode::NOT_FOUND,
            "No such set",
            &format!("There is no set '{}'.", service.set),
        ),
        Error::Refused { .. } | Error::NotRunning(_) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not running",
            &format!(
                "'{}' is not running; continue or restart it first.",
                service.set
            ),
        ),
        other => {
            tracing::info!(set = %service.set, port = service.port, "proxy: {other}");
            page(
                StatusCode::BAD_GATEWAY,
                "Not reached",
                "The service could not be reached just now; try again.",
            )
        }
    }
}

async fn handle(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match asked(proxy.options.domain.as_deref(), &host, request.uri().path()) {
        Asked::Home if request.uri().path() == "/favicon.ico" => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "max-age=86400"),
            ],
            crate::ui::ICON,
        )
            .into_response(),
        Asked::Home => page(
            StatusCode::NOT_FOUND,
            "gpu-replica proxy",
            "This address serves the web services of gpu-replica's sets. Open one from the \
             console's Services, or run `gpu-replica open SET PORT`.",
        ),
        Asked::Slash(service) => {
            let query = request
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            redirect(&format!("{}/{query}", service.prefix()))
        }
        Asked::Open(service) => {
            let peer = peer_of(&request);
            open(&proxy, &service, request.uri(), peer).await
        }
        Asked::Pass(service) => {
            let peer = peer_of(&request);
            pass(&proxy, service, host, peer, request).await
        }
    }
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

fn too_many_attempts() -> Response {
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        "This address presented too many links or cookies that are not good; wait a moment.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Redeems a link: sets the service's cookie and sends the browser on to the service.
async fn open(proxy: &Proxy, service: &Service, uri: &Uri, peer: Option<SocketAddr>) -> Response {
    let ticket = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
        .unwrap_or_default();
    let refused = || {
        page(
            StatusCode::FORBIDDEN,
            "This link is not good",
            "It expired (links are good for a minute, once), or it was made for another \
             service or a user whose token has changed since. Open the service again.",
        )
    };
    let grant = match proxy
        .engine
        .proxy_redeem(ticket, &service.set, service.port)
        .await
    {
        Ok(grant) => grant,
        Err(Error::Unauthorized) => {
            // Only made-up tickets count (an expired or used one is no guess); a good one is
            // never turned away, so no one locks others out behind a shared address.
            if !proxy.engine.proxy_signed(ticket).await {
                let address = peer.map(|p| p.ip());
                if !proxy.failures.allows(address) {
                    return too_many_attempts();
                }
                proxy.failures.failed(address);
            }
            return refused();
        }
        Err(e) => return error_page(&e, service),
    };
    tracing::info!(user = %grant.user, set = %grant.set, port = grant.port, "proxy link opened");
    let mut response = redirect(&format!("{}/", service.prefix()));
    let cookie = format!(
        "{COOKIE}={}; Path={}; Max-Age={}; HttpOnly; SameSite=Lax{}",
        grant.cookie,
        service.cookie_path(),
        grant.max_age.as_secs(),
        if proxy.options.https { "; Secure" } else { "" }
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The values of the proxy's cookie among `headers`' cookies.
fn our_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_string())
        })
        .collect()
}

/// `headers`' cookies without the proxy's, as one header value (none when nothing is left).
fn other_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(COOKIE))
        .collect();
    (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten()
}

/// What a service may not say to the browser: the proxy's own cookie (no application sets,
/// or plants for another service, what lets people in), a cookie for other hosts
/// (`Domain=`) and, where services share the proxy's origin (paths), a cookie for a path
/// outside its own, a service worker scope beyond it (`Service-Worker-Allowed`) and
/// `Clear-Site-Data` (it would reach the other services' cookies).
fn filter_answer(headers: &mut HeaderMap, service: &Service) {
    let prefix = service.prefix();
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let Ok(text) = v.to_str() else {
                return false;
            };
            let mut parts = text.split(';');
            let name = parts
                .next()
                .and_then(|p| p.split('=').next())
                .unwrap_or_default()
                .trim();
            if name == COOKIE {
                return false;
            }
            parts.all(|attribute| {
                let (key, value) = attribute.split_once('=').unwrap_or((attribute, ""));
                let value = value.trim();
                match key.trim().to_ascii_lowercase().as_str() {
                    "domain" => false,
                    "path" if !service.by_host => {
                        value == prefix || value.starts_with(&format!("{prefix}/"))
                    }
                    _ => true,
                }
            })
        })
        .cloned()
        .collect();
    if headers.contains_key(header::SET_COOKIE) {
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
    if !service.by_host {
        headers.remove("service-worker-allowed");
        headers.remove("clear-site-data");
    }
}

/// Headers that belong to one connection, never carried on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Takes out the hop-by-hop headers (and those `Connection` names).
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The protocol a request asks to switch to, if it asks.
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Holds one of a user's places at the proxy; gives it back when dropped.
struct Place {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Place {
    fn take(open: &Arc<Mutex<HashMap<String, usize>>>, user: &str, most: usize) -> Option<Place> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(user.to_string()).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(Place {
            open: open.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Who the request's cookie lets into `service`, and where the service is; else the answer
/// to give. An answer is kept for [`ADMISSION_TTL`], so a page's burst of requests asks the
/// store once (a reset token, a removed user or a stopped set takes effect within it).
async fn admit(
    proxy: &Proxy,
    service: &Service,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(String, String, Upstream), Response> {
    let cookies = our_cookies(headers);
    let now = Instant::now();
    {
        let admitted = proxy.admitted.lock().unwrap_or_else(|p| p.into_inner());
        for cookie in &cookies {
            let key = (cookie.clone(), service.set.clone(), service.port);
            if let Some((user, upstream, until)) = admitted.get(&key) {
                if *until > now {
                    return Ok((cookie.clone(), user.clone(), upstream.clone()));
                }
            }
        }
    }
    let mut found = None;
    for cookie in cookies {
        match proxy
            .engine
            .proxy_admit(&cookie, &service.set, service.port)
            .await
        {
            Ok(Admission::Admitted(engine)) => {
                found = Some((cookie, engine));
                break;
            }
            Ok(Admission::Stale) => {}
            Ok(Admission::Forged) => {
                let address = peer.map(|p| p.ip());
                if !proxy.failures.allows(address) {
                    return Err(too_many_attempts());
                }
                proxy.failures.failed(address);
            }
            Err(e) => return Err(error_page(&e, service)),
        }
    }
    let Some((cookie, engine)) = found else {
        return Err(not_admitted(service));
    };
    let upstream = match engine.proxy_target(&service.set, service.port).await {
        Ok(ProxyTarget::Here(here)) => Upstream::Here(here),
        Ok(ProxyTarget::Node { url, .. }) => Upstream::Node {
            url,
            set: service.set.clone(),
            port: service.port,
        },
        Err(e) => return Err(error_page(&e, service)),
    };
    let user = engine.caller().name.clone();
    let mut admitted = proxy.admitted.lock().unwrap_or_else(|p| p.into_inner());
    if admitted.len() > 4096 {
        admitted.retain(|_, (_, _, until)| *until > now);
    }
    admitted.insert(
        (cookie.clone(), service.set.clone(), service.port),
        (user.clone(), upstream.clone(), now + ADMISSION_TTL),
    );
    Ok((cookie, user, upstream))
}

/// Carries a request to its service, once its cookie lets it in.
async fn pass(
    proxy: &Proxy,
    service: Service,
    host: String,
    peer: Option<SocketAddr>,
    mut request: Request,
) -> Response {
    let (cookie, user, upstream) = match admit(proxy, &service, peer, request.headers()).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let Some(place) = Place::take(&proxy.open, &user, proxy.options.connections_per_user) else {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections",
            &format!(
                "{user} has {} requests and WebSockets open through the proxy, the most \
                 allowed; close some and try again.",
                proxy.options.connections_per_user
            ),
        );
    };
    let key = upstream.key();
    {
        let mut upstreams = proxy.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if upstreams.len() > 4096 && !upstreams.contains_key(&key) {
            upstreams.clear();
        }
        upstreams.insert(key.clone(), upstream);
    }
    let from_client =
        upgrade_of(request.headers()).map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri = match format!("http://{}{path_and_query}", hex(&key)).parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return page(StatusCode::BAD_REQUEST, "Bad request", &e.to_string()),
    };
    let cookies = other_cookies(&parts.headers);
    let headers = &mut parts.headers;
    drop_hop_by_hop(headers);
    headers.remove(header::COOKIE);
    if let Some(cookies) = cookies {
        headers.insert(header::COOKIE, cookies);
    }
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "forwarded",
    ] {
        headers.remove(name);
    }
    if let Some(peer) = peer {
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert("x-forwarded-host", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if proxy.options.https { "https" } else { "http" }),
    );
    if !service.by_host {
        if let Ok(v) = HeaderValue::from_str(&service.prefix()) {
            headers.insert("x-forwarded-prefix", v);
        }
    }
    if let Some((protocol, _)) = &from_client {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.uri = uri;
    let outgoing = hyper::Request::from_parts(parts, body);
    let idle = proxy.options.idle_timeout;
    let answer = match tokio::time::timeout(idle, proxy.client.request(outgoing)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            tracing::info!(set = %service.set, port = service.port, "proxy: {text}");
            return page(
                StatusCode::BAD_GATEWAY,
                "Nothing answers",
                &format!(
                    "Nothing answered on port {} of '{}': is a program listening on it?",
                    service.port, service.set
                ),
            );
        }
        Err(_) => {
            return page(
                StatusCode::GATEWAY_TIMEOUT,
                "No answer",
                &format!(
                    "Port {} of '{}' did not answer within {} s.",
                    service.port,
                    service.set,
                    idle.as_secs()
                ),
            )
        }
    };
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((_, from_client)) = from_client {
            let recheck = Recheck {
                engine: proxy.engine.clone(),
                cookie,
                service: service.clone(),
            };
            return switch(answer, from_client, idle, place, recheck);
        }
    }
    let (mut head, body) = answer.into_parts();
    drop_hop_by_hop(&mut head.headers);
    filter_answer(&mut head.headers, &service);
    let body = Watched {
        inner: body,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
        _place: place,
    };
    Response::from_parts(head, Body::new(body))
}

/// Joins the client's connection and the service's once both switched protocols (a
/// WebSocket), until either side ends or neither sends a byte for `idle`.
fn switch(
    mut answer: hyper::Response<Incoming>,
    from_client: hyper::upgrade::OnUpgrade,
    idle: Duration,
    place: Place,
    recheck: Recheck,
) -> Response {
    let from_service = hyper::upgrade::on(&mut answer);
    let service = recheck.service.clone();
    tokio::spawn(async move {
        let _place = place;
        let (Ok(client), Ok(upstream)) = (from_client.await, from_service.await) else {
            tracing::debug!("a proxied upgrade did not switch on both sides");
            return;
        };
        tokio::select! {
            _ = crate::pipe::join(TokioIo::new(client), TokioIo::new(upstream), idle) => {}
            _ = recheck.revoked() => {
                tracing::info!(set = %recheck.service.set, port = recheck.service.port,
                    "a proxied connection ended: its cookie no longer lets it in");
            }
        }
    });
    let (mut head, _) = answer.into_parts();
    filter_answer(&mut head.headers, &service);
    Response::from_parts(head, Body::empty())
}

/// A held connection's admission, asked again every [`RECHECK_EVERY`]: a reset token, a
/// removed user or a set gone ends it.
struct Recheck {
    engine: Arc<Engine>,
    cookie: String,
    service: Service,
}

/// How often a held connection's admission is asked again.
const RECHECK_EVERY: Duration = Duration::from_secs(30);

impl Recheck {
    /// Resolves once the cookie no longer lets its holder in (or the set is gone).
    async fn revoked(&self) {
        loop {
            tokio::time::sleep(RECHECK_EVERY).await;
            let admitted = match self
                .engine
                .proxy_admit(&self.cookie, &self.service.set, self.service.port)
                .await
            {
                Ok(Admission::Admitted(engine)) => engine
                    .proxy_target(&self.service.set, self.service.port)
                    .await
                    .is_ok(),
                Ok(_) => false,
                // The store did not answer: no verdict; ask again later.
                Err(_) => true,
            };
            if !admitted {
                return;
            }
        }
    }
}

/// A service's answer body on its way to the client: ended when nothing comes for `idle`,
/// holding its user's place until it is sent or dropped.
struct Watched {
    inner: Incoming,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    _place: Place,
}

impl hyper::body::Body for Watched {
    type Data = bytes_type::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = self.idle;
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "the service sent nothing for {:?}",
                    self.idle
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

mod bytes_type {
    pub(super) use axum::body::Bytes;
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A connection to a service: a TCP stream into a container here, or a tunnel through the
/// node the set lives on.
pub(crate) struct UpstreamIo(TokioIo<Box<dyn Io>>);

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens the connections the client pools: the URI's host is the hex of an upstream's key.
#[derive(Clone)]
struct Connector {
    engine: Arc<Engine>,
    nodes: NodeClient,
    upstreams: Arc<Mutex<HashMap<String, Upstream>>>,
}

impl tower::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let upstream = uri.host().and_then(unhex).and_then(|key| {
            self.upstreams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
        });
        let engine = self.engine.clone();
        let nodes = self.nodes.clone();
        Box::pin(async move {
            let io: Box<dyn Io> = match upstream {
                None => return Err("no such upstream".into()),
                Some(Upstream::Here(here)) => {
                    let stream = engine.proxy_connect(&here).await?;
                    let _ = stream.set_nodelay(true);
                    Box::new(stream)
                }
                Some(Upstream::Node { url, set, port }) => {
                    Box::new(crate::link::open_port(&nodes, &engine, &url, &set, port).await?)
                }
            };
            Ok(UpstreamIo(TokioIo::new(io)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(set: &str, port: u16) -> Service {
        Service {
            set: set.into(),
            port,
            by_host: false,
        }
    }

    #[test]
    fn requests_name_their_service_by_path_or_by_host() {
        assert_eq!(
            asked(None, "h:1", "/lab/8888/tree"),
            Asked::Pass(path("lab", 8888))
        );
        assert_eq!(
            asked(None, "h:1", "/lab/8888/"),
            Asked::Pass(path("lab", 8888))
        );
        assert_eq!(
            asked(None, "h:1", "/lab/8888"),
            Asked::Slash(path("lab", 8888))
        );
        assert_eq!(asked(None, "h:1", "/lab/0/"), Asked::Home);
        assert_eq!(asked(None, "h:1", "/lab/x/"), Asked::Home);
        assert_eq!(asked(None, "h:1", "/"), Asked::Home);
        assert_eq!(asked(None, "h:1", "/_x/80/"), Asked::Home);
        assert_eq!(
            asked(None, "h:1", "/_gpu-replica/open/My.Set/80"),
            Asked::Open(path("My.Set", 80))
        );
        let by_host = Service {
            set: "lab".into(),
            port: 6006,
            by_host: true,
        };
        let domain = Some("apps.example.com");
        assert_eq!(
            asked(domain, "LAB-6006.Apps.example.com:8443", "/x"),
            Asked::Pass(by_host.clone())
        );
        assert_eq!(
            asked(domain, "lab-6006.apps.example.com", OPEN_PATH),
            Asked::Open(by_host)
        );
        // The domain itself, or a deeper name, is served by path.
        assert_eq!(
            asked(domain, "apps.example.com", "/lab/80/"),
            Asked::Pass(path("lab", 80))
        );
        assert_eq!(asked(domain, "a.lab-80.apps.example.com", "/"), Asked::Home);
    }

    #[test]
    fn links_name_the_proxy_as_the_api_was_reached() {
        let address = ProxyAddress {
            url: None,
            port: 2380,
            https: false,
            domain: None,
        };
        assert_eq!(
            address.link("10.0.0.5:2378", "lab", 8888, "T"),
            "http://10.0.0.5:2380/_gpu-replica/open/lab/8888?ticket=T"
        );
        assert_eq!(
            address.link("[::1]:2378", "lab", 80, "T"),
            "http://[::1]:2380/_gpu-replica/open/lab/80?ticket=T"
        );
        let hosted = ProxyAddress {
            url: Some("https://apps.example.com/".into()),
            domain: Some("apps.example.com".into()),
            ..address
        };
        assert_eq!(
            hosted.link("x", "lab", 6006, "T"),
            "https://lab-6006.apps.example.com/_gpu-replica/open?ticket=T"
        );
        // A name that cannot be a host label is served by path.
        assert_eq!(
            hosted.link("x", "My.Lab", 6006, "T"),
            "https://apps.example.com/_gpu-replica/open/My.Lab/6006?ticket=T"
        );
    }

    #[test]
    fn the_proxys_cookie_never_reaches_the_service() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; gpu_replica_proxy=SECRET; b=2"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("gpu_replica_proxy=X"),
        );
        assert_eq!(our_cookies(&headers), vec!["SECRET", "X"]);
        assert_eq!(other_cookies(&headers).unwrap(), "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("gpu_replica_proxy=S"),
        );
        assert!(other_cookies(&only).is_none());
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        drop_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        let mut answer = HeaderMap::new();
        for cookie in [
            "app=1; Path=/lab/80/x; HttpOnly",
            "bare=1",
            "wide=1; Path=/",
            "other=1; Path=/lab/8080",
            "spread=1; Domain=example.com",
            "gpu_replica_proxy=x; Path=/b/80",
        ] {
            answer.append(header::SET_COOKIE, HeaderValue::from_static(cookie));
        }
        answer.insert("service-worker-allowed", HeaderValue::from_static("/"));
        let mut by_path = answer.clone();
        filter_answer(&mut by_path, &path("lab", 80));
        let left: Vec<_> = by_path.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["app=1; Path=/lab/80/x; HttpOnly", "bare=1"]);
        assert!(!by_path.contains_key("service-worker-allowed"));
        let mut by_host = answer;
        let host = Service {
            by_host: true,
            ..path("lab", 80)
        };
        filter_answer(&mut by_host, &host);
        let left: Vec<_> = by_host.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(
            left,
            [
                "app=1; Path=/lab/80/x; HttpOnly",
                "bare=1",
                "wide=1; Path=/",
                "other=1; Path=/lab/8080"
            ]
        );
        assert!(headers.contains_key("x-kept"));
        assert_eq!(unhex(&hex("hlab-1:80")).unwrap(), "hlab-1:80");
    }
}
