//! Concurrency on the real Docker engine: many clients on few replicaSets, and two engines on
//! one etcd. No GPU is ever attached to two running containers, versions have no gaps or
//! duplicates, and every error is a contract error.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::testkit::{self, TestStore, TEST_IMAGE};
use gpu_replica_core::{Engine, PatchRequest, RunRequest, LABEL_REPLICA_SET};

const CLIENTS: usize = 16;
const SETS: usize = 4;
const GPUS: u32 = 8;
const RUN_FOR: Duration = Duration::from_secs(20);

fn request(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: gpus,
        container_ports: vec!["22".into()],
        ..Default::default()
    }
}

/// GPUs of every running container of this test, from Docker itself.
async fn attached(engine: &Engine, instance: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for container in engine.runtime().list_containers(instance).await.unwrap() {
        let Some(state) = engine
            .runtime()
            .inspect_container(&container.id)
            .await
            .unwrap()
        else {
            continue;
        };
        if !state.running {
            continue;
        }
        let gpus = state
            .env
            .iter()
            .find_map(|e| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
            .filter(|v| *v != "void")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        found.push((state.name, gpus));
    }
    found
}

fn assert_no_gpu_twice(running: &[(String, Vec<String>)]) {
    let mut owner: BTreeMap<&String, &String> = BTreeMap::new();
    for (container, gpus) in running {
        for gpu in gpus {
            if let Some(other) = owner.insert(gpu, container) {
                panic!("{gpu} attached to running {other} and {container}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_on_four_sets_never_share_a_gpu() {
    let instance_label = format!("io.gpu-replica.instance={}", testkit::unique_name("conc"));
    let (key, value) = instance_label.split_once('=').unwrap();
    let mut config = testkit::config();
    config.labels.insert(key.to_string(), value.to_string());
    let engine = Arc::new(testkit::engine(TestStore::memory().open().await, GPUS, config).await);
    let names: Vec<String> = (0..SETS).map(|_| testkit::unique_name("conc")).collect();
    for name in &names {
        engine.run(request(name, 1)).await.unwrap();
    }
    let deadline = Instant::now() + RUN_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let engine = engine.clone();
            let names = names.clone();
            tokio::spawn(async move {
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (client as u64 + 1);
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                let mut done = BTreeMap::<&str, usize>::new();
                while Instant::now() < deadline {
                    let name = &names[next() as usize % names.len()];
                    let (op, outcome) = match next() % 5 {
                        0 | 1 => {
                            let gpus = (next() % 4) as i64;
                            let patch = PatchRequest {
                                gpu_count: Some(gpus),
                                ..Default::default()
                            };
                            ("patch", engine.patch(name, patch).await.map(|_| ()))
                        }
                        2 => ("stop", engine.stop(name).await),
                        3 => ("restart", engine.restart(name).await.map(|_| ())),
                        _ => ("continue", engine.resume(name).await),
                    };
                    match outcome {
                        Ok(()) => *done.entry(op).or_default() += 1,
                        Err(e) => {
                            let code = e.code();
                            assert!((1000..=1041).contains(&code), "{op} {name}: {e} ({code})");
                            // Only refusals a busy host explains: no GPUs or ports left, nothing
                            // to patch, a continue whose GPUs went to another set.
                            assert!(
                                [1009, 1013, 1014, 1019].contains(&code),
                                "{op} {name}: unexpected {e} ({code})"
                            );
                        }
                    }
                }
                done
            })
        })
        .collect();
    let checker = {
        let engine = engine.clone();
        let instance = instance_label.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while Instant::now() < deadline {
                assert_no_gpu_twice(&attached(&engine, &instance).await);
                checks += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            checks
        })
    };
    let mut totals = BTreeMap::<&str, usize>::new();
    for client in clients {
        for (op, n) in client.await.unwrap() {
            *totals.entry(op).or_default() += n;
        }
    }
    let checks = checker.await.unwrap();
    println!("operations done: {totals:?}; {checks} checks of running containers");
    assert!(totals.values().sum::<usize>() >= SETS, "{totals:?}");

    assert_no_gpu_twice(&attached(&engine, &instance_label).await);
    let status = engine.gpu_status().await.unwrap();
    let mut held = HashSet::new();
    for info in engine.list().await.unwrap() {
        let name = &info.replica_set.name;
        let versions: Vec<u32> = engine
            .history(name)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        let expected: Vec<u32> = (1..=info.replica_set.latest).rev().collect();
        assert_eq!(versions, expected, "{name}: gaps or duplicates");
        assert!(info.replica_set.pending.is_none());
        if info.replica_set.status.holds_claims() {
            for gpu in &info.replica_set.gpus {
                assert!(held.insert(gpu.clone()), "{gpu} held twice");
                let holder = status
                    .iter()
                    .find(|s| &s.gpu.uuid == gpu)
                    .unwrap()
                    .holder
                    .clone();
                assert_eq!(holder.as_ref(), Some(name));
            }
        }
    }
    assert_eq!(
        status.iter().filter(|s| s.holder.is_some()).count(),
        held.len()
    );
    for name in &names {
        engine.delete(name).await.unwrap();
    }
    let leftovers = engine
        .runtime()
        .list_containers(LABEL_REPLICA_SET)
        .await
        .unwrap();
    assert!(leftovers
        .iter()
        .all(|c| !names.iter().any(|n| c.name.starts_with(&format!("{n}-")))));
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_etcd_never_claim_the_same_gpu_or_port() {
    let store = TestStore::etcd();
    let config = testkit::config();
    let first = Arc::new(testkit::engine(store.open().await, 4, config.clone()).await);
    let second = Arc::new(testkit::engine(store.open().await, 4, config).await);
    // Eight runs of one GPU each for four GPUs, half through each engine, all at once.
    let names: Vec<String> = (0..8).map(|_| testkit::unique_name("two")).collect();
    let tasks: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let engine = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let name = name.clone();
            tokio::spawn(async move { (name.clone(), engine.run(request(&name, 1)).await) })
        })
        .collect();
    let mut won = Vec::new();
    for task in tasks {
        let (name, outcome) = task.await.unwrap();
        match outcome {
            Ok(info) => won.push((name, info)),
            Err(e) => assert_eq!(e.code(), 1013, "{name}: {e}"),
        }
    }
    assert_eq!(won.len(), 4, "exactly as many runs as GPUs succeed");
    let gpus: HashSet<_> = won
        .iter()
        .flat_map(|(_, i)| i.version.gpus.clone())
        .collect();
    let ports: HashSet<_> = won
        .iter()
        .flat_map(|(_, i)| i.version.ports.iter().map(|p| p.host_port))
        .collect();
    assert_eq!((gpus.len(), ports.len()), (4, 4));
    // Both engines see the same claims.
    assert_eq!(
        first.gpu_status().await.unwrap(),
        second.gpu_status().await.unwrap()
    );
    assert_eq!(
        first.port_status().await.unwrap(),
        second.port_status().await.unwrap()
    );
    for (name, _) in &won {
        first.delete(name).await.unwrap();
    }
    assert!(second
        .gpu_status()
        .await
        .unwrap()
        .iter()
        .all(|g| g.holder.is_none()));
}

/// In a cluster, a node sees another node's GPUs with their figures of a few seconds ago, not
/// of when it joined: each node writes them into its record when they change.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sees_the_live_figures_of_another_nodes_gpus() {
    use gpu_replica_core::{EngineConfig, GpuInventory, StaticInventory};
    let store = TestStore::etcd();
    let node = |name: &str, inventory: StaticInventory| {
        let store = &store;
        let name = name.to_string();
        async move {
            let config = EngineConfig {
                node: Some(name),
                ..testkit::config()
            };
            Arc::new(Engine::new(
                Arc::new(testkit::docker().await),
                store.open().await,
                Arc::new(inventory),
                config,
            ))
        }
    };
    let inventory_b = StaticInventory::fake_on("b", 2);
    let a = node("a", StaticInventory::fake_on("a", 2)).await;
    let b = node("b", inventory_b.clone()).await;
    let _a_alive = a.join_cluster("http://127.0.0.1:9", "test").await.unwrap();
    let _b_alive = b.join_cluster("http://127.0.0.1:9", "test").await.unwrap();
    let uuid = inventory_b.gpus().await.unwrap()[0].uuid.clone();
    let seen_by_a = || async {
        a.gpu_status()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.gpu.uuid == uuid)
            .and_then(|g| g.gpu.utilization)
    };
    assert_eq!(seen_by_a().await, Some(0));
    assert!(inventory_b.set_utilization(&uuid, Some(73)));
    let started = Instant::now();
    while seen_by_a().await != Some(73) {
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "a still sees {:?}",
            seen_by_a().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("seen after {:?}", started.elapsed());
}
