//! A cluster on one machine: an etcd started here and two nodes, each the real binary next to a
//! Docker daemon of its own (own data root and socket, in its own network namespace), with two
//! fake GPUs each. Placement, pinning, forwarding, concurrent runs through both nodes, and a
//! node killed with SIGKILL: lost within its lease, its sets answering 1054, ready again after
//! a restart with its sets intact.
#![cfg(feature = "etcd")]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, free_port, http, BIN};
use gpu_replica_core::testkit::{self, EtcdProcess, PrivateDockerd, TEST_IMAGE};
use gpu_replica_core::DockerRuntime;
use serde_json::{json, Value};

/// One node: the server process, its data dir and address.
struct Node {
    name: String,
    child: Option<Child>,
    dir: PathBuf,
    addr: String,
    etcd: String,
    socket: String,
}

impl Node {
    fn start(name: &str, etcd: &str, socket: &str) -> Node {
        let mut node = Node {
            name: name.to_string(),
            child: None,
            dir: data_dir(),
            addr: format!("127.0.0.1:{}", free_port()),
            etcd: etcd.to_string(),
            socket: socket.to_string(),
        };
        node.resume();
        node
    }

    fn resume(&mut self) {
        let before = self.listened();
        let range = testkit::port_range();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(BIN)
            .env("DOCKER_HOST", format!("unix://{}", self.socket))
            .args([
                "serve",
                "--node",
                &self.name,
                "--store",
                &format!("etcd://{}", self.etcd),
            ])
            .args([
                "--gpus",
                "fake:2",
                "--gpu-attach",
                "env",
                "--stop-timeout",
                "0",
            ])
            .args(["--addr", &self.addr, "--label", "io.gpu-replica.test=1"])
            .args([
                "--port-range",
                &format!("{}-{}", range.start, range.end),
                "--data-dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.listened() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {} did not come up", self.name);
    }

    /// How many times it came up (its log is appended to).
    fn listened(&self) -> usize {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .matches("listening on")
            .count()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.addr, method, path, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Each node's Docker daemon with the test image in it.
async fn daemon(nth: u32) -> PrivateDockerd {
    let daemon = PrivateDockerd::start_nth(nth);
    let docker = DockerRuntime::connect_socket(&daemon.socket())
        .await
        .unwrap();
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    daemon
}

fn run_body(name: &str, gpus: i64) -> Value {
    json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": gpus})
}

fn node_of(via: &Node, name: &str) -> String {
    let (_, list) = via.call("GET", "/api/v1/replicaSet", None);
    list["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))["node"]
        .as_str()
        .unwrap()
        .to_string()
}

fn nodes(via: &Node) -> Vec<Value> {
    let (status, answer) = via.call("GET", "/api/v1/nodes", None);
    assert_eq!(status, 200, "{answer}");
    answer["data"]["nodes"].as_array().unwrap().clone()
}

fn state_of(via: &Node, name: &str) -> (String, u64) {
    let all = nodes(via);
    let node = all.iter().find(|n| n["name"] == name).unwrap();
    (
        node["state"].as_str().unwrap().to_string(),
        node["freeGpus"].as_u64().unwrap(),
    )
}

/// Containers of `daemon` whose name starts with `prefix`.
fn containers(daemon: &PrivateDockerd, prefix: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "-H",
            &format!("unix://{}", daemon.socket()),
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_pinning_forwarding_and_a_node_lost_and_back() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(1).await, daemon(2).await);
    let mut n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let all = nodes(&n2);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .all(|n| n["state"] == "ready" && n["freeGpus"] == 2),
        "{all:?}"
    );

    // Placement: the fewest free GPUs that still fit, ties by name.
    let p = testkit::unique_name("pl");
    let (a, b, c, d) = (
        format!("{p}a"),
        format!("{p}b"),
        format!("{p}c"),
        format!("{p}d"),
    );
    for (via, name) in [(&n2, &a), (&n2, &b), (&n1, &c)] {
        let (status, reply) = via.call("POST", "/api/v1/replicaSet", Some(run_body(name, 1)));
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(node_of(&n1, &a), "n1", "a tie goes to the first name");
    assert_eq!(node_of(&n1, &b), "n1", "fewest free GPUs that fit");
    assert_eq!(node_of(&n2, &c), "n2", "n1 is full");
    // Pinning, through the other node.
    let mut pinned = run_body(&d, 0);
    pinned["node"] = json!("n2");
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(pinned));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_of(&n1, &d), "n2");
    // GPU status covers the cluster: four GPUs, two per node, three held.
    let (_, gpus) = n2.call("GET", "/api/v1/resources/gpus?detail=true", None);
    let gpus = gpus["data"]["gpus"].as_array().unwrap().clone();
    assert_eq!(gpus.len(), 4, "{gpus:?}");
    assert_eq!(gpus.iter().filter(|g| g["node"] == "n1").count(), 2);
    assert_eq!(
        gpus.iter().filter(|g| !g["holder"].is_null()).count(),
        3,
        "{gpus:?}"
    );
    // The containers are on the nodes' own daemons.
    assert_eq!(containers(&d1, &p).len(), 2);
    assert_eq!(containers(&d2, &p).len(), 2);

    // Any node serves any set: execute and patch a (on n1) through n2.
    let exec = json!({"cmd": ["sh", "-c", "echo here > /root/mark; echo $CONTAINER_VERSION"]});
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{a}/execute"),
        Some(exec),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["stdout"].as_str().unwrap().trim(), "1");
    let (status, reply) = n2.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{a}"),
        Some(json!({"gpuPatch": {"gpuCount": 0}})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["containerName"], format!("{a}-2"));
    assert_eq!(state_of(&n2, "n1"), ("ready".into(), 1));
    // Lists cover the cluster, and filter by node.
    let (_, only) = n2.call("GET", "/api/v1/replicaSet?node=n1", None);
    let names: Vec<&str> = only["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&a.as_str()) && names.contains(&b.as_str()) && !names.contains(&c.as_str()),
        "{only}"
    );

    // n1 killed: lost within its lease (5 s), its sets answer 1054 and nothing changes; its
    // claims stay held.
    n1.kill();
    let took = wait_for("n1 lost", Duration::from_secs(15), || {
        state_of(&n2, "n1").0 == "lost"
    });
    assert!(took < Duration::from_secs(12), "{took:?}");
    let (status, reply) = n2.call("GET", &format!("/api/v1/replicaSet/{a}"), None);
    assert_eq!(
        (status, reply["code"].as_u64()),
        (503, Some(1054)),
        "{reply}"
    );
    let (status, reply) = n2.call("PATCH", &format!("/api/v1/replicaSet/{b}/stop"), None);
    assert_eq!(
        (status, reply["code"].as_u64()),
        (503, Some(1054)),
        "{reply}"
    );
    assert_eq!(state_of(&n2, "n1").1, 1, "b's GPU stays claimed");
    // A new set is placed on a ready node.
    let e = format!("{p}e");
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(run_body(&e, 1)));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_of(&n2, &e), "n2");

    // Back: ready again, its sets intact (a's file is still there, version 2 runs).
    n1.resume();
    wait_for("n1 ready", Duration::from_secs(15), || {
        state_of(&n2, "n1").0 == "ready"
    });
    let exec = json!({"cmd": ["cat", "/root/mark"]});
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{a}/execute"),
        Some(exec),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["stdout"].as_str().unwrap().trim(), "here");
    let (_, info) = n2.call("GET", &format!("/api/v1/replicaSet/{b}"), None);
    assert_eq!(info["data"]["status"], "running", "{info}");

    for name in [&a, &b, &c, &d, &e] {
        let (status, reply) = n2.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
        assert_eq!(status, 200, "{reply}");
    }
    assert!(containers(&d1, &p).is_empty() && containers(&d2, &p).is_empty());
    drop((n1, n2, d1, d2, etcd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_runs_through_two_nodes_take_each_gpu_once() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(3).await, daemon(4).await);
    let n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("race");
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let via = if i % 2 == 0 { &n1 } else { &n2 };
                let body = run_body(&format!("{p}x{i}"), 1);
                scope.spawn(move || via.call("POST", "/api/v1/replicaSet", Some(body)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(won, 4, "{refused:?}");
    assert!(refused.iter().all(|v| v["code"] == 1013), "{refused:?}");
    // Each GPU is held once: four sets, four distinct GPUs, two on each node.
    let (_, list) = n1.call("GET", "/api/v1/replicaSet", None);
    let sets: Vec<&Value> = list["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"].as_str().unwrap().starts_with(&p))
        .collect();
    assert_eq!(sets.len(), 4);
    let mut gpus: Vec<String> = sets
        .iter()
        .flat_map(|r| {
            r["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_string())
        })
        .collect();
    gpus.sort();
    gpus.dedup();
    assert_eq!(gpus.len(), 4, "{sets:?}");
    assert_eq!(sets.iter().filter(|r| r["node"] == "n1").count(), 2);
    assert_eq!(containers(&d1, &p).len() + containers(&d2, &p).len(), 4);
    for set in sets {
        let (status, _) = n2.call(
            "DELETE",
            &format!("/api/v1/replicaSet/{}", set["name"].as_str().unwrap()),
            None,
        );
        assert_eq!(status, 200);
    }
    drop((n1, n2, d1, d2, etcd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_with_one_member_stopped_still_serves() {
    testkit::docker().await;
    let mut etcd = testkit::EtcdCluster::start(3);
    let (d1, d2) = (daemon(5).await, daemon(6).await);
    let n1 = Node::start("n1", &etcd.host_ports(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_ports(), &d2.socket());
    let p = testkit::unique_name("quorum");
    let a = format!("{p}a");
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(run_body(&a, 1)));
    assert_eq!(status, 200, "{reply}");
    // One member down: the other two are a quorum, and both nodes keep serving.
    etcd.stop_member(0);
    let b = format!("{p}b");
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(run_body(&b, 1)));
    assert_eq!(status, 200, "{reply}");
    let patch = json!({"gpuPatch": {"gpuCount": 0}});
    let (status, reply) = n2.call("PATCH", &format!("/api/v1/replicaSet/{a}"), Some(patch));
    assert_eq!(status, 200, "{reply}");
    for via in [&n1, &n2] {
        let (status, reply) = via.call("GET", "/api/v1/replicaSet", None);
        assert_eq!(status, 200, "{reply}");
    }
    // Both nodes stay ready past their lease.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        nodes(&n1).iter().all(|n| n["state"] == "ready"),
        "{:?}",
        nodes(&n1)
    );
    etcd.resume_member(0);
    for name in [&a, &b] {
        let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
        assert_eq!(status, 200, "{reply}");
    }
    drop((n1, n2, d1, d2, etcd));
}
