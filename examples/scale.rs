//! Records at scale: N replicaSets with V versions each (10,000 × 20 by default), written
//! straight into a store, then what an operator feels: list, info, GPU and port status, and a
//! server start (open the store + the recovery pass on the real Docker engine), with the
//! process's RSS. Prints one row per figure.
//!
//! ```text
//! cargo run --release --all-features --example scale -- [SETS] [VERSIONS] [redb|etcd=http://…]
//! ```
//!
//! The sets are recorded stopped (their containers do not exist, and a stopped set without a
//! container is no drift), each of the first 64 holding a fake GPU claim and a port claim.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::model::{ReplicaSet, ReplicaSetSpec, Status, Version};
use gpu_replica_core::runtime::PortMapping;
use gpu_replica_core::store::Txn;
use gpu_replica_core::{
    keys, DockerRuntime, Engine, EngineConfig, GpuInventory, RedbStore, StateStore, StaticInventory,
};

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn version(name: &str, number: u32, gpus: &[String], ports: &[PortMapping]) -> Version {
    Version {
        version: number,
        container: format!("{name}-{number}"),
        spec: ReplicaSetSpec {
            image: "ubuntu:22.04".into(),
            gpu_count: gpus.len() as u32,
            binds: vec![],
            env: vec!["USER=someone".into(), "LANG=C.UTF-8".into()],
            cmd: None,
            container_ports: ports.iter().map(|p| p.container_port.clone()).collect(),
            resources: Default::default(),
        },
        gpus: gpus.to_vec(),
        ports: ports.to_vec(),
        image: format!("gpu-replica/{name}:v{}", number.saturating_sub(1)),
        snapshot: Some(format!("gpu-replica/{name}:v{number}")),
        limits: Default::default(),
        created_at: "2026-11-25 00:00:00".into(),
    }
}

/// Writes `sets` × `versions` records in transactions of `batch` sets.
async fn fill(store: &dyn StateStore, gpus: &[String], sets: usize, versions: u32, batch: usize) {
    let mut txn = Txn::new();
    let mut in_txn = 0;
    for i in 0..sets {
        let name = format!("set{i:05}");
        let (held, ports) = if i < 64 {
            let port = PortMapping {
                container_port: "22/tcp".into(),
                host_port: 40000 + i as u16,
            };
            (vec![gpus[i % gpus.len()].clone()], vec![port])
        } else {
            (vec![], vec![])
        };
        let head = ReplicaSet {
            name: name.clone(),
            id: format!("{i:032x}"),
            owner: gpu_replica_core::OPERATOR.to_string(),
            node: String::new(),
            current: versions,
            latest: versions,
            status: if i < 64 {
                Status::Paused
            } else {
                Status::Stopped
            },
            gpus: held.clone(),
            ports: ports.clone(),
            pending: None,
            created_at: "2026-11-25 00:00:00".into(),
            timers: Default::default(),
        };
        txn = txn.put(keys::replica_set(&name), serde_json::to_vec(&head).unwrap());
        for v in 1..=versions {
            let mut record = version(&name, v, &held, &ports);
            if v == versions {
                record.snapshot = None;
                txn = txn.put(keys::current(&name), serde_json::to_vec(&record).unwrap());
            }
            txn = txn.put(
                keys::version(&name, v),
                serde_json::to_vec(&record).unwrap(),
            );
        }
        if i < 64 {
            txn = txn
                .put(keys::gpu_claim(&held[0]), name.clone().into_bytes())
                .put(
                    keys::port_claim("", ports[0].host_port),
                    name.clone().into_bytes(),
                );
        }
        in_txn += 1;
        if in_txn == batch {
            assert!(store.commit(std::mem::take(&mut txn)).await.unwrap());
            in_txn = 0;
        }
    }
    if in_txn > 0 {
        assert!(store.commit(txn).await.unwrap());
    }
}

/// Median of `runs` timings of `f`.
async fn median<F, Fut, T>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(f().await);
        times.push(start.elapsed());
    }
    times.sort();
    times[runs / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sets: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let versions: u32 = args.next().map_or(Ok(20), |a| a.parse())?;
    let backend = args.next().unwrap_or_else(|| "redb".into());
    let inventory = Arc::new(StaticInventory::fake(8));
    let gpus: Vec<String> = inventory
        .gpus()
        .await?
        .into_iter()
        .map(|g| g.uuid)
        .collect();
    let measure_at = match (args.next().as_deref(), args.next()) {
        (Some("--measure"), Some(path)) => Some(std::path::PathBuf::from(path)),
        _ => None,
    };

    let open = |backend: String, path: std::path::PathBuf| async move {
        let store: Arc<dyn StateStore> = match backend.strip_prefix("etcd=") {
            #[cfg(feature = "etcd")]
            Some(endpoint) => Arc::new(
                gpu_replica_core::EtcdStore::connect(&[endpoint.to_string()], "scale/").await?,
            ),
            #[cfg(not(feature = "etcd"))]
            Some(_) => return Err("build with --features etcd".into()),
            None => Arc::new(RedbStore::open(&path)?),
        };
        Ok::<_, Box<dyn std::error::Error>>(store)
    };

    let Some(path) = measure_at else {
        // Fill in this process, measure in a fresh one (so its RSS is a server's, not the
        // writer's).
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.redb");
        let store = open(backend.clone(), path.clone()).await?;
        let started = Instant::now();
        let batch = if backend == "redb" { sets } else { 4 };
        fill(store.as_ref(), &gpus, sets, versions, batch).await;
        println!(
            "backend {backend}: {sets} sets x {versions} versions written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        drop(store);
        let status = std::process::Command::new(std::env::current_exe()?)
            .args([
                &sets.to_string(),
                &versions.to_string(),
                &backend,
                "--measure",
            ])
            .arg(&path)
            .status()?;
        return if status.success() {
            Ok(())
        } else {
            Err("the measuring process failed".into())
        };
    };

    // A server start: open the store, build the engine, run the recovery pass.
    let rss_before = rss_mb();
    let started = Instant::now();
    let store = open(backend.clone(), path.clone()).await?;
    let engine = Engine::new(
        Arc::new(DockerRuntime::connect().await?),
        store,
        inventory,
        EngineConfig::default(),
    );
    let recovery = engine.recover().await?;
    let start = started.elapsed();
    assert!(
        recovery.missing.is_empty() && recovery.reconciled.is_empty(),
        "{recovery}"
    );
    println!(
        "start (open + recovery pass)   {:>10.1} ms",
        start.as_secs_f64() * 1e3
    );

    let list = median(5, || engine.list()).await;
    assert_eq!(engine.list().await?.len(), sets);
    println!(
        "list of {sets} sets          {:>10.1} ms",
        list.as_secs_f64() * 1e3
    );
    let mut i = 0;
    let info = median(101, || {
        i += 7919;
        let name = format!("set{:05}", i % sets);
        let engine = &engine;
        async move { engine.info(&name).await.unwrap() }
    })
    .await;
    println!(
        "info (cache miss or hit)       {:>10.3} ms",
        info.as_secs_f64() * 1e3
    );
    let gpu_status = median(21, || engine.gpu_status()).await;
    println!(
        "GPU status                     {:>10.3} ms",
        gpu_status.as_secs_f64() * 1e3
    );
    let port_status = median(21, || engine.port_status()).await;
    println!(
        "port status                    {:>10.3} ms",
        port_status.as_secs_f64() * 1e3
    );
    // A Prometheus scrape of the engine's part: every head, the claims, the inventory, encoded.
    let scrape = median(21, || async {
        let mut registry = prometheus_client::registry::Registry::default();
        engine.collect_metrics(&mut registry).await?;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .map_err(|e| gpu_replica_core::Error::InvalidParams(e.to_string()))?;
        Ok::<usize, gpu_replica_core::Error>(text.len())
    })
    .await;
    println!(
        "metrics scrape (engine part)   {:>10.3} ms",
        scrape.as_secs_f64() * 1e3
    );
    // What a claim under a quota reads on top: the owner's holdings among every set.
    let quota_user = format!("quota{}", std::process::id());
    engine
        .add_user(gpu_replica_core::NewUser {
            name: quota_user.clone(),
            quota: gpu_replica_core::Quota {
                max_gpus: Some(8),
                ..Default::default()
            },
            ..Default::default()
        })
        .await?;
    let holdings = median(21, || engine.user_info(&quota_user)).await;
    println!(
        "quota check (holdings)         {:>10.3} ms",
        holdings.as_secs_f64() * 1e3
    );
    engine.remove_user(&quota_user).await?;
    println!(
        "RSS after start and reads      {:>10.1} MB (before start {rss_before:.1} MB)",
        rss_mb()
    );
    // A backup of the whole store (what `gpu-replica backup` asks the server for), after the
    // RSS figure: it holds the store's records and the file in memory while it runs.
    let backup = median(3, || engine.backup()).await;
    let backup_bytes = engine.backup().await?.len();
    println!(
        "backup of the store            {:>10.1} ms ({:.1} MB; RSS after it {:.1} MB)",
        backup.as_secs_f64() * 1e3,
        backup_bytes as f64 / 1e6,
        rss_mb()
    );
    // What list cost before the current-version copies: every version record of every set
    // read and decoded, each set matched by a scan of them.
    let scan = median(1, || async {
        let heads = engine.store().list(keys::REPLICA_SETS).await.unwrap();
        let all = engine.store().list(keys::ALL_VERSIONS).await.unwrap();
        let versions: Vec<Version> = all
            .iter()
            .map(|e| serde_json::from_slice(&e.value).unwrap())
            .collect();
        heads
            .iter()
            .filter_map(|e| {
                let head: ReplicaSet = serde_json::from_slice(&e.value).ok()?;
                let container = format!("{}-{}", head.name, head.current);
                versions.iter().find(|v| v.container == container).cloned()
            })
            .count()
    })
    .await;
    println!(
        "list, before (scan of versions) {:>10.1} ms",
        scan.as_secs_f64() * 1e3
    );
    if let Some(endpoint) = backend.strip_prefix("etcd=") {
        println!("(etcd at {endpoint}: delete the prefix scale/ to run again)");
    }
    Ok(())
}
