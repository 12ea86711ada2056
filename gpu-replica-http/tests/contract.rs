//! The router against the contract, over a mock runtime: every contract route is served and
//! documented, and shapes and codes are the contract's.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gpu_replica_core::runtime::MockContainerRuntime;
use gpu_replica_core::{Engine, EngineConfig, MemoryStore, StaticInventory};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Every route of ../shared/contract/gpu-docker-api.openapi.json.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/replicaSet"),
    ("post", "/api/v1/replicaSet/{name}/commit"),
    ("patch", "/api/v1/replicaSet/{name}/rollback"),
    ("patch", "/api/v1/replicaSet/{name}"),
    ("delete", "/api/v1/replicaSet/{name}"),
    ("get", "/api/v1/replicaSet/{name}"),
    ("patch", "/api/v1/replicaSet/{name}/stop"),
    ("patch", "/api/v1/replicaSet/{name}/pause"),
    ("patch", "/api/v1/replicaSet/{name}/continue"),
    ("patch", "/api/v1/replicaSet/{name}/restart"),
    ("post", "/api/v1/replicaSet/{name}/execute"),
    ("get", "/api/v1/replicaSet/{name}/history"),
    ("post", "/api/v1/volumes"),
    ("delete", "/api/v1/volumes/{name}"),
    ("get", "/api/v1/volumes/{name}"),
    ("patch", "/api/v1/volumes/{name}/size"),
    ("get", "/api/v1/resources/gpus"),
    ("get", "/api/v1/resources/ports"),
    ("get", "/api/v1/volumes/{name}/history"),
];

fn router(runtime: MockContainerRuntime) -> axum::Router {
    router_with(runtime, EngineConfig::default())
}

fn router_with(runtime: MockContainerRuntime, config: EngineConfig) -> axum::Router {
    let engine = Engine::new(
        Arc::new(runtime),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(2)),
        config,
    );
    gpu_replica_http::router(Arc::new(engine))
}

async fn call(app: &axum::Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{method} {path}: not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

#[tokio::test]
async fn every_contract_route_is_served_and_documented() {
    let app = router(MockContainerRuntime::new());
    let (_, doc) = call(&app, "GET", "/openapi.json", "").await;
    for (method, path) in CONTRACT {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
        let concrete = path.replace("{name}", "nobody");
        let (status, reply) = call(&app, &method.to_uppercase(), &concrete, "{}").await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(reply["code"].is_number(), "{method} {path}: {reply}");
    }
    let description = doc["info"]["description"].as_str().unwrap();
    for code in 1000..=1045 {
        assert!(
            description.contains(&code.to_string()),
            "code {code} undocumented"
        );
    }
}

#[tokio::test]
async fn resources_answer_in_the_contract_shapes() {
    let app = router(MockContainerRuntime::new());
    let (status, gpus) = call(&app, "GET", "/api/v1/resources/gpus", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gpus["code"], 200);
    assert_eq!(gpus["msg"], "Success");
    assert_eq!(gpus["data"]["gpus"].as_object().unwrap().len(), 2);
    assert!(gpus["data"]["gpus"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| *v == json!(0)));
    let (_, detail) = call(&app, "GET", "/api/v1/resources/gpus?detail=true", "").await;
    assert_eq!(detail["data"]["gpus"][1]["index"], 1);
    let (_, ports) = call(&app, "GET", "/api/v1/resources/ports", "").await;
    assert_eq!(
        ports["data"]["ports"],
        json!({"StartPort": 40000, "EndPort": 65535, "AvailableCount": 25536, "UsedPortSet": {}})
    );
    let (status, pong) = call(&app, "GET", "/ping", "").await;
    assert_eq!(
        (status, &pong["data"]["ping"]),
        (StatusCode::OK, &json!("pong"))
    );
}

#[tokio::test]
async fn bad_bodies_get_code_1000_in_the_envelope() {
    let app = router(MockContainerRuntime::new());
    for body in ["{", "[]", r#"{"gpuCount": true}"#, r#"{"binds": "x"}"#] {
        let (status, reply) = call(&app, "POST", "/api/v1/replicaSet", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply["code"], 1000, "{body}");
        assert_eq!(reply["data"], Value::Null);
    }
    let big = format!(
        r#"{{"env": ["{}"]}}"#,
        "x".repeat(gpu_replica_http::BODY_LIMIT)
    );
    let (status, reply) = call(&app, "POST", "/api/v1/replicaSet", &big).await;
    assert_eq!(
        (status, reply["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000))
    );
}

#[tokio::test]
async fn a_docker_failure_on_run_is_1004_and_releases_the_gpus() {
    let mut runtime = MockContainerRuntime::new();
    runtime.expect_inspect_image().returning(|_| {
        Ok(Some(gpu_replica_core::runtime::ImageState {
            id: "sha256:x".into(),
            tags: vec![],
            layers: 1,
            labels: Default::default(),
        }))
    });
    runtime.expect_create_container().returning(|_| {
        Err(gpu_replica_core::Error::Docker(
            "no space left on device".into(),
        ))
    });
    runtime.expect_remove_container().returning(|_| Ok(()));
    // The owner's network is there; it goes again with the failed run.
    runtime.expect_find_networks().returning(|name| {
        Ok(vec![gpu_replica_core::runtime::NetworkState {
            id: "n1".into(),
            name: name.to_string(),
            ..Default::default()
        }])
    });
    runtime.expect_list_containers().returning(|_| Ok(vec![]));
    runtime
        .expect_remove_network()
        .times(1)
        .returning(|_| Ok(true));
    let app = router(runtime);
    let run = r#"{"imageName": "img", "replicaSetName": "foo", "gpuCount": 2}"#;
    let (status, reply) = call(&app, "POST", "/api/v1/replicaSet", run).await;
    assert_eq!(
        (status, reply["code"].as_i64()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(1004))
    );
    assert!(reply["msg"].as_str().unwrap().contains("no space left"));
    let (_, gpus) = call(&app, "GET", "/api/v1/resources/gpus", "").await;
    assert!(gpus["data"]["gpus"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| *v == json!(0)));
    let (status, _) = call(&app, "GET", "/api/v1/replicaSet/foo", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_a_token_every_route_but_ping_needs_it() {
    let engine = Engine::new(
        Arc::new(MockContainerRuntime::new()),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(1)),
        EngineConfig::default(),
    );
    let app = gpu_replica_http::router_with_token(Arc::new(engine), "s3cret".into());
    // Each case from an address of its own: failures are limited per address.
    let send_from = |client: u8, auth: Option<&str>, path: &str| {
        let address = std::net::SocketAddr::from(([127, 0, 0, client], 40000));
        let mut request = Request::builder()
            .uri(path)
            .extension(axum::extract::ConnectInfo(address));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        app.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    let send = |auth: Option<&str>, path: &str| send_from(1, auth, path);
    assert_eq!(send(None, "/ping").await.unwrap().status(), StatusCode::OK);
    for (client, auth) in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
    ]
    .into_iter()
    .enumerate()
    {
        for path in ["/api/v1/resources/gpus", "/openapi.json", "/api/v1/nothing"] {
            let response = send_from(10 + client as u8, auth, path).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{auth:?} {path}"
            );
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["code"], 1042);
        }
    }
    let response = send(Some("Bearer s3cret"), "/api/v1/resources/gpus")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Past a burst of failures an address is told to wait, even with the right token; others
    // are not.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            send_from(2, Some("Bearer wrong"), "/openapi.json")
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(statuses[11], StatusCode::TOO_MANY_REQUESTS);
    let limited = send_from(2, Some("Bearer s3cret"), "/openapi.json")
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "1");
    let other = send_from(3, Some("Bearer s3cret"), "/openapi.json")
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_instance_requests_get_their_codes_before_anything_is_touched() {
    let config = EngineConfig {
        resources: gpu_replica_core::ResourcePolicy {
            per_gpu: gpu_replica_core::Limits {
                millicpus: Some(2000),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    // The mock has no expectations: any Docker call would panic.
    let app = router_with(MockContainerRuntime::new(), config);
    let run = |resources: Value| {
        json!({"imageName": "img", "replicaSetName": "foo", "gpuCount": 1, "resources": resources})
            .to_string()
    };
    let cases = [
        ("POST", "/api/v1/replicaSet", run(json!({"cpus": 4})), 1043),
        ("POST", "/api/v1/replicaSet", run(json!({"cpus": -1})), 1000),
        (
            "POST",
            "/api/v1/replicaSet",
            run(json!({"memory": "1XB"})),
            1029,
        ),
        (
            "POST",
            "/api/v1/replicaSet",
            run(json!({"memory": "1KB"})),
            1000,
        ),
        (
            "PUT",
            "/api/v1/replicaSet/foo/timers",
            json!({"idleStop": "soon"}).to_string(),
            1000,
        ),
        (
            "PUT",
            "/api/v1/replicaSet/foo/timers",
            json!({"stopAt": "tomorrow"}).to_string(),
            1000,
        ),
        (
            "PUT",
            "/api/v1/replicaSet/foo/timers",
            json!({"idleStop": "30m"}).to_string(),
            1016,
        ),
        ("GET", "/api/v1/replicaSet/foo/timers", String::new(), 1016),
        (
            "POST",
            "/api/v1/replicaSet/foo/clone",
            json!({"name": "bar", "version": -1}).to_string(),
            1020,
        ),
        (
            "POST",
            "/api/v1/replicaSet/foo/clone",
            json!({"name": "b-r"}).to_string(),
            1003,
        ),
        (
            "POST",
            "/api/v1/replicaSet/foo/clone",
            json!({"name": "bar"}).to_string(),
            1016,
        ),
        (
            "GET",
            "/api/v1/replicaSet/foo/logs?tail=x",
            String::new(),
            1000,
        ),
        ("GET", "/api/v1/replicaSet/foo/logs", String::new(), 1016),
        ("GET", "/api/v1/replicaSet/foo/stats", String::new(), 1016),
        ("GET", "/api/v1/events?replay=many", String::new(), 1000),
    ];
    for (method, path, body, code) in cases {
        let (status, reply) = call(&app, method, path, &body).await;
        assert_eq!(reply["code"], code, "{method} {path} {body}: {reply}");
        assert!(status.is_client_error(), "{method} {path}: {status}");
    }
}

#[tokio::test]
async fn events_replay_as_server_sent_events() {
    let app = router(MockContainerRuntime::new());
    // Two failed runs are two events.
    for name in ["a-b", "c-d"] {
        let body = json!({"imageName": "img", "replicaSetName": name}).to_string();
        call(&app, "POST", "/api/v1/replicaSet", &body).await;
    }
    let request = Request::builder()
        .uri("/api/v1/events?replay=5&follow=false")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["kind"], "run");
    assert_eq!(events[0]["target"], "a-b");
    assert_eq!(events[0]["ok"], false);
    assert!(
        text.contains(&format!("id: {}", events[1]["seq"])),
        "{text}"
    );

    // Resuming after the first gives only the second.
    let request = Request::builder()
        .uri("/api/v1/events?follow=false")
        .header("last-event-id", events[0]["seq"].to_string())
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("data: ").count(), 1, "{text}");
    assert!(text.contains("c-d"), "{text}");
}
