//! Dependencies down: etcd stops in the middle of a run of requests. Requests then fail with a
//! clear error of their own (1041, HTTP 503), leave nothing behind, and work again by
//! themselves once etcd is back.
#![cfg(feature = "etcd")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::testkit::{self, EtcdProcess, TEST_IMAGE};
use gpu_replica_core::{EtcdStore, PatchRequest, RunRequest};

fn request(name: &str) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: 1,
        container_ports: vec!["22".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_is_a_clear_error_and_the_engine_recovers_by_itself() {
    let mut etcd = EtcdProcess::start();
    let store = EtcdStore::connect(&[etcd.endpoint()], "outage/")
        .await
        .unwrap();
    let engine = testkit::engine(Arc::new(store), 2, testkit::config()).await;
    let up = testkit::unique_name("up");
    let down = testkit::unique_name("down");
    engine.run(request(&up)).await.unwrap();

    etcd.stop();
    let started = Instant::now();
    let info = engine.info(&up).await.unwrap_err();
    assert_eq!(info.code(), 1041, "{info}");
    assert!(info.to_string().contains("etcd"), "{info}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the error took {:?}",
        started.elapsed()
    );
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
    // Nothing was created for the refused run, and the running set was not touched.
    let runtime = engine.runtime();
    assert!(runtime
        .inspect_container(&format!("{down}-1"))
        .await
        .unwrap()
        .is_none());
    assert!(
        runtime
            .inspect_container(&format!("{up}-1"))
            .await
            .unwrap()
            .unwrap()
            .running
    );

    etcd.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        match engine.info(&up).await {
            Ok(info) => break info,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), 1041, "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd is back but the engine is not: {e}"),
        }
    };
    assert_eq!(info.version.version, 1);
    assert!(info.replica_set.pending.is_none());
    engine.run(request(&down)).await.unwrap();
    let patched = engine
        .patch(
            &up,
            PatchRequest {
                gpu_count: Some(2),
                ..Default::default()
            },
        )
        .await;
    // 2 GPUs, one held by `down`: refused for lack of GPUs, not for the outage.
    assert_eq!(patched.unwrap_err().code(), 1013);
    engine.delete(&up).await.unwrap();
    engine.delete(&down).await.unwrap();
}
