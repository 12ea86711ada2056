//! The Docker backend on the real engine: each trait method does what the engine relies on.

use std::collections::BTreeMap;
use std::time::Duration;

use gpu_replica_core::runtime::{Bind, ContainerRuntime, ContainerSpec, GpuAttach, PortMapping};
use gpu_replica_core::testkit::{self, IMAGE_FILE, TEST_IMAGE};

fn spec(name: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        env: vec!["USER_SET=1".into()],
        gpus: vec!["GPU-a".into(), "GPU-b".into()],
        gpu_attach: GpuAttach::Env,
        labels: testkit::test_labels(),
        ..Default::default()
    }
}

fn argv(script: &str) -> Vec<String> {
    ["sh", "-c", script].map(str::to_string).to_vec()
}

#[tokio::test]
async fn a_container_runs_execs_and_keeps_its_changes_through_a_commit() {
    let docker = testkit::docker().await;
    let name = testkit::unique_name("rt");
    docker
        .create_container(&spec(&name, TEST_IMAGE))
        .await
        .unwrap();
    docker.start_container(&name).await.unwrap();
    let state = docker.inspect_container(&name).await.unwrap().unwrap();
    assert!(state.running);
    assert_eq!(
        state.labels.get(testkit::TEST_LABEL).map(String::as_str),
        Some("1")
    );

    let out = docker
        .exec(
            &name,
            &argv("echo $NVIDIA_VISIBLE_DEVICES; pwd; exit 3"),
            Some("/tmp".into()),
        )
        .await
        .unwrap();
    assert_eq!(out.output, "GPU-a,GPU-b\n/tmp\n");
    assert_eq!(out.exit_code, 3);
    // The image says NVIDIA_VISIBLE_DEVICES=all; the container sees only its own GPUs.
    let env = docker.exec(&name, &argv("env"), None).await.unwrap().output;
    assert!(!env.contains("=all"), "{env}");
    assert!(env.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"));

    docker
        .exec(
            &name,
            &argv(&format!("echo new > /root/new && rm {IMAGE_FILE}")),
            None,
        )
        .await
        .unwrap();
    docker.stop_container(&name, Duration::ZERO).await.unwrap();
    assert!(
        !docker
            .inspect_container(&name)
            .await
            .unwrap()
            .unwrap()
            .running
    );
    let snapshot = format!("gpu-replica-test/{name}:v1");
    let labels = BTreeMap::from([(testkit::TEST_LABEL.to_string(), "1".to_string())]);
    docker.commit(&name, &snapshot, &labels).await.unwrap();
    let image = docker.inspect_image(&snapshot).await.unwrap().unwrap();
    assert_eq!(image.layers, 2);

    let flat = format!("gpu-replica-test/{name}:flat");
    docker
        .commit_flattened(&name, &flat, &labels)
        .await
        .unwrap();
    assert_eq!(
        docker.inspect_image(&flat).await.unwrap().unwrap().layers,
        1
    );

    for (i, from) in [&snapshot, &flat].into_iter().enumerate() {
        let child = format!("{name}c{i}");
        docker.create_container(&spec(&child, from)).await.unwrap();
        docker.start_container(&child).await.unwrap();
        let out = docker
            .exec(
                &child,
                &argv(&format!(
                    "cat /root/new; test -e {IMAGE_FILE}; echo $?; echo $PATH"
                )),
                None,
            )
            .await
            .unwrap();
        assert_eq!(out.output, "new\n1\n/bin\n", "from {from}");
        docker.remove_container(&child).await.unwrap();
    }

    let listed = docker.list_containers(testkit::TEST_LABEL).await.unwrap();
    assert!(listed.iter().any(|c| c.name == name));
    docker.remove_container(&name).await.unwrap();
    docker.remove_container(&name).await.unwrap(); // absent is fine
    assert!(docker.inspect_container(&name).await.unwrap().is_none());
    docker.remove_image(&flat).await.unwrap();
    docker.remove_image(&snapshot).await.unwrap();
    assert!(docker.inspect_image(&snapshot).await.unwrap().is_none());
}

#[tokio::test]
async fn volume_data_is_measured_and_copied_through_the_api() {
    let docker = testkit::docker().await;
    let from = testkit::unique_name("vola");
    let to = testkit::unique_name("volb");
    let labels = testkit::test_labels();
    // This host has no XFS quotas: the size is recorded, not enforced.
    let enforced = docker
        .create_volume(&from, Some(10 << 20), &labels)
        .await
        .unwrap();
    docker
        .create_volume(&to, Some(10 << 20), &labels)
        .await
        .unwrap();
    assert!(docker.inspect_volume(&from).await.unwrap().is_some());
    println!("size enforced: {enforced}");

    let writer = testkit::unique_name("writer");
    let mut s = spec(&writer, TEST_IMAGE);
    s.binds = vec![Bind {
        src: from.clone(),
        dest: "/data".into(),
    }];
    docker.create_container(&s).await.unwrap();
    docker.start_container(&writer).await.unwrap();
    let script = "mkdir -p /data/sub && dd if=/dev/zero of=/data/sub/big bs=1024 count=300 2>/dev/null && echo hi > /data/.hidden && sha256sum /data/sub/big";
    let written = docker.exec(&writer, &argv(script), None).await.unwrap();
    assert_eq!(written.exit_code, 0, "{}", written.output);
    docker.remove_container(&writer).await.unwrap();

    assert_eq!(
        docker.volume_used_bytes(&from).await.unwrap(),
        300 * 1024 + 3
    );
    docker.copy_volume(&from, &to).await.unwrap();
    assert_eq!(docker.volume_used_bytes(&to).await.unwrap(), 300 * 1024 + 3);
    // The same copy inside Docker, with `cp -a` in a container of an image that has one.
    let by_cp = testkit::unique_name("volc");
    docker.create_volume(&by_cp, None, &labels).await.unwrap();
    let fast = testkit::docker().await.with_copy_image(TEST_IMAGE);
    fast.copy_volume(&from, &by_cp).await.unwrap();
    assert_eq!(
        docker.volume_used_bytes(&by_cp).await.unwrap(),
        300 * 1024 + 3
    );

    let reader = testkit::unique_name("reader");
    let mut s = spec(&reader, TEST_IMAGE);
    s.binds = vec![Bind {
        src: to.clone(),
        dest: "/data".into(),
    }];
    docker.create_container(&s).await.unwrap();
    docker.start_container(&reader).await.unwrap();
    let read = docker
        .exec(
            &reader,
            &argv("cat /data/.hidden; sha256sum /data/sub/big"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(read.output, format!("hi\n{}", written.output));
    docker.remove_container(&reader).await.unwrap();

    let listed = docker.list_volumes(testkit::TEST_LABEL).await.unwrap();
    assert!(listed.iter().any(|v| v.name == from));
    for volume in [&from, &to, &by_cp] {
        docker.remove_volume(volume).await.unwrap();
        assert!(docker.inspect_volume(volume).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_published_port_reaches_the_container() {
    let docker = testkit::docker().await;
    let name = testkit::unique_name("port");
    let port = gpu_replica_core::sched::pick_ports(
        testkit::port_range(),
        &Default::default(),
        1,
        gpu_replica_core::sched::host_port_is_free,
    )
    .unwrap()[0];
    let mut s = spec(&name, TEST_IMAGE);
    s.ports = vec![PortMapping {
        container_port: "8080/tcp".into(),
        host_port: port,
    }];
    docker.create_container(&s).await.unwrap();
    docker.start_container(&name).await.unwrap();
    let served = docker
        .exec(
            &name,
            &argv("echo hello > /var/www/index.html && httpd -p 8080 -h /var/www"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(served.exit_code, 0, "{}", served.output);
    let body = testkit::http_get(port).await;
    assert!(body.contains("hello"), "{body}");
    docker.remove_container(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_moves_to_another_engine_without_a_registry() {
    let host = testkit::docker().await;
    let name = testkit::unique_name("move");
    let mut container = spec(&name, TEST_IMAGE);
    container.cmd = Some(argv("echo moved > /root/file; sleep 600"));
    host.create_container(&container).await.unwrap();
    host.start_container(&name).await.unwrap();
    let out = host
        .exec(
            &name,
            &argv("test -s /root/file || sleep 1; cat /root/file"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.output.trim(), "moved");
    let snapshot = format!("gpu-replica-test/{name}:v1");
    host.commit(&name, &snapshot, &testkit::test_labels())
        .await
        .unwrap();

    // Saved from the host's engine, loaded into another one (its own daemon), as a stream.
    let other = testkit::PrivateDockerd::start_nth(7);
    let target = gpu_replica_core::DockerRuntime::connect_socket(&other.socket())
        .await
        .unwrap();
    assert!(target.inspect_image(&snapshot).await.unwrap().is_none());
    target
        .load_image(host.save_image(&snapshot).await.unwrap())
        .await
        .unwrap();
    assert!(target.inspect_image(&snapshot).await.unwrap().is_some());
    // The filesystem came with it: a container made from it on the other engine has the file.
    let moved = format!("{name}b");
    let mut again = spec(&moved, &snapshot);
    again.cmd = Some(argv("sleep 600"));
    target.create_container(&again).await.unwrap();
    target.start_container(&moved).await.unwrap();
    let out = target
        .exec(&moved, &argv("cat /root/file"), None)
        .await
        .unwrap();
    assert_eq!(out.output.trim(), "moved");
    target.remove_container(&moved).await.unwrap();
    drop(other);

    // A missing image is said to be missing.
    let missing = host
        .save_image("gpu-replica-test/none:v9")
        .await
        .err()
        .unwrap();
    assert_eq!(missing.code(), 1036);
    host.remove_container(&name).await.unwrap();
    host.remove_image(&snapshot).await.unwrap();
}
