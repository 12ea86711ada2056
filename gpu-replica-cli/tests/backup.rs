//! Backups and restores on the real server and Docker, for redb and etcd: a backup taken while
//! the server runs, sets made and changed after it, the server stopped and the backup restored.
//! The next start reports the containers made after the backup and leaves them alone (their
//! files intact), shows the sets whose containers are gone as exited, and keeps users and
//! tokens; a second start still removes nothing. Also: a store whose schema is newer than the
//! binary stops the start, and the fixture store written by release 0.1.0 is opened with every
//! record by this one.

mod common;

use std::path::Path;
use std::process::Command;

use common::{data_dir, Server, BIN};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

/// The operator's token of the story's servers.
const ADMIN: &str = "backup-test-admin-token";

/// A call with the operator's token.
fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::call_as(server, ADMIN, method, path, body.unwrap_or(Value::Null))
}

fn sh(server: &Server, set: &str, script: &str) -> (String, i64) {
    common::sh_in(server, Some(ADMIN), set, script)
}

fn run(server: &Server, set: &str) {
    let (_, ran) = api(
        server,
        "POST",
        "/api/v1/replicaSet",
        Some(json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 1})),
    );
    assert_eq!(ran["code"], 200, "{ran}");
}

fn docker_exec(container: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{container}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--type", "container", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn listed(server: &Server) -> Value {
    let (_, list) = api(server, "GET", "/api/v1/replicaSet", None);
    list["data"]["replicaSets"].clone()
}

fn status_of(list: &Value, set: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|s| s["name"] == set)
        .map(|s| s["status"].as_str().unwrap_or_default().to_string())
}

fn restore(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("restore")
        .args(args)
        .output()
        .unwrap()
}

/// The story both stores share: `start` starts a server on the store (first and again),
/// `restore_into` puts a backup into the stopped server's store.
async fn backup_and_restore(dir: &Path, env: &[(&str, &str)], restore_into: impl Fn(&Path)) {
    testkit::docker().await;
    let mut env = env.to_vec();
    env.push(("GPU_REPLICA_TOKEN", ADMIN));
    let mut server = Server::start_with_env(dir, None, &env);
    let kept = testkit::unique_name("kept");
    let later = testkit::unique_name("later");
    run(&server, &kept);
    assert_eq!(sh(&server, &kept, "echo one > /root/one").1, 0);
    let (_, added) = api(
        &server,
        "POST",
        "/api/v1/users",
        Some(json!({"name": testkit::unique_name("bob")})),
    );
    assert_eq!(added["code"], 200, "{added}");
    let bob_token = added["data"]["token"].as_str().unwrap().to_string();

    // The backup, while the server runs.
    let file = dir.join("nightly.backup");
    let out = server.cli(&["--token", ADMIN, "backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("records of schema 1"), "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "gpu-replica-backup", "{header}");
    assert!(
        header["created"].as_str().unwrap().ends_with('Z'),
        "{header}"
    );
    assert!(text.contains(&format!("\"replicasets/{kept}\"")));
    // Not for everyone.
    let (code, refused) =
        common::call_as(&server, &bob_token, "GET", "/api/v1/backup", Value::Null);
    assert_eq!(
        (code, refused["code"].as_u64()),
        (403, Some(1049)),
        "{refused}"
    );

    // After the backup: a new set, and a new version of the kept one.
    run(&server, &later);
    assert_eq!(sh(&server, &later, "echo made-later > /root/later").1, 0);
    let (_, patched) = api(
        &server,
        "PATCH",
        &format!("/api/v1/replicaSet/{kept}"),
        Some(json!({"gpuPatch": {"gpuCount": 2}})),
    );
    assert_eq!(patched["code"], 200, "{patched}");
    assert_eq!(sh(&server, &kept, "echo two > /root/two").1, 0);
    server.terminate();

    restore_into(dir);

    server.start_again();
    let (_, status) = api(&server, "GET", "/api/v1/status", None);
    let recovery = &status["data"]["recovery"];
    assert!(
        recovery["restored"]
            .as_str()
            .is_some_and(|r| r.contains("records")),
        "{status}"
    );
    let unknown = recovery["unknown"].to_string();
    assert!(
        unknown.contains(&format!("container {later}-1")),
        "{status}"
    );
    assert!(unknown.contains(&format!("container {kept}-2")), "{status}");
    assert_eq!(recovery["orphansRemoved"], json!([]), "{status}");
    // Left alone, with their files; the restored set whose container is gone is exited.
    assert_eq!(
        docker_exec(&format!("{later}-1"), "cat /root/later"),
        "made-later"
    );
    assert_eq!(docker_exec(&format!("{kept}-2"), "cat /root/two"), "two");
    let list = listed(&server);
    assert_eq!(status_of(&list, &kept).as_deref(), Some("exited"), "{list}");
    assert_eq!(status_of(&list, &later), None, "{list}");
    // Users and tokens are back.
    let (code, me) = common::call_as(&server, &bob_token, "GET", "/api/v1/whoami", Value::Null);
    assert_eq!(code, 200, "{me}");

    // The next start (and the reconciler meanwhile) still removes nothing of it.
    server.restart();
    let (_, status) = api(&server, "GET", "/api/v1/status", None);
    assert_eq!(
        status["data"]["recovery"]["restored"],
        Value::Null,
        "{status}"
    );
    assert!(container_exists(&format!("{later}-1")));
    assert!(container_exists(&format!("{kept}-2")));
    // Deleting the restored set removes what its records know, not the newer version.
    let out = server.cli(&["--token", ADMIN, "rm", &kept]);
    assert!(out.status.success(), "{out:?}");
    assert!(container_exists(&format!("{kept}-2")));
    drop(server);
    for container in [format!("{later}-1"), format!("{kept}-2")] {
        let _ = Command::new("docker")
            .args(["rm", "-f", &container])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_redb_store_loses_no_set_made_after_the_backup() {
    let dir = data_dir();
    backup_and_restore(&dir, &[], |dir| {
        let file = dir.join("nightly.backup");
        let data = dir.to_str().unwrap();
        // Into a store that holds records: refused without --replace.
        let refused = restore(&[file.to_str().unwrap(), "--data-dir", data]);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--replace"));
        let done = restore(&[file.to_str().unwrap(), "--data-dir", data, "--replace"]);
        assert!(done.status.success(), "{done:?}");
        let said = String::from_utf8_lossy(&done.stdout);
        assert!(said.contains("kept as"), "{said}");
        // The replaced store is kept beside it.
        assert!(std::fs::read_dir(dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("before-restore")));
    })
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_etcd_loses_no_set_made_after_it() {
    let dir = data_dir();
    let used = testkit::EtcdProcess::start();
    let empty = testkit::EtcdProcess::start();
    let store = format!("etcd://{}", used.host_port());
    let fresh = format!("etcd://{}", empty.host_port());
    backup_and_restore(&dir, &[("GPU_REPLICA_STORE", &store)], |dir| {
        let file = dir.join("nightly.backup");
        let file = file.to_str().unwrap();
        // Into the etcd the server used: it holds records, refused without --replace.
        let refused = restore(&[file, "--store", &store]);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--replace"));
        // Into an empty etcd (a new cluster): done.
        let done = restore(&[file, "--store", &fresh]);
        assert!(done.status.success(), "{done:?}");
        // Over the used one (its records removed first); the server starts on it again.
        let replaced = restore(&[file, "--store", &store, "--replace"]);
        assert!(replaced.status.success(), "{replaced:?}");
    })
    .await;
    // The empty etcd holds the backup's records, and the restore's mark.
    let backup =
        gpu_replica_core::backup::read(&std::fs::read(dir.join("nightly.backup")).unwrap())
            .unwrap();
    let restored = gpu_replica_core::EtcdStore::connect(
        &[format!("http://{}", empty.host_port())],
        "gpu-replica/",
    )
    .await
    .unwrap();
    use gpu_replica_core::store::StateStore;
    let records = restored.list("").await.unwrap();
    assert_eq!(records.len(), backup.header.records + 1);
    for (key, value) in &backup.records {
        let found = records.iter().find(|e| &e.key == key).unwrap();
        assert_eq!(&found.value, value, "{key}");
    }
    drop((used, empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_a_newer_schema_stops_the_start_and_says_what_it_needs() {
    let dir = data_dir();
    {
        let store = gpu_replica_core::RedbStore::open(dir.join("state.redb")).unwrap();
        use gpu_replica_core::store::StateStore;
        store
            .put(gpu_replica_core::keys::SCHEMA, b"7".to_vec())
            .await
            .unwrap();
        store
            .put(
                gpu_replica_core::keys::STORE_ID,
                b"from-the-future".to_vec(),
            )
            .await
            .unwrap();
    }
    let out = Command::new(BIN)
        .args(["serve", "--gpus", "fake:1", "--addr"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("schema 7"), "{said}");
    assert!(said.contains("reads schema 1"), "{said}");
    // The same store restored from a backup is refused the same way.
    let bytes = {
        let store = gpu_replica_core::RedbStore::open(dir.join("state.redb")).unwrap();
        gpu_replica_core::backup::take(&store).await.unwrap().1
    };
    let file = dir.join("future.backup");
    std::fs::write(&file, bytes).unwrap();
    let other = dir.join("other");
    let out = restore(&[
        file.to_str().unwrap(),
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema 7"));
}

/// Copies the fixture store of `release` (tests/fixtures/store-RELEASE) into a fresh data dir.
fn fixture(release: &str) -> std::path::PathBuf {
    let dir = data_dir();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("store-{release}"));
    std::fs::copy(from.join("state.redb"), dir.join("state.redb")).unwrap();
    dir
}

/// The store written by release 0.1.0 (schema 1; made by `scripts/make-fixture-store.sh`):
/// every record it holds is read by this binary. Never rewritten: a later release adds its
/// own fixture and a test like this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_written_by_release_0_1_0_is_opened_with_every_record() {
    testkit::docker().await;
    let dir = fixture("0.1.0");
    let expect: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-0.1.0/expect.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let server = Server::start_with_env(
        &dir,
        None,
        &[("GPU_REPLICA_TOKEN", expect["adminToken"].as_str().unwrap())],
    );
    let admin = expect["adminToken"].as_str().unwrap();
    let call = |path: &str| common::call_as(&server, admin, "GET", path, Value::Null);
    // Sets: names, versions and history as they were; their containers are gone here.
    for set in expect["sets"].as_array().unwrap() {
        let name = set["name"].as_str().unwrap();
        let (code, info) = call(&format!("/api/v1/replicaSet/{name}"));
        assert_eq!(code, 200, "{info}");
        assert_eq!(info["data"]["info"]["version"], set["version"], "{info}");
        assert_eq!(info["data"]["owner"], set["owner"], "{info}");
        let (_, history) = call(&format!("/api/v1/replicaSet/{name}/history"));
        let versions = history["data"]["history"].as_array().map_or(0, Vec::len);
        assert_eq!(
            versions as u64,
            set["versions"].as_u64().unwrap(),
            "{history}"
        );
    }
    // Volumes, users (with their tokens and SSH keys), events.
    for volume in expect["volumes"].as_array().unwrap() {
        let (code, info) = call(&format!("/api/v1/volumes/{}", volume.as_str().unwrap()));
        assert_eq!(code, 200, "{info}");
    }
    for user in expect["users"].as_array().unwrap() {
        let token = user["token"].as_str().unwrap();
        let (code, me) = common::call_as(&server, token, "GET", "/api/v1/whoami", Value::Null);
        assert_eq!(code, 200, "{me}");
        assert_eq!(me["data"]["user"]["name"], user["name"], "{me}");
        let (_, keys) = call(&format!(
            "/api/v1/users/{}/keys",
            user["name"].as_str().unwrap()
        ));
        assert_eq!(
            keys["data"]["keys"].as_array().map_or(0, Vec::len) as u64,
            user["keys"].as_u64().unwrap(),
            "{keys}"
        );
    }
    // Nothing of this store exists in this Docker: nothing removed, nothing unknown.
    let (_, status) = call("/api/v1/status");
    let recovery = &status["data"]["recovery"];
    assert_eq!(recovery["orphansRemoved"], json!([]), "{status}");
    assert_eq!(recovery["unknown"], json!([]), "{status}");
    drop(server);
}

/// A store from before stores carried a schema version (every deployment of the releases
/// before this one): the first start writes a backup next to it, then stamps it; every
/// record is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_schema_versions_is_backed_up_then_migrated() {
    testkit::docker().await;
    let dir = fixture("0.1.0");
    {
        use gpu_replica_core::store::StateStore;
        let store = gpu_replica_core::RedbStore::open(dir.join("state.redb")).unwrap();
        store.delete(gpu_replica_core::keys::SCHEMA).await.unwrap();
    }
    let expect: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-0.1.0/expect.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let admin = expect["adminToken"].as_str().unwrap();
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", admin)]);
    let saved: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("before-schema-1-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let backup = gpu_replica_core::backup::read(&std::fs::read(&saved[0]).unwrap()).unwrap();
    assert_eq!(backup.header.schema, 0);
    assert!(backup
        .records
        .iter()
        .any(|(key, _)| key == "replicasets/fixture_a"));
    let (code, info) = common::call_as(
        &server,
        admin,
        "GET",
        "/api/v1/replicaSet/fixture_a",
        Value::Null,
    );
    assert_eq!(code, 200, "{info}");
    drop(server);
    // Stamped: the next start writes no second backup.
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", admin)]);
    let count = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("before-schema")
        })
        .count();
    assert_eq!(count, 1);
    drop(server);
}
