//! GPU-time on a scripted clock, on the real Docker engine: the figures are exact across
//! patches, pauses, stops and deletes, per user and per replicaSet, for any period, and the
//! same after a restart of the engine; the HTTP route answers them.

use std::sync::Arc;

use axum::body::Body;
use gpu_replica_core::testkit::{self, TestStore, TEST_IMAGE};
use gpu_replica_core::{
    Caller, Engine, ManualClock, NewUser, PatchRequest, Role, RunRequest, UsageQuery, UsageReport,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn run(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: gpus,
        ..Default::default()
    }
}

fn gpus(count: i64) -> PatchRequest {
    PatchRequest {
        gpu_count: Some(count),
        ..Default::default()
    }
}

async fn engine_on(store: &TestStore, clock: &Arc<ManualClock>) -> Engine {
    testkit::engine(store.open().await, 4, testkit::config())
        .await
        .with_clock(clock.clone())
}

async fn report(engine: &Engine, from: Option<i64>, to: Option<i64>) -> UsageReport {
    engine
        .usage(UsageQuery {
            from,
            to,
            owner: None,
        })
        .await
        .unwrap()
}

fn seconds_of(report: &UsageReport, owner: &str) -> f64 {
    report
        .users
        .iter()
        .find(|u| u.owner == owner)
        .map_or(0.0, |u| u.gpu_seconds)
}

async fn timeline_is_counted_exactly(store: TestStore) {
    let clock = Arc::new(ManualClock::at(1000));
    let engine = engine_on(&store, &clock).await;
    for name in ["alice", "bob"] {
        engine
            .add_user(NewUser {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let alice = engine.as_caller(Caller::new("alice", Role::User));
    let bob = engine.as_caller(Caller::new("bob", Role::User));
    let a = testkit::unique_name("a");
    let b = testkit::unique_name("b");

    // t=1000 alice runs 2 GPUs, bob 1.
    alice.run(run(&a, 2)).await.unwrap();
    bob.run(run(&b, 1)).await.unwrap();
    // t=1100 alice patches to 1: the kept GPU is one claim, never two.
    clock.set(1100);
    alice.patch(&a, gpus(1)).await.unwrap();
    // t=1150..1200 paused: the GPU stays hers, and counts.
    clock.set(1150);
    alice.pause(&a).await.unwrap();
    clock.set(1200);
    alice.resume(&a).await.unwrap();
    // t=1300 stopped: nothing counts until t=1400.
    clock.set(1300);
    alice.stop(&a).await.unwrap();
    clock.set(1400);
    alice.resume(&a).await.unwrap();
    // t=1500 three GPUs, t=1600 deleted.
    clock.set(1500);
    alice.patch(&a, gpus(3)).await.unwrap();
    clock.set(1600);
    alice.delete(&a).await.unwrap();
    clock.set(1700);

    // alice: 2×100 + 1×200 + 0×100 + 1×100 + 3×100 = 800; bob: 1×700.
    let whole = report(&engine, None, None).await;
    assert_eq!(seconds_of(&whole, "alice"), 800.0, "{whole:?}");
    assert_eq!(seconds_of(&whole, "bob"), 700.0, "{whole:?}");
    let line = whole
        .replica_sets
        .iter()
        .find(|s| s.replica_set == a)
        .unwrap();
    assert_eq!((line.gpu_seconds, line.gpus_at_end), (800.0, 0));
    let line = whole
        .replica_sets
        .iter()
        .find(|s| s.replica_set == b)
        .unwrap();
    assert_eq!((line.gpu_seconds, line.gpus_at_end), (700.0, 1));
    // A period cuts the intervals: [1050, 1450) is 2×50 + 1×200 + 1×50 for alice.
    let window = report(&engine, Some(1050), Some(1450)).await;
    assert_eq!(seconds_of(&window, "alice"), 350.0, "{window:?}");
    assert_eq!(seconds_of(&window, "bob"), 400.0, "{window:?}");
    // Each user sees their own figures only; another's answer as none.
    let mine = alice.usage(UsageQuery::default()).await.unwrap();
    assert_eq!(mine.users.len(), 1);
    assert_eq!(seconds_of(&mine, "alice"), 800.0);
    let theirs = alice
        .usage(UsageQuery {
            owner: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(theirs.users.is_empty() && theirs.replica_sets.is_empty());
    // A period that ends before it starts is empty; one before 1970 starts in 1970.
    let empty = report(&engine, Some(10), Some(5)).await;
    assert!(
        empty.users.is_empty() && empty.replica_sets.is_empty(),
        "{empty:?}"
    );
    assert_eq!(
        seconds_of(&report(&engine, Some(-100), Some(1050)).await, "alice"),
        100.0
    );

    drop((alice, bob));
    // The HTTP route gives the same figures.
    let app = gpu_replica_http::router_with_token(Arc::new(engine), "t0ken".into());
    let request = axum::http::Request::get("/api/v1/usage?from=1050&to=1970-01-01T00:24:10Z")
        .header("authorization", "Bearer t0ken")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let users = reply["data"]["users"].as_array().unwrap();
    let alice_line = users.iter().find(|u| u["owner"] == "alice").unwrap();
    assert_eq!(alice_line["gpuSeconds"], 350.0, "{reply}");
    assert_eq!(reply["data"]["to"], "1970-01-01T00:24:10Z");

    // A new engine on the same store (a restart): the same figures, and bob's GPU still counts.
    clock.set(1800);
    let engine = engine_on(&store, &clock).await;
    engine.recover().await.unwrap();
    let again = report(&engine, None, Some(1700)).await;
    assert_eq!(seconds_of(&again, "alice"), 800.0);
    assert_eq!(seconds_of(&again, "bob"), 700.0);
    assert_eq!(seconds_of(&report(&engine, None, None).await, "bob"), 800.0);
    engine.delete(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_time_is_exact_on_a_scripted_timeline_on_redb() {
    timeline_is_counted_exactly(TestStore::redb()).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_time_is_exact_on_a_scripted_timeline_on_etcd() {
    timeline_is_counted_exactly(TestStore::etcd()).await;
}
