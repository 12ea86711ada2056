//! Docker down: a daemon of the test's own stops in the middle of a run of requests. Requests
//! then fail with a clear error of their own (1041, HTTP 503) and change nothing; once the
//! daemon is back the engine works by itself, and the set that ran runs again (restart policy
//! `unless-stopped`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::testkit::{self, PrivateDockerd, TEST_IMAGE};
use gpu_replica_core::{DockerRuntime, Engine, MemoryStore, PatchRequest, RunRequest, Status};

fn request(name: &str) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: 1,
        ..Default::default()
    }
}

async fn connect(daemon: &PrivateDockerd) -> DockerRuntime {
    let docker = DockerRuntime::connect_socket(&daemon.socket())
        .await
        .unwrap()
        .with_helper_image(TEST_IMAGE);
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    docker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_outage_is_a_clear_error_and_the_engine_recovers_by_itself() {
    let mut daemon = PrivateDockerd::start();
    let docker = connect(&daemon).await;
    let engine = Arc::new(Engine::new(
        Arc::new(docker),
        Arc::new(MemoryStore::new()),
        Arc::new(gpu_replica_core::StaticInventory::fake(2)),
        testkit::config(),
    ));
    engine.recover().await.unwrap();
    let up = testkit::unique_name("up");
    let down = testkit::unique_name("down");
    engine.run(request(&up)).await.unwrap();
    let before = engine.info(&up).await.unwrap();

    // Requests keep coming while the daemon stops.
    let load = {
        let engine = engine.clone();
        let up = up.clone();
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline {
                if let Err(e) = engine.exec(&up, &["true".into()], None).await {
                    codes.push(e.code());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| daemon.stop());
    let codes = load.await.unwrap();
    // While the daemon shuts down its containers, a request may find the container stopped
    // (1006, a conflict); once it is gone, every request is 1041.
    assert_eq!(codes.last(), Some(&1041), "{codes:?}");
    assert!(codes.iter().all(|c| [1041, 1006].contains(c)), "{codes:?}");

    let run = engine.run(request(&down)).await.unwrap_err();
    assert_eq!(run.code(), 1041, "{run}");
    let patch = engine
        .patch(
            &up,
            PatchRequest {
                gpu_count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(patch.code(), 1041, "{patch}");
    assert_eq!(engine.stop(&up).await.unwrap_err().code(), 1041);
    // Nothing changed: the records are as before, the refused run left nothing.
    let during = engine.info(&up).await.unwrap();
    assert_eq!(during.version, before.version);
    assert_eq!(during.replica_set.current, 1);
    assert_eq!(during.replica_set.status, Status::Running);
    assert!(during.replica_set.pending.is_none(), "{during:?}");
    assert_eq!(engine.info(&down).await.unwrap_err().code(), 1016);
    assert_eq!(engine.history(&up).await.unwrap().len(), 1);

    // Back: the engine works by itself, and the set runs again without anyone asking.
    tokio::task::block_in_place(|| daemon.resume());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match engine.exec(&up, &["true".into()], None).await {
            Ok(out) if out.exit_code == 0 => break,
            other => {
                assert!(Instant::now() < deadline, "not back: {other:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let info = engine.info(&up).await.unwrap();
    assert_eq!(info.replica_set.status, Status::Running);
    assert!(info.replica_set.pending.is_none());
    engine.run(request(&down)).await.unwrap();
    let patched = engine
        .patch(
            &up,
            PatchRequest {
                gpu_count: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.version.version, 2);
    engine.delete(&up).await.unwrap();
    engine.delete(&down).await.unwrap();
    drop(engine);
}
