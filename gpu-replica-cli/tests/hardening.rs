//! The server tried from outside as a new user would: the README's curl examples typed as they
//! are, odd names and bodies, and a kill at a bad moment.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_all_gpus_free, data_dir, http_raw, http_typed, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use gpu_replica_core::ContainerRuntime;
use serde_json::{json, Value};

/// The `sh` block of the README's "The HTTP API" section.
fn readme_curl_block() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("## The HTTP API")
        .expect("README has an HTTP API section")
        .1;
    let block = section.split_once("```sh\n").expect("an sh block").1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_string()
}

/// Tags the test image as `image` unless the host has it; returns whether it did.
fn provide_image(image: &str) -> bool {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .unwrap()
        .status
        .success();
    if !present {
        assert!(Command::new("docker")
            .args(["tag", TEST_IMAGE, image])
            .status()
            .unwrap()
            .success());
    }
    !present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_examples_work_as_written() {
    testkit::docker().await;
    let tagged = provide_image("ubuntu:22.04");
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let block = readme_curl_block();
    assert!(block.contains("S=http://127.0.0.1:2378/api/v1"));
    let block = block.replace(
        "S=http://127.0.0.1:2378/api/v1",
        &format!("S=http://{}/api/v1", server.addr),
    );
    // Each answer on a line of its own; the commands themselves are run as written.
    let script = format!("set -e\ncurl() {{ command curl \"$@\"; echo; }}\n{block}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(answers.len(), block.matches("curl -s").count(), "{stdout}");
    for answer in &answers {
        assert_eq!(answer["code"], 200, "{answer}\nall: {stdout}");
    }
    for volume in ["data", "other"] {
        let (status, answer) = server.call("DELETE", &format!("/api/v1/volumes/{volume}"), None);
        assert_eq!(status, 200, "{answer}");
    }
    if tagged {
        Command::new("docker")
            .args(["rmi", "ubuntu:22.04"])
            .output()
            .unwrap();
    }
}

fn post_typed(addr: &str, path: &str, content_type: Option<&str>, body: &str) -> (u16, Value) {
    http_typed(addr, "POST", path, content_type, Some(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_names_are_judged_before_docker_sees_them() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let volume = testkit::unique_name("ctype");
    let body = json!({"name": volume, "size": "10MB"}).to_string();
    // curl's default form type and a missing type are read as JSON; other types are 1000.
    let (status, answer) = post_typed(
        &server.addr,
        "/api/v1/volumes",
        Some("application/x-www-form-urlencoded"),
        &body,
    );
    assert_eq!(
        (status, answer["code"].clone()),
        (200, json!(200)),
        "{answer}"
    );
    let other = json!({"name": format!("{volume}b"), "size": "10MB"}).to_string();
    let (status, answer) = post_typed(&server.addr, "/api/v1/volumes", None, &other);
    assert_eq!(
        (status, answer["code"].clone()),
        (200, json!(200)),
        "{answer}"
    );
    let (status, answer) = post_typed(&server.addr, "/api/v1/volumes", Some("text/plain"), &body);
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!(1000)),
        "{answer}"
    );

    // No body at all reads as `{}`, so the answer names what is missing (here: 1024, the
    // volume name is empty).
    let (status, answer) = post_typed(&server.addr, "/api/v1/volumes", None, "");
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!(1024)),
        "{answer}"
    );
    assert!(answer["msg"].as_str().unwrap().contains("name"), "{answer}");

    // Names Docker would refuse are 400 with the contract's code, never a 500.
    for name in ["..", "_x", ".a"] {
        let run = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
        let (status, answer) = http_raw(
            &server.addr,
            "POST",
            "/api/v1/replicaSet",
            Some(&run.to_string()),
        );
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!(1000)),
            "{name}: {answer}"
        );
    }
    for name in ["__main__", ".."] {
        let create = json!({"name": name, "size": "1GB"});
        let (status, answer) = http_raw(
            &server.addr,
            "POST",
            "/api/v1/volumes",
            Some(&create.to_string()),
        );
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!(1000)),
            "{name}: {answer}"
        );
    }
    for name in [volume.clone(), format!("{volume}b")] {
        assert_eq!(
            server
                .call("DELETE", &format!("/api/v1/volumes/{name}"), None)
                .0,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_killed_while_docker_stops_the_old_container_ends_running() {
    testkit::docker().await;
    let dir = data_dir();
    // A 4 s grace that the test image's sh (PID 1 without init) sits out in full.
    let mut server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_STOP_TIMEOUT", "4"),
            ("GPU_REPLICA_NO_INIT", "true"),
        ],
    );
    let name = testkit::unique_name("killed");
    let run = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 1});
    let (status, answer) = server.call("POST", "/api/v1/replicaSet", Some(run));
    assert_eq!(status, 200, "{answer}");

    let addr = server.addr.clone();
    let patch_path = format!("/api/v1/replicaSet/{name}");
    let patch = std::thread::spawn(move || {
        let body = json!({"gpuPatch": {"gpuCount": 2}}).to_string();
        let _ = std::panic::catch_unwind(|| http_raw(&addr, "PATCH", &patch_path, Some(&body)));
    });
    std::thread::sleep(Duration::from_millis(1500));
    // SIGKILL in the middle of Docker's grace period for the old container.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let killed_at = Instant::now();
    let _ = patch.join();
    server.start_again();

    // Long after Docker would have finished the abandoned stop, the set runs as recorded.
    let settled = killed_at + Duration::from_secs(7);
    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
    let (status, info) = server.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(status, 200, "{info}");
    let container = info["data"]["info"]["containerName"]
        .as_str()
        .unwrap_or_else(|| panic!("{info}"))
        .to_string();
    let running = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &container])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
    let exec = json!({"cmd": ["true"]});
    let (status, answer) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(exec),
    );
    assert_eq!(
        (status, answer["code"].clone()),
        (200, json!(200)),
        "{answer}"
    );
    let (status, _) = server.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_the_kernel_cannot_take_are_refused_before_docker_is_asked() {
    let docker = testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let name = testkit::unique_name("nul");
    let run = |extra: Value| {
        let mut body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 1});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.call("POST", "/api/v1/replicaSet", Some(body))
    };
    // Each field that reaches the container's process or a mount, with the field named.
    for (extra, field) in [
        (json!({"env": ["A=1", "B=\u{0}x"]}), "env[1]"),
        (json!({"env": ["A\u{0}=x"]}), "env[0]"),
        (json!({"cmd": ["sh", "-c", "echo \u{0}"]}), "cmd[2]"),
        (json!({"cmd": ["sh\u{0}"]}), "cmd[0]"),
        (
            json!({"binds": [{"src": "/tmp", "dest": "/data\u{0}"}]}),
            "bind destination",
        ),
        (
            json!({"binds": [{"src": "/tmp", "dest": "/data:ro"}]}),
            "bind destination",
        ),
        (
            json!({"binds": [{"src": "/tmp\u{0}", "dest": "/data"}]}),
            "bind source",
        ),
    ] {
        let (status, answer) = run(extra.clone());
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!(1000)),
            "{extra}: {answer}"
        );
        assert!(
            answer["msg"].as_str().unwrap().contains(field),
            "{extra}: {answer}"
        );
    }
    // Nothing was made or claimed for them.
    assert!(docker
        .inspect_container(&format!("{name}-1"))
        .await
        .unwrap()
        .is_none());
    let (_, gpus) = server.call("GET", "/api/v1/resources/gpus", None);
    assert_all_gpus_free(&gpus);
    let (status, _) = server.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(status, 404);

    // The same for exec's argv and working directory, on a running set.
    let volume = format!("{name}v");
    let (status, answer) = server.call(
        "POST",
        "/api/v1/volumes",
        Some(json!({"name": volume, "size": "10MB"})),
    );
    assert_eq!(status, 200, "{answer}");
    let bind = json!({"src": format!("{volume}-1"), "dest": "/data"});
    let (status, answer) = run(json!({"env": ["A=1"], "binds": [bind]}));
    assert_eq!(status, 200, "{answer}");
    let exec = format!("/api/v1/replicaSet/{name}/execute");
    for (body, field) in [
        (json!({"cmd": ["echo", "a\u{0}b"]}), "cmd[1]"),
        (json!({"cmd": ["pwd"], "workDir": "/ro\u{0}ot"}), "workDir"),
        (json!({"cmd": ["pwd"], "workDir": "root"}), "workDir"),
    ] {
        let (status, answer) = server.call("POST", &exec, Some(body.clone()));
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!(1000)),
            "{body}: {answer}"
        );
        assert!(
            answer["msg"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    // An empty workDir is the container's own.
    let (_, out) = server.call(
        "POST",
        &exec,
        Some(json!({"cmd": ["sh", "-c", "pwd"], "workDir": ""})),
    );
    assert_eq!(out["data"]["exitCode"], 0, "{out}");
    // A patch that swaps in a bind with a NUL byte is refused, and the set stays as it was.
    let (status, answer) = server.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}"),
        Some(json!({"volumePatch": {"oldBind": bind,
                                    "newBind": {"src": format!("{volume}-1"), "dest": "/y\u{0}"}}})),
    );
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!(1000)),
        "{answer}"
    );
    assert!(
        answer["msg"].as_str().unwrap().contains("bind destination"),
        "{answer}"
    );
    assert_eq!(server.versions(&name), vec![1]);
    assert_eq!(
        server
            .call("DELETE", &format!("/api/v1/replicaSet/{name}"), None)
            .0,
        200
    );
    assert_eq!(
        server
            .call("DELETE", &format!("/api/v1/volumes/{volume}"), None)
            .0,
        200
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// `field` of `/proc/self/status` inside set `name`.
fn proc_status(server: &Server, name: &str, field: &str) -> String {
    let script = format!("grep '^{field}:' /proc/self/status | cut -f2");
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(json!({"cmd": ["sh", "-c", script]})),
    );
    out["data"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_with_least_privilege_and_a_fork_loop_stays_in_its_set() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_PIDS_LIMIT", "40")]);
    let (a, b) = (testkit::unique_name("lpa"), testkit::unique_name("lpb"));
    for name in [&a, &b] {
        let run = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
        let (status, answer) = server.call("POST", "/api/v1/replicaSet", Some(run));
        assert_eq!(status, 200, "{answer}");
    }
    // No new privileges; NET_RAW (bit 13) and MKNOD (bit 27) gone from the effective set.
    assert_eq!(proc_status(&server, &a, "NoNewPrivs"), "1");
    let caps = u64::from_str_radix(&proc_status(&server, &a, "CapEff"), 16).unwrap();
    assert_eq!(caps & (1 << 13), 0, "CAP_NET_RAW in {caps:x}");
    assert_eq!(caps & (1 << 27), 0, "CAP_MKNOD in {caps:x}");
    assert_ne!(caps, 0, "the rest of Docker's default set stays");
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{a}/execute"),
        Some(json!({"cmd": ["sh", "-c", "ulimit -n"]})),
    );
    assert_eq!(out["data"]["stdout"], "16384\n", "{out}");
    // A bounded fork loop: 100 sleepers asked for, the set's 40 processes at most.
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{a}/execute"),
        Some(json!({"cmd": ["sh", "-c",
            // The loop in a subshell (a shell that cannot fork gives up); then counted
            // with builtins only, which need no process.
            "(for i in $(seq 100); do sleep 3 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#"]})),
    );
    let stdout = out["data"]["stdout"].as_str().unwrap_or_default();
    let processes: usize = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count: {out}"));
    assert!(processes <= 40, "{processes} processes: {out}");
    // Meanwhile another set answers at once.
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{b}/execute"),
        Some(json!({"cmd": ["echo", "still here"]})),
    );
    assert_eq!(out["data"]["stdout"], "still here\n", "{out}");
    // What is in force is shown.
    let (_, status) = server.call("GET", "/api/v1/status", None);
    let isolation = &status["data"]["isolation"];
    assert_eq!(isolation["noNewPrivileges"], true, "{status}");
    assert_eq!(
        isolation["droppedCapabilities"],
        json!(["NET_RAW", "MKNOD"])
    );
    assert_eq!(isolation["pidsLimit"], 40);
    assert_eq!(isolation["privileged"], false);
    // Fake GPUs never go through the NVIDIA container toolkit: nothing is refused for it.
    assert_eq!(
        status["data"]["toolkit"],
        json!({"used": false, "version": null, "vulnerableTo": [], "refusedEnv": []})
    );
    let run = json!({"imageName": TEST_IMAGE, "replicaSetName": format!("{a}p"), "gpuCount": 0,
                     "env": ["LD_PRELOAD="]});
    assert_eq!(server.call("POST", "/api/v1/replicaSet", Some(run)).0, 200);
    let path = format!("/api/v1/replicaSet/{a}p");
    assert_eq!(server.call("DELETE", &path, None).0, 200);
    for name in [&a, &b] {
        let path = format!("/api/v1/replicaSet/{name}");
        assert_eq!(server.call("DELETE", &path, None).0, 200);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_relaxes_each_wall_on_its_own() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_ALLOW_SETUID", "true"),
            ("GPU_REPLICA_ALLOW_NET_RAW", "true"),
            ("GPU_REPLICA_PIDS_LIMIT", "none"),
        ],
    );
    let name = testkit::unique_name("relaxed");
    let run = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    assert_eq!(server.call("POST", "/api/v1/replicaSet", Some(run)).0, 200);
    assert_eq!(proc_status(&server, &name, "NoNewPrivs"), "0");
    let caps = u64::from_str_radix(&proc_status(&server, &name, "CapEff"), 16).unwrap();
    assert_ne!(caps & (1 << 13), 0, "CAP_NET_RAW kept: {caps:x}");
    assert_eq!(caps & (1 << 27), 0, "CAP_MKNOD still dropped: {caps:x}");
    let (_, status) = server.call("GET", "/api/v1/status", None);
    assert_eq!(
        status["data"]["isolation"]["pidsLimit"],
        Value::Null,
        "{status}"
    );
    assert_eq!(
        status["data"]["isolation"]["droppedCapabilities"],
        json!(["MKNOD"])
    );
    let path = format!("/api/v1/replicaSet/{name}");
    assert_eq!(server.call("DELETE", &path, None).0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
