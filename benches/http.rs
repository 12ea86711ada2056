//! The HTTP layer: info and resources through the real Router, over a mock runtime and a
//! memory store holding one replicaSet with a history.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{criterion_group, criterion_main, Criterion};
use gpu_replica_core::runtime::{ImageState, MockContainerRuntime};
use gpu_replica_core::{Engine, EngineConfig, MemoryStore, RunRequest, StaticInventory};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn router(runtime: &tokio::runtime::Runtime) -> axum::Router {
    let mut mock = MockContainerRuntime::new();
    mock.expect_inspect_image().returning(|_| {
        Ok(Some(ImageState {
            id: "sha256:x".into(),
            tags: vec![],
            layers: 1,
            labels: Default::default(),
        }))
    });
    mock.expect_create_container()
        .returning(|_| Ok("id".into()));
    // The owner's network is there already.
    mock.expect_find_networks().returning(|name| {
        Ok(vec![gpu_replica_core::runtime::NetworkState {
            id: "n".into(),
            name: name.to_string(),
            ..Default::default()
        }])
    });
    mock.expect_start_container().returning(|_| Ok(()));
    mock.expect_inspect_container().returning(|_| Ok(None));
    let engine = Engine::new(
        Arc::new(mock),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(8)),
        EngineConfig::default(),
    );
    runtime.block_on(async {
        engine
            .run(RunRequest {
                name: "bench".into(),
                image: "img".into(),
                gpu_count: 2,
                env: vec!["A=1".into()],
                container_ports: vec!["22".into(), "8888".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    });
    gpu_replica_http::router(Arc::new(engine))
}

async fn get(app: &axum::Router, path: &str) -> usize {
    let request = Request::builder().uri(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn http(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = router(&runtime);
    for path in [
        "/api/v1/replicaSet/bench",
        "/api/v1/resources/gpus",
        "/api/v1/resources/ports",
        "/ping",
    ] {
        c.bench_function(&format!("router{path}"), |b| {
            b.to_async(&runtime).iter(|| get(&app, path))
        });
    }
}

criterion_group!(benches, http);
criterion_main!(benches);
