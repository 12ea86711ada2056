//! User stories of versioned volumes, and of long version chains, on the real Docker engine.

use gpu_replica_core::testkit::{self, sh, TestStore, IMAGE_FILE, TEST_IMAGE};
use gpu_replica_core::{Bind, EngineConfig, PatchRequest, RunRequest};

fn request(name: &str, binds: Vec<Bind>) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: 1,
        binds,
        container_ports: vec!["22".into()],
        ..Default::default()
    }
}

async fn a_resize_copies_the_data_and_moves_its_users(store: TestStore) {
    let engine = testkit::engine(store.open().await, 2, testkit::config()).await;
    let bar = testkit::unique_name("bar");
    let created = engine.create_volume(&bar, "100MB").await.unwrap();
    assert_eq!(created.version.docker_name, format!("{bar}-1"));
    assert_eq!(
        engine.create_volume(&bar, "1GB").await.unwrap_err().code(),
        1026
    );

    // A replicaSet writes 3 MB into it.
    let user = testkit::unique_name("user");
    let bind = Bind {
        src: format!("{bar}-1"),
        dest: "/data".into(),
    };
    let v1 = engine.run(request(&user, vec![bind])).await.unwrap();
    let (sum, code) = sh(&engine, &user, "dd if=/dev/urandom of=/data/blob bs=1024 count=3072 2>/dev/null; echo x > /root/rootfs; sha256sum /data/blob").await;
    assert_eq!(code, 0);
    assert_eq!(engine.delete_volume(&bar).await.unwrap_err().code(), 1025);

    // Grow: bar-2 holds the data, bar-1 is gone, the user runs on bar-2 with its files.
    let grown = engine.resize_volume(&bar, "200MB").await.unwrap();
    assert_eq!(grown.version.docker_name, format!("{bar}-2"));
    assert_eq!(grown.version.size, "200MB");
    assert!(engine
        .runtime()
        .inspect_volume(&format!("{bar}-1"))
        .await
        .unwrap()
        .is_none());
    let moved = engine.info(&user).await.unwrap();
    assert_eq!(moved.version.version, 2);
    assert_eq!(moved.version.spec.binds[0].src, format!("{bar}-2"));
    assert_eq!(moved.version.gpus, v1.version.gpus);
    assert_eq!(moved.version.ports, v1.version.ports);
    let (after, _) = sh(&engine, &user, "sha256sum /data/blob").await;
    assert_eq!(after, sum);
    assert_eq!(sh(&engine, &user, "cat /root/rootfs").await.0, "x\n");

    // Shrinking below what it holds, or to the same size, is refused and changes nothing.
    assert_eq!(
        engine.resize_volume(&bar, "1MB").await.unwrap_err().code(),
        1030
    );
    assert_eq!(
        engine
            .resize_volume(&bar, "200MB")
            .await
            .unwrap_err()
            .code(),
        1028
    );
    assert_eq!(
        engine
            .resize_volume(&bar, "200XB")
            .await
            .unwrap_err()
            .code(),
        1029
    );
    assert_eq!(engine.volume_info(&bar).await.unwrap().version.version, 2);

    // Shrinking to what still fits works.
    let shrunk = engine.resize_volume(&bar, "10MB").await.unwrap();
    assert_eq!(shrunk.version.docker_name, format!("{bar}-3"));
    assert_eq!(sh(&engine, &user, "sha256sum /data/blob").await.0, sum);
    let history: Vec<u32> = engine
        .volume_history(&bar)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, vec![3, 2, 1]);

    // A stopped user is moved too, and stays stopped.
    engine.stop(&user).await.unwrap();
    engine.resize_volume(&bar, "20MB").await.unwrap();
    let stopped = engine.info(&user).await.unwrap();
    assert_eq!(
        stopped.replica_set.status,
        gpu_replica_core::Status::Stopped
    );
    assert_eq!(stopped.version.spec.binds[0].src, format!("{bar}-4"));
    engine.resume(&user).await.unwrap();
    assert_eq!(sh(&engine, &user, "sha256sum /data/blob").await.0, sum);

    // A rollback to version 1 (recorded with bar-1, long gone) brings back that filesystem
    // with the volume as it is now: bar-4 and its data, never an empty bar-1 made by Docker.
    let rolled = engine.rollback(&user, 1).await.unwrap();
    assert_eq!(rolled.version.spec.binds[0].src, format!("{bar}-4"));
    assert_eq!(sh(&engine, &user, "sha256sum /data/blob").await.0, sum);
    // So does a clone of version 1.
    let twin = testkit::unique_name("twin");
    let cloned = engine
        .clone_set(gpu_replica_core::CloneRequest {
            source: user.clone(),
            name: twin.clone(),
            version: Some(1),
            gpu_count: Some(0),
            resources: None,
        })
        .await
        .unwrap();
    assert_eq!(cloned.version.spec.binds[0].src, format!("{bar}-4"));
    assert_eq!(sh(&engine, &twin, "sha256sum /data/blob").await.0, sum);
    assert!(engine
        .runtime()
        .inspect_volume(&format!("{bar}-1"))
        .await
        .unwrap()
        .is_none());
    engine.delete(&twin).await.unwrap();

    engine.delete(&user).await.unwrap();
    engine.delete_volume(&bar).await.unwrap();
    assert!(engine
        .runtime()
        .inspect_volume(&format!("{bar}-4"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(engine.volume_info(&bar).await.unwrap_err().code(), 1033);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_copies_the_data_and_moves_its_users_on_memory() {
    a_resize_copies_the_data_and_moves_its_users(TestStore::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_copies_the_data_and_moves_its_users_on_redb() {
    a_resize_copies_the_data_and_moves_its_users(TestStore::redb()).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_copies_the_data_and_moves_its_users_on_etcd() {
    a_resize_copies_the_data_and_moves_its_users(TestStore::etcd()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_requests_are_checked() {
    let engine = testkit::engine(TestStore::memory().open().await, 0, testkit::config()).await;
    assert_eq!(
        engine.create_volume("", "1GB").await.unwrap_err().code(),
        1024
    );
    assert_eq!(
        engine.create_volume("a-b", "1GB").await.unwrap_err().code(),
        1031
    );
    assert_eq!(
        engine
            .create_volume("/abs", "1GB")
            .await
            .unwrap_err()
            .code(),
        1032
    );
    assert_eq!(
        engine
            .create_volume("fine", "1GiB")
            .await
            .unwrap_err()
            .code(),
        1029
    );
    assert_eq!(
        engine.volume_info("nothing").await.unwrap_err().code(),
        1033
    );
    assert_eq!(
        engine
            .resize_volume("nothing", "1GB")
            .await
            .unwrap_err()
            .code(),
        1033
    );
}

/// A long chain of versions is flattened before Docker's layer limit, keeping files, deletions
/// and the image config; old snapshots beyond the configured count are pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_chains_are_flattened_and_old_snapshots_pruned() {
    let config = EngineConfig {
        max_layers: 3,
        keep_snapshots: 2,
        ..testkit::config()
    };
    let engine = testkit::engine(TestStore::memory().open().await, 1, config).await;
    let name = testkit::unique_name("chain");
    engine.run(request(&name, vec![])).await.unwrap();
    sh(&engine, &name, &format!("rm {IMAGE_FILE}")).await;
    let mut depths = Vec::new();
    for round in 1..=4 {
        sh(
            &engine,
            &name,
            &format!("echo {round} > /root/round{round}"),
        )
        .await;
        let info = engine.patch(&name, PatchRequest::default()).await.unwrap();
        let image = engine
            .runtime()
            .inspect_image(&info.version.image)
            .await
            .unwrap()
            .unwrap();
        depths.push(image.layers);
    }
    // 1 layer image → snapshots of 2 and 3 layers, then flattened to 1, then 2 again.
    assert_eq!(depths, vec![2, 3, 1, 2]);
    let (files, _) = sh(
        &engine,
        &name,
        &format!("cat /root/round1 /root/round4; test -e {IMAGE_FILE}; echo $?; echo $PATH"),
    )
    .await;
    assert_eq!(files, "1\n4\n1\n/bin\n");

    // Only the newest 2 snapshots remain (versions 3 and 4); version 1 cannot come back.
    let history = engine.history(&name).await.unwrap();
    let kept: Vec<u32> = history
        .iter()
        .filter(|v| v.snapshot.is_some())
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, vec![4, 3]);
    let pruned = engine.rollback(&name, 1).await.unwrap_err();
    assert_eq!(pruned.code(), 1021);
    assert!(pruned.to_string().contains("pruned"), "{pruned}");
    let back = engine.rollback(&name, 3).await.unwrap();
    assert_eq!(back.version.version, 6);
    let (files, _) = sh(
        &engine,
        &name,
        "cat /root/round3; test -e /root/round4; echo $?",
    )
    .await;
    assert_eq!(files, "3\n1\n");
    engine.delete(&name).await.unwrap();
    let leftovers = engine
        .runtime()
        .list_images(gpu_replica_core::LABEL_REPLICA_SET)
        .await
        .unwrap();
    assert!(
        leftovers
            .iter()
            .all(|i| i.labels.get(gpu_replica_core::LABEL_REPLICA_SET) != Some(&name)),
        "{leftovers:?}"
    );
}
