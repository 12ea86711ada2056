//! What users of a GPU rental platform expect of an instance, on the real Docker engine:
//! isolation, resources per GPU, timers, clone, logs, stats and events.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gpu_replica_core::testkit::{self, sh, TestStore, TEST_IMAGE};
use gpu_replica_core::{
    CloneRequest, ContainerRuntime, Engine, EngineConfig, Limits, PatchRequest, ResourcePolicy,
    RunRequest, StaticInventory, Status, Timers,
};

const MB: u64 = 1024 * 1024;

fn request(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: gpus,
        ..Default::default()
    }
}

/// An engine on a memory store whose fake GPUs the test can make busy.
async fn engine_with(config: EngineConfig) -> (Engine, StaticInventory) {
    let inventory = StaticInventory::fake(4);
    let engine = Engine::new(
        Arc::new(testkit::docker().await),
        TestStore::memory().open().await,
        Arc::new(inventory.clone()),
        config,
    );
    (engine, inventory)
}

fn per_gpu_policy() -> ResourcePolicy {
    ResourcePolicy {
        per_gpu: Limits {
            millicpus: Some(500),
            memory: Some(64 * MB),
            shm: Some(32 * MB),
        },
        cardless: Limits {
            millicpus: Some(250),
            memory: Some(16 * MB),
            shm: None,
        },
        init: true,
    }
}

async fn docker_limits(name: &str) -> (Limits, bool) {
    let state = testkit::docker()
        .await
        .inspect_container(name)
        .await
        .unwrap()
        .unwrap();
    (state.limits, state.init)
}

#[tokio::test]
async fn a_container_sees_only_its_own_gpus_even_when_its_image_says_all() {
    let (engine, _) = engine_with(testkit::config()).await;
    let cardless = testkit::unique_name("iso0");
    let two = testkit::unique_name("iso2");
    engine.run(request(&cardless, 0)).await.unwrap();
    let info = engine.run(request(&two, 2)).await.unwrap();
    // The test image's config sets NVIDIA_VISIBLE_DEVICES=all.
    let (none, _) = sh(&engine, &cardless, "echo -n $NVIDIA_VISIBLE_DEVICES").await;
    assert_eq!(none, "void");
    let (own, _) = sh(&engine, &two, "echo -n $NVIDIA_VISIBLE_DEVICES").await;
    assert_eq!(own, info.version.gpus.join(","));
    for name in [&cardless, &two] {
        let (order, _) = sh(&engine, name, "echo -n $CUDA_DEVICE_ORDER").await;
        assert_eq!(order, "PCI_BUS_ID");
        engine.delete(name).await.unwrap();
    }
}

#[tokio::test]
async fn resources_follow_the_gpu_count_and_a_request_may_ask_less_never_more() {
    let config = EngineConfig {
        resources: per_gpu_policy(),
        ..testkit::config()
    };
    let (engine, _) = engine_with(config).await;
    let name = testkit::unique_name("res");

    let one = engine.run(request(&name, 1)).await.unwrap();
    let (limits, init) = docker_limits(&one.version.container).await;
    assert_eq!(limits.millicpus, Some(500));
    assert_eq!(limits.memory, Some(64 * MB));
    assert_eq!(limits.shm, Some(32 * MB));
    assert!(init, "containers run an init by default");
    // PID 1 is Docker's init (tini), not the image's shell.
    let (pid1, _) = sh(&engine, &name, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(pid1.contains("init"), "{pid1}");
    let (shm, _) = sh(&engine, &name, "df -k /dev/shm | tail -1").await;
    assert!(shm.contains("32768"), "{shm}");

    // Doubling the GPUs doubles the share.
    let two = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (limits, _) = docker_limits(&two.version.container).await;
    assert_eq!(limits.millicpus, Some(1000));
    assert_eq!(limits.memory, Some(128 * MB));
    assert_eq!(limits.shm, Some(64 * MB));
    assert_eq!(two.version.limits, limits);

    // Asking more than two GPUs' share is refused and changes nothing.
    let greedy = PatchRequest {
        resources: Some(Limits {
            memory: Some(129 * MB),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(engine.patch(&name, greedy).await.unwrap_err().code(), 1043);
    assert_eq!(engine.info(&name).await.unwrap().version.version, 2);

    // Asking less is applied; the rest stays at the share.
    let modest = PatchRequest {
        resources: Some(Limits {
            millicpus: Some(250),
            ..Default::default()
        }),
        ..Default::default()
    };
    let three = engine.patch(&name, modest).await.unwrap();
    let (limits, _) = docker_limits(&three.version.container).await;
    assert_eq!(limits.millicpus, Some(250));
    assert_eq!(limits.memory, Some(128 * MB));

    // Cardless gets the base share.
    let cardless = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (limits, _) = docker_limits(&cardless.version.container).await;
    assert_eq!(limits.millicpus, Some(250));
    assert_eq!(limits.memory, Some(16 * MB));

    // A run asking beyond its share is refused before anything is made.
    let other = testkit::unique_name("res");
    let mut too_much = request(&other, 1);
    too_much.resources.millicpus = Some(501);
    assert_eq!(engine.run(too_much).await.unwrap_err().code(), 1043);
    assert!(engine.info(&other).await.is_err());
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_stop_time_stops_the_set_releases_its_gpus_and_survives_a_new_engine() {
    let store = TestStore::redb().open().await;
    let config = testkit::config();
    let engine = testkit::engine(store.clone(), 2, config.clone()).await;
    let name = testkit::unique_name("at");
    engine.run(request(&name, 2)).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let soon = now + 2;
    let past = Timers {
        stop_at: Some(soon - 60),
        ..Default::default()
    };
    assert_eq!(
        engine.set_timers(&name, past).await.unwrap_err().code(),
        1000
    );
    let timers = Timers {
        stop_at: Some(soon),
        ..Default::default()
    };
    engine.set_timers(&name, timers.clone()).await.unwrap();
    assert!(engine.tick_timers().await.unwrap().is_empty(), "not yet");

    // Another engine on the same store (a restarted server) knows the timer and fires it.
    let restarted = testkit::engine(store, 2, config).await;
    let info = restarted.info(&name).await.unwrap();
    assert_eq!(info.replica_set.timers, timers);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(restarted.tick_timers().await.unwrap(), vec![name.clone()]);
    let info = restarted.info(&name).await.unwrap();
    assert_eq!(info.replica_set.status, Status::Stopped);
    assert_eq!(
        info.replica_set.timers.stop_at, None,
        "a fired stop time is cleared"
    );
    let held = restarted
        .gpu_status()
        .await
        .unwrap()
        .iter()
        .filter(|g| g.holder.is_some())
        .count();
    assert_eq!(held, 0, "GPUs are released as by a stop");
    let events = restarted.events(10, None).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "timer.at" && e.target == name && e.ok));
    restarted.delete(&name).await.unwrap();
}

#[tokio::test]
async fn idle_gpus_stop_the_set_busy_ones_keep_it_running() {
    let (engine, inventory) = engine_with(testkit::config()).await;
    let engine = Arc::new(engine);
    let name = testkit::unique_name("idle");
    let info = engine.run(request(&name, 1)).await.unwrap();
    let gpu = info.version.gpus[0].clone();
    let timers = Timers {
        idle_stop_secs: Some(1),
        ..Default::default()
    };
    engine.set_timers(&name, timers).await.unwrap();

    // Busy: never stopped, however long.
    assert!(inventory.set_utilization(&gpu, Some(85)));
    for _ in 0..3 {
        assert!(engine.tick_timers().await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Unknown utilization is not idleness either.
    inventory.set_utilization(&gpu, None);
    assert!(engine.tick_timers().await.unwrap().is_empty());

    // Idle: the clock starts at the first idle pass and the set stops once it ran out.
    inventory.set_utilization(&gpu, Some(0));
    assert!(engine.tick_timers().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(engine.tick_timers().await.unwrap(), vec![name.clone()]);
    assert_eq!(
        engine.info(&name).await.unwrap().replica_set.status,
        Status::Stopped
    );
    // The idle timer stays for the next time the set runs.
    assert_eq!(
        engine
            .info(&name)
            .await
            .unwrap()
            .replica_set
            .timers
            .idle_stop_secs,
        Some(1)
    );
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn the_timer_task_fires_on_its_own() {
    let config = EngineConfig {
        timer_interval: Duration::from_millis(200),
        ..testkit::config()
    };
    let (engine, _) = engine_with(config).await;
    let engine = Arc::new(engine);
    let task = engine.spawn_timers();
    let name = testkit::unique_name("task");
    engine.run(request(&name, 1)).await.unwrap();
    let timers = Timers {
        idle_stop_secs: Some(1),
        ..Default::default()
    };
    let mut events = engine.subscribe();
    engine.set_timers(&name, timers).await.unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == "timer.idle" {
                return event;
            }
        }
    })
    .await
    .expect("the idle timer fired within 20 s");
    assert!(fired.ok, "{}", fired.message);
    assert_eq!(fired.target, name);
    task.abort();
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_clone_gets_the_files_of_the_version_it_came_from_and_its_own_gpus_and_ports() {
    let (engine, _) = engine_with(testkit::config()).await;
    let source = testkit::unique_name("src");
    let mut run = request(&source, 1);
    run.container_ports = vec!["22".into()];
    let v1 = engine.run(run).await.unwrap();
    sh(&engine, &source, "echo one > /root/one").await;
    engine
        .patch(
            &source,
            PatchRequest {
                gpu_count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sh(&engine, &source, "echo two > /root/two").await;

    // From the current version, with one GPU: both files, running while the source runs on.
    let now = testkit::unique_name("now");
    let clone = engine
        .clone_set(CloneRequest {
            source: source.clone(),
            name: now.clone(),
            gpu_count: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let (files, _) = sh(&engine, &now, "cat /root/one /root/two").await;
    assert_eq!(files, "one\ntwo\n");
    assert_eq!(clone.version.gpus.len(), 1);
    let source_info = engine.info(&source).await.unwrap();
    assert_eq!(source_info.replica_set.status, Status::Running);
    assert!(clone
        .version
        .gpus
        .iter()
        .all(|g| !source_info.version.gpus.contains(g)));
    assert_ne!(
        clone.version.ports[0].host_port,
        v1.version.ports[0].host_port
    );

    // From version 1 with one GPU: only what version 1 had.
    let old = testkit::unique_name("old");
    let clone = engine
        .clone_set(CloneRequest {
            source: source.clone(),
            name: old.clone(),
            version: Some(1),
            gpu_count: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(clone.version.gpus.len(), 1);
    let (_, missing) = sh(&engine, &old, "test -e /root/two").await;
    assert_ne!(missing, 0);
    let (one, _) = sh(&engine, &old, "cat /root/one").await;
    assert_eq!(one, "one\n");

    // Not enough GPUs left for another two-GPU clone: refused, nothing left behind.
    let refused = testkit::unique_name("none");
    let err = engine
        .clone_set(CloneRequest {
            source: source.clone(),
            name: refused.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1013);
    assert!(engine.info(&refused).await.is_err());

    // The clones outlive their source and own their base image.
    engine.delete(&source).await.unwrap();
    engine.restart(&now).await.unwrap();
    let (files, _) = sh(&engine, &now, "cat /root/one /root/two").await;
    assert_eq!(files, "one\ntwo\n");
    let docker = testkit::docker().await;
    for name in [&now, &old] {
        let history = engine.history(name).await.unwrap();
        let base = history.last().unwrap().image.clone();
        assert!(base.ends_with(":base"), "{base}");
        assert!(docker.inspect_image(&base).await.unwrap().is_some());
        engine.delete(name).await.unwrap();
        assert!(docker.inspect_image(&base).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn logs_can_be_tailed_and_followed_and_stats_measure_the_container() {
    let config = EngineConfig {
        resources: per_gpu_policy(),
        ..testkit::config()
    };
    let (engine, _) = engine_with(config).await;
    let name = testkit::unique_name("logs");
    let mut run = request(&name, 1);
    run.cmd = Some(
        ["sh", "-c", "echo first; echo second; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
            .map(str::to_string)
            .to_vec(),
    );
    engine.run(run).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut all = Vec::new();
    let mut stream = engine.logs(&name, None, false).await.unwrap();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let all = String::from_utf8_lossy(&all).to_string();
    assert!(all.starts_with("first"), "{all}");
    assert!(all.contains("tick 0"), "{all}");

    let mut tail = Vec::new();
    let mut stream = engine.logs(&name, Some(1), false).await.unwrap();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    let tail = String::from_utf8_lossy(&tail).to_string();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick"), "{tail}");

    // Following sees lines written after it started.
    let mut follow = engine.logs(&name, Some(0), true).await.unwrap();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.matches("tick").count() < 3 {
            let chunk = follow.next().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("three new lines within 10 s");

    let stats = engine.stats(&name).await.unwrap();
    assert_eq!(stats.container, format!("{name}-1"));
    assert_eq!(stats.container_stats.memory_limit, 64 * MB);
    assert!(stats.container_stats.memory_used > 0);
    assert!(
        stats.container_stats.pids >= 2,
        "{:?}",
        stats.container_stats
    );
    assert_eq!(stats.gpus.len(), 1);
    assert_eq!(stats.gpus[0].utilization, Some(0));

    // A followed log ends when the container stops.
    engine.stop(&name).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = follow.next().await {}
    })
    .await
    .expect("the followed log ended with the container");
    assert_eq!(engine.stats(&name).await.unwrap_err().code(), 1045);
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn every_lifecycle_change_is_an_event_with_its_outcome() {
    let (engine, _) = engine_with(testkit::config()).await;
    let mut live = engine.subscribe();
    let name = testkit::unique_name("ev");
    engine.run(request(&name, 1)).await.unwrap();
    engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    engine.stop(&name).await.unwrap();
    let err = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(9),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1013);
    let volume = testkit::unique_name("evvol");
    engine.create_volume(&volume, "1GB").await.unwrap();
    engine.resize_volume(&volume, "2GB").await.unwrap();
    engine.delete_volume(&volume).await.unwrap();
    engine.delete(&name).await.unwrap();

    let expected = [
        ("run", true),
        ("patch", true),
        ("stop", true),
        ("patch", false),
        ("volume.create", true),
        ("volume.resize", true),
        ("volume.delete", true),
        ("delete", true),
    ];
    let mut received = Vec::new();
    for _ in expected {
        let event = live.recv().await.unwrap();
        received.push((event.kind.clone(), event.ok));
    }
    let expected: Vec<(String, bool)> = expected
        .iter()
        .map(|(k, ok)| (k.to_string(), *ok))
        .collect();
    assert_eq!(received, expected);

    // The same events are stored, in order, with increasing numbers.
    let stored = engine.events(expected.len(), None).await.unwrap();
    let kinds: Vec<(String, bool)> = stored.iter().map(|e| (e.kind.clone(), e.ok)).collect();
    assert_eq!(kinds, expected);
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        stored[3].message.contains("not enough GPUs"),
        "{}",
        stored[3].message
    );
    let after = engine.events(100, Some(stored[5].seq)).await.unwrap();
    assert_eq!(after.len(), 2);
}
