//! `gpu-replica serve`: the engine on real backends behind the HTTP router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpu_replica_core::{
    parse_cpus, parse_duration, parse_size, ContainerRuntime, DockerRuntime, Engine, EngineConfig,
    GpuAttach, GpuInventory, Limits, NvmlInventory, PortRange, RedbStore, ResourcePolicy,
    StateStore, StaticInventory,
};

/// Settings of the server; every flag has a `GPU_REPLICA_*` environment twin.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Non-loopback addresses need --insecure.
    #[arg(long, env = "GPU_REPLICA_ADDR", default_value = "127.0.0.1:2378")]
    addr: SocketAddr,
    /// Folder for state; the redb file lives here.
    #[arg(
        long,
        env = "GPU_REPLICA_DATA_DIR",
        default_value = "./gpu-replica-data"
    )]
    data_dir: PathBuf,
    /// State store: a redb file path, or etcd://host:2379,host:2379 (feature `etcd`).
    /// Default: <data-dir>/state.redb.
    #[arg(long, env = "GPU_REPLICA_STORE")]
    store: Option<String>,
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
    /// Allow a non-loopback address without a token.
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
}

fn cpus(text: &str) -> Result<u64, String> {
    parse_cpus(text).map_err(|e| e.to_string())
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn duration(text: &str) -> Result<u64, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label '{text}' is not KEY=VALUE"))
}

async fn open_store(args: &ServeArgs) -> Result<Arc<dyn StateStore>, String> {
    match args.store.as_deref() {
        Some(spec) if spec.starts_with("etcd://") => open_etcd(spec).await,
        Some(path) => Ok(Arc::new(RedbStore::open(path).map_err(|e| e.to_string())?)),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
            let path = args.data_dir.join("state.redb");
            Ok(Arc::new(RedbStore::open(path).map_err(|e| e.to_string())?))
        }
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(spec: &str) -> Result<Arc<dyn StateStore>, String> {
    let endpoints: Vec<String> = spec["etcd://".len()..]
        .split(',')
        .map(|h| format!("http://{h}"))
        .collect();
    let store = gpu_replica_core::EtcdStore::connect(&endpoints, "gpu-replica/")
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_spec: &str) -> Result<Arc<dyn StateStore>, String> {
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

/// Runs the server until SIGINT or SIGTERM; with a token, every route but /ping needs it.
pub async fn serve(args: ServeArgs, token: Option<String>) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .map_err(|e| format!("--log-level: {e}"))?,
        )
        .init();
    let token = match (&args.token_file, token) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim_end()
                .to_string(),
        ),
        (None, token) => token,
    };
    if token.as_deref() == Some("") {
        return Err("the token is empty".into());
    }
    let mut docker = DockerRuntime::connect().await.map_err(|e| e.to_string())?;
    if let Some(image) = &args.copy_image {
        docker = docker.with_copy_image(image);
    }
    let docker_version = docker.version().await.map_err(|e| e.to_string())?;
    let store = open_store(&args).await?;
    let inventory = open_inventory(&args.gpus)?;
    let gpus = inventory.gpus().await.map_err(|e| e.to_string())?;
    let config = EngineConfig {
        port_range: args.port_range,
        gpu_attach: args.gpu_attach,
        stop_timeout: Duration::from_secs(args.stop_timeout),
        keep_snapshots: args.keep_snapshots,
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
        ..EngineConfig::default()
    };
    tracing::info!("{docker_version}");
    tracing::info!("store: {}", store.describe());
    tracing::info!("GPUs: {} from {}", gpus.len(), inventory.describe());
    tracing::info!(
        "ports: {}; GPU attach: {:?}",
        config.port_range,
        config.gpu_attach
    );
    let engine = Arc::new(Engine::new(Arc::new(docker), store, inventory, config));
    let users = engine.has_users().await.map_err(|e| e.to_string())?;
    if !args.addr.ip().is_loopback() && token.is_none() && !users && !args.insecure {
        return Err(format!(
            "refusing to listen on {} without a token: give --token or --token-file, add users, use a loopback address, or --insecure",
            args.addr
        ));
    }
    // Finish or undo what a crash left in flight before taking new requests.
    let recovery = engine
        .recover()
        .await
        .map_err(|e| format!("recovery: {e}"))?;
    tracing::info!("recovery: {recovery}");
    let _timers = engine.spawn_timers();
    let _reconciler = engine.spawn_reconciler();
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    tracing::info!("listening on http://{}", args.addr);
    let app = match token {
        Some(token) => {
            tracing::info!("a token is required on every route but /ping: the server's own (admin) or a user's");
            gpu_replica_http::router_with_token(engine.clone(), token)
        }
        None if users => {
            tracing::info!("users exist: a user's token is required on every route but /ping");
            let admins = engine.users().await.map_err(|e| e.to_string())?;
            if !admins
                .iter()
                .any(|u| u.role == gpu_replica_core::Role::Admin)
            {
                tracing::warn!("no user is an admin and there is no --token: nobody can manage users; start with --token to add an admin");
            }
            gpu_replica_http::router(engine.clone())
        }
        None => {
            tracing::info!("no token and no users: every request acts as the admin");
            gpu_replica_http::router(engine.clone())
        }
    };
    // Client addresses, for limiting failed authentications per address.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Followed logs and event streams end, so the shutdown is not held open.
            engine.close();
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
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
    tracing::info!("shutting down: finishing requests in flight");
}
