//! Walls between tenants on the real binary and Docker: each owner's sets on a network of
//! their own, reachable from each other by set name, unreachable from another owner's by
//! address or name; published ports as before; the network follows patch, rollback and clone,
//! goes with the owner's last set, and is mended when someone removes it under a stopped set.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{data_dir, http_as, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

const ADMIN: &str = "w4lls-admin-t0ken";

/// Calls as `token`; the status and the envelope.
fn call(server: &Server, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, text) = http_as(&server.addr, Some(token), method, path, Some(&body));
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

fn ok(reply: (u16, Value)) -> Value {
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1
}

fn add_user(server: &Server, name: &str) -> String {
    let reply = ok(call(
        server,
        ADMIN,
        "POST",
        "/api/v1/users",
        json!({"name": name}),
    ));
    reply["data"]["token"].as_str().unwrap().to_string()
}

/// Runs a set serving `page` on port 8000 (published).
fn run_web(server: &Server, token: &str, name: &str, page: &str) {
    let script = format!("echo {page} > /var/www/index.html; exec httpd -f -p 8000 -h /var/www");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0,
                      "cmd": ["sh", "-c", script], "containerPorts": ["8000"]});
    ok(call(server, token, "POST", "/api/v1/replicaSet", body));
}

/// What `GET /` on `target` port 8000 answers from inside set `from`: the page, or nc's error.
fn fetch_from(server: &Server, token: &str, from: &str, target: &str) -> String {
    let script =
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} 8000 2>&1; echo rc=$?");
    let reply = ok(call(
        server,
        token,
        "POST",
        &format!("/api/v1/replicaSet/{from}/execute"),
        json!({"cmd": ["sh", "-c", script]}),
    ));
    reply["data"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The current container of set `name`, as the server's info names it.
fn container(server: &Server, token: &str, name: &str) -> String {
    let info = ok(call(
        server,
        token,
        "GET",
        &format!("/api/v1/replicaSet/{name}"),
        json!({}),
    ));
    info["data"]["info"]["containerName"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The networks container `container` is on, with its address on each.
fn networks_of(container: &str) -> Vec<(String, String)> {
    let text = docker(
        [
            "inspect",
            "-f",
            "{{range $n, $e := .NetworkSettings.Networks}}{{$n}} {{$e.IPAddress}}\n{{end}}",
            container,
        ]
        .as_slice(),
    );
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, ip)| (n.to_string(), ip.to_string()))
        .collect()
}

/// The Docker networks labelled as `owner`'s.
fn owner_networks(owner: &str) -> Vec<String> {
    docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.gpu-replica.owner={owner}"),
        "--format",
        "{{.Name}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_reach_their_own_sets_by_name_and_nobody_elses() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", ADMIN)]);
    // Owner names unique to this run: networks are named by store and owner.
    let alice_name = testkit::unique_name("alice").replace('-', "_");
    let bob_name = testkit::unique_name("bob").replace('-', "_");
    let alice = add_user(&server, &alice_name);
    let bob = add_user(&server, &bob_name);
    let (web, peer, other) = (
        testkit::unique_name("web"),
        testkit::unique_name("peer"),
        testkit::unique_name("other"),
    );
    run_web(&server, &alice, &web, "page-of-alice");
    run_web(&server, &alice, &peer, "page-of-peer");
    run_web(&server, &bob, &other, "page-of-bob");

    // Each owner on one network of their own, labelled, on a subnet of the pool.
    let on_web = networks_of(&container(&server, &alice, &web));
    assert_eq!(on_web.len(), 1, "{on_web:?}");
    let (alice_net, web_ip) = on_web[0].clone();
    assert!(
        alice_net.ends_with(&format!("-{alice_name}")),
        "{alice_net}"
    );
    assert!(web_ip.starts_with("10.213."), "{web_ip}");
    assert_eq!(
        networks_of(&container(&server, &alice, &peer))[0].0,
        alice_net
    );
    let bob_net = networks_of(&container(&server, &bob, &other))[0].0.clone();
    assert_ne!(bob_net, alice_net);
    assert_eq!(owner_networks(&alice_name), vec![alice_net.clone()]);

    // Same owner: by set name. Another owner: neither by address nor by name.
    let got = fetch_from(&server, &alice, &peer, &web);
    assert!(got.contains("page-of-alice"), "{got}");
    let got = fetch_from(&server, &bob, &other, &web_ip);
    assert!(
        !got.contains("page-of-alice") && !got.contains("rc=0"),
        "{got}"
    );
    let got = fetch_from(&server, &bob, &other, &web);
    assert!(
        !got.contains("page-of-alice") && got.contains("bad address"),
        "{got}"
    );
    // A published port still answers on the host.
    let info = ok(call(
        &server,
        &alice,
        "GET",
        &format!("/api/v1/replicaSet/{web}"),
        json!({}),
    ));
    let host_port = info["data"]["info"]["hostConfig"]["PortBindings"]["8000/tcp"][0]["HostPort"]
        .as_str()
        .unwrap_or_else(|| panic!("no host port: {info}"))
        .to_string();
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{host_port}/")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("page-of-alice"));

    // Patch, rollback and clone keep the set on its owner's network, under its name.
    let path = format!("/api/v1/replicaSet/{web}");
    ok(call(
        &server,
        &alice,
        "PATCH",
        &path,
        json!({"gpuPatch": {"gpuCount": 1}}),
    ));
    assert_eq!(
        networks_of(&container(&server, &alice, &web))[0].0,
        alice_net
    );
    assert!(fetch_from(&server, &alice, &peer, &web).contains("page-of-alice"));
    ok(call(
        &server,
        &alice,
        "PATCH",
        &format!("{path}/rollback"),
        json!({"version": 1}),
    ));
    assert_eq!(
        networks_of(&container(&server, &alice, &web))[0].0,
        alice_net
    );
    assert!(fetch_from(&server, &alice, &peer, &web).contains("page-of-alice"));
    let copy = testkit::unique_name("copy");
    ok(call(
        &server,
        &alice,
        "POST",
        &format!("{path}/clone"),
        json!({"name": copy}),
    ));
    assert_eq!(
        networks_of(&container(&server, &alice, &copy))[0].0,
        alice_net
    );
    assert!(fetch_from(&server, &alice, &copy, &web).contains("page-of-alice"));
    assert!(!fetch_from(&server, &bob, &other, &copy).contains("page-of"));

    // Someone removes bob's network while his set is stopped: continue mends it.
    let other_path = format!("/api/v1/replicaSet/{other}");
    ok(call(
        &server,
        &bob,
        "PATCH",
        &format!("{other_path}/stop"),
        json!({}),
    ));
    assert_eq!(docker(&["network", "rm", &bob_net]), bob_net);
    ok(call(
        &server,
        &bob,
        "PATCH",
        &format!("{other_path}/continue"),
        json!({}),
    ));
    let mended = networks_of(&container(&server, &bob, &other));
    assert_eq!(mended.len(), 1, "{mended:?}");
    assert_eq!(mended[0].0, bob_net);
    // …and the walls stand as before.
    let got = fetch_from(&server, &bob, &other, &web);
    assert!(got.contains("bad address"), "{got}");

    // What is in force is shown.
    let status = ok(call(&server, ADMIN, "GET", "/api/v1/status", json!({})));
    assert_eq!(
        status["data"]["isolation"]["network"],
        json!({"mode": "per-owner", "pool": "10.213.0.0/16", "subnetPrefix": 24, "owners": 256,
               "guard": true, "guardReason": null}),
        "{status}"
    );

    // The guard rule is in the host's firewall.
    let guard = Command::new("iptables")
        .args([
            "-w",
            "-t",
            "mangle",
            "-C",
            "FORWARD",
            "-s",
            "10.213.0.0/16",
            "-d",
        ])
        .args([
            "10.213.0.0/16",
            "-m",
            "physdev",
            "!",
            "--physdev-is-bridged",
            "-j",
            "DROP",
        ])
        .status()
        .unwrap();
    assert!(guard.success());

    // The owner's network goes with their last set here.
    for name in [&web, &peer, &copy] {
        ok(call(
            &server,
            &alice,
            "DELETE",
            &format!("/api/v1/replicaSet/{name}"),
            json!({}),
        ));
    }
    assert!(owner_networks(&alice_name).is_empty());
    ok(call(&server, &bob, "DELETE", &other_path, json!({})));
    assert!(owner_networks(&bob_name).is_empty());
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_remakes_a_missing_network_and_removes_an_unused_one() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", ADMIN),
            ("GPU_REPLICA_RECONCILE_INTERVAL", "1s"),
        ],
    );
    let name = testkit::unique_name("mend");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    ok(call(&server, ADMIN, "POST", "/api/v1/replicaSet", body));
    let path = format!("/api/v1/replicaSet/{name}");
    let c = container(&server, ADMIN, &name);
    let net = networks_of(&c)[0].0.clone();
    ok(call(
        &server,
        ADMIN,
        "PATCH",
        &format!("{path}/stop"),
        json!({}),
    ));
    // `docker network prune` takes a network whose containers are all stopped.
    assert_eq!(docker(&["network", "rm", &net]), net);
    let within = Instant::now() + Duration::from_secs(30);
    while docker(&["network", "ls", "-q", "--filter", &format!("name=^{net}$")]).is_empty() {
        assert!(Instant::now() < within, "the network was not made again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stopped container is put on it afresh (just after): a plain `docker start` works.
    let within = Instant::now() + Duration::from_secs(30);
    while docker(&["start", &c]) != c {
        assert!(
            Instant::now() < within,
            "the container was not attached afresh"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    docker(&["stop", "-t", "0", &c]);
    // A network of this store that no container is on goes at the next pass.
    let store = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"io.gpu-replica.store\"}}",
        &c,
    ]);
    ok(call(&server, ADMIN, "DELETE", &path, json!({})));
    let stray = format!("{}-strayowner", net.rsplit_once('-').unwrap().0);
    let created = docker(&[
        "network",
        "create",
        "--label",
        "io.gpu-replica.owner=strayowner",
        "--label",
        &format!("io.gpu-replica.store={store}"),
        &stray,
    ]);
    assert!(!created.is_empty());
    let within = Instant::now() + Duration::from_secs(30);
    while !docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{stray}$"),
    ])
    .is_empty()
    {
        assert!(Instant::now() < within, "the unused network stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_its_root_filesystem_size_keeps_running_and_waits_to_be_patched() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", ADMIN),
            ("GPU_REPLICA_ROOTFS_SIZE", "4MB"),
            ("GPU_REPLICA_ROOTFS_MEASURE_INTERVAL", "1s"),
        ],
    );
    // Docker here (fuse-overlayfs) cannot enforce a size: status says so, with Docker's words.
    let status = ok(call(&server, ADMIN, "GET", "/api/v1/status", json!({})));
    let rootfs = &status["data"]["isolation"]["rootfs"];
    assert_eq!(rootfs["size"], 4 << 20, "{status}");
    assert_eq!(rootfs["enforced"], false, "{status}");
    assert!(
        rootfs["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{status}"
    );
    assert_eq!(rootfs["measureIntervalSeconds"], 1);

    let carol_name = testkit::unique_name("carol").replace('-', "_");
    let reply = ok(call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users",
        json!({"name": carol_name, "maxDiskSize": "1GB"}),
    ));
    let carol = reply["data"]["token"].as_str().unwrap().to_string();
    let name = testkit::unique_name("fat");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    ok(call(&server, &carol, "POST", "/api/v1/replicaSet", body));
    let path = format!("/api/v1/replicaSet/{name}");
    ok(call(
        &server,
        &carol,
        "POST",
        &format!("{path}/execute"),
        json!({"cmd": ["sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=8; sync"]}),
    ));
    // The next measurement shows it over: in info, list, metrics and an event.
    let within = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let info = ok(call(&server, &carol, "GET", &path, json!({})));
        if info["data"]["rootfs"]["over"] == true {
            break info["data"]["rootfs"].clone();
        }
        assert!(Instant::now() < within, "never measured over: {info}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(usage["bytes"].as_u64().unwrap() >= 8 << 20, "{usage}");
    assert_eq!(usage["limit"], 4 << 20);
    assert_eq!(usage["enforced"], false);
    let list = ok(call(
        &server,
        &carol,
        "GET",
        "/api/v1/replicaSet",
        json!({}),
    ));
    assert_eq!(
        list["data"]["replicaSets"][0]["rootfsBytes"], usage["bytes"],
        "{list}"
    );
    let (_, _, scrape) = http_as(&server.addr, Some(ADMIN), "GET", "/metrics", None);
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("gpu_replica_rootfs_bytes{")
                && l.contains(&format!("set=\"{name}\""))),
        "{scrape}"
    );
    let (_, _, events) = http_as(
        &server.addr,
        Some(&carol),
        "GET",
        "/api/v1/events?replay=50&follow=false",
        None,
    );
    assert!(events.contains("over its"), "{events}");
    // Patch and commit wait with 1059; the set runs on, nothing is lost.
    for (method, route, body) in [
        ("PATCH", path.clone(), json!({"gpuPatch": {"gpuCount": 1}})),
        (
            "POST",
            format!("{path}/commit"),
            json!({"newImageName": "gpu-replica-test/fat:x"}),
        ),
    ] {
        let (status, reply) = call(&server, &carol, method, &route, body);
        assert_eq!(
            (status, reply["code"].as_u64()),
            (409, Some(1059)),
            "{reply}"
        );
    }
    let reply = ok(call(
        &server,
        &carol,
        "POST",
        &format!("{path}/execute"),
        json!({"cmd": ["sh", "-c", "ls -l /root/big | wc -l"]}),
    ));
    assert_eq!(reply["data"]["stdout"], "1\n");
    // Her disk quota counts the layer with her volumes: 1 GB more does not fit.
    let (status, reply) = call(
        &server,
        &carol,
        "POST",
        "/api/v1/volumes",
        json!({"name": testkit::unique_name("vol").replace('-', "_"), "size": "1GB"}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (403, Some(1048)),
        "{reply}"
    );
    let me = ok(call(&server, &carol, "GET", "/api/v1/whoami", json!({})));
    assert!(me.to_string().contains("rootfsBytes"), "{me}");
    // Files removed: the next measurement lets the patch through.
    ok(call(
        &server,
        &carol,
        "POST",
        &format!("{path}/execute"),
        json!({"cmd": ["rm", "/root/big"]}),
    ));
    let within = Instant::now() + Duration::from_secs(30);
    loop {
        let info = ok(call(&server, &carol, "GET", &path, json!({})));
        if info["data"]["rootfs"]["over"] == false {
            break;
        }
        assert!(Instant::now() < within, "never measured under: {info}");
        std::thread::sleep(Duration::from_millis(300));
    }
    ok(call(
        &server,
        &carol,
        "PATCH",
        &path,
        json!({"gpuPatch": {"gpuCount": 1}}),
    ));
    ok(call(&server, &carol, "DELETE", &path, json!({})));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
