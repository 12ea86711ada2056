//! User stories of replicaSets on the real Docker engine, each on memory, redb and etcd.

use std::collections::HashSet;

use gpu_replica_core::testkit::{self, sh, TestStore, IMAGE_FILE, TEST_IMAGE};
use gpu_replica_core::{Bind, Engine, PatchRequest, RunRequest, Status};

fn request(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: gpus,
        env: vec!["USER=tester".into()],
        ..Default::default()
    }
}

async fn free_gpus(engine: &Engine) -> usize {
    engine
        .gpu_status()
        .await
        .unwrap()
        .iter()
        .filter(|g| g.holder.is_none())
        .count()
}

/// run → patch to fewer GPUs → rollback, checking GPUs, files, volume data and the host port;
/// then a new engine on the same store sees the same state.
async fn versions_carry_files_gpus_and_ports(store: TestStore) {
    let config = testkit::config();
    let engine = testkit::engine(store.open().await, 4, config.clone()).await;
    let name = testkit::unique_name("story");
    let volume = engine
        .create_volume(&testkit::unique_name("data"), "1GB")
        .await
        .unwrap();
    let mut run = request(&name, 2);
    run.container_ports = vec!["8080".into()];
    run.binds = vec![Bind {
        src: volume.version.docker_name.clone(),
        dest: "/data".into(),
    }];

    // Version 1: 2 GPUs, visible inside; the host port reaches the container.
    let v1 = engine.run(run).await.unwrap();
    assert_eq!(v1.version.container, format!("{name}-1"));
    assert_eq!(v1.version.gpus.len(), 2);
    let (visible, _) = sh(&engine, &name, "echo -n $NVIDIA_VISIBLE_DEVICES").await;
    assert_eq!(visible, v1.version.gpus.join(","));
    let (version_env, _) = sh(&engine, &name, "echo -n $CONTAINER_VERSION").await;
    assert_eq!(version_env, "1");
    let port = v1.version.ports[0].host_port;
    assert!(config.port_range.contains(port));
    sh(
        &engine,
        &name,
        "echo served > /var/www/index.html && httpd -p 8080 -h /var/www",
    )
    .await;
    assert!(testkit::http_get(port).await.contains("served"));
    assert_eq!(free_gpus(&engine).await, 2);

    // Install something, delete a file of the image, write into the volume.
    let (_, code) = sh(
        &engine,
        &name,
        &format!("echo pkg > /root/installed && rm {IMAGE_FILE} && echo kept > /data/payload"),
    )
    .await;
    assert_eq!(code, 0);

    // Version 2: 1 GPU, same files, same deletion, same volume data, same host port.
    let v2 = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v2.version.version, 2);
    assert_eq!(v2.version.gpus, v1.version.gpus[..1].to_vec());
    assert_eq!(v2.version.ports, v1.version.ports);
    let (files, _) = sh(&engine, &name, &format!("cat /root/installed /data/payload; test -e {IMAGE_FILE}; echo $?; echo $CONTAINER_VERSION")).await;
    assert_eq!(files, "pkg\nkept\n1\n2\n");
    assert_eq!(free_gpus(&engine).await, 3);
    assert!(engine
        .runtime()
        .inspect_container(&format!("{name}-1"))
        .await
        .unwrap()
        .is_none());
    sh(&engine, &name, "httpd -p 8080 -h /var/www").await;
    assert!(testkit::http_get(port).await.contains("served"));

    // Version 3 = rollback to 1: 2 GPUs and version 1's filesystem.
    sh(&engine, &name, "echo v2 > /root/v2-only").await;
    let v3 = engine.rollback(&name, 1).await.unwrap();
    assert_eq!(v3.version.version, 3);
    assert_eq!(v3.version.gpus.len(), 2);
    let (files, _) = sh(
        &engine,
        &name,
        &format!(
            "cat /root/installed; test -e /root/v2-only; echo $?; test -e {IMAGE_FILE}; echo $?"
        ),
    )
    .await;
    assert_eq!(files, "pkg\n1\n1\n");
    assert_eq!(free_gpus(&engine).await, 2);
    let history: Vec<u32> = engine
        .history(&name)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, vec![3, 2, 1]);

    // A new engine on the same store sees the same state.
    let info = engine.info(&name).await.unwrap();
    let gpus = engine.gpu_status().await.unwrap();
    let ports = engine.port_status().await.unwrap();
    drop(engine);
    let engine = testkit::engine(store.open().await, 4, config).await;
    assert_eq!(engine.info(&name).await.unwrap(), info);
    assert_eq!(engine.history(&name).await.unwrap().len(), 3);
    assert_eq!(engine.gpu_status().await.unwrap(), gpus);
    assert_eq!(engine.port_status().await.unwrap(), ports);
    assert_eq!(ports.used, vec![port]);

    // It goes on working: patch again, then delete everything.
    let v4 = engine.patch(&name, PatchRequest::default()).await.unwrap();
    assert_eq!(v4.version.version, 4);
    assert_eq!(v4.version.gpus, v3.version.gpus);
    let snapshot = engine
        .history(&name)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.version == 1)
        .and_then(|v| v.snapshot)
        .unwrap();
    engine.delete(&name).await.unwrap();
    assert_eq!(free_gpus(&engine).await, 4);
    assert!(engine.port_status().await.unwrap().used.is_empty());
    assert_eq!(engine.info(&name).await.unwrap_err().code(), 1016);
    assert!(engine
        .runtime()
        .inspect_container(&format!("{name}-4"))
        .await
        .unwrap()
        .is_none());
    assert!(engine
        .runtime()
        .inspect_image(&snapshot)
        .await
        .unwrap()
        .is_none());
    engine.delete_volume(&volume.volume.name).await.unwrap();
}

/// stop releases GPUs and ports; another set takes the GPUs; continue then fails clearly and
/// restart succeeds on other GPUs.
async fn stop_releases_and_continue_needs_the_same_gpus(store: TestStore) {
    let engine = testkit::engine(store.open().await, 4, testkit::config()).await;
    let a = testkit::unique_name("a");
    let b = testkit::unique_name("b");
    let mut run = request(&a, 2);
    run.container_ports = vec!["22".into()];
    let first = engine.run(run).await.unwrap();

    engine.pause(&a).await.unwrap();
    assert_eq!(
        engine.info(&a).await.unwrap().replica_set.status,
        Status::Paused
    );
    assert_eq!(free_gpus(&engine).await, 2);
    engine.resume(&a).await.unwrap();
    assert_eq!(sh(&engine, &a, "echo -n up").await.0, "up");

    engine.stop(&a).await.unwrap();
    assert_eq!(
        engine.info(&a).await.unwrap().replica_set.status,
        Status::Stopped
    );
    assert_eq!(free_gpus(&engine).await, 4);
    assert!(engine.port_status().await.unwrap().used.is_empty());
    assert_eq!(
        engine
            .exec(&a, &["true".to_string()], None)
            .await
            .unwrap_err()
            .code(),
        1006
    );

    let taker = engine.run(request(&b, 2)).await.unwrap();
    assert_eq!(taker.version.gpus, first.version.gpus);
    let refused = engine.resume(&a).await.unwrap_err();
    assert_eq!(refused.code(), 1019);
    assert!(refused.to_string().contains("restart"), "{refused}");

    let restarted = engine.restart(&a).await.unwrap();
    assert_eq!(restarted.version.version, 2);
    assert_eq!(restarted.replica_set.status, Status::Running);
    let mine: HashSet<_> = restarted.version.gpus.iter().collect();
    assert_eq!(mine.len(), 2);
    assert!(taker.version.gpus.iter().all(|g| !mine.contains(g)));
    // The host port was free again, so the set keeps it.
    assert_eq!(restarted.version.ports, first.version.ports);
    assert_eq!(free_gpus(&engine).await, 0);

    engine.delete(&a).await.unwrap();
    engine.delete(&b).await.unwrap();
    assert_eq!(free_gpus(&engine).await, 4);
}

/// Bad requests get their own codes and leave nothing behind.
async fn bad_requests_create_and_claim_nothing(store: TestStore) {
    let engine = testkit::engine(store.open().await, 2, testkit::config()).await;
    let name = testkit::unique_name("ok");
    engine.run(request(&name, 1)).await.unwrap();
    let other = testkit::unique_name("bad");

    let mut cases: Vec<(RunRequest, u16)> = vec![
        (request(&other, 3), 1013),
        (request(&name, 0), 1008),
        (request(&format!("{other}-x"), 0), 1003),
        (request("", 0), 1002),
        (request(&other, -1), 1012),
    ];
    let mut missing_image = request(&other, 0);
    missing_image.image = "gpu-replica-test/absent:latest".into();
    cases.push((missing_image, 1036));
    let mut empty_image = request(&other, 0);
    empty_image.image = String::new();
    cases.push((empty_image, 1001));
    let mut root_bind = request(&other, 0);
    root_bind.binds = vec![Bind {
        src: "somevolume".into(),
        dest: "/".into(),
    }];
    cases.push((root_bind, 1000));
    let mut host_bind = request(&other, 0);
    host_bind.binds = vec![Bind {
        src: "/etc".into(),
        dest: "/host".into(),
    }];
    cases.push((host_bind, 1037));
    let mut missing_volume = request(&other, 0);
    missing_volume.binds = vec![Bind {
        src: "novolume".into(),
        dest: "/data".into(),
    }];
    cases.push((missing_volume, 1033));
    let mut bad_port = request(&other, 0);
    bad_port.container_ports = vec!["ssh".into()];
    cases.push((bad_port, 1000));

    for (case, code) in cases {
        let label = format!("{case:?}");
        assert_eq!(engine.run(case).await.unwrap_err().code(), code, "{label}");
        let names: Vec<String> = engine
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.replica_set.name)
            .collect();
        assert_eq!(names, vec![name.clone()], "{label}");
        assert_eq!(free_gpus(&engine).await, 1, "{label}");
    }
    let containers = engine
        .runtime()
        .list_containers(gpu_replica_core::LABEL_REPLICA_SET)
        .await
        .unwrap();
    assert!(containers.iter().all(|c| !c.name.starts_with(&other)));

    // Patch and rollback refuse what makes no sense, and change nothing.
    let patch = |gpus| PatchRequest {
        gpu_count: Some(gpus),
        ..Default::default()
    };
    assert_eq!(
        engine.patch(&name, patch(-1)).await.unwrap_err().code(),
        1012
    );
    assert_eq!(
        engine.patch(&name, patch(1)).await.unwrap_err().code(),
        1009
    );
    assert_eq!(
        engine.patch(&name, patch(3)).await.unwrap_err().code(),
        1013
    );
    assert_eq!(
        engine.patch(&other, patch(1)).await.unwrap_err().code(),
        1016
    );
    assert_eq!(engine.rollback(&name, -1).await.unwrap_err().code(), 1020);
    assert_eq!(engine.rollback(&name, 1).await.unwrap_err().code(), 1022);
    assert_eq!(engine.rollback(&name, 9).await.unwrap_err().code(), 1021);
    let info = engine.info(&name).await.unwrap();
    assert_eq!(info.version.version, 1);
    // A refused patch does not use up a version number, nor hold a GPU.
    assert_eq!(info.replica_set.latest, 1);
    assert_eq!(free_gpus(&engine).await, 1);
    engine.delete(&name).await.unwrap();
}

macro_rules! on_every_store {
    ($story:ident) => {
        mod $story {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_memory() {
                super::$story(TestStore::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redb() {
                super::$story(TestStore::redb()).await;
            }

            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_etcd() {
                super::$story(TestStore::etcd()).await;
            }
        }
    };
}

on_every_store!(versions_carry_files_gpus_and_ports);
on_every_store!(stop_releases_and_continue_needs_the_same_gpus);
on_every_store!(bad_requests_create_and_claim_nothing);
