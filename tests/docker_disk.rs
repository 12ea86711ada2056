//! Docker's own disk full at a patch, on a real daemon whose data root is a small file system
//! of the test's (a loop device), nearly full: the set's writable layer would not fit into its
//! snapshot, so the patch is refused before anything stops (a commit that runs out of room
//! leaves the disk full: not even the old container could start again); the old version runs
//! on with its files, the error names Docker's data root and its room (code 1063). Once there
//! is room, the same patch goes through.

use std::sync::Arc;

use gpu_replica_core::testkit::{self, sh, PrivateDockerd, QuotaFs, TEST_IMAGE};
use gpu_replica_core::{
    DockerRuntime, Engine, Error, MemoryStore, PatchRequest, RunRequest, StaticInventory, Status,
};

fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_without_room_on_dockers_disk_is_refused_before_anything_stops() {
    let fs = QuotaFs::plain(320);
    let daemon = PrivateDockerd::start_on(&fs);
    let docker = DockerRuntime::connect_socket(&daemon.socket())
        .await
        .unwrap();
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    let root = docker.data_root().await.unwrap();
    let mut config = testkit::config();
    config.disks = vec![("docker".into(), root.clone().into())];
    let running = Engine::builder(
        Arc::new(docker),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(2)),
    )
    .config(config)
    .start()
    .await
    .unwrap();
    let engine = running.engine().clone();
    let name = testkit::unique_name("full");
    engine
        .run(RunRequest {
            name: name.clone(),
            image: TEST_IMAGE.to_string(),
            gpu_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sh(&engine, &name, "echo mine > /root/keep").await.1, 0);
    // A layer of 60 MB, then the rest of the disk taken from outside but 16 MB: room to stop
    // and start a container, not to commit its layer into a snapshot.
    let (out, code) = sh(
        &engine,
        &name,
        "dd if=/dev/zero of=/root/fill bs=1M count=60 2>&1",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let filler = fs.mountpoint.join("filler");
    let _ = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", "status=none"])
        .status()
        .unwrap();
    // As much again but 24 MB: written anew, so no file system keeps the freed blocks.
    let full_mb = std::fs::metadata(&filler).unwrap().len() >> 20;
    std::fs::remove_file(&filler).unwrap();
    // The file system frees the blocks in the background (XFS's inode GC): wait for them.
    let _ = std::process::Command::new("sync").status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while free_bytes(&fs.mountpoint) < 150 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = std::process::Command::new("sync").status();
    let written = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", "status=none", "conv=fsync"])
        .arg(format!("count={}", full_mb.saturating_sub(24)))
        .status()
        .unwrap();
    assert!(written.success());
    println!(
        "{} data root: {} MB free",
        fs.kind,
        free_bytes(&fs.mountpoint) >> 20
    );

    // The patch tried twice: to two GPUs.
    let two_gpus = PatchRequest {
        gpu_count: Some(2),
        ..Default::default()
    };
    let err = engine.patch(&name, two_gpus.clone()).await.unwrap_err();
    assert!(matches!(err, Error::DockerDiskFull(_)), "{err}");
    assert_eq!(err.code(), 1063);
    let said = err.to_string();
    assert!(said.contains(&root), "{said}");
    assert!(said.contains("nothing was stopped"), "{said}");
    // Refused before anything stopped: version 1 runs on with its files and its one GPU.
    let info = engine.info(&name).await.unwrap();
    assert_eq!(info.version.version, 1);
    assert_eq!(info.replica_set.status, Status::Running, "{info:?}");
    assert_eq!(info.version.gpus.len(), 1);
    assert_eq!(sh(&engine, &name, "cat /root/keep").await.0, "mine\n");

    // Room again: the same patch goes through.
    std::fs::remove_file(&filler).unwrap();
    // The file system frees the blocks in the background (XFS's inode GC): wait for them.
    let _ = std::process::Command::new("sync").status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while free_bytes(&fs.mountpoint) < 150 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let info = engine.patch(&name, two_gpus).await.unwrap();
    assert_eq!((info.version.version, info.version.gpus.len()), (2, 2));
    assert_eq!(sh(&engine, &name, "cat /root/keep").await.0, "mine\n");
    engine.delete(&name).await.unwrap();
    drop(running);
    drop(daemon);
    drop(fs);
}
