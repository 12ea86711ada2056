//! The rental-platform features end to end: the real server binary with resources per GPU and
//! a fast timer interval, driven through the CLI and HTTP on the real Docker engine.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{data_dir, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::Value;

const MB: u64 = 1024 * 1024;

/// Opens `GET path` and sends every chunk read to the returned channel until the server
/// closes the connection (then the channel closes).
fn stream(addr: &str, path: &str) -> mpsc::Receiver<String> {
    let mut socket = TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.read(&mut buffer) {
            if n == 0
                || sender
                    .send(String::from_utf8_lossy(&buffer[..n]).into())
                    .is_err()
            {
                return;
            }
        }
    });
    receiver
}

/// Reads from `chunks` until `found` says the text so far is enough, or `within` runs out.
fn read_until(
    chunks: &mpsc::Receiver<String>,
    within: Duration,
    found: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut text = String::new();
    while !found(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => text.push_str(&chunk),
            Err(_) => panic!("not found within {within:?}; read so far:\n{text}"),
        }
    }
    text
}

fn fails_with(out: &std::process::Output, code: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got success");
    assert!(stderr.contains(code), "expected code {code}: {stderr}");
}

#[test]
fn an_instance_gets_its_share_is_watched_cloned_and_stopped_by_its_timers() {
    let dir = data_dir();
    let mut server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_CPUS_PER_GPU", "1"),
            ("GPU_REPLICA_MEMORY_PER_GPU", "256MB"),
            ("GPU_REPLICA_SHM_PER_GPU", "64MB"),
            ("GPU_REPLICA_CARDLESS_CPUS", "0.5"),
            ("GPU_REPLICA_TIMER_INTERVAL", "1s"),
        ],
    );
    let events = stream(&server.addr, "/api/v1/events?replay=0");
    let name = testkit::unique_name("inst");
    let clone = testkit::unique_name("copy");

    // Run with less CPU than the share; memory and shm get the share.
    let out = server.cli(&[
        "run",
        &name,
        "-i",
        TEST_IMAGE,
        "-g",
        "1",
        "--cpus",
        "0.5",
        "--",
        "sh",
        "-c",
        "echo first; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = server.cli_json(&["info", &name]);
    assert_eq!(info["info"]["resources"]["cpus"], 0.5);
    assert_eq!(info["info"]["resources"]["memory"], 256 * MB);
    assert_eq!(info["info"]["resources"]["shmSize"], 64 * MB);
    assert_eq!(info["info"]["hostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(info["info"]["hostConfig"]["Init"], true);
    assert_eq!(info["status"], "running");

    // More than the share: refused with its own code, nothing created.
    let other = testkit::unique_name("greedy");
    fails_with(
        &server.cli(&[
            "run", &other, "-i", TEST_IMAGE, "-g", "1", "--memory", "1GB",
        ]),
        "1043",
    );
    fails_with(&server.cli(&["info", &other]), "1016");

    // Logs: the whole log, its tail, and a followed stream over HTTP.
    std::thread::sleep(Duration::from_millis(600));
    let out = server.cli(&["logs", &name]);
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.starts_with("first"), "{log}");
    let out = server.cli(&["logs", &name, "-n", "1"]);
    let tail = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let follow = stream(
        &server.addr,
        &format!("/api/v1/replicaSet/{name}/logs?follow=true&tail=0"),
    );
    read_until(&follow, Duration::from_secs(10), |t| {
        t.matches("tick").count() >= 3
    });
    fails_with(&server.cli(&["logs", "no_such_set"]), "1016");

    // Stats: the memory limit is the share; the GPU is listed with its utilization.
    let stats = server.cli_json(&["stats", &name]);
    assert_eq!(stats["memoryLimit"], 256 * MB);
    assert_eq!(stats["gpus"].as_array().unwrap().len(), 1);
    assert_eq!(stats["gpus"][0]["utilization"], 0);

    // Clone: its own GPU and the source's files.
    let (_, done) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(serde_json::json!({ "cmd": ["sh", "-c", "echo kept > /root/mark"] })),
    );
    assert_eq!(done["code"], 200, "{done}");
    let out = server.cli(&["clone", &name, &clone, "-g", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{clone}-1")
    );
    let out = server.cli(&["exec", &clone, "--", "cat", "/root/mark"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    let source_gpus = server.cli_json(&["info", &name])["info"]["gpus"].clone();
    let clone_gpus = server.cli_json(&["info", &clone])["info"]["gpus"].clone();
    assert_ne!(source_gpus, clone_gpus);

    // A stop time survives a restart of the server; the event stream ends with the server,
    // so a follower never holds a shutdown open.
    let out = server.cli(&["timers", &name, "--at", "2099-01-01T00:00:00Z"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = read_until(&events, Duration::from_secs(10), |t| {
        t.contains("\"kind\":\"timers\"")
    });
    for kind in ["run", "clone"] {
        assert!(
            seen.contains(&format!("\"kind\":\"{kind}\"")),
            "{kind}: {seen}"
        );
    }
    assert!(seen.contains("id:"), "{seen}");
    server.restart();
    let closed = Instant::now();
    while events.recv_timeout(Duration::from_secs(10)).is_ok() {
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "event stream outlived the server"
        );
    }
    let timers = server.cli_json(&["timers", &name]);
    assert_eq!(timers["stopAt"], "2099-01-01T00:00:00Z");
    fails_with(&server.cli(&["timers", &name, "--idle", "soon"]), "1000");

    // Fake GPUs do nothing, so they are idle: the idle timer stops the set on its own.
    let events = stream(&server.addr, "/api/v1/events?replay=0");
    let out = server.cli(&["timers", &name, "--idle", "2s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fired = read_until(&events, Duration::from_secs(30), |t| {
        t.contains("timer.idle")
    });
    assert!(fired.contains(&name), "{fired}");
    let info = server.cli_json(&["info", &name]);
    assert_eq!(info["status"], "stopped");
    assert_eq!(info["timers"]["idleStopSecs"], 2);
    assert_eq!(
        info["timers"]["stopAt"],
        Value::Null,
        "setting replaces both timers"
    );
    let gpus = server.cli_json(&["gpus"]);
    let held: Vec<&Value> = gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["holder"] == name.as_str())
        .collect();
    assert!(held.is_empty(), "the timer released the GPUs: {gpus}");

    // The event log replays what happened, restart included.
    let out = server.cli(&["events", "-n", "100", "--json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["run", "clone", "timers", "recovery", "timer.idle"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let greedy = lines
        .iter()
        .find(|e| e["kind"] == "run" && e["target"] == other.as_str())
        .expect("the refused run is an event too");
    assert_eq!(greedy["ok"], false);
    let out = server.cli(&["events", "-n", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    // Every new route is in the OpenAPI document.
    let (_, doc) = server.call("GET", "/openapi.json", None);
    for path in ["timers", "clone", "logs", "stats"] {
        assert!(
            doc["paths"][format!("/api/v1/replicaSet/{{name}}/{path}")].is_object(),
            "{path}"
        );
    }
    assert!(doc["paths"]["/api/v1/events"].is_object());

    for set in [&name, &clone] {
        let out = server.cli(&["rm", set]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
