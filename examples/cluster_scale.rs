//! Placement and cluster-wide reads at scale, on a real etcd: N simulated nodes (records and
//! leases only, 8 fake GPUs each, half of their GPUs claimed by sets) and the cost of what a
//! node does per request: place a new set, list the nodes, list every set, locate a set.
//!
//! ```text
//! cargo run --release --all-features --example cluster_scale -- http://127.0.0.1:2379 [NODES...]
//! ```
//!
//! Each run writes under a prefix of its own (`cluster-scale-{pid}/`) and deletes it after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::cluster::NodeRecord;
use gpu_replica_core::model::{ReplicaSet, ReplicaSetSpec, Status, Version};
use gpu_replica_core::store::Txn;
use gpu_replica_core::{keys, EtcdStore, GpuInventory, StateStore, StaticInventory};

async fn median<F, Fut, T>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    times.sort();
    times[runs / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let sizes: Vec<usize> = {
        let given: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
        if given.is_empty() {
            vec![3, 100]
        } else {
            given
        }
    };
    println!("| nodes | sets | place | nodes list | list of every set | locate |");
    println!("|---|---|---|---|---|---|");
    for nodes in sizes {
        let prefix = format!("cluster-scale-{}-{nodes}/", std::process::id());
        let store: Arc<dyn StateStore> =
            Arc::new(EtcdStore::connect(std::slice::from_ref(&endpoint), &prefix).await?);
        // Nodes: a record and a leased liveness key each; 4 sets holding one GPU on each.
        let mut sets = 0;
        for n in 0..nodes {
            let name = format!("node{n:03}");
            let gpus = StaticInventory::fake_on(&name, 8).gpus().await?;
            let record = NodeRecord {
                name: name.clone(),
                advertise: format!("http://10.0.{}.{}:2378", n / 250, n % 250),
                gpus: gpus.clone(),
                port_range: "40000-65535".parse()?,
                docker: "Docker 27".into(),
                joined_at: "2026-11-26 00:00:00".into(),
                cordoned: false,
                drain: None,
            };
            store
                .put(&keys::node(&name), serde_json::to_vec(&record)?)
                .await?;
            store
                .put_leased(
                    &keys::node_alive(&name),
                    record.advertise.into_bytes(),
                    Duration::from_secs(60),
                )
                .await?;
            let mut txn = Txn::new();
            for (i, gpu) in gpus.iter().take(4).enumerate() {
                let set = format!("{name}s{i}");
                let head = ReplicaSet {
                    name: set.clone(),
                    id: format!("{n:016x}{i:016x}"),
                    owner: "admin".into(),
                    node: name.clone(),
                    current: 1,
                    latest: 1,
                    status: Status::Running,
                    gpus: vec![gpu.uuid.clone()],
                    ports: vec![],
                    pending: None,
                    created_at: "2026-11-26 00:00:00".into(),
                    timers: Default::default(),
                };
                let version = Version {
                    version: 1,
                    container: format!("{set}-1"),
                    spec: ReplicaSetSpec {
                        image: "ubuntu:22.04".into(),
                        gpu_count: 1,
                        binds: vec![],
                        env: vec![],
                        cmd: None,
                        container_ports: vec![],
                        resources: Default::default(),
                    },
                    gpus: head.gpus.clone(),
                    ports: vec![],
                    image: "ubuntu:22.04".into(),
                    snapshot: None,
                    limits: Default::default(),
                    created_at: head.created_at.clone(),
                };
                txn = txn
                    .put(keys::replica_set(&set), serde_json::to_vec(&head)?)
                    .put(keys::version(&set, 1), serde_json::to_vec(&version)?)
                    .put(keys::current(&set), serde_json::to_vec(&version)?)
                    .put(keys::gpu_claim(&gpu.uuid), set.into_bytes());
                sets += 1;
            }
            store.commit(txn).await?;
        }
        // An engine of node000 on the same prefix, as a server would be.
        let config = gpu_replica_core::EngineConfig {
            node: Some("node000".into()),
            ..Default::default()
        };
        let engine = gpu_replica_core::Engine::new(
            Arc::new(gpu_replica_core::DockerRuntime::connect().await?),
            store.clone(),
            Arc::new(StaticInventory::fake_on("node000", 8)),
            config,
        );
        let place = median(21, || engine.place(2, None)).await;
        let listed = median(11, || engine.nodes()).await;
        let every = median(11, || engine.list()).await;
        let locate = median(21, || engine.locate("node001s0")).await;
        println!(
            "| {nodes} | {sets} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            place.as_secs_f64() * 1e3,
            listed.as_secs_f64() * 1e3,
            every.as_secs_f64() * 1e3,
            locate.as_secs_f64() * 1e3
        );
        // Clean up this run's prefix.
        let all = store.list("").await?;
        for chunk in all.chunks(100) {
            let txn = chunk
                .iter()
                .fold(Txn::new(), |t, e| t.delete(e.key.clone()));
            store.commit(txn).await?;
        }
    }
    Ok(())
}
