//! End to end: the real `gpu-replica serve` binary on the real Docker engine, driven through
//! HTTP and through the CLI binary, with `fake:4` GPUs attached as env.

mod common;

use std::process::Command;

use common::{data_dir, free_port, http_raw, Server, BIN};

use gpu_replica_core::testkit::{self, IMAGE_FILE, TEST_IMAGE};
use serde_json::{json, Value};

fn free_gpus(server: &Server) -> usize {
    let (_, gpus) = server.call("GET", "/api/v1/resources/gpus", None);
    gpus["data"]["gpus"]
        .as_object()
        .unwrap()
        .values()
        .filter(|v| *v == 0)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_over_http_survives_a_server_restart() {
    testkit::docker().await; // the test image
    let dir = data_dir();
    let mut server = Server::start(&dir, None);
    let name = testkit::unique_name("http");
    let run = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 2, "binds": [], "env": ["A=1"], "containerPorts": ["22"]});
    let (status, reply) = server.call("POST", "/api/v1/replicaSet", Some(run));
    assert_eq!((status, &reply["code"]), (200, &json!(200)), "{reply}");
    assert_eq!(reply["msg"], "Success");
    assert_eq!(reply["data"]["name"], format!("{name}-1"));

    let exec = |cmd: &str| json!({"cmd": ["sh", "-c", cmd], "workDir": "/root"});
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(exec(&format!("echo kept > file && rm {IMAGE_FILE} && pwd"))),
    );
    assert_eq!(out["data"], json!({"stdout": "/root\n", "exitCode": 0}));
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(exec("exit 7")),
    );
    assert_eq!(out["data"]["exitCode"], 7);

    let (_, patched) = server.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}"),
        Some(json!({"gpuPatch": {"gpuCount": 1}})),
    );
    assert_eq!(
        patched["data"],
        json!({"containerName": format!("{name}-2")})
    );
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/execute"),
        Some(exec(&format!("cat file; test -e {IMAGE_FILE}; echo $?"))),
    );
    assert_eq!(out["data"]["stdout"], "kept\n1\n");
    assert_eq!(free_gpus(&server), 3);

    let (_, info) = server.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
    let info = &info["data"]["info"];
    assert_eq!(info["version"], 2);
    assert_eq!(info["containerName"], format!("{name}-2"));
    assert!(info["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&json!("CONTAINER_VERSION=2")));
    assert_eq!(info["config"]["Tty"], true);
    assert!(info["hostConfig"]["PortBindings"]["22/tcp"][0]["HostPort"].is_string());
    assert!(info["createTime"].is_string());

    let (_, rolled) = server.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}/rollback"),
        Some(json!({"version": 1})),
    );
    assert_eq!(rolled["data"]["containerName"], format!("{name}-3"));
    let (_, restarted) = server.call("PATCH", &format!("/api/v1/replicaSet/{name}/restart"), None);
    assert_eq!(restarted["data"]["containerName"], format!("{name}-4"));
    assert_eq!(server.versions(&name), vec![4, 3, 2, 1]);
    let (_, history) = server.call("GET", &format!("/api/v1/replicaSet/{name}/history"), None);
    assert_eq!(
        history["data"]["history"][0]["status"]["containerName"],
        format!("{name}-4")
    );

    let (_, committed) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{name}/commit"),
        Some(json!({"newImageName": format!("gpu-replica-test/{name}:saved")})),
    );
    assert_eq!(
        committed["data"]["imageName"],
        format!("gpu-replica-test/{name}:saved")
    );

    // SIGTERM and start again: the same state.
    // The root filesystem's measurement is of the moment (a pass runs at start): left out.
    let info_now = |server: &Server| {
        let (_, mut info) = server.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
        info["data"]["rootfs"] = Value::Null;
        info
    };
    let info_before = info_now(&server);
    let (_, history_before) =
        server.call("GET", &format!("/api/v1/replicaSet/{name}/history"), None);
    let (_, gpus_before) = server.call("GET", "/api/v1/resources/gpus", None);
    let (_, ports_before) = server.call("GET", "/api/v1/resources/ports", None);
    server.restart();
    assert_eq!(info_now(&server), info_before);
    assert_eq!(
        server
            .call("GET", &format!("/api/v1/replicaSet/{name}/history"), None)
            .1,
        history_before
    );
    assert_eq!(
        server.call("GET", "/api/v1/resources/gpus", None).1,
        gpus_before
    );
    assert_eq!(
        server.call("GET", "/api/v1/resources/ports", None).1,
        ports_before
    );

    let (_, stopped) = server.call("PATCH", &format!("/api/v1/replicaSet/{name}/stop"), None);
    assert_eq!(
        stopped,
        json!({"code": 200, "msg": "Success", "data": null})
    );
    assert_eq!(free_gpus(&server), 4);
    let (_, ports) = server.call("GET", "/api/v1/resources/ports", None);
    assert_eq!(ports["data"]["ports"]["UsedPortSet"], json!({}));
    let (_, resumed) = server.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{name}/continue"),
        None,
    );
    assert_eq!(resumed["code"], 200);
    let (_, paused) = server.call("PATCH", &format!("/api/v1/replicaSet/{name}/pause"), None);
    assert_eq!(paused["code"], 200);
    assert_eq!(free_gpus(&server), 2);

    let (_, listed) = server.call("GET", "/api/v1/replicaSet", None);
    assert_eq!(listed["data"]["replicaSets"][0]["status"], "paused");
    let (_, deleted) = server.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(deleted["code"], 200);
    assert_eq!(free_gpus(&server), 4);
    let (status, gone) = server.call("GET", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!((status, gone["code"].as_i64()), (404, Some(1016)));

    let docker = testkit::docker().await;
    gpu_replica_core::ContainerRuntime::remove_image(
        &docker,
        &format!("gpu-replica-test/{name}:saved"),
    )
    .await
    .unwrap();
    let (_, doc) = server.call("GET", "/openapi.json", None);
    assert!(
        doc["paths"]["/api/v1/replicaSet/{name}/rollback"]["patch"].is_object(),
        "{doc}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_over_http_follow_the_contract() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let bar = testkit::unique_name("bar");
    let (_, created) = server.call(
        "POST",
        "/api/v1/volumes",
        Some(json!({"name": bar, "size": "20MB"})),
    );
    assert_eq!(
        created["data"],
        json!({"name": format!("{bar}-1"), "size": "20MB"})
    );
    let (_, info) = server.call("GET", &format!("/api/v1/volumes/{bar}"), None);
    assert_eq!(info["data"]["Info"]["version"], 1);
    assert_eq!(info["data"]["Info"]["opt"]["Name"], format!("{bar}-1"));
    assert_eq!(info["data"]["Info"]["opt"]["Driver"], "local");
    assert_eq!(info["data"]["Info"]["opt"]["DriverOpts"]["size"], "20MB");
    let (_, resized) = server.call(
        "PATCH",
        &format!("/api/v1/volumes/{bar}/size"),
        Some(json!({"size": "40MB"})),
    );
    assert_eq!(
        resized["data"],
        json!({"name": format!("{bar}-2"), "size": "40MB"})
    );
    let (_, history) = server.call("GET", &format!("/api/v1/volumes/{bar}/history"), None);
    assert_eq!(history["data"]["history"][0]["version"], 2);
    assert_eq!(
        history["data"]["history"][1]["status"]["opt"]["Name"],
        format!("{bar}-1")
    );
    let (_, listed) = server.call("GET", "/api/v1/volumes", None);
    assert_eq!(
        listed["data"]["volumes"][0]["dockerName"],
        format!("{bar}-2")
    );
    let (_, deleted) = server.call("DELETE", &format!("/api/v1/volumes/{bar}"), None);
    assert_eq!(deleted["code"], 200);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_a_client_can_cause_has_its_code() {
    testkit::docker().await;
    let dir = data_dir();
    // One host port only, so a second set with a port runs out.
    let port = free_port();
    let server = Server::start(&dir, Some(format!("{port}-{port}")));
    let a = testkit::unique_name("err");
    let b = testkit::unique_name("err");
    let bar = testkit::unique_name("bar");
    let run = |name: &str, gpus: i64, ports: Value| json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": gpus, "binds": [], "env": [], "containerPorts": ports});
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/replicaSet",
                Some(run(&a, 2, json!(["22"])))
            )
            .1["code"],
        200
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/volumes",
                Some(json!({"name": bar, "size": "10MB"}))
            )
            .1["code"],
        200
    );
    let mount = json!({"imageName": TEST_IMAGE, "replicaSetName": b, "gpuCount": 0, "binds": [{"src": format!("{bar}-1"), "dest": "/data"}], "env": [], "containerPorts": []});
    assert_eq!(
        server.call("POST", "/api/v1/replicaSet", Some(mount)).1["code"],
        200
    );
    let exec = json!({"cmd": ["dd", "if=/dev/zero", "of=/data/f", "bs=1024", "count=2048"]});
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/replicaSet/{b}/execute"),
                Some(exec)
            )
            .1["data"]["exitCode"],
        0
    );

    let rs = |tail: &str| format!("/api/v1/replicaSet/{a}{tail}");
    let missing = "/api/v1/replicaSet/nobody".to_string();
    let cases: Vec<(&str, String, Option<&str>, i64, u16)> = vec![
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some("{not json"),
            1000,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(r#"{"gpuCount": "two"}"#),
            1000,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("x", 0, json!([]))
                    .to_string()
                    .replace(TEST_IMAGE, "")
                    .into_boxed_str(),
            )),
            1001,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("", 0, json!([])).to_string().into_boxed_str(),
            )),
            1002,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("a-b", 0, json!([])).to_string().into_boxed_str(),
            )),
            1003,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run(&a, 0, json!([])).to_string().into_boxed_str(),
            )),
            1008,
            409,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("neg", -1, json!([])).to_string().into_boxed_str(),
            )),
            1012,
            400,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("many", 3, json!([])).to_string().into_boxed_str(),
            )),
            1013,
            409,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("noport", 0, json!(["80"])).to_string().into_boxed_str(),
            )),
            1014,
            409,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(&*Box::leak(
                run("noimg", 0, json!([]))
                    .to_string()
                    .replace(TEST_IMAGE, "gpu-replica-test/absent:1")
                    .into_boxed_str(),
            )),
            1036,
            404,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(
                r#"{"imageName": "x", "replicaSetName": "hp", "binds": [{"src": "/etc", "dest": "/mnt"}]}"#,
            ),
            1037,
            403,
        ),
        (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(
                r#"{"imageName": "x", "replicaSetName": "root", "binds": [{"src": "vol", "dest": "/"}]}"#,
            ),
            1000,
            400,
        ),
        (
            "PATCH",
            rs(""),
            Some(r#"{"gpuPatch": {"gpuCount": 2}}"#),
            1009,
            409,
        ),
        (
            "PATCH",
            rs(""),
            Some(r#"{"gpuPatch": {"gpuCount": -2}}"#),
            1012,
            400,
        ),
        ("PATCH", missing.clone(), Some("{}"), 1016, 404),
        ("GET", missing.clone(), None, 1016, 404),
        ("GET", format!("{missing}/history"), None, 1016, 404),
        (
            "PATCH",
            rs("/rollback"),
            Some(r#"{"version": -1}"#),
            1020,
            400,
        ),
        (
            "PATCH",
            rs("/rollback"),
            Some(r#"{"version": 1}"#),
            1022,
            409,
        ),
        (
            "PATCH",
            rs("/rollback"),
            Some(r#"{"version": 9}"#),
            1021,
            409,
        ),
        (
            "POST",
            rs("/commit"),
            // Judged before Docker sees it: the caller's mistake, not a failure of ours.
            Some(r#"{"newImageName": "Not A Valid:Name"}"#),
            1000,
            400,
        ),
        ("POST", rs("/execute"), Some(r#"{"cmd": []}"#), 1000, 400),
        ("DELETE", "/api/v1/volumes/nothing".into(), None, 1033, 404),
        (
            "POST",
            "/api/v1/volumes".into(),
            Some(r#"{"name": "", "size": "1GB"}"#),
            1024,
            400,
        ),
        (
            "POST",
            "/api/v1/volumes".into(),
            Some(&*Box::leak(
                format!(r#"{{"name": "{bar}", "size": "1GB"}}"#).into_boxed_str(),
            )),
            1026,
            409,
        ),
        (
            "POST",
            "/api/v1/volumes".into(),
            Some(r#"{"name": "v", "size": "1PB"}"#),
            1029,
            400,
        ),
        (
            "POST",
            "/api/v1/volumes".into(),
            Some(r#"{"name": "a-b", "size": "1GB"}"#),
            1031,
            400,
        ),
        (
            "POST",
            "/api/v1/volumes".into(),
            Some(r#"{"name": "/v", "size": "1GB"}"#),
            1032,
            400,
        ),
        (
            "PATCH",
            format!("/api/v1/volumes/{bar}/size"),
            Some(r#"{"size": "10MB"}"#),
            1028,
            409,
        ),
        (
            "PATCH",
            format!("/api/v1/volumes/{bar}/size"),
            Some(r#"{"size": "1MB"}"#),
            1030,
            409,
        ),
        ("DELETE", format!("/api/v1/volumes/{bar}"), None, 1025, 409),
        (
            "GET",
            "/api/v1/volumes/nothing/history".into(),
            None,
            1033,
            404,
        ),
        (
            "GET",
            "/api/v1/resources/gpus?detail=maybe".into(),
            None,
            1000,
            400,
        ),
        ("GET", "/api/v1/nothing".into(), None, 1000, 404),
    ];
    for (method, path, body, code, status) in cases {
        let (got_status, reply) = http_raw(&server.addr, method, &path, body);
        assert_eq!(
            (reply["code"].as_i64(), got_status),
            (Some(code), status),
            "{method} {path} {body:?}: {reply}"
        );
        assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(reply["data"], Value::Null);
    }

    // State-dependent refusals.
    assert_eq!(server.call("PATCH", &rs("/stop"), None).1["code"], 200);
    assert_eq!(
        server
            .call("POST", &rs("/execute"), Some(json!({"cmd": ["true"]})))
            .1["code"],
        1006
    );
    assert_eq!(server.call("PATCH", &rs("/pause"), None).1["code"], 1018);
    let c = testkit::unique_name("err");
    assert_eq!(
        server
            .call("POST", "/api/v1/replicaSet", Some(run(&c, 2, json!([]))))
            .1["code"],
        200
    );
    let (status, refused) = server.call("PATCH", &rs("/continue"), None);
    assert_eq!(
        (status, refused["code"].as_i64()),
        (409, Some(1019)),
        "{refused}"
    );

    for name in [&a, &b, &c] {
        assert_eq!(
            server
                .call("DELETE", &format!("/api/v1/replicaSet/{name}"), None)
                .1["code"],
            200
        );
    }
    assert_eq!(
        server
            .call("DELETE", &format!("/api/v1/volumes/{bar}"), None)
            .1["code"],
        200
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_lifecycle() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let name = testkit::unique_name("cli");
    let out = server.cli(&[
        "run", &name, "--image", TEST_IMAGE, "--gpus", "2", "--port", "22", "--env", "A=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{name}-1")
    );

    let out = server.cli(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo installed > /root/pkg",
    ]);
    assert!(out.status.success());
    let out = server.cli(&["exec", &name, "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    let out = server.cli(&["patch", &name, "--gpus", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{name}-2")
    );
    let out = server.cli(&["exec", &name, "--", "cat", "/root/pkg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "installed\n");

    let listed = String::from_utf8_lossy(&server.cli(&["ls"]).stdout).to_string();
    assert!(listed.starts_with("NAME"), "{listed}");
    assert!(
        listed.contains(&name) && listed.contains("running"),
        "{listed}"
    );

    let out = server.cli(&["rollback", &name, "1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{name}-3")
    );
    let history = server.cli_json(&["history", &name]);
    assert_eq!(history["history"].as_array().unwrap().len(), 3);

    assert!(server.cli(&["stop", &name]).status.success());
    let gpus = server.cli_json(&["gpus"]);
    assert!(gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["holder"].is_null()));
    let ports = server.cli_json(&["ports"]);
    assert_eq!(ports["ports"]["UsedPortSet"], json!({}));

    // Errors: non-zero exit and the server's message.
    let out = server.cli(&["run", "bad-name", "--image", TEST_IMAGE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1003"));

    let bar = testkit::unique_name("bar");
    assert!(server
        .cli(&["volume", "create", &bar, "10MB"])
        .status
        .success());
    let out = server.cli(&["volume", "resize", &bar, "20MB"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{bar}-2")
    );
    let info = server.cli_json(&["volume", "info", &bar]);
    assert_eq!(info["Info"]["version"], 2);
    assert!(server.cli(&["volume", "rm", &bar]).status.success());
    assert!(server.cli(&["rm", &name]).status.success());
    assert!(
        String::from_utf8_lossy(&server.cli(&["ls"]).stdout)
            .lines()
            .count()
            == 1
    );

    let completions = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&completions.stdout).contains("gpu-replica"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_public_address_needs_insecure() {
    let dir = data_dir();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--gpus",
            "none",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn with_a_token_the_cli_must_send_it() {
    let dir = data_dir();
    std::fs::write(dir.join("token"), "t0ken\n").unwrap();
    let addr = format!("0.0.0.0:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--gpus",
            "fake:1",
            "--addr",
            &addr,
            "--insecure",
            "--log-level",
            "warn",
        ])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--data-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let local = addr.replace("0.0.0.0", "http://127.0.0.1");
    let gpus = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["--server", &local, "--json", "gpus"]);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.output().unwrap()
    };
    let mut ready = false;
    for _ in 0..100 {
        if gpus(Some("t0ken")).status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "server with a token did not answer");
    let refused = gpus(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1042"));
    assert!(!gpus(Some("wrong")).status.success());
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir).ok();
}
