//! Defects found from outside, each a story on the real Docker engine: names that collided or
//! that Docker refused, drift between the records and Docker, volumes of other applications,
//! lost races reported as store failures.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::store::{Entry, Txn};
use gpu_replica_core::testkit::{self, sh, TEST_IMAGE};
use gpu_replica_core::{
    keys, Bind, CloneRequest, Engine, EngineConfig, Error, MemoryStore, PatchRequest, RunRequest,
    StateStore, Status,
};

fn request(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.to_string(),
        image: TEST_IMAGE.to_string(),
        gpu_count: gpus,
        ..Default::default()
    }
}

async fn engine(gpus: u32) -> Engine {
    let engine = testkit::engine(Arc::new(MemoryStore::new()), gpus, testkit::config()).await;
    engine.recover().await.unwrap();
    engine
}

fn empty_patch() -> PatchRequest {
    PatchRequest::default()
}

/// What `docker inspect -f FORMAT container` prints.
fn docker_inspect(format: &str, container: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .expect("the docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn names_differing_only_in_case_never_see_each_others_files() {
    let engine = engine(2).await;
    let lower = testkit::unique_name("case");
    let upper = lower.to_uppercase();
    engine.run(request(&upper, 0)).await.unwrap();
    engine.run(request(&lower, 0)).await.unwrap();
    sh(&engine, &upper, "echo upper > /root/owner").await;
    sh(&engine, &lower, "echo lower > /root/owner").await;
    engine.patch(&upper, empty_patch()).await.unwrap();
    engine.patch(&lower, empty_patch()).await.unwrap();
    let snapshot = |history: Vec<gpu_replica_core::Version>| {
        history
            .into_iter()
            .find(|v| v.version == 1)
            .and_then(|v| v.snapshot)
            .unwrap()
    };
    let upper_snapshot = snapshot(engine.history(&upper).await.unwrap());
    let lower_snapshot = snapshot(engine.history(&lower).await.unwrap());
    assert_ne!(upper_snapshot, lower_snapshot);

    // Each rollback brings back its own files, and deleting one set leaves the other whole.
    engine.rollback(&lower, 1).await.unwrap();
    assert_eq!(
        sh(&engine, &lower, "cat /root/owner").await.0.trim(),
        "lower"
    );
    engine.delete(&upper).await.unwrap();
    assert!(engine
        .runtime()
        .inspect_image(&lower_snapshot)
        .await
        .unwrap()
        .is_some());
    engine.rollback(&lower, 1).await.unwrap();
    assert_eq!(
        sh(&engine, &lower, "cat /root/owner").await.0.trim(),
        "lower"
    );
    engine.delete(&lower).await.unwrap();
}

#[tokio::test]
async fn every_accepted_name_lives_a_whole_life() {
    let engine = engine(2).await;
    let base = testkit::unique_name("n");
    // Valid container names that Docker's image grammar refuses.
    for name in [
        format!("{base}...b"),
        format!("{base}_"),
        format!("{base}."),
    ] {
        engine.run(request(&name, 1)).await.unwrap();
        sh(&engine, &name, "echo mine > /root/file").await;
        let patched = engine
            .patch(
                &name,
                PatchRequest {
                    gpu_count: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(patched.version.version, 2, "{name}");
        let rolled = engine.rollback(&name, 1).await.unwrap();
        assert_eq!(sh(&engine, &name, "cat /root/file").await.0.trim(), "mine");
        // The list reads current-version copies: they follow every change.
        let listed = engine.list().await.unwrap();
        let listed = listed.iter().find(|i| i.replica_set.name == name).unwrap();
        assert_eq!(listed.version, rolled.version);
        let clone = format!("{name}_c.");
        engine
            .clone_set(CloneRequest {
                source: name.clone(),
                name: clone.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(sh(&engine, &clone, "cat /root/file").await.0.trim(), "mine");
        engine.delete(&name).await.unwrap();
        engine.delete(&clone).await.unwrap();
    }
    for volume in [format!("{base}_v_"), format!("{base}..v.")] {
        engine.create_volume(&volume, "10MB").await.unwrap();
        let resized = engine.resize_volume(&volume, "20MB").await.unwrap();
        assert_eq!(resized.version.docker_name, format!("{volume}-2"));
        engine.delete_volume(&volume).await.unwrap();
    }
}

#[tokio::test]
async fn names_docker_would_refuse_are_refused_up_front() {
    let engine = engine(1).await;
    for name in ["..", ".", "_x", ".hidden", "a b", "ünï"] {
        let err = engine.run(request(name, 0)).await.unwrap_err();
        assert_eq!(err.code(), 1000, "{name}: {err}");
    }
    for volume in ["__main__", "..", "_data", ".v"] {
        let err = engine.create_volume(volume, "1GB").await.unwrap_err();
        assert_eq!(err.code(), 1000, "{volume}: {err}");
    }
    let name = testkit::unique_name("img");
    engine.run(request(&name, 0)).await.unwrap();
    for image in ["Upper/case", "a...b", "x_:v1", "img:"] {
        let err = engine.commit_image(&name, image).await.unwrap_err();
        assert_eq!(err.code(), 1000, "{image}: {err}");
    }
    let mut bad_image = request(&testkit::unique_name("img"), 0);
    bad_image.image = "Not/A..Reference".into();
    assert_eq!(engine.run(bad_image).await.unwrap_err().code(), 1000);
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn containers_carry_the_unless_stopped_restart_policy() {
    let engine = engine(1).await;
    let name = testkit::unique_name("policy");
    let info = engine.run(request(&name, 0)).await.unwrap();
    assert_eq!(
        docker_inspect(
            "{{.HostConfig.RestartPolicy.Name}}",
            &info.version.container
        ),
        "unless-stopped"
    );
    let patched = engine.patch(&name, empty_patch()).await.unwrap();
    assert_eq!(
        docker_inspect(
            "{{.HostConfig.RestartPolicy.Name}}",
            &patched.version.container
        ),
        "unless-stopped"
    );
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_container_stopped_outside_is_started_again_by_the_reconciler() {
    let engine = Arc::new(engine(1).await);
    let name = testkit::unique_name("drift");
    let info = engine.run(request(&name, 1)).await.unwrap();
    let container = info.version.container.clone();

    // Before the reconciler sees it, execute is a clear conflict, not a failure of ours.
    engine
        .runtime()
        .stop_container(&container, Duration::ZERO)
        .await
        .unwrap();
    let err = engine
        .exec(&name, &["true".to_string()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("not running"), "{err}");

    // One pass starts it again, and says so in the events.
    let pass = engine.reconcile().await.unwrap();
    assert!(
        pass.settled.iter().any(|l| l.contains(&container)),
        "{pass:?}"
    );
    assert!(
        engine
            .runtime()
            .inspect_container(&container)
            .await
            .unwrap()
            .unwrap()
            .running
    );
    let events = engine.events(50, None).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "reconcile" && e.target == name && e.ok));

    // The running reconciler reacts to Docker's events by itself.
    let reconciler = engine.spawn_reconciler();
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine
        .runtime()
        .stop_container(&container, Duration::ZERO)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine
        .runtime()
        .inspect_container(&container)
        .await
        .unwrap()
        .unwrap()
        .running
    {
        assert!(Instant::now() < deadline, "the reconciler did not start it");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sh(&engine, &name, "true").await;
    engine.close();
    reconciler.abort();
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_vanished_container_is_shown_exited_and_continue_or_patch_runs_it_again() {
    let engine = engine(2).await;
    let name = testkit::unique_name("gone");
    let info = engine.run(request(&name, 2)).await.unwrap();
    let gpus = info.version.gpus.clone();
    engine
        .runtime()
        .remove_container(&info.version.container)
        .await
        .unwrap();
    let pass = engine.reconcile().await.unwrap();
    assert_eq!(pass.shown.len(), 1, "{pass:?}");
    let shown = engine.info(&name).await.unwrap();
    assert_eq!(shown.replica_set.status, Status::Exited);
    let listed = engine.list().await.unwrap();
    let listed = listed.iter().find(|i| i.replica_set.name == name).unwrap();
    assert_eq!(listed.replica_set.status, Status::Exited);
    // It keeps its GPUs meanwhile, and execute says why it cannot.
    let held: Vec<String> = engine
        .gpu_status()
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.holder.as_deref() == Some(name.as_str()))
        .map(|g| g.gpu.uuid)
        .collect();
    assert_eq!(held.len(), gpus.len());
    let err = engine
        .exec(&name, &["true".into()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    // A second pass changes nothing more.
    assert!(engine.reconcile().await.unwrap().is_empty());

    // continue makes the container again from its record and runs it.
    engine.resume(&name).await.unwrap();
    assert_eq!(
        engine.info(&name).await.unwrap().replica_set.status,
        Status::Running
    );
    assert_eq!(
        sh(&engine, &name, "echo -n $NVIDIA_VISIBLE_DEVICES")
            .await
            .0,
        gpus.join(",")
    );

    // And a patch of an exited set works too.
    engine
        .runtime()
        .remove_container(&info.version.container)
        .await
        .unwrap();
    engine.reconcile().await.unwrap();
    let patched = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.replica_set.status, Status::Running);
    assert_eq!(patched.version.version, 2);
    sh(&engine, &name, "true").await;
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_set_started_outside_while_stopped_is_stopped_again() {
    let engine = engine(1).await;
    let name = testkit::unique_name("paused");
    let info = engine.run(request(&name, 1)).await.unwrap();
    engine.pause(&name).await.unwrap();
    engine
        .runtime()
        .start_container(&info.version.container)
        .await
        .unwrap();
    let pass = engine.reconcile().await.unwrap();
    assert_eq!(pass.settled.len(), 1, "{pass:?}");
    assert!(
        !engine
            .runtime()
            .inspect_container(&info.version.container)
            .await
            .unwrap()
            .unwrap()
            .running
    );
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn claims_without_a_holder_are_released() {
    let engine = engine(2).await;
    let gpus = engine.gpu_status().await.unwrap();
    let ghost_gpu = gpus[1].gpu.uuid.clone();
    engine
        .store()
        .put(&keys::gpu_claim(&ghost_gpu), b"ghost".to_vec())
        .await
        .unwrap();
    engine
        .store()
        .put(&keys::port_claim("", 41999), b"ghost".to_vec())
        .await
        .unwrap();
    let pass = engine.reconcile().await.unwrap();
    assert_eq!(pass.settled.len(), 2, "{pass:?}");
    assert!(engine
        .gpu_status()
        .await
        .unwrap()
        .iter()
        .all(|g| g.holder.is_none()));
    assert!(engine
        .store()
        .get(&keys::port_claim("", 41999))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn only_this_servers_volumes_can_be_mounted_unless_allowed() {
    let docker = testkit::docker().await;
    let foreign = testkit::unique_name("foreign");
    gpu_replica_core::ContainerRuntime::create_volume(
        &docker,
        &foreign,
        None,
        &testkit::test_labels(),
    )
    .await
    .unwrap();
    let bind = |src: &str| Bind {
        src: src.to_string(),
        dest: "/data".into(),
    };
    let engine = engine(1).await;
    let mut run = request(&testkit::unique_name("vol"), 0);
    run.binds = vec![bind(&foreign)];
    let err = engine.run(run.clone()).await.unwrap_err();
    assert_eq!(err.code(), 1037, "{err}");
    // The engine's own volume is fine.
    let own = testkit::unique_name("own");
    let created = engine.create_volume(&own, "10MB").await.unwrap();
    run.binds = vec![bind(&created.version.docker_name)];
    engine.run(run.clone()).await.unwrap();
    engine.delete(&run.name).await.unwrap();

    // The operator may allow a foreign volume by name.
    let allowing = testkit::engine(
        Arc::new(MemoryStore::new()),
        1,
        EngineConfig {
            allowed_volumes: vec![foreign.clone()],
            ..testkit::config()
        },
    )
    .await;
    run.binds = vec![bind(&foreign)];
    allowing.run(run.clone()).await.unwrap();
    allowing.delete(&run.name).await.unwrap();
    engine.delete_volume(&own).await.unwrap();
    gpu_replica_core::ContainerRuntime::remove_volume(&docker, &foreign)
        .await
        .unwrap();
}

/// A store that lets another writer change a replicaSet's head just before this engine's
/// next transaction on it, as a second engine on the same store would.
struct RacingStore {
    inner: MemoryStore,
    armed: std::sync::Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl StateStore for RacingStore {
    async fn get(&self, key: &str) -> gpu_replica_core::Result<Option<Entry>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> gpu_replica_core::Result<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> gpu_replica_core::Result<u64> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> gpu_replica_core::Result<bool> {
        self.inner.delete(key).await
    }
    async fn commit(&self, txn: Txn) -> gpu_replica_core::Result<bool> {
        let armed = self.armed.lock().unwrap().take();
        if let Some(key) = armed {
            let entry = self.inner.get(&key).await?.unwrap();
            self.inner.put(&key, entry.value).await?;
        }
        self.inner.commit(txn).await
    }
    fn describe(&self) -> String {
        "racing memory".into()
    }
}

#[tokio::test]
async fn losing_a_race_to_another_engine_is_a_conflict_not_a_store_failure() {
    let store = Arc::new(RacingStore {
        inner: MemoryStore::new(),
        armed: Default::default(),
    });
    let engine = testkit::engine(store.clone(), 1, testkit::config()).await;
    let name = testkit::unique_name("race");
    engine.run(request(&name, 1)).await.unwrap();
    *store.armed.lock().unwrap() = Some(keys::replica_set(&name));
    let err = engine.stop(&name).await.unwrap_err();
    assert_eq!(err.code(), 1046, "{err}");
    // Nothing was kept: the set still runs and holds its GPU.
    let info = engine.info(&name).await.unwrap();
    assert_eq!(info.replica_set.status, Status::Running);
    assert!(info.replica_set.pending.is_none());
    engine.stop(&name).await.unwrap();
    engine.delete(&name).await.unwrap();
}
