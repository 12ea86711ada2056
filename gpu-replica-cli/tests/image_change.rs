//! Changing a set's image on the real server and Docker: a set on image A with files in
//! `/root` (a mode, an owner, a symlink, a folder), in `/workspace`, outside the kept folders
//! and on a volume is patched to image B with more GPUs in the same call. B's files are there,
//! the kept folders as they were, the rest of A's filesystem gone, the volume mounted, the host
//! port and the environment the same; history and events name both images; a rollback returns
//! A; refusals leave the set running untouched; the CLI does it too.

mod common;

use std::process::Command;

use common::{data_dir, Server, BIN};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

fn sh(server: &Server, set: &str, script: &str) -> (String, i64) {
    common::sh_in(server, None, set, script)
}

fn item(server: &Server, set: &str) -> Value {
    let (_, list) = server.call("GET", "/api/v1/replicaSet", None);
    list["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == set)
        .unwrap_or_else(|| panic!("{set} not listed: {list}"))
        .clone()
}

/// Image B: the test image with a file of its own in `/etc` and in `/root`, and an
/// environment variable of its own.
fn image_b(tag: &str) -> String {
    let image = format!("gpu-replica-test/image-b:{tag}");
    let name = format!("{tag}-maker");
    let ran = Command::new("docker")
        .args([
            "run",
            "--name",
            &name,
            "--label",
            "io.gpu-replica.test=1",
            TEST_IMAGE,
        ])
        .args([
            "sh",
            "-c",
            "echo b > /etc/image-b && echo b-root > /root/from-b && echo b-notes > /root/notes.txt",
        ])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    let committed = Command::new("docker")
        .args([
            "commit",
            "-c",
            "LABEL io.gpu-replica.test=1",
            "-c",
            "ENV FROM_B=yes",
            "-c",
            "CMD [\"/bin/sh\"]",
            &name,
            &image,
        ])
        .output()
        .unwrap();
    assert!(committed.status.success(), "{committed:?}");
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_changes_its_image_keeping_chosen_folders_and_rolls_back() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let tag = testkit::unique_name("b");
    let b = image_b(&tag);
    let set = testkit::unique_name("train");
    let vol = testkit::unique_name("vol");
    let (_, created) = server.call(
        "POST",
        "/api/v1/volumes",
        Some(json!({"name": vol, "size": "20MB"})),
    );
    assert_eq!(created["code"], 200, "{created}");
    let (_, ran) = server.call(
        "POST",
        "/api/v1/replicaSet",
        Some(
            json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 1,
                    "binds": [{"src": format!("{vol}-1"), "dest": "/data"}],
                    "env": ["MINE=1"], "containerPorts": ["80"]}),
        ),
    );
    assert_eq!(ran["code"], 200, "{ran}");
    let (_, code) = sh(
        &server,
        &set,
        "echo mine > /root/notes.txt && busybox chmod 600 /root/notes.txt && \
         busybox chown 1000:1000 /root/notes.txt && busybox ln -s notes.txt /root/link && \
         mkdir -p /root/proj/src && echo 'print(1)' > /root/proj/src/a.py && \
         mkdir -p /workspace && echo w > /workspace/w.txt && echo outside > /opt/outside.txt && \
         echo volume > /data/v.txt",
    );
    assert_eq!(code, 0);
    let before = item(&server, &set);
    let host_port = before["ports"]["80/tcp"].clone();
    assert!(host_port.is_u64(), "{before}");
    let stat = "busybox stat -c '%n %a %u:%g %Y' /root/notes.txt /root/proj/src/a.py";
    let (stat_before, _) = sh(&server, &set, stat);

    // Refusals: nothing stops, nothing changes.
    let patch =
        |body: Value| server.call("PATCH", &format!("/api/v1/replicaSet/{set}"), Some(body));
    let (_, refused) = patch(json!({"imageName": "gpu-replica-test/no-such-image:1"}));
    assert_eq!(refused["code"], 1036, "{refused}");
    let (_, refused) = patch(json!({"imageName": b, "keepPaths": ["/root", "/nope"]}));
    assert_eq!(refused["code"], 1000, "{refused}");
    assert!(
        refused["msg"].as_str().unwrap().contains("/nope"),
        "{refused}"
    );
    let (_, refused) = patch(json!({"imageName": b, "keepPaths": ["relative/path"]}));
    assert_eq!(refused["code"], 1000, "{refused}");
    let (_, refused) = patch(json!({"imageName": b, "keepPaths": ["/root/../etc"]}));
    assert_eq!(refused["code"], 1000, "{refused}");
    let (_, refused) = patch(json!({"keepPaths": ["/root"]}));
    assert_eq!(refused["code"], 1000, "{refused}");
    let untouched = item(&server, &set);
    assert_eq!(
        (
            &untouched["version"],
            &untouched["status"],
            &untouched["containerName"]
        ),
        (
            &before["version"],
            &before["status"],
            &before["containerName"]
        ),
        "refusals left the set as it was"
    );

    // The change, with 2 GPUs in the same call, keeping /root and /workspace.
    let (_, changed) = patch(
        json!({"imageName": b, "keepPaths": ["/root", "/workspace/"],
                                    "gpuPatch": {"gpuCount": 2}}),
    );
    assert_eq!(changed["code"], 200, "{changed}");
    let after = item(&server, &set);
    assert_eq!(after["version"], 2, "{after}");
    assert_eq!(after["image"], b.as_str(), "{after}");
    assert_eq!(after["status"], "running");
    assert_eq!(after["gpus"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after["ports"]["80/tcp"], host_port, "the host port stays");
    let (out, code) = sh(
        &server,
        &set,
        "cat /etc/image-b /root/from-b /root/notes.txt /root/proj/src/a.py /workspace/w.txt \
         /data/v.txt; busybox readlink /root/link; echo $MINE $FROM_B; \
         test -e /opt/outside.txt && echo outside-still-here; \
         echo $NVIDIA_VISIBLE_DEVICES | busybox tr ',' '\\n' | wc -l",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out, "b\nb-root\nmine\nprint(1)\nw\nvolume\nnotes.txt\n1 yes\n2\n",
        "B's files, the kept ones (A's notes over B's), the volume, the link, both environments"
    );
    let (stat_after, _) = sh(&server, &set, stat);
    assert_eq!(stat_after, stat_before, "modes, owners and times kept");

    // History names each version's image; the event names both.
    let (_, history) = server.call("GET", &format!("/api/v1/replicaSet/{set}/history"), None);
    let images: Vec<&str> = history["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"]["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, [b.as_str(), TEST_IMAGE], "{history}");
    let listed = Command::new(BIN)
        .args([
            "--server",
            &format!("http://{}", server.addr),
            "history",
            &set,
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.lines().nth(1).is_some_and(|l| l.contains(&b))
            && listed
                .lines()
                .nth(2)
                .is_some_and(|l| l.contains(TEST_IMAGE)),
        "the CLI's history shows each version's image:\n{listed}"
    );
    let (_, _, text) = common::http_as(
        &server.addr,
        None,
        "GET",
        "/api/v1/events?replay=50&follow=false",
        None,
    );
    assert!(
        text.contains(&format!("image {TEST_IMAGE} → {b}")),
        "the patch event names both images: {text}"
    );

    // Rollback: A's image and whole filesystem again.
    let (_, rolled) = server.call(
        "PATCH",
        &format!("/api/v1/replicaSet/{set}/rollback"),
        Some(json!({"version": 1})),
    );
    assert_eq!(rolled["code"], 200, "{rolled}");
    let back = item(&server, &set);
    assert_eq!(back["image"], TEST_IMAGE, "{back}");
    let (out, _) = sh(
        &server,
        &set,
        "cat /opt/outside.txt /root/notes.txt; test -e /etc/image-b || echo no-b",
    );
    assert_eq!(out, "outside\nmine\nno-b\n");

    // The CLI: the default keeps /root.
    let out = Command::new(BIN)
        .args(["--server", &format!("http://{}", server.addr)])
        .args(["patch", &set, "--image", &b])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (out, _) = sh(
        &server,
        &set,
        "cat /etc/image-b /root/notes.txt; test -e /workspace/w.txt || echo no-workspace",
    );
    assert_eq!(out, "b\nmine\nno-workspace\n");

    let (_, deleted) = server.call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
    assert_eq!(deleted["code"], 200, "{deleted}");
    server.call("DELETE", &format!("/api/v1/volumes/{vol}"), None);
    let _ = Command::new("docker").args(["rmi", &b]).output();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
