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

use common::{data_dir, free_port, http, Authority, BIN};
use gpu_replica_core::testkit::{self, EtcdProcess, PrivateDockerd, TEST_IMAGE};
use gpu_replica_core::DockerRuntime;
use serde_json::{json, Value};

/// One node: the server process, its data dir and address.
struct Node {
    name: String,
    child: Option<Child>,
    /// The failpoint the next start arms, if any.
    armed: Option<String>,
    /// More `serve` arguments (TLS files).
    extra: Vec<String>,
    dir: PathBuf,
    addr: String,
    etcd: String,
    socket: String,
}

impl Node {
    fn start(name: &str, etcd: &str, socket: &str) -> Node {
        Node::start_with(name, etcd, socket, &[])
    }

    fn start_with(name: &str, etcd: &str, socket: &str, extra: &[String]) -> Node {
        let mut node = Node {
            name: name.to_string(),
            child: None,
            armed: None,
            extra: Vec::new(),
            dir: data_dir(),
            addr: format!("127.0.0.1:{}", free_port()),
            etcd: etcd.to_string(),
            socket: socket.to_string(),
        };
        node.extra = extra.to_vec();
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
        let mut command = Command::new(BIN);
        if let Some(failpoint) = self.armed.take() {
            command.env("GPU_REPLICA_FAILPOINT", failpoint);
        }
        let child = command
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
            .args(&self.extra)
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

    /// Restarts it with `failpoint` armed.
    fn restart_armed(&mut self, failpoint: &str) {
        self.kill();
        self.armed = Some(failpoint.to_string());
        self.resume();
    }

    /// Waits for the process to exit on its own (a failpoint); its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {} did not exit", self.name);
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

/// Objects of `kind` (`volume`, `image`) on `daemon` whose listing contains `needle`.
fn docker_objects(daemon: &PrivateDockerd, kind: &str, needle: &str) -> Vec<String> {
    let args: Vec<&str> = match kind {
        "volume" => vec!["volume", "ls", "--format", "{{.Name}}"],
        _ => vec!["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
    };
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{}", daemon.socket())])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Images on `daemon` labelled with set `name`.
fn set_images(daemon: &PrivateDockerd, name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{}", daemon.socket())])
        .args(["images", "-q", "--filter"])
        .arg(format!("label=io.gpu-replica.replicaset={name}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn exec(via: &Node, name: &str, script: &str) -> String {
    let (status, reply) = via.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(json!({"cmd": ["sh", "-c", script]})),
    );
    assert_eq!(status, 200, "{name}: {reply}");
    reply["data"]["stdout"].as_str().unwrap().trim().to_string()
}

fn info(via: &Node, name: &str) -> Value {
    let (status, reply) = via.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(status, 200, "{reply}");
    reply["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_moves_files_and_volumes_and_leaves_the_old_node_clean() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(7).await, daemon(8).await);
    let n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("mg");
    let (set, volume) = (format!("{p}s"), format!("{p}v"));

    // A volume made through n2 on n1; a set mounting it, asked of n2, runs where the volume
    // is (pinned elsewhere, it is refused); a file in each, a port published.
    let (status, reply) = n2.call(
        "POST",
        "/api/v1/volumes",
        Some(json!({"name": volume, "size": "10MB", "node": "n1"})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        docker_objects(&d1, "volume", &volume),
        vec![format!("{volume}-1")]
    );
    let mut body = run_body(&set, 1);
    body["binds"] = json!([{"src": format!("{volume}-1"), "dest": "/data"}]);
    body["containerPorts"] = json!(["80"]);
    let mut pinned = body.clone();
    pinned["node"] = json!("n2");
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(pinned));
    assert_eq!(
        (status, reply["code"].as_u64()),
        (403, Some(1037)),
        "{reply}"
    );
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_of(&n2, &set), "n1");
    exec(&n1, &set, "echo installed > /root/f; echo kept > /data/g");

    // Without moveVolumes: refused, nothing changes.
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{set}/migrate"),
        Some(json!({"node": "n2"})),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1055)),
        "{reply}"
    );
    assert!(
        reply["msg"].as_str().unwrap().contains("moveVolumes"),
        "{reply}"
    );
    // Nowhere to go: unknown node, its own node.
    for (to, status_code, code) in [("n9", 404, 1057), ("n1", 400, 1000)] {
        let (status, reply) = n2.call(
            "POST",
            &format!("/api/v1/replicaSet/{set}/migrate"),
            Some(json!({"node": to, "moveVolumes": true})),
        );
        assert_eq!(
            (status, reply["code"].as_u64()),
            (status_code, Some(code)),
            "{to}: {reply}"
        );
    }
    let (status, reply) = n2.call("GET", "/api/v1/resources/ports?node=n9", None);
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1057)),
        "{reply}"
    );
    let before = info(&n2, &set);
    assert_eq!(
        (
            before["status"].as_str(),
            before["info"]["version"].as_u64()
        ),
        (Some("running"), Some(1)),
        "{before}"
    );
    assert_eq!(node_of(&n2, &set), "n1");

    // Through n2 (sent on to n1, where the set lives), with 2 GPUs there.
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{set}/migrate"),
        Some(json!({"node": "n2", "gpuCount": 2, "moveVolumes": true})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["node"], "n2", "{reply}");
    assert_eq!(
        reply["data"]["containerName"],
        format!("{set}-2"),
        "{reply}"
    );
    assert_eq!(node_of(&n1, &set), "n2");
    let after = info(&n1, &set);
    assert_eq!(after["status"], "running", "{after}");
    assert_eq!(after["info"]["version"], 2, "{after}");
    // Both intact on the target, through either node; the new GPUs are n2's.
    assert_eq!(exec(&n1, &set, "cat /root/f"), "installed");
    assert_eq!(exec(&n2, &set, "cat /data/g"), "kept");
    let visible = exec(&n1, &set, "echo $NVIDIA_VISIBLE_DEVICES");
    assert_eq!(visible.split(',').count(), 2, "{visible}");
    assert_eq!(state_of(&n1, "n2"), ("ready".into(), 0));
    assert_eq!(
        state_of(&n1, "n1"),
        ("ready".into(), 2),
        "n1's GPU released"
    );
    // Its port is claimed on n2 now, none on n1: the port status covers every node.
    let (_, ports) = n1.call("GET", "/api/v1/resources/ports", None);
    let used_on = |node: &str| {
        ports["data"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap()["usedPorts"]
            .clone()
    };
    let published = after["info"]["hostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(used_on("n2"), json!([published]), "{ports}");
    assert_eq!(used_on("n1"), json!([]), "{ports}");
    let (_, only) = n1.call("GET", "/api/v1/resources/ports?node=n2", None);
    assert_eq!(
        only["data"]["ports"]["AvailableCount"],
        ports["data"]["ports"]["AvailableCount"].as_u64().unwrap() - 1,
        "{only}"
    );
    // The old node is clean: no container, snapshot or volume of the set left.
    assert!(containers(&d1, &p).is_empty(), "{:?}", containers(&d1, &p));
    assert_eq!(containers(&d2, &p), vec![format!("{set}-2")]);
    // On its owner's network there as here, and that network gone from the old node.
    let on_target = Command::new("docker")
        .args(["-H", &format!("unix://{}", d2.socket()), "inspect", "-f"])
        .args(["{{range $n, $e := .NetworkSettings.Networks}}{{$n}}{{end}}"])
        .arg(format!("{set}-2"))
        .output()
        .unwrap();
    let network = String::from_utf8_lossy(&on_target.stdout)
        .trim()
        .to_string();
    assert!(
        network.starts_with("gpu-replica-") && network.ends_with("-admin"),
        "{network}"
    );
    let left = Command::new("docker")
        .args([
            "-H",
            &format!("unix://{}", d1.socket()),
            "network",
            "ls",
            "-q",
        ])
        .args(["--filter", &format!("name=^{network}$")])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "{network} left on n1");
    assert!(
        set_images(&d1, &set).is_empty(),
        "{:?}",
        set_images(&d1, &set)
    );
    assert!(docker_objects(&d1, "volume", &volume).is_empty());
    assert_eq!(
        docker_objects(&d2, "volume", &volume),
        vec![format!("{volume}-1")]
    );
    // It keeps working there: a patch makes version 3 on n2 with the files.
    let (status, reply) = n1.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{set}"),
        Some(json!({"gpuPatch": {"gpuCount": 1}})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(exec(&n2, &set, "cat /root/f /data/g"), "installed\nkept");
    // The nodes' own routes take the cluster's secret, never a caller's token.
    let (status, _, _) = common::http_as(
        &n2.addr,
        Some("not-the-secret"),
        "POST",
        &format!("/internal/v1/migrations/{set}/start"),
        None,
    );
    assert_eq!(status, 401);
    // Each node's metrics are its own: the set runs on n2, n1 did the migration.
    let (_, _, on_n2) = common::http_as(&n2.addr, None, "GET", "/metrics", None);
    assert!(
        on_n2.contains("gpu_replica_sets{status=\"running\",node=\"n2\"} 1"),
        "{on_n2}"
    );
    let (_, _, on_n1) = common::http_as(&n1.addr, None, "GET", "/metrics", None);
    assert!(
        on_n1.contains(
            "gpu_replica_operations_total{operation=\"migrate\",outcome=\"ok\",node=\"n1\"} 1"
        ),
        "{on_n1}"
    );
    assert!(
        on_n1.contains("gpu_replica_sets{status=\"running\",node=\"n1\"} 0"),
        "{on_n1}"
    );
    // The volume moved with it: listed on n2, resized there through n1.
    let (_, volumes) = n1.call("GET", "/api/v1/volumes", None);
    let listed = volumes["data"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["node"], "n2", "{volumes}");
    let (status, reply) = n1.call(
        "PATCH",
        &format!("/api/v1/volumes/{volume}/size"),
        Some(json!({"size": "20MB"})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(exec(&n1, &set, "cat /data/g"), "kept");
    // The events tell who moved it where.
    let (_, _, events) = common::http_as(
        &n1.addr,
        None,
        "GET",
        "/api/v1/events?replay=50&follow=false",
        None,
    );
    assert!(events.contains("to node n2"), "{events}");

    let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = n1.call("DELETE", &format!("/api/v1/volumes/{volume}"), None);
    assert_eq!(status, 200, "{reply}");
    assert!(docker_objects(&d2, "volume", &volume).is_empty());

    // A paused set moves paused (its GPU held on the target), a stopped one stopped (nothing
    // held); each runs there on continue, with its files.
    let quiet = format!("{p}q");
    let mut body = run_body(&quiet, 1);
    body["node"] = json!("n2");
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{reply}");
    exec(&n1, &quiet, "echo asleep > /root/f");
    let (status, reply) = n1.call("PATCH", &format!("/api/v1/replicaSet/{quiet}/pause"), None);
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = n1.call(
        "POST",
        &format!("/api/v1/replicaSet/{quiet}/migrate"),
        Some(json!({"node": "n1"})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(info(&n2, &quiet)["status"], "paused");
    assert_eq!(state_of(&n2, "n1").1, 1, "the paused set holds a GPU on n1");
    assert_eq!(state_of(&n2, "n2").1, 2);
    let (status, reply) = n2.call("PATCH", &format!("/api/v1/replicaSet/{quiet}/stop"), None);
    assert_eq!(status, 200, "{reply}");
    // n2 full: a stopped set moves there all the same (it holds nothing until it continues).
    let filler = format!("{p}f");
    let mut body = run_body(&filler, 2);
    body["node"] = json!("n2");
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{reply}");
    // A running set is refused up front (1013), and keeps running where it was.
    let busy = format!("{p}r");
    let mut body = run_body(&busy, 1);
    body["node"] = json!("n1");
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{busy}/migrate"),
        Some(json!({"node": "n2"})),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1013)),
        "{reply}"
    );
    assert!(
        reply["msg"].as_str().unwrap().contains("0 free of 2"),
        "{reply}"
    );
    let now = info(&n2, &busy);
    assert_eq!(
        (now["status"].as_str(), now["info"]["version"].as_u64()),
        (Some("running"), Some(1))
    );
    assert_eq!(containers(&d1, &busy), vec![format!("{busy}-1")]);
    let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{busy}"), None);
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = n2.call(
        "POST",
        &format!("/api/v1/replicaSet/{quiet}/migrate"),
        Some(json!({"node": "n2"})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(info(&n1, &quiet)["status"], "stopped");
    assert_eq!(state_of(&n1, "n1").1, 2);
    assert_eq!(
        state_of(&n1, "n2").1,
        0,
        "the filler's; a stopped set holds nothing"
    );
    let (status, reply) = n1.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{quiet}/continue"),
        None,
    );
    assert_ne!(status, 200, "its GPUs are the filler's: {reply}");
    let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{filler}"), None);
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = n1.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{quiet}/continue"),
        None,
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(info(&n1, &quiet)["status"], "running");
    assert_eq!(state_of(&n1, "n2").1, 1);
    assert_eq!(exec(&n1, &quiet, "cat /root/f"), "asleep");
    assert!(containers(&d1, &quiet).is_empty());
    let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{quiet}"), None);
    assert_eq!(status, 200, "{reply}");
    drop((n1, n2, d1, d2, etcd));
}

/// A migration whose source or target is killed at each of its steps ends finished or
/// undone: the set runs on exactly one node with its file, the other node keeps nothing of it
/// (once restarted), and the GPUs held are the set's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_at_each_step_ends_finished_or_undone() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(9).await, daemon(10).await);
    let mut n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let mut n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("mk");
    // (failpoint, armed on the target, whether the set ends on the target)
    let steps = [
        ("migrate.recorded", false, false),
        ("migrate.stopped", false, false),
        ("migrate.committed", false, false),
        ("migrate.sent", false, false),
        ("migrate.moved", false, true),
        ("migrate.claimed", true, false),
        ("migrate.created", true, false),
        ("migrate.target_started", true, false),
        ("migrate.switched", true, true),
    ];
    for (i, (failpoint, on_target, moved)) in steps.into_iter().enumerate() {
        let set = format!("{p}{i}");
        let mut body = run_body(&set, 1);
        body["node"] = json!("n1");
        let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
        assert_eq!(status, 200, "{reply}");
        exec(&n1, &set, "echo mine > /root/f");
        let armed = if on_target { &mut n2 } else { &mut n1 };
        armed.restart_armed(failpoint);
        // The source's own answer is lost when it is the one killed.
        let (addr, path) = (n1.addr.clone(), format!("/api/v1/replicaSet/{set}/migrate"));
        let answer =
            std::thread::spawn(move || http(&addr, "POST", &path, Some(json!({"node": "n2"}))))
                .join()
                .ok();
        let code = if on_target { &mut n2 } else { &mut n1 }.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(86), "{failpoint}: the armed node stops there");
        if on_target {
            // The source saw its target go and answered.
            let (status, reply) = answer.expect("the source answers");
            assert_eq!(status == 200, moved, "{failpoint}: {reply}");
            n2.resume();
        } else {
            n1.resume();
        }
        let (home, away, home_daemon, away_daemon) = if moved {
            ("n2", "n1", &d2, &d1)
        } else {
            ("n1", "n2", &d1, &d2)
        };
        assert_eq!(node_of(&n2, &set), home, "{failpoint}");
        let now = info(&n1, &set);
        assert_eq!(now["status"], "running", "{failpoint}: {now}");
        assert_eq!(
            now["info"]["version"],
            if moved { 2 } else { 1 },
            "{failpoint}: {now}"
        );
        assert_eq!(exec(&n2, &set, "cat /root/f"), "mine", "{failpoint}");
        assert_eq!(
            containers(home_daemon, &set),
            vec![format!("{set}-{}", if moved { 2 } else { 1 })],
            "{failpoint}"
        );
        // The other node keeps nothing of it once it has restarted (its recovery) or swept.
        if !moved && !on_target {
            // The target stayed up: the source's recovery asked it to drop its part.
            wait_for(
                "the target dropped its part",
                Duration::from_secs(10),
                || containers(away_daemon, &set).is_empty(),
            );
        } else if moved && !on_target {
            assert!(containers(away_daemon, &set).is_empty(), "{failpoint}");
        } else {
            assert!(
                containers(away_daemon, &set).is_empty(),
                "{failpoint}: {:?}",
                containers(away_daemon, &set)
            );
        }
        // One GPU held in all, on its home node.
        let held: u64 = nodes(&n1)
            .iter()
            .map(|n| 2 - n["freeGpus"].as_u64().unwrap())
            .sum();
        assert_eq!(held, 1, "{failpoint}: {:?}", nodes(&n1));
        assert_eq!(state_of(&n1, home).1, 1, "{failpoint}");
        let _ = away;
        let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
        assert_eq!(status, 200, "{failpoint}: {reply}");
    }
    drop((n1, n2, d1, d2, etcd));
}

/// The CLI against `node` over HTTPS with a client certificate; its stdout, or a panic with
/// its stderr.
fn cli_tls(node: &Node, tls: &[String], args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--server", &format!("https://{}", node.addr)])
        .args(tls)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Nodes that speak HTTPS and require client certificates (one private CA) still forward to
/// each other and migrate between them: each presents its own certificate to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_forwards_and_migrates() {
    testkit::docker().await;
    let pki = data_dir();
    let ca = Authority::new("cluster CA");
    let ca_pem = ca.write(&pki.join("ca.pem"));
    let node_args = |name: &str| -> Vec<String> {
        let (cert, key) = ca.issue_node(&pki, name);
        vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-client-ca".into(),
            ca_pem.display().to_string(),
        ]
    };
    let (client_cert, client_key) = ca.issue(&pki, "operator", false);
    let tls: Vec<String> = vec![
        "--cacert".into(),
        ca_pem.display().to_string(),
        "--cert".into(),
        client_cert.display().to_string(),
        "--key".into(),
        client_key.display().to_string(),
    ];
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(11).await, daemon(12).await);
    let n1 = Node::start_with("n1", &etcd.host_port(), &d1.socket(), &node_args("n1"));
    let n2 = Node::start_with("n2", &etcd.host_port(), &d2.socket(), &node_args("n2"));
    let nodes = cli_tls(&n2, &tls, &["nodes"]);
    assert!(nodes.contains(&format!("https://{}", n1.addr)), "{nodes}");

    let set = testkit::unique_name("tls");
    // Asked of n2, run on n1: forwarded over HTTPS with n2's certificate.
    cli_tls(
        &n2,
        &tls,
        &["run", &set, "-i", TEST_IMAGE, "--gpus", "1", "--node", "n1"],
    );
    cli_tls(
        &n2,
        &tls,
        &["exec", &set, "--", "sh", "-c", "echo sealed > /root/f"],
    );
    assert_eq!(containers(&d1, &set), vec![format!("{set}-1")]);
    // Moved to n2 through n2: n1 streams the snapshot to n2 over HTTPS.
    let moved = cli_tls(&n2, &tls, &["migrate", &set, "--to", "n2"]);
    assert!(moved.contains("n2"), "{moved}");
    assert_eq!(
        cli_tls(&n1, &tls, &["exec", &set, "--", "cat", "/root/f"]),
        "sealed"
    );
    assert_eq!(containers(&d2, &set), vec![format!("{set}-2")]);
    assert!(containers(&d1, &set).is_empty());
    cli_tls(&n1, &tls, &["rm", &set]);
    assert!(containers(&d2, &set).is_empty());
    // A renewed certificate for n2, loaded on SIGHUP for serving and for reaching n1: runs
    // through n2 onto n1 still work, with it.
    ca.issue_node(&pki, "n2");
    let pid = n2.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("n2 reloaded", Duration::from_secs(10), || {
        std::fs::read_to_string(n2.dir.join("server.log"))
            .unwrap_or_default()
            .contains("the certificate shown to other nodes reloaded")
    });
    let again = format!("{set}b");
    cli_tls(
        &n2,
        &tls,
        &["run", &again, "-i", TEST_IMAGE, "--node", "n1"],
    );
    assert_eq!(containers(&d1, &again), vec![format!("{again}-1")]);
    cli_tls(&n2, &tls, &["rm", &again]);
    drop((n1, n2, d1, d2, etcd));
    let _ = std::fs::remove_dir_all(pki);
}

/// Figures, not a check: how long a migration takes with N MB written into the set, against
/// the bare `docker save | docker load` of the same snapshot between the two daemons.
/// `cargo test --release --all-features -p gpu-replica-cli --test cluster migration_figures -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn migration_figures() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(13).await, daemon(14).await);
    let n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    println!("| written into the set | migrate (API call) | docker save → load alone |");
    println!("|---|---|---|");
    for mb in [0, 64, 256] {
        let set = testkit::unique_name(&format!("fig{mb}m"));
        let mut body = run_body(&set, 1);
        body["node"] = json!("n1");
        let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
        assert_eq!(status, 200, "{reply}");
        if mb > 0 {
            exec(
                &n1,
                &set,
                &format!("dd if=/dev/urandom of=/root/blob bs=1M count={mb} 2>/dev/null"),
            );
        }
        let started = Instant::now();
        let (status, reply) = n1.call(
            "POST",
            &format!("/api/v1/replicaSet/{set}/migrate"),
            Some(json!({"node": "n2"})),
        );
        let took = started.elapsed();
        assert_eq!(status, 200, "{reply}");
        // The same bytes moved by hand: commit on n2, save, load into n1.
        let image = format!("figures/{set}:bare");
        let docker = |socket: &str| format!("docker -H unix://{socket}");
        let commit = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} commit {set}-2 {image} >/dev/null",
                docker(&d2.socket())
            ))
            .status()
            .unwrap();
        assert!(commit.success());
        let bare = Instant::now();
        let pipe = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} save {image} | {} load >/dev/null",
                docker(&d2.socket()),
                docker(&d1.socket())
            ))
            .status()
            .unwrap();
        assert!(pipe.success());
        let bare = bare.elapsed();
        println!(
            "| {mb} MB | {:.2} s | {:.2} s |",
            took.as_secs_f64(),
            bare.as_secs_f64()
        );
        for socket in [d1.socket(), d2.socket()] {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{} rmi -f {image} >/dev/null 2>&1",
                    docker(&socket)
                ))
                .status();
        }
        let (status, reply) = n1.call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
        assert_eq!(status, 200, "{reply}");
    }
    drop((n1, n2, d1, d2, etcd));
}

/// ssh, scp and -W to a set on n2 through n1's gateway: n1 checks the user's key and carries
/// the session to n2's gateway, logging in there with the cluster's shared host key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_gateway_of_one_node_reaches_a_set_on_the_other() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(15).await, daemon(16).await);
    let (p1, p2) = (free_port(), free_port());
    let ssh_flag = |port: u16| vec!["--ssh-addr".to_string(), format!("127.0.0.1:{port}")];
    let n1 = Node::start_with("n1", &etcd.host_port(), &d1.socket(), &ssh_flag(p1));
    let n2 = Node::start_with("n2", &etcd.host_port(), &d2.socket(), &ssh_flag(p2));
    let dir = data_dir();
    let key = dir.join("key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let (status, added) = n1.call(
        "POST",
        "/api/v1/users/admin/keys",
        Some(json!({"key": public.trim()})),
    );
    assert_eq!(status, 200, "{added}");
    let name = testkit::unique_name("far");
    let mut body = run_body(&name, 1);
    body["node"] = json!("n2");
    let (status, answer) = n1.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(node_of(&n1, &name), "n2");
    let options = |port: u16| -> Vec<String> {
        [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([key.display().to_string(), "-p".into(), port.to_string()])
        .collect()
    };
    let target = format!("{name}@127.0.0.1");
    // A command through n1: it runs on n2 (its GPU is one of n2's), with its exit status.
    let out = Command::new("ssh")
        .args(options(p1))
        .arg(&target)
        .arg("echo on-$NVIDIA_VISIBLE_DEVICES; exit 5")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on-GPU-"),
        "{out:?}"
    );
    // The same host key on both nodes.
    let scan = |port: u16| {
        let out = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    assert!(!scan(p1).is_empty());
    assert_eq!(scan(p1), scan(p2));
    // scp in and out through n1.
    let file = dir.join("payload");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    let scp = |from: &str, to: &str| {
        let mut command = Command::new("scp");
        command.arg("-q");
        for o in options(p1) {
            command.arg(if o == "-p" { "-P".to_string() } else { o });
        }
        command.arg(from).arg(to).output().unwrap()
    };
    let up = scp(file.to_str().unwrap(), &format!("{target}:/tmp/payload"));
    assert!(up.status.success(), "{up:?}");
    let back = dir.join("back");
    let down = scp(&format!("{target}:/tmp/payload"), back.to_str().unwrap());
    assert!(down.status.success(), "{down:?}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
    // The file is in the container on n2's Docker.
    let inside = Command::new("docker")
        .args(["-H", &format!("unix://{}", d2.socket()), "exec"])
        .arg(format!("{name}-1"))
        .args(["wc", "-c", "/tmp/payload"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains(&(3u64 << 20).to_string()),
        "{inside:?}"
    );
    // -W to a port of the set's own loopback, through n1.
    let started = Command::new("ssh")
        .args(options(p1))
        .arg(&target)
        .arg("mkdir -p /w && echo far-page > /w/index.html && httpd -p 127.0.0.1:8081 -h /w && echo up")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&started.stdout).contains("up"),
        "{started:?}"
    );
    let mut through = Command::new("ssh")
        .args(options(p1))
        .args(["-W", "localhost:8081"])
        .arg(&target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        through
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .unwrap();
    }
    let page = through.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("far-page"),
        "{page:?}"
    );
    // The terminal WebSockets cross nodes too: `exec -i` through n1 runs on n2, input in,
    // output and exit code out.
    let mut piped = Command::new(BIN)
        .arg("--server")
        .arg(format!("http://{}", n1.addr))
        .args([
            "exec",
            "-i",
            &name,
            "--",
            "sh",
            "-c",
            "wc -c; echo on-$NVIDIA_VISIBLE_DEVICES; exit 4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        piped.stdin.take().unwrap().write_all(b"12345").unwrap();
    }
    let done = piped.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(4), "{done:?}");
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains('5') && said.contains("on-GPU-"), "{said}");
    // And the console's web terminal: its session message comes back through n1.
    let client = gpu_replica_http::client::Client::new(
        &format!("http://{}", n1.addr),
        None,
        &gpu_replica_http::client::ClientTls::default(),
    )
    .unwrap();
    let mut screen = client
        .screen(&name, &gpu_replica_http::wire::ScreenQuery::default())
        .await
        .unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::StreamExt::next(&mut screen),
    )
    .await
    .unwrap();
    let first = format!("{first:?}");
    assert!(first.contains("session"), "{first}");
    drop(screen);
    let path = format!("/api/v1/replicaSet/{name}");
    assert_eq!(n1.call("DELETE", &path, None).0, 200);
    drop((n1, n2));
    let _ = std::fs::remove_dir_all(dir);
}

/// The web-service proxy of one node reaches a set on the other: a link from n1's API names
/// n1's proxy, which carries the pages and a WebSocket through a tunnel to n2 (behind the
/// cluster's secret; nothing of n2 is asked of the browser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_of_one_node_serves_a_set_on_the_other() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(17).await, daemon(18).await);
    let (p1, p2) = (free_port(), free_port());
    let proxy_flag = |port: u16| vec!["--proxy-addr".to_string(), format!("127.0.0.1:{port}")];
    let n1 = Node::start_with("n1", &etcd.host_port(), &d1.socket(), &proxy_flag(p1));
    let _n2 = Node::start_with("n2", &etcd.host_port(), &d2.socket(), &proxy_flag(p2));
    let name = testkit::unique_name("farweb");
    let mut body = run_body(&name, 1);
    body["node"] = json!("n2");
    body["cmd"] = json!([
        "sh",
        "-c",
        format!(
            "mkdir -p /www/{name}/80 && echo far-page > /www/{name}/80/index.html && \
             httpd -p 80 -h /www; exec {} serve 9000",
            testkit::WSECHO
        )
    ]);
    let (status, answer) = n1.call("POST", "/api/v1/replicaSet", Some(body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(node_of(&n1, &name), "n2");
    let link = |port: u16| {
        let (status, answer) = n1.call(
            "POST",
            &format!("/api/v1/replicaSet/{name}/open"),
            Some(json!({ "port": port })),
        );
        assert_eq!(status, 200, "{answer}");
        let url = answer["data"]["url"].as_str().unwrap().to_string();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{p1}/")),
            "n1's proxy: {url}"
        );
        url
    };
    let dir = data_dir();
    let jar = dir.join("jar");
    let jar = jar.to_str().unwrap();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "60",
                "-c",
                jar,
                "-b",
                jar,
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut page = String::new();
    for _ in 0..50 {
        page = curl(&["-L", &link(80)]);
        if page.ends_with("\n200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300)); // httpd starting on n2
    }
    assert_eq!(page, "far-page\n\n200", "through n1's proxy");
    let page = curl(&[&format!("http://127.0.0.1:{p1}/{name}/80/index.html")]);
    assert_eq!(page, "far-page\n\n200");
    // A link opens once in the whole cluster: opened at n1, refused at n2.
    let once = link(80);
    assert!(curl(&["-L", &once]).ends_with("\n200"));
    let again = once.replace(&format!(":{p1}/"), &format!(":{p2}/"));
    assert!(curl(&["-L", &again]).ends_with("\n403"), "{again}");
    // A WebSocket through n1 to the echo server on n2.
    let opened = curl(&["-L", &link(9000)]);
    assert!(opened.ends_with("\n200"), "{opened}");
    let jar_text = std::fs::read_to_string(jar).unwrap();
    let cookie = jar_text
        .lines()
        .find(|l| l.contains("gpu_replica_proxy") && l.contains(&format!("/{name}/9000")))
        .unwrap_or_else(|| panic!("{jar_text}"))
        .rsplit('\t')
        .next()
        .unwrap()
        .to_string();
    let out = Command::new(testkit::wsecho_binary().unwrap())
        .args(["rtt", &format!("ws://127.0.0.1:{p1}/{name}/9000/"), "100"])
        .args(["-H", &format!("Cookie: gpu_replica_proxy={cookie}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The internal tunnel route takes the cluster's secret only.
    let (status, _) = n1.call("GET", &format!("/internal/v1/ports/{name}/80"), None);
    assert_eq!(status, 401);
    let (status, _) = n1.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(status, 200);
}

/// The drain stories share two daemons (numbers 19 and 20), one story at a time.
static DRAIN_DAEMONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Node `node`'s drain as `via` tells it.
fn drain_of(via: &Node, node: &str) -> Value {
    let (status, reply) = via.call("GET", &format!("/api/v1/nodes/{node}/drain"), None);
    assert_eq!(status, 200, "{reply}");
    reply["data"].clone()
}

/// The CLI against `via`: its exit code, stdout and stderr.
fn cli(via: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["--server", &format!("http://{}", via.addr)])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Set `set` has exactly one container across both daemons, on `home`'s daemon.
fn on_exactly_one_node(set: &str, home: &PrivateDockerd, away: &PrivateDockerd) {
    let prefix = format!("{set}-");
    assert_eq!(containers(home, &prefix).len(), 1, "{set} on its node");
    assert!(
        containers(away, &prefix).is_empty(),
        "{set} also on the other node: {:?}",
        containers(away, &prefix)
    );
}

fn delete_set(via: &Node, set: &str) {
    let (status, reply) = via.call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
    assert_eq!(status, 200, "delete {set}: {reply}");
}

fn set_call(via: &Node, method: &str, set: &str, action: &str) {
    let (status, reply) = via.call(method, &format!("/api/v1/replicaSet/{set}/{action}"), None);
    assert_eq!(status, 200, "{action} {set}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_running_paused_stopped_and_volume_sets_and_reports_the_rest() {
    let _daemons = DRAIN_DAEMONS.lock().await;
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(19).await, daemon(20).await);
    let n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("dr");
    // a runs, b is paused, c stopped (holding no GPU), d mounts a volume; e and f share one,
    // which therefore cannot move with either.
    let [a, b, c, d, e, f] = ["a", "b", "c", "d", "e", "f"].map(|s| format!("{p}{s}"));
    let (vol, shared) = (format!("{p}v"), format!("{p}w"));
    for v in [&vol, &shared] {
        let (status, reply) = n2.call(
            "POST",
            "/api/v1/volumes",
            Some(json!({"name": v, "size": "10MB", "node": "n1"})),
        );
        assert_eq!(status, 200, "{reply}");
    }
    // c first: stopped, it gives its GPU back for a and b.
    for (set, gpus, volume) in [
        (&c, 1, None),
        (&a, 1, None),
        (&b, 1, None),
        (&d, 0, Some(&vol)),
        (&e, 0, Some(&shared)),
        (&f, 0, Some(&shared)),
    ] {
        let mut body = run_body(set, gpus);
        body["node"] = json!("n1");
        if let Some(volume) = volume {
            body["binds"] = json!([{"src": format!("{volume}-1"), "dest": "/data"}]);
        }
        let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(body));
        assert_eq!(status, 200, "{reply}");
        exec(&n1, set, &format!("echo {set} > /root/f"));
        if set == &c {
            set_call(&n1, "PATCH", &c, "stop");
        }
    }
    exec(&n1, &d, "echo kept > /data/g");
    set_call(&n1, "PATCH", &b, "pause");

    // Cordoned: no new set there, pinned or placed, nor a migration to it.
    let (code, out, err) = cli(&n2, &["node", "cordon", "n1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("node n1 cordoned"), "{out}");
    let n1_view = nodes(&n2).into_iter().find(|n| n["name"] == "n1").unwrap();
    assert_eq!(n1_view["cordoned"], true, "{n1_view}");
    let (_, table, _) = cli(&n2, &["nodes"]);
    assert!(table.contains("ready,cordoned"), "{table}");
    let newcomer = format!("{p}n");
    let mut pinned = run_body(&newcomer, 0);
    pinned["node"] = json!("n1");
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(pinned.clone()));
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1064)),
        "{reply}"
    );
    assert!(
        reply["msg"].as_str().unwrap().contains("cordoned"),
        "{reply}"
    );
    let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(run_body(&newcomer, 0)));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_of(&n1, &newcomer), "n2");
    let (status, reply) = n1.call(
        "POST",
        &format!("/api/v1/replicaSet/{newcomer}/migrate"),
        Some(json!({"node": "n1"})),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1064)),
        "{reply}"
    );
    delete_set(&n1, &newcomer);

    // No such node: nothing to drain.
    let (status, reply) = n2.call("POST", "/api/v1/nodes/n9/drain", None);
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1057)),
        "{reply}"
    );
    // The drain, asked of n2 (sent on to n1, which drives it), followed set by set.
    let started = Instant::now();
    let (code, out, err) = cli(&n2, &["node", "drain", "n1"]);
    let took = started.elapsed();
    eprintln!("drained 4 sets (2 refused) in {took:?}:\n{out}");
    assert_eq!(code, Some(1), "two sets could not move: {out}{err}");
    for set in [&a, &b, &c, &d] {
        assert!(out.contains(&format!("moved    {set} -> node n2")), "{out}");
    }
    for set in [&e, &f] {
        assert!(out.contains(&format!("failed   {set}: ")), "{out}");
    }
    assert!(
        out.contains("node n1 drain finished: 4 moved, 2 not moved"),
        "{out}"
    );
    let report = drain_of(&n2, "n1");
    assert_eq!(report["state"], "finished", "{report}");
    assert_eq!(report["cordoned"], true, "{report}");
    assert_eq!(report["inFlight"], json!([]), "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    for failure in failed {
        assert!(
            failure["reason"]
                .as_str()
                .unwrap()
                .contains("is also mounted by"),
            "{report}"
        );
    }

    // Each set on exactly one node, as it was (running, paused, stopped), with its files.
    for set in [&a, &b, &c, &d] {
        assert_eq!(node_of(&n1, set), "n2");
        on_exactly_one_node(set, &d2, &d1);
    }
    for set in [&e, &f] {
        assert_eq!(node_of(&n1, set), "n1");
        on_exactly_one_node(set, &d1, &d2);
        assert_eq!(exec(&n2, set, "cat /root/f"), *set);
    }
    assert_eq!(info(&n1, &a)["status"], "running");
    assert_eq!(info(&n1, &b)["status"], "paused");
    assert_eq!(info(&n1, &c)["status"], "stopped");
    assert_eq!(
        docker_objects(&d2, "volume", &vol),
        vec![format!("{vol}-1")]
    );
    assert!(docker_objects(&d1, "volume", &vol).is_empty());
    assert_eq!(exec(&n1, &a, "cat /root/f"), a);
    assert_eq!(exec(&n1, &d, "cat /root/f /data/g"), format!("{d}\nkept"));
    set_call(&n1, "PATCH", &b, "continue");
    assert_eq!(exec(&n1, &b, "cat /root/f"), b);
    // The stopped set's GPU is one a and b hold there: it runs again once one is free.
    delete_set(&n1, &a);
    set_call(&n1, "PATCH", &c, "restart");
    assert_eq!(exec(&n1, &c, "cat /root/f"), c);

    // The events tell each set's fate and the drain's end.
    let (_, _, events) = common::http_as(
        &n1.addr,
        None,
        "GET",
        "/api/v1/events?replay=200&follow=false",
        None,
    );
    assert!(
        events.contains(&format!("\"target\":\"{d}\""))
            && events.contains("moved from node n1 to node n2"),
        "{events}"
    );
    assert!(events.contains("not moved from node n1"), "{events}");
    assert!(events.contains("\"kind\":\"node.drain\""), "{events}");
    assert!(
        events.contains("finished: 4 set(s) moved, 2 not moved"),
        "{events}"
    );

    // Uncordoned, it takes sets again.
    let (code, out, err) = cli(&n2, &["node", "uncordon", "n1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (status, reply) = n2.call("POST", "/api/v1/replicaSet", Some(pinned));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(node_of(&n2, &newcomer), "n1");

    for set in [&b, &c, &d, &e, &f, &newcomer] {
        delete_set(&n1, set);
    }
    for v in [&vol, &shared] {
        let (status, reply) = n1.call("DELETE", &format!("/api/v1/volumes/{v}"), None);
        assert_eq!(status, 200, "{reply}");
    }
    drop((n1, n2, d1, d2, etcd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cancelled_or_killed_midway_leaves_every_set_on_one_node_with_its_files() {
    let _daemons = DRAIN_DAEMONS.lock().await;
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(19).await, daemon(20).await);
    let mut n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("dk");
    let sets: Vec<String> = (0..6).map(|i| format!("{p}{i}")).collect();
    for set in &sets {
        let mut body = run_body(set, 0);
        body["node"] = json!("n1");
        let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
        assert_eq!(status, 200, "{reply}");
        exec(&n1, set, &format!("echo {set} > /root/f"));
    }
    let every_set_on_one_node_with_its_files = |when: &str| -> usize {
        let mut on_n2 = 0;
        for set in &sets {
            let home = node_of(&n2, set);
            let (home_daemon, away_daemon) = if home == "n2" { (&d2, &d1) } else { (&d1, &d2) };
            on_exactly_one_node(set, home_daemon, away_daemon);
            assert_eq!(exec(&n2, set, "cat /root/f"), *set, "{when}");
            on_n2 += usize::from(home == "n2");
        }
        on_n2
    };

    // One at a time, cancelled once the first has moved: what is in flight finishes, nothing
    // new starts.
    let (status, reply) = n2.call("POST", "/api/v1/nodes/n1/drain?parallel=1", None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["state"], "running", "{reply}");
    wait_for("a first set moved", Duration::from_secs(120), || {
        !drain_of(&n2, "n1")["moved"].as_array().unwrap().is_empty()
    });
    let (status, reply) = n2.call("DELETE", "/api/v1/nodes/n1/drain", None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["state"], "cancelled", "{reply}");
    wait_for(
        "the moves in flight ended",
        Duration::from_secs(120),
        || {
            let drain = drain_of(&n2, "n1");
            drain["inFlight"] == json!([]) && drain["finishedAt"].is_string()
        },
    );
    let moved = drain_of(&n2, "n1")["moved"].as_array().unwrap().len();
    let on_n2 = every_set_on_one_node_with_its_files("cancelled");
    assert_eq!(on_n2, moved);
    assert!(moved < sets.len(), "the cancel stopped the drain: {moved}");
    assert_eq!(drain_of(&n1, "n1")["cordoned"], true);

    // Again, two at a time, and the node driving it killed (SIGKILL) with moves in flight:
    // restarted, its recovery settles each migration, and it resumes the drain.
    let (status, reply) = n1.call("POST", "/api/v1/nodes/n1/drain", None);
    assert_eq!(status, 200, "{reply}");
    wait_for(
        "a move in flight after one moved",
        Duration::from_secs(120),
        || {
            let drain = drain_of(&n2, "n1");
            !drain["moved"].as_array().unwrap().is_empty()
                && !drain["inFlight"].as_array().unwrap().is_empty()
        },
    );
    n1.kill();
    let interrupted = drain_of(&n2, "n1");
    eprintln!("killed during: {interrupted}");
    n1.resume();
    let (_, status) = n1.call("GET", "/api/v1/status", None);
    let recovery = &status["data"]["recovery"];
    eprintln!("recovery after the kill: {recovery}");
    let took = wait_for(
        "the resumed drain finished",
        Duration::from_secs(180),
        || drain_of(&n2, "n1")["state"] == "finished",
    );
    eprintln!("the resumed drain finished {took:?} after the restart");
    let report = drain_of(&n2, "n1");
    assert_eq!(report["failed"], json!([]), "{report}");
    assert_eq!(
        every_set_on_one_node_with_its_files("killed and resumed"),
        sets.len(),
        "{report}"
    );
    let (_, _, events) = common::http_as(
        &n2.addr,
        None,
        "GET",
        "/api/v1/events?replay=300&follow=false",
        None,
    );
    assert!(events.contains("cancelled: no new move starts"), "{events}");
    assert!(events.contains("finished: "), "{events}");

    for set in &sets {
        delete_set(&n2, set);
    }
    drop((n1, n2, d1, d2, etcd));
}

/// How long draining 8 small sets takes, 1, 2 and 4 at a time (back and forth between the two
/// nodes); prints a table for BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn drain_figures() {
    let _daemons = DRAIN_DAEMONS.lock().await;
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let (d1, d2) = (daemon(19).await, daemon(20).await);
    let n1 = Node::start("n1", &etcd.host_port(), &d1.socket());
    let n2 = Node::start("n2", &etcd.host_port(), &d2.socket());
    let p = testkit::unique_name("df");
    let sets: Vec<String> = (0..8).map(|i| format!("{p}{i}")).collect();
    for set in &sets {
        let mut body = run_body(set, 0);
        body["node"] = json!("n1");
        let (status, reply) = n1.call("POST", "/api/v1/replicaSet", Some(body));
        assert_eq!(status, 200, "{reply}");
        exec(&n1, set, "head -c 1048576 /dev/urandom > /root/blob");
    }
    println!("| sets | at a time | drain (API call to the last set moved) |");
    println!("|---|---|---|");
    let mut from = ("n1", &n1, "n2");
    for parallel in [1, 2, 4] {
        let (name, via, to) = from;
        let started = Instant::now();
        let (status, reply) = via.call(
            "POST",
            &format!("/api/v1/nodes/{name}/drain?parallel={parallel}"),
            None,
        );
        assert_eq!(status, 200, "{reply}");
        wait_for("the drain finished", Duration::from_secs(300), || {
            drain_of(via, name)["state"] == "finished"
        });
        let took = started.elapsed();
        let report = drain_of(via, name);
        assert_eq!(
            report["moved"].as_array().unwrap().len(),
            sets.len(),
            "{report}"
        );
        println!(
            "| {} | {parallel} | {:.2} s |",
            sets.len(),
            took.as_secs_f64()
        );
        let (status, reply) = via.call("PATCH", &format!("/api/v1/nodes/{name}/uncordon"), None);
        assert_eq!(status, 200, "{reply}");
        from = if to == "n2" {
            ("n2", &n2, "n1")
        } else {
            ("n1", &n1, "n2")
        };
    }
    for set in &sets {
        delete_set(&n1, set);
    }
    drop((n1, n2, d1, d2, etcd));
}
