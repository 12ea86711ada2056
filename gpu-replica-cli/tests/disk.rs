//! A full disk under the store, on the real server: the store file on a small tmpfs that is
//! then filled. Status and `/metrics` show its room (and Docker's); writes are refused with
//! 1062 (HTTP 507) and nothing half-written, reads keep working, and once there is room again
//! writes work without a restart (redb refuses every write after a failed one until its file
//! is opened again: the store does that by itself).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data_dir, http_as, Server};
use gpu_replica_core::testkit;
use serde_json::{json, Value};

const ADMIN: &str = "disk-admin-t0ken";

/// A tmpfs of `megabytes` at `at`, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, megabytes: u32) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount (util-linux)");
        assert!(mounted.success(), "mounting a tmpfs needs root");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn call(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, text) = http_as(&server.addr, Some(ADMIN), method, path, Some(&body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    testkit::docker().await;
    let dir = data_dir();
    let disk = SmallDisk::mount(&dir.join("small"), 8);
    let store = disk.0.join("state.redb");
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", ADMIN),
            ("GPU_REPLICA_STORE", store.to_str().unwrap()),
        ],
    );
    let (status, reply) = call(&server, "POST", "/api/v1/users", json!({"name": "before"}));
    assert_eq!(status, 200, "{reply}");

    // Status and /metrics show the room on the store's disk (this tmpfs) and on Docker's.
    let disk_of = |name: &str| {
        let (_, status) = call(&server, "GET", "/api/v1/status", json!({}));
        status["data"]["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no {name} disk in {status}"))
            .clone()
    };
    let store_disk = disk_of("store");
    assert_eq!(store_disk["totalBytes"], 8 << 20, "{store_disk}");
    assert!(
        store_disk["freeBytes"].as_u64().unwrap() > 4 << 20,
        "{store_disk}"
    );
    assert!(disk_of("docker")["totalBytes"].as_u64().unwrap() > 0);

    // Fill the disk, then write until the store needs room it cannot get.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", disk.0.join("filler").display()))
        .output();
    let mut refused = None;
    for i in 0..400 {
        let (status, reply) = call(
            &server,
            "POST",
            "/api/v1/users",
            json!({ "name": format!("user{i}") }),
        );
        if status != 200 {
            refused = Some((i, status, reply));
            break;
        }
    }
    let (at, status, reply) = refused.expect("a write was refused on the full disk");
    assert!(disk_of("store")["freeBytes"].as_u64().unwrap() < 1 << 20);
    let (_, _, metrics) = http_as(&server.addr, Some(ADMIN), "GET", "/metrics", None);
    assert!(
        metrics.contains("gpu_replica_disk_free_bytes{disk=\"store\"")
            && metrics.contains("gpu_replica_disk_size_bytes{disk=\"docker\""),
        "{metrics}"
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (507, Some(1062)),
        "{reply}"
    );
    // Later writes are each whole or refused with 1062 (never redb's "Previous I/O error":
    // the file was opened again), as room allows.
    let mut written = Vec::new();
    for i in 0..20 {
        let name = format!("more{i}");
        let (status, reply) = call(&server, "POST", "/api/v1/users", json!({ "name": name }));
        match status {
            200 => written.push(name),
            507 => assert_eq!(reply["code"], 1062, "{reply}"),
            other => panic!("{other}: {reply}"),
        }
    }
    // Reads keep working; what was refused is not there, what was accepted is.
    let (status, list) = call(&server, "GET", "/api/v1/users", json!({}));
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(names.contains(&"before"), "{list}");
    assert!(!names.contains(&format!("user{at}").as_str()), "{list}");
    for name in &written {
        assert!(names.contains(&name.as_str()), "{name}: {list}");
    }

    // Room again: writes work without a restart.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let (status, reply) = call(&server, "POST", "/api/v1/users", json!({"name": "after"}));
    assert_eq!(status, 200, "{reply}");
    let (_, list) = call(&server, "GET", "/api/v1/users", json!({}));
    assert!(list.to_string().contains("\"after\""), "{list}");
    drop(server);
    drop(disk);
    let _ = std::fs::remove_dir_all(dir);
}
