//! What a failure of Docker at each step of run, patch, clone and volume resize leaves behind,
//! decided without Docker: a `MockContainerRuntime` backed by a small in-memory model of
//! containers, images and volumes fails at the named call. Every case must end with the
//! contract's code, no claim leaked or lost, records consistent (no intent pending, no gap in
//! the history) and Docker holding exactly the current containers, running as recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::LABEL_NETWORK;
use crate::error::{Error, Result};
use crate::gpu::StaticInventory;
use crate::keys;
use crate::model::{ReplicaSet, Status, Version};
use crate::runtime::{
    Bind, ContainerState, ImageState, MockContainerRuntime, NetworkCreated, NetworkState,
    VolumeState,
};
use crate::store::MemoryStore;
use crate::{CloneRequest, Engine, EngineConfig, PatchRequest, RunRequest};

/// Docker as the mock sees it.
#[derive(Default)]
struct Model {
    /// Container name → running.
    containers: HashMap<String, bool>,
    images: HashSet<String>,
    volumes: HashSet<String>,
    /// Network name → its subnet.
    networks: HashMap<String, String>,
    /// Container name → the network it was created on.
    on_network: HashMap<String, String>,
    /// The call that fails, once.
    fail: Option<&'static str>,
    /// What Docker says when it fails (default: "injected failure of CALL").
    fail_saying: Option<&'static str>,
}

type Shared = Arc<Mutex<Model>>;

/// Fails the first `call` of the named kind (once: undoing it, the same call works again).
fn check(model: &Shared, call: &'static str) -> Result<()> {
    let mut model = model.lock().unwrap();
    if model.fail == Some(call) {
        model.fail = None;
        return Err(Error::Docker(match model.fail_saying.take() {
            Some(said) => said.to_string(),
            None => format!("injected failure of {call}"),
        }));
    }
    Ok(())
}

fn state(name: &str, running: bool) -> ContainerState {
    ContainerState {
        id: name.into(),
        name: name.into(),
        image: String::new(),
        running,
        status: if running { "running" } else { "exited" }.into(),
        labels: BTreeMap::new(),
        env: vec![],
        limits: Default::default(),
        init: false,
        created: 0,
    }
}

fn network_state(name: &str, subnet: &str) -> NetworkState {
    NetworkState {
        id: name.into(),
        name: name.into(),
        subnets: vec![subnet.into()],
        labels: BTreeMap::new(),
    }
}

/// A mock runtime over `model`.
fn runtime(model: &Shared) -> MockContainerRuntime {
    let mut mock = MockContainerRuntime::new();
    let m = model.clone();
    mock.expect_create_container().returning(move |spec| {
        check(&m, "create_container")?;
        let mut m = m.lock().unwrap();
        if !m.images.contains(&spec.image) {
            return Err(Error::Docker(format!("no such image {}", spec.image)));
        }
        if let Some(network) = spec
            .network
            .as_ref()
            .filter(|n| !m.networks.contains_key(&n.name))
        {
            return Err(Error::Docker(format!("network {} not found", network.name)));
        }
        m.containers.insert(spec.name.clone(), false);
        if let Some(network) = &spec.network {
            m.on_network.insert(spec.name.clone(), network.name.clone());
        }
        Ok(spec.name.clone())
    });
    let m = model.clone();
    mock.expect_start_container().returning(move |name| {
        check(&m, "start_container")?;
        match m.lock().unwrap().containers.get_mut(name) {
            Some(running) => {
                *running = true;
                Ok(())
            }
            None => Err(Error::Docker(format!("no such container {name}"))),
        }
    });
    let m = model.clone();
    mock.expect_restart_container().returning(move |name, _| {
        check(&m, "restart_container")?;
        match m.lock().unwrap().containers.get_mut(name) {
            Some(running) => {
                *running = true;
                Ok(())
            }
            None => Err(Error::Docker(format!("no such container {name}"))),
        }
    });
    let m = model.clone();
    mock.expect_stop_container().returning(move |name, _| {
        check(&m, "stop_container")?;
        if let Some(running) = m.lock().unwrap().containers.get_mut(name) {
            *running = false;
        }
        Ok(())
    });
    let m = model.clone();
    mock.expect_remove_container().returning(move |name| {
        let mut m = m.lock().unwrap();
        m.containers.remove(name);
        m.on_network.remove(name);
        Ok(())
    });
    let m = model.clone();
    mock.expect_inspect_container().returning(move |name| {
        Ok(m.lock()
            .unwrap()
            .containers
            .get(name)
            .map(|running| state(name, *running)))
    });
    let m = model.clone();
    mock.expect_list_containers().returning(move |label| {
        let m = m.lock().unwrap();
        let on = label.strip_prefix(&format!("{LABEL_NETWORK}="));
        Ok(m.containers
            .iter()
            .filter(|(name, _)| {
                on.is_none_or(|n| m.on_network.get(*name).map(String::as_str) == Some(n))
            })
            .map(|(name, running)| state(name, *running))
            .collect())
    });
    let m = model.clone();
    mock.expect_commit().returning(move |container, image, _| {
        check(&m, "commit")?;
        let mut m = m.lock().unwrap();
        if !m.containers.contains_key(container) {
            return Err(Error::Docker(format!("no such container {container}")));
        }
        m.images.insert(image.to_string());
        Ok(image.to_string())
    });
    let m = model.clone();
    mock.expect_tag_image().returning(move |source, target| {
        check(&m, "tag_image")?;
        let mut m = m.lock().unwrap();
        if !m.images.contains(source) {
            return Err(Error::Docker(format!("no such image {source}")));
        }
        m.images.insert(target.to_string());
        Ok(())
    });
    let m = model.clone();
    mock.expect_inspect_image().returning(move |image| {
        Ok(m.lock()
            .unwrap()
            .images
            .contains(image)
            .then(|| ImageState {
                id: image.to_string(),
                tags: vec![image.to_string()],
                layers: 1,
                labels: BTreeMap::new(),
            }))
    });
    mock.expect_list_images().returning(|_| Ok(vec![]));
    let m = model.clone();
    mock.expect_remove_image().returning(move |image| {
        m.lock().unwrap().images.remove(image);
        Ok(())
    });
    let m = model.clone();
    mock.expect_create_volume().returning(move |name, _, _| {
        check(&m, "create_volume")?;
        m.lock().unwrap().volumes.insert(name.to_string());
        Ok(false)
    });
    let m = model.clone();
    mock.expect_inspect_volume().returning(move |name| {
        Ok(m.lock()
            .unwrap()
            .volumes
            .contains(name)
            .then(|| VolumeState {
                name: name.to_string(),
                driver: "local".into(),
                options: BTreeMap::new(),
                labels: BTreeMap::new(),
            }))
    });
    mock.expect_list_volumes().returning(|_| Ok(vec![]));
    let m = model.clone();
    mock.expect_create_network()
        .returning(move |name, subnet, labels| {
            check(&m, "create_network")?;
            let mut m = m.lock().unwrap();
            if m.networks.values().any(|s| s == subnet) {
                return Ok(NetworkCreated::SubnetTaken);
            }
            m.networks.insert(name.to_string(), subnet.to_string());
            let _ = labels;
            Ok(NetworkCreated::Created(name.to_string()))
        });
    let m = model.clone();
    mock.expect_find_networks().returning(move |name| {
        Ok(m.lock()
            .unwrap()
            .networks
            .get(name)
            .map(|subnet| network_state(name, subnet))
            .into_iter()
            .collect())
    });
    let m = model.clone();
    mock.expect_list_networks().returning(move |_| {
        Ok(m.lock()
            .unwrap()
            .networks
            .iter()
            .map(|(name, subnet)| network_state(name, subnet))
            .collect())
    });
    let m = model.clone();
    mock.expect_remove_network().returning(move |id| {
        m.lock().unwrap().networks.remove(id);
        Ok(true)
    });
    mock.expect_volume_used_bytes().returning(|_| Ok(0));
    // An image change's copies: every path exists; the archive calls can fail.
    mock.expect_path_stat().returning(|_, path| {
        Ok(Some(crate::runtime::PathStat {
            name: path.rsplit('/').next().unwrap_or_default().to_string(),
            size: 0,
            mode: 0o40755,
            mtime: 0,
            link_target: String::new(),
        }))
    });
    let m = model.clone();
    mock.expect_download_path().returning(move |_, _| {
        check(&m, "download_path")?;
        Ok(Box::pin(futures_util::stream::iter([Ok(
            bytes::Bytes::from_static(b"tar"),
        )])))
    });
    let m = model.clone();
    mock.expect_upload_path()
        .returning(move |_, _, _| check(&m, "upload_path"));
    let m = model.clone();
    mock.expect_copy_volume()
        .returning(move |_, _| check(&m, "copy_volume"));
    let m = model.clone();
    mock.expect_remove_volume().returning(move |name| {
        m.lock().unwrap().volumes.remove(name);
        Ok(())
    });
    mock
}

/// An engine on the mock with 4 fake GPUs, and the model behind it, with image `img`.
fn engine() -> (Engine, Shared) {
    let model = Shared::default();
    model.lock().unwrap().images.insert("img".into());
    let engine = Engine::new(
        Arc::new(runtime(&model)),
        Arc::new(MemoryStore::new()),
        Arc::new(StaticInventory::fake(4)),
        EngineConfig {
            stop_timeout: Duration::ZERO,
            ..Default::default()
        },
    );
    (engine, model)
}

fn run(name: &str, gpus: i64) -> RunRequest {
    RunRequest {
        name: name.into(),
        image: "img".into(),
        gpu_count: gpus,
        ..Default::default()
    }
}

/// The invariants every failure must keep.
async fn assert_consistent(engine: &Engine, model: &Shared, context: &str) {
    let heads: Vec<ReplicaSet> = engine.ctx.read_all(keys::REPLICA_SETS).await.unwrap();
    let gpu_claims = engine.ctx.gpu_holders().await.unwrap();
    let mut expected: HashMap<String, String> = HashMap::new();
    for head in &heads {
        assert!(
            head.pending.is_none(),
            "{context}: {} has an intent left",
            head.name
        );
        let versions: Vec<Version> = engine
            .ctx
            .read_all(&keys::versions(&head.name))
            .await
            .unwrap();
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        assert_eq!(
            numbers,
            (1..=head.latest).collect::<Vec<_>>(),
            "{context}: history of {}",
            head.name
        );
        if head.status.holds_claims() {
            for gpu in &head.gpus {
                expected.insert(gpu.clone(), head.name.clone());
            }
        }
        let container = crate::names::container(&head.name, head.current);
        let running = model.lock().unwrap().containers.get(&container).copied();
        assert_eq!(
            running,
            Some(head.status == Status::Running),
            "{context}: {container} should exist and run as recorded ({:?})",
            head.status
        );
    }
    assert_eq!(gpu_claims, expected, "{context}: GPU claims");
    let current: HashSet<String> = heads
        .iter()
        .map(|h| crate::names::container(&h.name, h.current))
        .collect();
    let containers: HashSet<String> = model.lock().unwrap().containers.keys().cloned().collect();
    assert_eq!(containers, current, "{context}: containers left behind");
    // A network per owner with sets, none left by an owner without.
    let mut owners = HashSet::new();
    for head in &heads {
        let version = engine.info(&head.name).await.unwrap().version;
        let spec = engine.container_spec(&head.owner, &head.name, &version);
        owners.extend(spec.network.map(|n| n.name));
    }
    let networks: HashSet<String> = model.lock().unwrap().networks.keys().cloned().collect();
    assert_eq!(networks, owners, "{context}: networks");
}

#[tokio::test]
async fn a_run_failing_at_any_docker_step_leaves_nothing() {
    for step in ["create_network", "create_container", "start_container"] {
        let (engine, model) = engine();
        model.lock().unwrap().fail = Some(step);
        let err = engine.run(run("a", 2)).await.unwrap_err();
        assert_eq!(err.code(), 1004, "{step}: {err}");
        assert_eq!(engine.info("a").await.unwrap_err().code(), 1016, "{step}");
        assert_consistent(&engine, &model, step).await;
        // The same request works once Docker does.
        model.lock().unwrap().fail = None;
        engine.run(run("a", 2)).await.unwrap();
        assert_consistent(&engine, &model, step).await;
    }
}

#[tokio::test]
async fn a_patch_failing_at_any_docker_step_is_undone() {
    for step in [
        "stop_container",
        "commit",
        "create_container",
        "start_container",
    ] {
        let (engine, model) = engine();
        let before = engine.run(run("a", 1)).await.unwrap();
        model.lock().unwrap().fail = Some(step);
        let patch = PatchRequest {
            gpu_count: Some(3),
            ..Default::default()
        };
        let err = engine.patch("a", patch.clone()).await.unwrap_err();
        assert_eq!(err.code(), 1007, "{step}: {err}");
        let after = engine.info("a").await.unwrap();
        // The snapshot of version 1 may have been taken before the failure: it is kept (and
        // taken again by the next patch); everything else is as before.
        let mut version = after.version.clone();
        version.snapshot = None;
        assert_eq!(version, before.version, "{step}");
        assert_eq!(
            after.replica_set.latest, 1,
            "{step}: the number is handed out again"
        );
        assert_consistent(&engine, &model, step).await;
        model.lock().unwrap().fail = None;
        let patched = engine.patch("a", patch).await.unwrap();
        assert_eq!(patched.version.version, 2, "{step}");
        assert_eq!(patched.version.gpus.len(), 3, "{step}");
        assert_consistent(&engine, &model, step).await;
    }
}

#[tokio::test]
async fn an_image_change_whose_copy_fails_is_undone_and_the_old_version_runs() {
    for step in ["download_path", "upload_path"] {
        let (engine, model) = engine();
        model.lock().unwrap().images.insert("img2".into());
        let before = engine.run(run("a", 1)).await.unwrap();
        model.lock().unwrap().fail = Some(step);
        let patch = PatchRequest {
            image: Some("img2".into()),
            keep_paths: Some(vec!["/root".into(), "/workspace".into()]),
            gpu_count: Some(2),
            ..Default::default()
        };
        let err = engine.patch("a", patch.clone()).await.unwrap_err();
        assert_eq!(err.code(), 1007, "{step}: {err}");
        assert!(
            err.to_string().contains("copying /root") && err.to_string().contains(step),
            "{step}: the message says what failed: {err}"
        );
        let after = engine.info("a").await.unwrap();
        let mut version = after.version.clone();
        version.snapshot = None;
        assert_eq!(version, before.version, "{step}: back on version 1");
        assert_eq!(after.replica_set.status, Status::Running, "{step}");
        assert_eq!(after.replica_set.latest, 1, "{step}");
        assert_consistent(&engine, &model, step).await;
        // Once Docker copies, the same change goes through.
        let changed = engine.patch("a", patch).await.unwrap();
        assert_eq!(changed.version.version, 2, "{step}");
        assert_eq!(changed.version.spec.image, "img2", "{step}");
        assert_eq!(changed.version.gpus.len(), 2, "{step}");
        assert_consistent(&engine, &model, step).await;
    }
}

#[tokio::test]
async fn a_patch_whose_snapshot_finds_dockers_disk_full_is_undone_and_says_so() {
    let (engine, model) = engine();
    let before = engine.run(run("a", 1)).await.unwrap();
    {
        let mut model = model.lock().unwrap();
        model.fail = Some("commit");
        model.fail_saying =
            Some("ApplyLayer exit status 1: write /root/x: no space left on device");
    }
    let patch = PatchRequest {
        gpu_count: Some(2),
        ..Default::default()
    };
    let err = engine.patch("a", patch.clone()).await.unwrap_err();
    assert_eq!(err.code(), 1063, "{err}");
    let said = err.to_string();
    assert!(
        said.contains("Docker's data root") && said.contains("back on its old version"),
        "{said}"
    );
    let after = engine.info("a").await.unwrap();
    assert_eq!(after.version.version, before.version.version);
    assert_eq!(after.replica_set.status, Status::Running);
    assert_consistent(&engine, &model, "commit").await;
    assert_eq!(engine.patch("a", patch).await.unwrap().version.version, 2);
}

#[tokio::test]
async fn a_clone_failing_at_any_docker_step_leaves_no_clone_and_no_base_image() {
    for (step, from_version) in [
        ("commit", None),
        ("create_container", None),
        ("start_container", None),
        ("tag_image", Some(1)),
    ] {
        let (engine, model) = engine();
        engine.run(run("src", 1)).await.unwrap();
        engine.patch("src", PatchRequest::default()).await.unwrap();
        let images_before = model.lock().unwrap().images.clone();
        model.lock().unwrap().fail = Some(step);
        let request = CloneRequest {
            source: "src".into(),
            name: "copy".into(),
            version: from_version,
            ..Default::default()
        };
        let err = engine.clone_set(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), 1044, "{step}: {err}");
        assert_eq!(
            engine.info("copy").await.unwrap_err().code(),
            1016,
            "{step}"
        );
        assert_eq!(
            model.lock().unwrap().images,
            images_before,
            "{step}: a base image was left"
        );
        assert_consistent(&engine, &model, step).await;
        model.lock().unwrap().fail = None;
        engine.clone_set(request).await.unwrap();
        assert_consistent(&engine, &model, step).await;
    }
}

#[tokio::test]
async fn a_resize_failing_at_any_docker_step_leaves_the_volume_and_its_users_as_they_were() {
    for step in [
        "create_volume",
        "stop_container",
        "commit",
        "create_container",
        "copy_volume",
        "start_container",
    ] {
        let (engine, model) = engine();
        engine.create_volume("data", "1GB").await.unwrap();
        let mut request = run("user", 1);
        request.binds = vec![Bind {
            src: "data-1".into(),
            dest: "/data".into(),
        }];
        engine.run(request).await.unwrap();
        model.lock().unwrap().fail = Some(step);
        let err = engine.resize_volume("data", "2GB").await.unwrap_err();
        assert_eq!(err.code(), 1035, "{step}: {err}");
        let volume = engine.volume_info("data").await.unwrap();
        assert_eq!(
            (
                volume.volume.current,
                volume.volume.latest,
                volume.volume.pending
            ),
            (1, 1, None),
            "{step}"
        );
        let volumes = model.lock().unwrap().volumes.clone();
        assert_eq!(volumes, HashSet::from(["data-1".to_string()]), "{step}");
        let user = engine.info("user").await.unwrap();
        assert_eq!(user.version.version, 1, "{step}");
        assert_consistent(&engine, &model, step).await;
        model.lock().unwrap().fail = None;
        let resized = engine.resize_volume("data", "2GB").await.unwrap();
        assert_eq!(resized.version.docker_name, "data-2", "{step}");
        let user = engine.info("user").await.unwrap();
        assert_eq!(user.version.spec.binds[0].src, "data-2", "{step}");
        assert_consistent(&engine, &model, step).await;
    }
}

#[tokio::test]
async fn recovery_finishes_a_run_whose_container_exists_and_undoes_one_whose_does_not() {
    for created in [true, false] {
        let (engine, model) = engine();
        engine.recover().await.unwrap();
        engine.run(run("a", 2)).await.unwrap();
        // As if the engine died right after recording the run (and, maybe, creating it).
        let (mut head, _) = engine.ctx.head("a").await.unwrap();
        head.pending = Some(crate::model::Intent::Run);
        engine
            .ctx
            .shared
            .store
            .put(&keys::replica_set("a"), crate::engine::encode(&head))
            .await
            .unwrap();
        {
            let mut m = model.lock().unwrap();
            if created {
                m.containers.insert("a-1".into(), false);
            } else {
                m.containers.remove("a-1");
            }
        }
        let report = engine.recover().await.unwrap();
        if created {
            assert_eq!(report.finished, vec!["run of a".to_string()]);
            assert_eq!(
                engine.info("a").await.unwrap().replica_set.status,
                Status::Running
            );
        } else {
            assert_eq!(report.undone, vec!["run of a".to_string()]);
            assert_eq!(engine.info("a").await.unwrap_err().code(), 1016);
        }
        assert_consistent(&engine, &model, &format!("created: {created}")).await;
    }
}
