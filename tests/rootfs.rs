//! Bounded root filesystems on real Docker daemons: enforced by the storage driver where it can
//! (a private daemon whose data root is a size-enforcing file system the test makes on a loop
//! device), measured and held at patch and commit on the host's daemon, which cannot.

use std::sync::Arc;
use std::time::Duration;

use gpu_replica_core::testkit::{self, sh, PrivateDockerd, QuotaFs, TEST_IMAGE};
use gpu_replica_core::{
    DockerRuntime, Engine, EngineConfig, MemoryStore, PatchRequest, RootfsPolicy, RunRequest,
    StaticInventory,
};

fn request(name: &str) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: 0,
        ..Default::default()
    }
}

fn config(size: u64) -> EngineConfig {
    EngineConfig {
        rootfs: RootfsPolicy {
            size: Some(size),
            measure_interval: Duration::from_secs(3600),
        },
        ..testkit::config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_size_fails_inside_and_the_set_runs_on() {
    let fs = QuotaFs::make(1024);
    if let Some(why) = &fs.xfs_refused {
        // Said once in the output: which file system enforced the size here, and why not XFS.
        println!(
            "xfs with pquota unavailable ({why}); enforcing on {}",
            fs.kind
        );
    }
    let daemon = PrivateDockerd::start_on(&fs);
    let docker = DockerRuntime::connect_socket(&daemon.socket())
        .await
        .unwrap();
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    let running = Engine::builder(
        Arc::new(docker),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(1)),
    )
    .config(config(30 << 20))
    .start()
    .await
    .unwrap();
    let engine = running.engine().clone();
    let support = engine.rootfs_support().unwrap().clone();
    assert!(support.enforced, "{support:?}");
    assert_eq!(support.driver, fs.driver());
    let name = testkit::unique_name("bounded");
    engine.run(request(&name)).await.unwrap();
    // 60 MB asked for, 30 MB allowed: the write fails inside the container.
    let (out, code) = sh(
        &engine,
        &name,
        "dd if=/dev/zero of=/root/fill bs=1M count=60 2>&1; echo dd=$?",
    )
    .await;
    assert!(
        out.contains("quota exceeded") || out.contains("No space"),
        "{out}"
    );
    assert!(out.contains("dd=1") && code == 0, "{out}");
    let (size, _) = sh(&engine, &name, "du -m /root/fill | cut -f1").await;
    let written: u64 = size.trim().parse().unwrap();
    assert!(written <= 31, "{written} MB written past a 30 MB limit");
    // The set runs on, and the measurement shows the layer within its limit.
    assert_eq!(sh(&engine, &name, "echo alive").await.0, "alive\n");
    engine.measure_rootfs().await.unwrap();
    let usage = engine.info(&name).await.unwrap().rootfs.unwrap();
    assert!(usage.enforced && !usage.over(), "{usage:?}");
    assert!(
        usage.bytes >= 20 << 20 && usage.bytes <= 32 << 20,
        "{usage:?}"
    );
    // An enforced limit refuses nothing: a patch carries the layer into a snapshot.
    engine.patch(&name, PatchRequest::default()).await.unwrap();
    engine.delete(&name).await.unwrap();
    engine.close();
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_unenforced_size_patch_and_commit_wait_and_nothing_is_lost() {
    testkit::docker().await;
    let docker = testkit::docker().await;
    let running = Engine::builder(
        Arc::new(docker),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(1)),
    )
    .config(config(4 << 20))
    .start()
    .await
    .unwrap();
    let engine = running.engine().clone();
    let support = engine.rootfs_support().unwrap().clone();
    assert!(!support.enforced, "{support:?}");
    assert!(support.reason.is_some(), "{support:?}");
    let name = testkit::unique_name("soft");
    engine.run(request(&name)).await.unwrap();
    engine.measure_rootfs().await.unwrap();
    assert!(!engine.info(&name).await.unwrap().rootfs.unwrap().over());
    let (_, code) = sh(
        &engine,
        &name,
        "dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null; sync",
    )
    .await;
    assert_eq!(code, 0);
    let told = engine.measure_rootfs().await.unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains(&name), "{told:?}");
    let usage = engine.info(&name).await.unwrap().rootfs.unwrap();
    assert!(usage.over() && usage.bytes >= 8 << 20, "{usage:?}");
    // Told once, not every pass.
    assert!(engine.measure_rootfs().await.unwrap().is_empty());
    let events = engine.events(100, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rootfs" && e.target == name && !e.ok),
        "{events:?}"
    );
    // Patch, rollback-free commit and clone of the current version wait; nothing changed.
    let err = engine
        .patch(&name, PatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1059, "{err}");
    let err = engine
        .commit_image(&name, "gpu-replica-test/soft:over")
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1059, "{err}");
    let info = engine.info(&name).await.unwrap();
    assert_eq!(info.replica_set.current, 1);
    assert_eq!(sh(&engine, &name, "echo alive").await.0, "alive\n");
    // Files removed, measured again: the patch goes through, the files kept are kept.
    sh(&engine, &name, "rm /root/big; echo kept > /root/small").await;
    assert!(engine.measure_rootfs().await.unwrap().is_empty());
    assert!(!engine.info(&name).await.unwrap().rootfs.unwrap().over());
    engine.patch(&name, PatchRequest::default()).await.unwrap();
    assert_eq!(sh(&engine, &name, "cat /root/small").await.0, "kept\n");
    engine.delete(&name).await.unwrap();
    engine.close();
    drop(running);
}
