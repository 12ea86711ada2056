//! Crash safety: the real server is killed at every failpoint of every operation, started
//! again, and must have finished or undone what was in flight: no GPU or port leaked or held
//! twice, every current container present (and running when it should), version numbers never
//! reused, files in the rootfs and in volumes intact, and the next patch works.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{data_dir, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use gpu_replica_core::{ContainerRuntime, FAILPOINTS, FAILPOINT_EXIT_CODE};
use serde_json::{json, Value};

/// Names of one crash test's objects (Docker names are global: tests run side by side).
struct World {
    a: String,
    s: String,
    b: String,
    vol: String,
}

impl World {
    fn new() -> World {
        World {
            a: testkit::unique_name("a"),
            s: testkit::unique_name("s"),
            b: testkit::unique_name("b"),
            vol: testkit::unique_name("vol"),
        }
    }
}

/// The world every crash starts from: volume `vol` mounted by set `a` (1 GPU, one port, files
/// in its rootfs and its volume), and set `s` stopped.
fn prepare(server: &Server, w: &World) {
    let (_, created) = server.call(
        "POST",
        "/api/v1/volumes",
        Some(json!({"name": w.vol, "size": "20MB"})),
    );
    assert_eq!(created["code"], 200, "{created}");
    let run = |name: &str, binds: Value| json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 1, "binds": binds, "env": [], "containerPorts": ["22"]});
    let (_, a) = server.call(
        "POST",
        "/api/v1/replicaSet",
        Some(run(
            &w.a,
            json!([{"src": format!("{}-1", w.vol), "dest": "/data"}]),
        )),
    );
    assert_eq!(a["code"], 200, "{a}");
    let write =
        json!({"cmd": ["sh", "-c", "echo rootfs > /root/keep && echo volume > /data/keep"]});
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{}/execute", w.a),
        Some(write),
    );
    assert_eq!(out["data"]["exitCode"], 0, "{out}");
    let (_, s) = server.call("POST", "/api/v1/replicaSet", Some(run(&w.s, json!([]))));
    assert_eq!(s["code"], 200, "{s}");
    assert_eq!(
        server
            .call("PATCH", &format!("/api/v1/replicaSet/{}/stop", w.s), None)
            .1["code"],
        200
    );
}

/// The request that passes `failpoint`.
fn request_for(failpoint: &str, w: &World) -> (&'static str, String, Option<Value>) {
    match failpoint.split('.').next().unwrap() {
        "run" => (
            "POST",
            "/api/v1/replicaSet".into(),
            Some(
                json!({"imageName": TEST_IMAGE, "replicaSetName": w.b, "gpuCount": 2, "binds": [], "env": [], "containerPorts": ["80"]}),
            ),
        ),
        "version" => (
            "PATCH",
            format!("/api/v1/replicaSet/{}", w.a),
            Some(json!({"gpuPatch": {"gpuCount": 2}})),
        ),
        // An image change (to the same image: a fresh filesystem) carrying /root, with more GPUs.
        "image" => (
            "PATCH",
            format!("/api/v1/replicaSet/{}", w.a),
            Some(
                json!({"imageName": TEST_IMAGE, "keepPaths": ["/root"], "gpuPatch": {"gpuCount": 2}}),
            ),
        ),
        "stop" => ("PATCH", format!("/api/v1/replicaSet/{}/stop", w.a), None),
        "pause" => ("PATCH", format!("/api/v1/replicaSet/{}/pause", w.a), None),
        "continue" => (
            "PATCH",
            format!("/api/v1/replicaSet/{}/continue", w.s),
            None,
        ),
        "delete" => ("DELETE", format!("/api/v1/replicaSet/{}", w.a), None),
        "resize" => (
            "PATCH",
            format!("/api/v1/volumes/{}/size", w.vol),
            Some(json!({"size": "40MB"})),
        ),
        "clone" => (
            "POST",
            format!("/api/v1/replicaSet/{}/clone", w.a),
            Some(json!({"name": w.b, "gpuCount": 1})),
        ),
        other => panic!("no request for failpoint group {other}"),
    }
}

/// The files `prepare` wrote into `a`'s rootfs and volume are still there.
fn assert_files_intact(server: &Server, w: &World, context: &str) {
    let (_, out) = server.call(
        "POST",
        &format!("/api/v1/replicaSet/{}/execute", w.a),
        Some(json!({"cmd": ["cat", "/root/keep", "/data/keep"]})),
    );
    assert_eq!(
        out["data"]["stdout"], "rootfs\nvolume\n",
        "{context}: {out}"
    );
}

/// Every invariant the crash must not have broken.
async fn check(server: &Server, w: &World, failpoint: &str) {
    let (_, list) = server.call("GET", "/api/v1/replicaSet", None);
    let sets = list["data"]["replicaSets"].as_array().unwrap().clone();
    let (_, gpus) = server.call("GET", "/api/v1/resources/gpus?detail=true", None);
    let (_, ports) = server.call("GET", "/api/v1/resources/ports", None);

    // GPUs: held exactly by the sets that hold claims, never twice.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut expected_ports: BTreeSet<String> = BTreeSet::new();
    for set in &sets {
        if set["status"] == "stopped" {
            continue;
        }
        for gpu in set["gpus"].as_array().unwrap() {
            let previous = expected.insert(
                gpu.as_str().unwrap().into(),
                set["name"].as_str().unwrap().into(),
            );
            assert!(
                previous.is_none(),
                "{failpoint}: GPU {gpu} in two sets: {list}"
            );
        }
        for port in set["ports"].as_object().unwrap().values() {
            assert!(
                expected_ports.insert(port.to_string()),
                "{failpoint}: port {port} twice"
            );
        }
    }
    let held: BTreeMap<String, String> = gpus["data"]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| !g["holder"].is_null())
        .map(|g| {
            (
                g["uuid"].as_str().unwrap().into(),
                g["holder"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        held, expected,
        "{failpoint}: GPU claims differ from the sets\n{list}\n{gpus}"
    );
    let used: BTreeSet<String> = ports["data"]["ports"]["UsedPortSet"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        used, expected_ports,
        "{failpoint}: port claims differ from the sets"
    );

    let docker = testkit::docker().await;
    for set in &sets {
        let name = set["name"].as_str().unwrap();
        // The current container exists, and runs when the set does.
        let container = set["containerName"].as_str().unwrap();
        let state = docker.inspect_container(container).await.unwrap();
        let state = state.unwrap_or_else(|| panic!("{failpoint}: {container} is gone"));
        assert_eq!(
            state.running,
            set["status"] == "running",
            "{failpoint}: {container} {}",
            set["status"]
        );
        // Versions: newest first, no number twice, the current one on top.
        let versions = server.versions(name);
        assert!(
            versions.windows(2).all(|w| w[0] > w[1]),
            "{failpoint}: {versions:?}"
        );
        assert_eq!(
            Some(&set["version"].as_i64().unwrap()),
            versions.first(),
            "{failpoint}"
        );
        // Files survive.
        if name == w.a && set["status"] == "running" {
            assert_files_intact(server, w, failpoint);
        }
    }
    // No leftover containers of ours beyond the current ones.
    let instance = format!("io.gpu-replica.instance={}", server.data_dir.display());
    let mine: BTreeSet<String> = docker
        .list_containers(&instance)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    let current: BTreeSet<String> = sets
        .iter()
        .map(|s| s["containerName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(mine, current, "{failpoint}: leftover containers");
    // A clone that was undone leaves no base image behind.
    if !sets.iter().any(|s| s["name"] == w.b.as_str()) {
        // Base images are named by the clone's id: look for any of this server's.
        let bases: Vec<String> = docker
            .list_images(&instance)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|i| i.tags)
            .filter(|t| t.ends_with(":base"))
            .collect();
        assert!(bases.is_empty(), "{failpoint}: {bases:?} left behind");
    }

    // The next patch works, with a version number never used before.
    if let Some(a) = sets.iter().find(|s| s["name"] == w.a.as_str()) {
        let before = a["version"].as_i64().unwrap();
        let (_, history) = server.call("GET", &format!("/api/v1/replicaSet/{}/history", w.a), None);
        let (_, patched) = server.call(
            "PATCH",
            &format!("/api/v1/replicaSet/{}", w.a),
            Some(json!({})),
        );
        assert_eq!(patched["code"], 200, "{failpoint}: {patched}");
        let (_, info) = server.call("GET", &format!("/api/v1/replicaSet/{}", w.a), None);
        let after = info["data"]["info"]["version"].as_i64().unwrap();
        assert!(after > before, "{failpoint}");
        assert!(history["data"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["version"].as_i64() != Some(after)));
        if a["status"] == "running" {
            assert_files_intact(server, w, &format!("{failpoint}, after the next patch"));
        }
    }
}

/// Kills the server at each failpoint of `group`, restarts it, checks.
async fn crash_at_every_failpoint_of(group: &str) {
    testkit::docker().await;
    for failpoint in FAILPOINTS
        .iter()
        .filter(|f| f.starts_with(&format!("{group}.")))
    {
        let dir = data_dir();
        let mut server = Server::start(&dir, None);
        let world = World::new();
        prepare(&server, &world);
        server.restart_armed(failpoint);
        let (method, path, body) = request_for(failpoint, &world);
        server.call_may_fail(method, &path, body);
        let code = server.wait_exit(Duration::from_secs(60));
        assert_eq!(
            code,
            Some(FAILPOINT_EXIT_CODE),
            "{failpoint} was not reached"
        );
        server.start_again();
        // The recovery is reported: what it did with the operation in flight, nothing missing.
        let (_, status) = server.call("GET", "/api/v1/status", None);
        let recovery = &status["data"]["recovery"];
        assert_eq!(recovery["missing"], json!([]), "{failpoint}: {status}");
        // A crash's leftovers are the records' own: removed, never taken for unknowns.
        assert_eq!(recovery["unknown"], json!([]), "{failpoint}: {status}");
        let handled = ["finished", "undone", "orphansRemoved"]
            .iter()
            .map(|k| recovery[k].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        let nothing_left = ["delete.records_removed", "resize.finished"].contains(failpoint)
            || failpoint.ends_with(".old_removed");
        assert!(
            handled > 0 || nothing_left,
            "{failpoint}: recovery reported nothing: {status}"
        );
        check(&server, &world, failpoint).await;
        // Clean up through the API: it must still work.
        let (_, list) = server.call("GET", "/api/v1/replicaSet", None);
        for set in list["data"]["replicaSets"].as_array().unwrap() {
            let name = set["name"].as_str().unwrap();
            let (_, deleted) = server.call("DELETE", &format!("/api/v1/replicaSet/{name}"), None);
            assert_eq!(deleted["code"], 200, "{failpoint}: {deleted}");
        }
        let (_, deleted) = server.call("DELETE", &format!("/api/v1/volumes/{}", world.vol), None);
        assert_eq!(deleted["code"], 200, "{failpoint}: {deleted}");
        drop(server);
        std::fs::remove_dir_all(dir).ok();
    }
}

macro_rules! crash_tests {
    ($($group:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $group() {
                crash_at_every_failpoint_of(stringify!($group)).await;
            }
        )*
    };
}

mod killed_at_every_failpoint_of {
    use super::*;
    crash_tests!(run, version, image, stop, pause, delete, resize, clone);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r#continue() {
        crash_at_every_failpoint_of("continue").await;
    }
}
