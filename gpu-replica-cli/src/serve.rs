//! `gpu-replica serve`: the engine on real backends behind the HTTP router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpu_replica_core::network::{NetworkPolicy, NetworkPool};
use gpu_replica_core::runtime::DROPPED_CAPABILITIES;
use gpu_replica_core::{
    parse_cpus, parse_duration, parse_size, ContainerRuntime, DockerRuntime, Engine, EngineConfig,
    GpuAttach, GpuInventory, Hardening, Limits, NvmlInventory, PortRange, RedbStore,
    ResourcePolicy, RootfsPolicy, ScreenPolicy, StateStore, StaticInventory,
};

/// Where the state is kept: `serve`'s flags, shared with `restore`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// CA certificate (PEM) of the etcd servers: talk to etcd over TLS.
    #[arg(long, env = "GPU_REPLICA_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "GPU_REPLICA_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key of --etcd-cert (PEM).
    #[arg(long, env = "GPU_REPLICA_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; the password comes from GPU_REPLICA_ETCD_PASSWORD or --etcd-password-file.
    #[arg(long, env = "GPU_REPLICA_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd password (trailing whitespace ignored).
    #[arg(long, env = "GPU_REPLICA_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Folder for state; the redb file lives here.
    #[arg(
        long,
        env = "GPU_REPLICA_DATA_DIR",
        default_value = "./gpu-replica-data"
    )]
    pub data_dir: PathBuf,
    /// State store: a redb file path, or etcd://host:2379,host:2379 (feature `etcd`).
    /// Default: <data-dir>/state.redb.
    #[arg(long, env = "GPU_REPLICA_STORE")]
    pub store: Option<String>,
}

/// Settings of the server; every flag has a `GPU_REPLICA_*` environment twin.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, or unix:PATH for a Unix socket. A non-loopback address
    /// needs TLS (--tls-cert/--tls-key) or --insecure.
    #[arg(long, env = "GPU_REPLICA_ADDR", default_value = "127.0.0.1:2378", value_parser = parse_addr)]
    addr: Addr,
    /// This server's node name in a cluster of hosts sharing one etcd (needs --store
    /// etcd://…): it registers under a lease, and serves the sets placed on it.
    #[arg(long, env = "GPU_REPLICA_NODE")]
    node: Option<String>,
    /// The URL other nodes reach this one at (default: http:// and --addr).
    #[arg(long, env = "GPU_REPLICA_ADVERTISE")]
    advertise: Option<String>,
    /// Group that may use the Unix socket (it is created with mode 0660).
    #[arg(long, env = "GPU_REPLICA_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Server certificate chain (PEM): the server speaks HTTPS. SIGHUP reloads it.
    #[arg(long, env = "GPU_REPLICA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "GPU_REPLICA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: clients must present one (mutual
    /// TLS).
    #[arg(long, env = "GPU_REPLICA_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// In a cluster over HTTPS: the CA certificates (PEM) that signed the nodes' certificates
    /// (default: --tls-client-ca). This node presents --tls-cert to the others.
    #[arg(long, env = "GPU_REPLICA_CLUSTER_CA", requires = "tls_cert")]
    cluster_ca: Option<PathBuf>,
    /// Longest a client may take to send a request head (30s).
    #[arg(long, env = "GPU_REPLICA_HEADER_TIMEOUT", default_value = "30s", value_parser = duration)]
    header_timeout: u64,
    /// Longest a client may take to send a request body, from its head (60s); then 408.
    #[arg(long, env = "GPU_REPLICA_BODY_TIMEOUT", default_value = "60s", value_parser = duration)]
    body_timeout: u64,
    /// Longest a connection may sit idle before it is closed (60s).
    #[arg(long, env = "GPU_REPLICA_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    idle_timeout: u64,
    /// Connections held at once (default: the open-files limit minus 256 kept for Docker and
    /// the store); past it, new connections wait.
    #[arg(long, env = "GPU_REPLICA_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// On SIGTERM, how long requests in flight may take to finish (30s).
    #[arg(long, env = "GPU_REPLICA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration)]
    shutdown_timeout: u64,
    /// Log lines as text (coloured on a terminal, unless NO_COLOR is set) or json (one object
    /// per line).
    #[arg(long, env = "GPU_REPLICA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Where the state is kept.
    #[command(flatten)]
    pub state: StoreArgs,
    /// GPUs: auto (NVML, else none with a warning), none, or fake:N synthetic GPUs.
    #[arg(long, env = "GPU_REPLICA_GPUS", default_value = "auto")]
    gpus: String,
    /// How containers get GPUs: device-requests, cdi or env.
    #[arg(
        long,
        env = "GPU_REPLICA_GPU_ATTACH",
        default_value = "device-requests"
    )]
    gpu_attach: GpuAttach,
    /// Host ports handed out to container ports.
    #[arg(long, env = "GPU_REPLICA_PORT_RANGE", default_value = "40000-65535")]
    port_range: PortRange,
    /// Seconds a stop waits before killing the container.
    #[arg(long, env = "GPU_REPLICA_STOP_TIMEOUT", default_value_t = 10)]
    stop_timeout: u64,
    /// Filesystem snapshots kept per replicaSet (older versions cannot be rolled back to).
    #[arg(long, env = "GPU_REPLICA_KEEP_SNAPSHOTS", default_value_t = 10)]
    keep_snapshots: usize,
    /// A folder an image change carries into the new image when the patch names none, besides
    /// /root (repeatable: /workspace, /home).
    #[arg(
        long = "keep-path",
        env = "GPU_REPLICA_KEEP_PATHS",
        value_delimiter = ','
    )]
    keep_paths: Vec<String>,
    /// An image with `cp` (a CUDA image will do): volume resizes then copy inside Docker at
    /// disk speed instead of through the archive API.
    #[arg(long, env = "GPU_REPLICA_COPY_IMAGE")]
    copy_image: Option<String>,
    /// Host folder bind sources may come from (repeatable; default none).
    #[arg(
        long = "allow-host-path",
        env = "GPU_REPLICA_ALLOW_HOST_PATH",
        value_delimiter = ','
    )]
    allow_host_paths: Vec<PathBuf>,
    /// A Docker volume not created by this server that binds may mount anyway (repeatable;
    /// default none: only this server's own volumes).
    #[arg(
        long = "allow-volume",
        env = "GPU_REPLICA_ALLOW_VOLUME",
        value_delimiter = ','
    )]
    allow_volumes: Vec<String>,
    /// File holding the bearer token (instead of --token; trailing whitespace ignored).
    #[arg(long, env = "GPU_REPLICA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// File holding a token that may only read GET /metrics (for Prometheus).
    #[arg(long, env = "GPU_REPLICA_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Allow a non-loopback address over plain HTTP (tokens then cross the network in clear).
    #[arg(long, env = "GPU_REPLICA_INSECURE")]
    insecure: bool,
    /// Extra label KEY=VALUE on every container, image and volume created (repeatable).
    #[arg(long = "label", env = "GPU_REPLICA_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// CPUs each GPU brings to its container (1.5 allowed); unlimited when not given.
    #[arg(long, env = "GPU_REPLICA_CPUS_PER_GPU", value_parser = cpus)]
    cpus_per_gpu: Option<u64>,
    /// Memory each GPU brings (KB, MB, GB, TB: 32GB); unlimited when not given.
    #[arg(long, env = "GPU_REPLICA_MEMORY_PER_GPU", value_parser = size)]
    memory_per_gpu: Option<u64>,
    /// /dev/shm each GPU brings (8GB); Docker's 64MB when not given.
    #[arg(long, env = "GPU_REPLICA_SHM_PER_GPU", value_parser = size)]
    shm_per_gpu: Option<u64>,
    /// CPUs of a container without GPUs.
    #[arg(long, env = "GPU_REPLICA_CARDLESS_CPUS", value_parser = cpus)]
    cardless_cpus: Option<u64>,
    /// Memory of a container without GPUs.
    #[arg(long, env = "GPU_REPLICA_CARDLESS_MEMORY", value_parser = size)]
    cardless_memory: Option<u64>,
    /// /dev/shm of a container without GPUs.
    #[arg(long, env = "GPU_REPLICA_CARDLESS_SHM", value_parser = size)]
    cardless_shm: Option<u64>,
    /// Start containers without an init process (by default tini runs as PID 1 and reaps
    /// orphans, so they cannot hold GPU memory).
    #[arg(long, env = "GPU_REPLICA_NO_INIT")]
    no_init: bool,
    /// Let setuid programs gain privileges in containers (`sudo`); by default
    /// `no-new-privileges` is set.
    #[arg(long, env = "GPU_REPLICA_ALLOW_SETUID")]
    allow_setuid: bool,
    /// Keep CAP_NET_RAW in containers (raw sockets: packet and ARP spoofing on a shared
    /// bridge); dropped by default, with CAP_MKNOD.
    #[arg(long, env = "GPU_REPLICA_ALLOW_NET_RAW")]
    allow_net_raw: bool,
    /// Processes per container, or none.
    #[arg(long, env = "GPU_REPLICA_PIDS_LIMIT", default_value = "4096", value_parser = limit)]
    pids_limit: Limit,
    /// Open files per process in a container, or none (Docker's default); at most the Docker
    /// daemon's own limit.
    #[arg(long, env = "GPU_REPLICA_OPEN_FILES_LIMIT", default_value = "16384", value_parser = limit)]
    open_files_limit: Limit,
    /// How far each set's root filesystem (what its container writes outside its volumes)
    /// may grow, or none. Enforced where Docker's storage driver can (overlay2 on xfs with
    /// pquota, btrfs, zfs, devicemapper: a write past it fails in the container); elsewhere
    /// measured, and a set over it has its patches and commits refused.
    #[arg(long, env = "GPU_REPLICA_ROOTFS_SIZE", default_value = "100GB", value_parser = size_or_none)]
    rootfs_size: Limit,
    /// How often every set's root filesystem is measured (Docker walks its files).
    #[arg(long, env = "GPU_REPLICA_ROOTFS_MEASURE_INTERVAL", default_value = "5m", value_parser = duration)]
    rootfs_measure_interval: u64,
    /// Serve the SSH gateway on HOST:PORT (off by default): `ssh -p PORT SET@HOST` logs in
    /// to set SET with one of its owner's keys (`gpu-replica user key add`), for a shell, a
    /// command, scp/sftp and -L/-W to the set's own ports. Its host key is made once and kept
    /// in the store (every node of a cluster shows the same).
    #[arg(long, env = "GPU_REPLICA_SSH_ADDR")]
    ssh_addr: Option<std::net::SocketAddr>,
    /// Serve the web-service proxy on HOST:PORT (off by default): a set's HTTP services
    /// (JupyterLab, TensorBoard) at `/{set}/{port}/` behind its owner's sign-in, on an origin
    /// of its own (never the API's port). Links come from the console or `gpu-replica open`.
    /// Off loopback it needs TLS (the API's --tls-cert) or --insecure, as the API does.
    #[arg(long, env = "GPU_REPLICA_PROXY_ADDR")]
    proxy_addr: Option<std::net::SocketAddr>,
    /// The proxy's address as browsers reach it (`https://apps.example.com` behind a TLS
    /// terminator, say); default: the host the API was reached by, on --proxy-addr's port.
    #[arg(long, env = "GPU_REPLICA_PROXY_URL", requires = "proxy_addr")]
    proxy_url: Option<String>,
    /// Also serve each service at its own host name, `{set}-{port}.DOMAIN` (a wildcard DNS
    /// record and certificate for *.DOMAIN, pointing at the proxy): for applications that
    /// cannot live under a path, and one origin per service. Links then use host names for
    /// sets whose names are lowercase letters and digits.
    #[arg(long, env = "GPU_REPLICA_PROXY_DOMAIN", requires = "proxy_addr")]
    proxy_domain: Option<String>,
    /// Requests and WebSockets one user may have going through the proxy at once.
    #[arg(
        long,
        env = "GPU_REPLICA_PROXY_CONNECTIONS_PER_USER",
        default_value = "64"
    )]
    proxy_connections_per_user: usize,
    /// A proxied exchange with no byte either way for this long is ended (WebSockets that
    /// ping are never idle).
    #[arg(long, env = "GPU_REPLICA_PROXY_IDLE_TIMEOUT", default_value = "10m", value_parser = duration)]
    proxy_idle_timeout: u64,
    /// An SSH connection with nothing from its client for this long is closed.
    #[arg(long, env = "GPU_REPLICA_SSH_IDLE_TIMEOUT", default_value = "30m", value_parser = duration)]
    ssh_idle_timeout: u64,
    /// SSH connections one user may hold at once.
    #[arg(long, env = "GPU_REPLICA_SSH_SESSIONS_PER_USER", default_value = "16")]
    ssh_sessions_per_user: usize,
    /// How long a console web terminal that no page is attached to keeps its program running
    /// (a reload or a dropped connection attaches again within it); then the program is ended.
    #[arg(long, env = "GPU_REPLICA_TERMINAL_KEEP", default_value = "10m", value_parser = duration)]
    terminal_keep: u64,
    /// Console web terminals one user may hold open at once.
    #[arg(long, env = "GPU_REPLICA_TERMINALS_PER_USER", default_value = "8")]
    terminals_per_user: usize,
    /// Which network sets join: `per-owner` (a bridge network per owner; other owners' sets
    /// cannot be reached by address or name), `shared` (Docker's default bridge, no walls), or
    /// the name of a network you made that every set joins.
    #[arg(long, env = "GPU_REPLICA_NETWORK", default_value = "per-owner")]
    network: String,
    /// Where per-owner networks take their subnets (IPv4 CIDR); away from Docker's own
    /// default pools and your LAN.
    #[arg(
        long,
        env = "GPU_REPLICA_NETWORK_POOL",
        default_value = "10.213.0.0/16"
    )]
    network_pool: String,
    /// Prefix length of each owner's subnet: the pool holds 2^(this - the pool's) owners, each
    /// with 2^(32 - this) - 3 containers.
    #[arg(long, env = "GPU_REPLICA_NETWORK_SUBNET_PREFIX", default_value = "24")]
    network_subnet_prefix: u8,
    /// Do not add the host firewall rule (iptables, mangle table) that keeps owners' networks
    /// apart while Docker rewrites its own rules; for a Docker on another host, or a firewall
    /// you manage yourself.
    #[arg(long, env = "GPU_REPLICA_NO_NETWORK_GUARD")]
    no_network_guard: bool,
    /// How often idle and stop-at timers are checked (30s, 1m).
    #[arg(long, env = "GPU_REPLICA_TIMER_INTERVAL", default_value = "15s", value_parser = duration)]
    timer_interval: u64,
    /// How often every replicaSet is compared with Docker (besides Docker's events): a
    /// container that stopped outside the server is started again, one that vanished is shown
    /// `exited` (30s, 1m).
    #[arg(long, env = "GPU_REPLICA_RECONCILE_INTERVAL", default_value = "30s", value_parser = duration)]
    reconcile_interval: u64,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, env = "GPU_REPLICA_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Access log (one line per request, target gpu_replica::access at info): all, errors
    /// (4xx and 5xx only) or off.
    #[arg(long, env = "GPU_REPLICA_ACCESS_LOG", default_value = "all")]
    access_log: gpu_replica_http::AccessLog,
}

fn cpus(text: &str) -> Result<u64, String> {
    parse_cpus(text).map_err(|e| e.to_string())
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// A limit given on the command line: a positive number, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(Option<u64>);

fn limit(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Limit(Some(n))),
        _ => Err(format!("'{text}' is not a positive number or 'none'")),
    }
}

fn size_or_none(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    parse_size(text)
        .map(|b| Limit(Some(b)))
        .map_err(|e| e.to_string())
}

fn duration(text: &str) -> Result<u64, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label '{text}' is not KEY=VALUE"))
}

pub async fn open_store(args: &StoreArgs) -> Result<Arc<dyn StateStore>, String> {
    match args.store.as_deref() {
        Some(spec) if spec.starts_with("etcd://") => open_etcd(spec, args).await,
        Some(path) => Ok(Arc::new(RedbStore::open(path).map_err(|e| e.to_string())?)),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
            let path = args.data_dir.join("state.redb");
            Ok(Arc::new(RedbStore::open(path).map_err(|e| e.to_string())?))
        }
    }
}

/// How to reach etcd, from the flags: TLS files, user, and the password from
/// `GPU_REPLICA_ETCD_PASSWORD` or `--etcd-password-file`.
#[cfg(feature = "etcd")]
fn etcd_access(args: &StoreArgs) -> Result<gpu_replica_core::EtcdAccess, String> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let ca = args
        .etcd_cacert
        .as_ref()
        .map(|p| read("--etcd-cacert", p))
        .transpose()?;
    let identity = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => {
            if ca.is_none() {
                return Err("--etcd-cert needs --etcd-cacert (the CA of the etcd servers)".into());
            }
            Some((read("--etcd-cert", cert)?, read("--etcd-key", key)?))
        }
        _ => None,
    };
    let user = match &args.etcd_user {
        None => None,
        Some(name) => {
            let password = match (&args.etcd_password_file, std::env::var("GPU_REPLICA_ETCD_PASSWORD")) {
                (Some(path), _) => std::fs::read_to_string(path)
                    .map_err(|e| format!("--etcd-password-file {}: {e}", path.display()))?
                    .trim_end()
                    .to_string(),
                (None, Ok(password)) => password,
                (None, Err(_)) => {
                    return Err(format!(
                        "--etcd-user {name} needs a password: GPU_REPLICA_ETCD_PASSWORD or --etcd-password-file"
                    ))
                }
            };
            Some((name.clone(), password))
        }
    };
    Ok(gpu_replica_core::EtcdAccess { ca, identity, user })
}

/// What to add to an etcd error so that the operator knows what to fix.
#[cfg(feature = "etcd")]
fn etcd_hint(error: &str, access: &gpu_replica_core::EtcdAccess) -> &'static str {
    let error = error.to_lowercase();
    if error.contains("authentication is not enabled") {
        "; this etcd has no users: leave out --etcd-user"
    } else if error.contains("user name is empty") || error.contains("permission denied") {
        "; etcd requires a user: give --etcd-user and its password"
    } else if error.contains("authentication failed") {
        "; check the etcd user and password"
    } else if error.contains("certificate") || error.contains("tls") || error.contains("handshake")
    {
        "; check --etcd-cacert, --etcd-cert and --etcd-key"
    } else if access.ca.is_none() {
        "; if etcd serves TLS only, give --etcd-cacert (and --etcd-cert/--etcd-key for client-cert auth)"
    } else {
        ""
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(spec: &str, args: &StoreArgs) -> Result<Arc<dyn StateStore>, String> {
    let access = etcd_access(args)?;
    let scheme = if access.ca.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> = spec["etcd://".len()..]
        .split(',')
        .map(|h| format!("{scheme}://{h}"))
        .collect();
    let joined = endpoints.join(",");
    // Never hang: connect and one read, within 20 s, or an error naming the cause.
    let connected = tokio::time::timeout(Duration::from_secs(20), async {
        let store =
            gpu_replica_core::EtcdStore::connect_with(&endpoints, "gpu-replica/", &access).await?;
        store.get(gpu_replica_core::keys::STORE_ID).await?;
        Ok::<_, gpu_replica_core::Error>(store)
    })
    .await;
    match connected {
        Ok(Ok(store)) => Ok(Arc::new(store)),
        Ok(Err(e)) => {
            let text = e.to_string();
            Err(format!(
                "etcd at {joined}: {text}{}",
                etcd_hint(&text, &access)
            ))
        }
        Err(_) => Err(format!(
            "etcd at {joined} did not answer within 20 s{}",
            etcd_hint("", &access)
        )),
    }
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_spec: &str, _args: &StoreArgs) -> Result<Arc<dyn StateStore>, String> {
    Err("this build has no etcd support: build with --features etcd".into())
}

fn open_inventory(spec: &str) -> Result<Arc<dyn GpuInventory>, String> {
    if spec != "auto" {
        return Ok(Arc::new(
            StaticInventory::parse(spec).map_err(|e| e.to_string())?,
        ));
    }
    match NvmlInventory::open() {
        Ok(nvml) => Ok(Arc::new(nvml)),
        Err(e) => {
            tracing::warn!("no GPUs: {e}; continuing with none (use --gpus fake:N to try without)");
            Ok(Arc::new(
                StaticInventory::parse("none").map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

fn parse_addr(text: &str) -> Result<Addr, String> {
    match text.strip_prefix("unix:") {
        Some("") => Err("unix: needs a socket path (unix:/run/gpu-replica.sock)".into()),
        Some(path) => Ok(Addr::Unix(PathBuf::from(path))),
        None => text
            .parse()
            .map(Addr::Tcp)
            .map_err(|e| format!("'{text}' is neither HOST:PORT nor unix:PATH: {e}")),
    }
}

/// Logs to stdout: text (coloured only on a terminal and without NO_COLOR) or JSON lines.
/// Lines are written by a thread of their own, many at a time (see [`crate::log_writer`]); the
/// guard writes what is left when it is dropped, at exit. Also the access log's own way into
/// that writer, when the log filter lets its lines through and they are not coloured.
fn init_logging(
    args: &ServeArgs,
) -> Result<
    (
        crate::log_writer::Guard,
        Option<std::sync::Arc<dyn gpu_replica_http::AccessSink>>,
    ),
    String,
> {
    use crate::log_writer::{AccessLines, Form};
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("--log-level: {e}"))?;
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (writer, guard) = crate::log_writer::batch_writer(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    let json = args.log_format == "json";
    if json {
        builder.json().with_ansi(false).init();
    } else {
        builder.with_ansi(colour).init();
    }
    let form = if json { Form::Json } else { Form::Text };
    let wanted = tracing::enabled!(target: "gpu_replica::access", tracing::Level::INFO);
    // Filtered out, or coloured for a terminal: `tracing` has the lines (and drops them).
    let sink = (wanted && (json || !colour)).then(|| {
        std::sync::Arc::new(AccessLines::new(writer, form))
            as std::sync::Arc<dyn gpu_replica_http::AccessSink>
    });
    Ok((guard, sink))
}

/// The group id of `name`, from /etc/group (or a number).
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("--socket-group: no group '{name}'"))
}

/// Binds a Unix socket at `path`: a stale socket file is replaced only if nothing answers on
/// it; the socket gets mode 0660 and, when given, the group.
fn bind_unix(
    path: &std::path::Path,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("something already listens on {}", path.display()));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale {}: {e}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(group) = group {
        std::os::unix::fs::chown(path, None, Some(group_id(group)?))
            .map_err(|e| format!("--socket-group {group}: {e}"))?;
    }
    Ok(listener)
}

/// What a node presents to the others, reloaded with the server's certificate.
struct NodeIdentity {
    client: gpu_replica_http::NodeClient,
    files: gpu_replica_http::TlsFiles,
    ca: PathBuf,
}

/// Reloads the TLS certificate and key on every SIGHUP, for serving and (in a cluster over
/// HTTPS) for reaching the other nodes; a bad file keeps the old ones.
fn reload_on_hangup(tls: gpu_replica_http::ReloadableTls, nodes: Option<NodeIdentity>) {
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => {
                    tracing::error!("SIGHUP: TLS not reloaded, the old certificate stays: {e}")
                }
            }
            if let Some(nodes) = &nodes {
                match nodes.files.node_client_config(&nodes.ca) {
                    Ok(config) => {
                        nodes.client.reload(config);
                        tracing::info!("SIGHUP: the certificate shown to other nodes reloaded");
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: the certificate shown to other nodes stays: {e}")
                    }
                }
            }
        }
    });
}

/// Runs the server until SIGINT or SIGTERM; with a token, every route but /ping needs it.
/// Flags become options here; the engine's start-up order is the core's
/// ([`Engine::builder`]), serving is the HTTP crate's ([`gpu_replica_http::serve`]).
pub async fn serve(args: ServeArgs, token: Option<String>) -> Result<(), String> {
    let (_log_writer, access_sink) = init_logging(&args)?;
    let token = match &args.token_file {
        Some(path) => Some(read_secret(path, "--token-file")?),
        None if token.as_deref() == Some("") => return Err("the token is empty".into()),
        None => token,
    };
    let metrics_token = args
        .metrics_token_file
        .as_deref()
        .map(|path| read_secret(path, "--metrics-token-file"))
        .transpose()?;
    let tls = server_tls(&args)?;
    let (nodes, identity) = node_client(&args)?;
    refuse_plain_http_off_loopback(&args, tls.is_some())?;
    let max_connections = max_connections(&args);
    let builder = engine_builder(&args, tls.is_some(), &nodes).await?;
    let running = builder.start().await.map_err(|e| e.to_string())?;
    tracing::info!("recovery: {}", running.recovery());
    let engine = running.engine().clone();
    let listener = listen(&args, tls.is_some()).await?;
    if let Some(tls) = &tls {
        if tls.requires_client_certificates() {
            tracing::info!("TLS: client certificates required (--tls-client-ca)");
        }
        reload_on_hangup(tls.clone(), identity);
    }
    tracing::info!(
        "connections: at most {max_connections}; head within {}s, body within {}s, idle {}s",
        args.header_timeout,
        args.body_timeout,
        args.idle_timeout
    );
    announce_authentication(&engine, token.is_some()).await?;
    if let Some(addr) = args.ssh_addr {
        start_ssh(&args, addr, engine.clone()).await?;
    }
    let options = gpu_replica_http::ServeOptions {
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_connections,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        tls,
    };
    let stopping = tokio::sync::watch::channel(false);
    let (proxy, proxied) = match args.proxy_addr {
        Some(addr) => {
            let (address, task) =
                start_proxy(&args, addr, engine.clone(), &nodes, &options, stopping.1).await?;
            (Some(address), Some(task))
        }
        None => (None, None),
    };
    let app = gpu_replica_http::router_with(
        engine.clone(),
        gpu_replica_http::RouterOptions {
            token,
            metrics_token,
            nodes,
            proxy,
            access_log: args.access_log,
            access_sink,
        },
    );
    let closing = engine.clone();
    gpu_replica_http::serve(listener, app, options, async move {
        shutdown_signal().await;
        let _ = stopping.0.send(true);
        // Followed logs and event streams end, so the shutdown is not held open.
        closing.close();
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(proxied) = proxied {
        let _ = proxied.await;
    }
    if let Addr::Unix(path) = &args.addr {
        let _ = std::fs::remove_file(path);
    }
    drop(running);
    tracing::info!("stopped");
    Ok(())
}

/// Starts the web-service proxy on `addr` (its listener bound now: a taken port stops the
/// server), served in the background until `stopping` turns true; returns where browsers
/// reach it, for the API's links.
async fn start_proxy(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
    engine: std::sync::Arc<gpu_replica_core::Engine>,
    nodes: &gpu_replica_http::NodeClient,
    options: &gpu_replica_http::ServeOptions,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(gpu_replica_http::ProxyAddress, tokio::task::JoinHandle<()>), String> {
    let tls = options.tls.is_some();
    if !addr.ip().is_loopback() && !tls && !args.insecure {
        return Err(format!(
            "--proxy-addr {addr} is not a loopback address: its sign-in cookies would cross \
             the network in clear; give --tls-cert and --tls-key, listen on loopback (with a \
             TLS proxy in front and --proxy-url https://...), or pass --insecure"
        ));
    }
    if let Some(url) = &args.proxy_url {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.trim_end_matches('/').contains('/') && !host.is_empty() => {}
            _ => {
                return Err(format!(
                    "--proxy-url {url}: give the proxy's origin, http(s)://HOST[:PORT] (no path: \
                     services live at its root)"
                ))
            }
        }
    }
    let https = tls
        || args
            .proxy_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
    let domain = args
        .proxy_domain
        .as_deref()
        .map(|d| d.trim_matches('.').to_ascii_lowercase());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("web-service proxy: cannot listen on {addr}: {e}"))?;
    let app = gpu_replica_http::proxy_router(
        engine,
        gpu_replica_http::ProxyOptions {
            domain: domain.clone(),
            https,
            connections_per_user: args.proxy_connections_per_user.max(1),
            idle_timeout: Duration::from_secs(args.proxy_idle_timeout.max(1)),
            nodes: nodes.clone(),
        },
    );
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(
        "web-service proxy on {scheme}://{addr}{}; {} connections per user, idle {}s",
        domain
            .as_deref()
            .map(|d| format!(" and {scheme}://SET-PORT.{d}"))
            .unwrap_or_default(),
        args.proxy_connections_per_user,
        args.proxy_idle_timeout
    );
    let mut serving = options.clone();
    // Uploads through a service (a notebook's file, a dataset) may take longer than an API
    // body; the head deadline still holds slow clients off.
    serving.body_timeout = serving
        .body_timeout
        .max(Duration::from_secs(args.proxy_idle_timeout.max(1)));
    let task = tokio::spawn(async move {
        let stopped = async move {
            while !*stopping.borrow() {
                if stopping.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = gpu_replica_http::serve(
            gpu_replica_http::Listener::Tcp(listener),
            app,
            serving,
            stopped,
        )
        .await
        {
            tracing::error!("web-service proxy: {e}");
        }
    });
    let address = gpu_replica_http::ProxyAddress {
        url: args.proxy_url.clone(),
        port: addr.port(),
        https,
        domain,
    };
    Ok((address, task))
}

/// Starts the SSH gateway on `addr`: its listener bound now (a taken port stops the server),
/// its connections served in the background.
async fn start_ssh(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
    engine: std::sync::Arc<gpu_replica_core::Engine>,
) -> Result<(), String> {
    let policy = gpu_replica_ssh::SshPolicy {
        idle: Duration::from_secs(args.ssh_idle_timeout.max(1)),
        sessions_per_user: args.ssh_sessions_per_user.max(1),
    };
    let gateway = gpu_replica_ssh::Gateway::new(engine, policy)
        .await
        .map_err(|e| format!("SSH gateway: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("SSH gateway: cannot listen on {addr}: {e}"))?;
    tracing::info!(
        "SSH gateway on {addr}, host key {}; idle {}s, {} sessions per user",
        gateway.fingerprint(),
        policy.idle.as_secs(),
        policy.sessions_per_user
    );
    if args.node.is_some() {
        // The other nodes bring sessions to this node's sets here: the address as given, or
        // (listening on every address) the host this node advertises with the SSH port.
        let advertised = if addr.ip().is_unspecified() {
            let host = match (&args.advertise, &args.addr) {
                (Some(url), _) => url
                    .split("://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|hostport| {
                        hostport.rsplit_once(':').map(|(h, _)| h).or(Some(hostport))
                    })
                    .unwrap_or("127.0.0.1")
                    .to_string(),
                (None, Addr::Tcp(http)) => http.ip().to_string(),
                (None, Addr::Unix(_)) => "127.0.0.1".to_string(),
            };
            format!("{host}:{}", addr.port())
        } else {
            addr.to_string()
        };
        gateway
            .advertise(&advertised)
            .await
            .map_err(|e| format!("SSH gateway: {e}"))?;
    }
    tokio::spawn(gateway.serve(listener));
    Ok(())
}

/// A token kept in a file (its trailing newline dropped); an empty one is refused.
fn read_secret(path: &std::path::Path, flag: &str) -> Result<String, String> {
    let secret = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .trim_end()
        .to_string();
    if secret.is_empty() {
        return Err(format!("{flag} {}: empty", path.display()));
    }
    Ok(secret)
}

/// The certificate and key served with (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
fn server_tls(args: &ServeArgs) -> Result<Option<gpu_replica_http::ReloadableTls>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    gpu_replica_http::ReloadableTls::new(gpu_replica_http::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.tls_client_ca.clone(),
    })
    .map(Some)
    .map_err(|e| format!("TLS: {e}"))
}

/// How this node reaches the others of its cluster: over HTTPS with its own certificate when
/// it serves one (with what reloads it), else plain.
fn node_client(
    args: &ServeArgs,
) -> Result<(gpu_replica_http::NodeClient, Option<NodeIdentity>), String> {
    let (Some(_), Some(cert), Some(key)) = (&args.node, &args.tls_cert, &args.tls_key) else {
        return Ok((gpu_replica_http::NodeClient::plain(), None));
    };
    let ca = args
        .cluster_ca
        .as_ref()
        .or(args.tls_client_ca.as_ref())
        .ok_or(
            "a cluster over HTTPS needs --cluster-ca: the CA that signed the nodes' \
             certificates (or --tls-client-ca)",
        )?;
    let files = gpu_replica_http::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    };
    let client = gpu_replica_http::NodeClient::with_tls(
        files
            .node_client_config(ca)
            .map_err(|e| format!("TLS to the other nodes: {e}"))?,
    );
    let identity = NodeIdentity {
        client: client.clone(),
        files,
        ca: ca.clone(),
    };
    Ok((client, Some(identity)))
}

/// Off loopback, tokens would cross the network in clear: refused without TLS or --insecure.
fn refuse_plain_http_off_loopback(args: &ServeArgs, tls: bool) -> Result<(), String> {
    match &args.addr {
        Addr::Tcp(addr) if !addr.ip().is_loopback() && !tls && !args.insecure => Err(format!(
            "refusing to serve plain HTTP on {addr}: off loopback every token would cross the \
             network in clear and be given away to anyone on the path; give --tls-cert and \
             --tls-key, listen on a loopback address or a unix: socket, or pass --insecure"
        )),
        _ => Ok(()),
    }
}

/// `--max-connections`, or what the open-files limit (raised to its hard limit) allows.
fn max_connections(args: &ServeArgs) -> usize {
    let open_files = match gpu_replica_http::serve::raise_open_files_limit() {
        Ok((before, now, hard)) => {
            tracing::info!("open files: soft limit {before} raised to {now} (hard limit {hard})");
            now
        }
        Err(e) => {
            tracing::warn!("open files limit not raised: {e}");
            1024
        }
    };
    args.max_connections
        .unwrap_or_else(|| gpu_replica_http::serve::default_max_connections(open_files))
}

/// The engine's parts and options from the flags: Docker, the store, the GPUs, the policy,
/// and in a cluster the URL the other nodes reach this one at and the link to them.
async fn engine_builder(
    args: &ServeArgs,
    tls: bool,
    nodes: &gpu_replica_http::NodeClient,
) -> Result<gpu_replica_core::EngineBuilder, String> {
    let mut docker = DockerRuntime::connect().await.map_err(|e| e.to_string())?;
    if let Some(image) = &args.copy_image {
        docker = docker.with_copy_image(image);
    }
    let docker_version = docker.version().await.map_err(|e| e.to_string())?;
    if args.node.is_some()
        && !args
            .state
            .store
            .as_deref()
            .is_some_and(|s| s.starts_with("etcd://"))
    {
        return Err(
            "--node needs the etcd store (--store etcd://…): the nodes of a cluster share it"
                .into(),
        );
    }
    let store = open_store(&args.state).await?;
    let inventory = match (&args.node, args.gpus.strip_prefix("fake:")) {
        // Fake GPUs of a node carry its name: two nodes' never share a UUID.
        (Some(node), Some(count)) => Arc::new(gpu_replica_core::StaticInventory::fake_on(
            node,
            count
                .parse()
                .map_err(|_| format!("--gpus '{}' is not fake:N", args.gpus))?,
        )),
        _ => open_inventory(&args.gpus)?,
    };
    let gpus = inventory.gpus().await.map_err(|e| e.to_string())?;
    let mut config = engine_config(args)?;
    // The disks whose room status and /metrics show: the store's (redb) and Docker's.
    let store_dir = match args.state.store.as_deref() {
        Some(spec) if spec.starts_with("etcd://") => None,
        Some(path) => std::path::Path::new(path)
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    p
                }
            })
            .map(std::path::Path::to_path_buf),
        None => Some(args.state.data_dir.clone()),
    };
    // A start that migrates the store's schema backs it up here first.
    config.backup_dir = Some(
        store_dir
            .clone()
            .unwrap_or_else(|| args.state.data_dir.clone()),
    );
    if let Some(dir) = store_dir {
        config.disks.push(("store".into(), dir));
    }
    match docker.data_root().await {
        Ok(root) => config.disks.push(("docker".into(), root.into())),
        Err(e) => tracing::warn!("Docker's data root unknown ({e}): its free space is not shown"),
    }
    tracing::info!("{docker_version}");
    tracing::info!("store: {}", store.describe());
    tracing::info!("GPUs: {} from {}", gpus.len(), inventory.describe());
    tracing::info!(
        "ports: {}; GPU attach: {:?}; network: {}",
        config.port_range,
        config.gpu_attach,
        config.network.mode
    );
    // A node's URL for the others: given, or this address.
    let advertise = match (&args.node, &args.advertise, &args.addr) {
        (None, _, _) => None,
        (Some(_), Some(url), _) => Some(url.clone()),
        (Some(_), None, Addr::Tcp(addr)) if tls => Some(format!("https://{addr}")),
        (Some(_), None, Addr::Tcp(addr)) => Some(format!("http://{addr}")),
        (Some(_), None, Addr::Unix(_)) => {
            return Err(
                "--node on a unix: socket needs --advertise (a URL other nodes reach)".into(),
            )
        }
    };
    let mut builder = Engine::builder(Arc::new(docker), store, inventory).config(config);
    if let Some(url) = advertise {
        let link_client = nodes.clone();
        builder = builder.advertise(url).node_link(move |secret| {
            Arc::new(gpu_replica_http::HttpNodeLink::new(secret, link_client))
        });
    }
    Ok(builder)
}

/// The engine's configuration from the flags.
fn engine_config(args: &ServeArgs) -> Result<EngineConfig, String> {
    let network = NetworkPolicy {
        mode: args
            .network
            .parse()
            .map_err(|e: gpu_replica_core::Error| e.to_string())?,
        pool: NetworkPool::new(&args.network_pool, args.network_subnet_prefix)
            .map_err(|e| e.to_string())?,
        guard: !args.no_network_guard,
    };
    Ok(EngineConfig {
        port_range: args.port_range,
        gpu_attach: args.gpu_attach,
        stop_timeout: Duration::from_secs(args.stop_timeout),
        keep_snapshots: args.keep_snapshots,
        keep_paths: std::iter::once("/root".to_string())
            .chain(args.keep_paths.iter().cloned())
            .collect(),
        allowed_host_paths: args.allow_host_paths.clone(),
        allowed_volumes: args.allow_volumes.clone(),
        labels: args.labels.iter().cloned().collect(),
        resources: ResourcePolicy {
            per_gpu: Limits {
                millicpus: args.cpus_per_gpu,
                memory: args.memory_per_gpu,
                shm: args.shm_per_gpu,
            },
            cardless: Limits {
                millicpus: args.cardless_cpus,
                memory: args.cardless_memory,
                shm: args.cardless_shm,
            },
            init: !args.no_init,
        },
        timer_interval: Duration::from_secs(args.timer_interval),
        reconcile_interval: Duration::from_secs(args.reconcile_interval),
        hardening: Hardening {
            no_new_privileges: !args.allow_setuid,
            drop_capabilities: DROPPED_CAPABILITIES
                .iter()
                .filter(|c| !(args.allow_net_raw && **c == "NET_RAW"))
                .map(|c| c.to_string())
                .collect(),
            pids_limit: args.pids_limit.0,
            open_files: args.open_files_limit.0,
        },
        network,
        rootfs: RootfsPolicy {
            size: args.rootfs_size.0,
            measure_interval: Duration::from_secs(args.rootfs_measure_interval),
        },
        node: args.node.clone(),
        screens: ScreenPolicy {
            keep: Duration::from_secs(args.terminal_keep),
            per_user: args.terminals_per_user,
        },
        ..EngineConfig::default()
    })
}

/// The listening socket: TCP, or a Unix socket (mode 0660, `--socket-group`).
async fn listen(args: &ServeArgs, tls: bool) -> Result<gpu_replica_http::Listener, String> {
    match &args.addr {
        Addr::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let scheme = if tls { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{addr}");
            Ok(gpu_replica_http::Listener::Tcp(listener))
        }
        Addr::Unix(path) => {
            let listener = bind_unix(path, args.socket_group.as_deref())?;
            tracing::info!("listening on unix:{} (mode 0660)", path.display());
            Ok(gpu_replica_http::Listener::Unix(listener))
        }
    }
}

/// Says in the log who may call: the token's holder, users, or anyone (and warns when nobody
/// can manage users).
async fn announce_authentication(engine: &Engine, token: bool) -> Result<(), String> {
    if token {
        tracing::info!("a token is required on every route but /ping and /ui's assets: the server's own (admin) or a user's");
    } else if engine.has_users().await.map_err(|e| e.to_string())? {
        tracing::info!("users exist: a user's token is required on every route but /ping");
        let users = engine.users().await.map_err(|e| e.to_string())?;
        if !users
            .iter()
            .any(|u| u.role == gpu_replica_core::Role::Admin)
        {
            tracing::warn!("no user is an admin and there is no --token: nobody can manage users; start with --token to add an admin");
        }
    } else {
        tracing::info!("no token and no users: every request acts as the admin");
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: closing idle connections, finishing requests in flight");
}
