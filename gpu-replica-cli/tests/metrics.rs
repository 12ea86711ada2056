//! What an operator watches, from outside: `GET /metrics` scraped as Prometheus would (parsed
//! with a Prometheus text-format parser), and `gpu-replica top` redrawing until `q`.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, http_as, Server, BIN};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

fn scrape(server: &Server, token: &str) -> (u16, String, String) {
    http_as(&server.addr, Some(token), "GET", "/metrics", None)
}

fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("not a number: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_parses_and_carries_dcgm_and_our_names() {
    let docker = testkit::docker().await;
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    let dir = data_dir();
    let (token, reader) = ("metrics-admin", "metrics-only-reader");
    let reader_file = dir.join("metrics.token");
    std::fs::write(&reader_file, format!("{reader}\n")).unwrap();
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", token),
            (
                "GPU_REPLICA_METRICS_TOKEN_FILE",
                reader_file.to_str().unwrap(),
            ),
        ],
    );
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let body = body.map(|b| b.to_string());
        let (status, _, answer) = http_as(&server.addr, Some(token), method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
    };
    let name = testkit::unique_name("met");
    call(
        "POST",
        "/api/v1/replicaSet",
        Some(
            json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 2,
                    "containerPorts": ["80"]}),
        ),
    );
    call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}"),
        Some(json!({"gpuPatch": {"gpuCount": 1}})),
    );
    call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}"),
        Some(json!({"gpuPatch": {"gpuCount": 2}})),
    );
    let (status, _, _) = http_as(
        &server.addr,
        Some(token),
        "GET",
        "/api/v1/replicaSet/nope",
        None,
    );
    assert_eq!(status, 404);

    // The read-only token scrapes, and only scrapes.
    let (status, headers, text) = scrape(&server, reader);
    assert_eq!(status, 200, "{text}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("application/openmetrics-text"),
        "{headers}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let (status, _, _) = http_as(
        &server.addr,
        Some(reader),
        "GET",
        "/api/v1/replicaSet",
        None,
    );
    assert_eq!(status, 401, "the metrics token reads /metrics only");
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();

    // DCGM's names, per GPU, with DCGM's labels.
    for metric in [
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
    ] {
        let found = samples(&parsed, metric);
        assert_eq!(found.len(), 4, "{metric} for each of 4 fake GPUs:\n{text}");
        for sample in found {
            for label in ["gpu", "UUID", "modelName", "Hostname"] {
                assert!(sample.labels.get(label).is_some(), "{metric} lacks {label}");
            }
            assert_eq!(sample.labels.get("modelName"), Some("Fake GPU"));
        }
    }
    let free: f64 = samples(&parsed, "DCGM_FI_DEV_FB_FREE")
        .iter()
        .map(|s| number(&s.value))
        .sum();
    assert_eq!(free, 4.0 * 16384.0, "16 GiB free on each fake GPU, in MiB");

    // Claims by set and owner: the set holds 2 of the 4.
    let claimed = samples(&parsed, "gpu_replica_gpu_claimed");
    assert_eq!(claimed.len(), 4, "{text}");
    let held: Vec<_> = claimed.iter().filter(|s| number(&s.value) == 1.0).collect();
    assert_eq!(held.len(), 2, "{text}");
    assert!(held
        .iter()
        .all(|s| s.labels.get("set") == Some(name.as_str())
            && s.labels.get("owner") == Some("admin")));
    // Sets by status, ports.
    let running = samples(&parsed, "gpu_replica_sets")
        .into_iter()
        .find(|s| s.labels.get("status") == Some("running"))
        .expect("running sets");
    assert_eq!(number(&running.value), 1.0);
    assert_eq!(
        number(&samples(&parsed, "gpu_replica_ports_used")[0].value),
        1.0
    );
    assert!(number(&samples(&parsed, "gpu_replica_ports_free")[0].value) > 0.0);
    // Operations by kind and outcome, with their durations.
    let operations = samples(&parsed, "gpu_replica_operations_total");
    let count = |op: &str, outcome: &str| {
        operations
            .iter()
            .filter(|s| {
                s.labels.get("operation") == Some(op) && s.labels.get("outcome") == Some(outcome)
            })
            .map(|s| number(&s.value))
            .sum::<f64>()
    };
    assert_eq!(count("run", "ok"), 1.0, "{text}");
    assert_eq!(count("patch", "ok"), 2.0, "{text}");
    assert!(
        text.contains(
            "gpu_replica_operation_duration_seconds_count{operation=\"patch\",outcome=\"ok\",node=\"\"} 2"
        ),
        "two patches timed: {text}"
    );
    // HTTP requests by route pattern (never the name) and status, with their latency.
    let requests = samples(&parsed, "gpu_replica_http_requests_total");
    let by = |route: &str, status: &str| {
        requests
            .iter()
            .filter(|s| {
                s.labels.get("route") == Some(route) && s.labels.get("status") == Some(status)
            })
            .map(|s| number(&s.value))
            .sum::<f64>()
    };
    assert_eq!(by("/api/v1/replicaSet/:name", "200"), 2.0, "{text}");
    assert_eq!(by("/api/v1/replicaSet/:name", "404"), 1.0, "{text}");
    assert!(!text.contains(&format!("route=\"/api/v1/replicaSet/{name}\"")));
    assert!(text.contains("gpu_replica_http_request_duration_seconds_bucket"));

    // A single host has no routes for other nodes.
    let (status, _, _) = http_as(
        &server.addr,
        Some(token),
        "PUT",
        "/internal/v1/migrations/x/image",
        Some("tar"),
    );
    assert_eq!(status, 404);
    // A user may not scrape (the metrics name everyone's sets).
    let (_, _, user) = http_as(
        &server.addr,
        Some(token),
        "POST",
        "/api/v1/users",
        Some(&json!({"name": format!("{name}u")}).to_string()),
    );
    let user_token = serde_json::from_str::<serde_json::Value>(&user).unwrap()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, answer) = scrape(&server, &user_token);
    assert_eq!(status, 403, "{answer}");

    // `top` draws the GPUs and the set, redraws, and quits on q.
    let mut top = Command::new(BIN)
        .args([
            "--server",
            &format!("http://{}", server.addr),
            "--token",
            token,
        ])
        .args(["top", "--interval", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = top.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    std::thread::sleep(Duration::from_millis(2500));
    top.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = top.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "top did not quit on q"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let seen = seen.join().unwrap();
    assert!(
        seen.matches("gpu-replica top").count() >= 2,
        "redrawn: {seen}"
    );
    assert!(
        seen.contains(&name) && seen.contains("Fake GPU") && seen.contains("HELD BY"),
        "{seen}"
    );

    call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
    call("DELETE", &format!("/api/v1/users/{name}u"), None);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exports_every_counter_at_zero_from_the_first_scrape() {
    testkit::docker().await;
    let dir = data_dir();
    let token = "fresh-admin";
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", token)]);
    let (status, _, text) = scrape(&server, token);
    assert_eq!(status, 200, "{text}");
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();

    // Every operation kind, both outcomes, at zero, with its duration histogram.
    let operations = samples(&parsed, "gpu_replica_operations_total");
    for operation in gpu_replica_core::metrics::OPERATIONS {
        for outcome in ["ok", "failed"] {
            let found: Vec<_> = operations
                .iter()
                .filter(|s| {
                    s.labels.get("operation") == Some(operation)
                        && s.labels.get("outcome") == Some(outcome)
                })
                .collect();
            assert_eq!(found.len(), 1, "{operation} {outcome}:\n{text}");
            assert_eq!(number(&found[0].value), 0.0);
            assert!(
                text.contains(&format!(
                    "gpu_replica_operation_duration_seconds_count{{operation=\"{operation}\",outcome=\"{outcome}\",node=\"\"}} 0"
                )),
                "{operation} {outcome} timed at zero"
            );
        }
    }
    assert_eq!(
        operations.len(),
        2 * gpu_replica_core::metrics::OPERATIONS.len()
    );
    // What recovery and the reconciler do, each action at zero until it happens (a fresh
    // data dir has nothing to recover).
    for (metric, actions) in [
        (
            "gpu_replica_recovery_actions_total",
            gpu_replica_core::metrics::RECOVERY_ACTIONS,
        ),
        (
            "gpu_replica_reconcile_actions_total",
            gpu_replica_core::metrics::RECONCILE_ACTIONS,
        ),
    ] {
        let found = samples(&parsed, metric);
        assert_eq!(found.len(), actions.len(), "{metric}:\n{text}");
        for action in actions {
            let sample = found
                .iter()
                .find(|s| s.labels.get("action") == Some(action))
                .unwrap_or_else(|| panic!("{metric} {action}:\n{text}"));
            assert_eq!(number(&sample.value), 0.0, "{metric} {action}");
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
