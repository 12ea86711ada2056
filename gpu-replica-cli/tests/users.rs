//! Many users on one server, on the real binary and the real Docker engine: users never reach
//! each other's objects on any route of the OpenAPI document, quotas hold under 16 concurrent
//! clients, tokens are stored hashed and never logged, failed authentications are limited.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{assert_all_gpus_free, data_dir, http_as, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use gpu_replica_core::ContainerRuntime;
use serde_json::{json, Value};

const ADMIN: &str = "s3rver-admin-t0ken";

/// A server whose own token is [`ADMIN`].
fn server(dir: &std::path::Path) -> Server {
    Server::start_with_env(dir, None, &[("GPU_REPLICA_TOKEN", ADMIN)])
}

/// Calls as `token`; the status and the envelope.
fn call(server: &Server, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, text) = http_as(&server.addr, Some(token), method, path, Some(&body));
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// Adds a user as the admin; their token.
fn add_user(server: &Server, body: Value) -> String {
    let (status, reply) = call(server, ADMIN, "POST", "/api/v1/users", body);
    assert_eq!(status, 200, "{reply}");
    reply["data"]["token"].as_str().unwrap().to_string()
}

fn ok(reply: &(u16, Value)) {
    assert_eq!(reply.0, 200, "{}", reply.1);
}

/// A body for each route, valid enough that only the name decides the answer.
fn body_for(method: &str, path: &str) -> Value {
    match (method, path.rsplit('/').next().unwrap_or("")) {
        ("post", "replicaSet") => {
            json!({"imageName": TEST_IMAGE, "replicaSetName": "bobs.own", "gpuCount": 0})
        }
        ("patch", "{name}") => json!({"gpuPatch": {"gpuCount": 1}}),
        ("patch", "rollback") => json!({"version": 1}),
        ("post", "execute") => json!({"cmd": ["true"]}),
        ("post", "commit") => json!({"newImageName": "bob/took:it"}),
        ("put", "timers") => json!({"idleStop": "1h"}),
        ("post", "clone") => json!({"name": "bobs.clone"}),
        ("patch", "size") => json!({"size": "2GB"}),
        ("patch", "quota") => json!({"maxGpus": 4}),
        ("post", "volumes") => json!({"name": "bobs.vol", "size": "1GB"}),
        ("post", "users") => json!({"name": "mallory"}),
        _ => json!({}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_never_see_or_touch_each_others_objects_on_any_route() {
    testkit::docker().await;
    let dir = data_dir();
    let server = server(&dir);
    let alice = add_user(&server, json!({"name": "alice"}));
    let bob = add_user(&server, json!({"name": "bob"}));
    let set = testkit::unique_name("alices");
    let vol = testkit::unique_name("alicev");
    ok(&call(
        &server,
        &alice,
        "POST",
        "/api/v1/volumes",
        json!({"name": vol, "size": "1GB"}),
    ));
    let run = json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 1,
        "binds": [{"src": format!("{vol}-1"), "dest": "/data"}], "containerPorts": ["22"]});
    ok(&call(&server, &alice, "POST", "/api/v1/replicaSet", run));
    let (_, before) = call(
        &server,
        &alice,
        "GET",
        &format!("/api/v1/replicaSet/{set}"),
        json!({}),
    );

    let (_, document) = call(&server, ADMIN, "GET", "/openapi.json", json!({}));
    let mut walked = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            walked.insert(format!("{} {path}", method.to_uppercase()));
            let body = body_for(method, path).to_string();
            let verb = method.to_uppercase();
            if path.contains("{name}") {
                // Alice's object, and one that does not exist: bob gets the same answer.
                let (object, missing) = if path.starts_with("/api/v1/volumes") {
                    (vol.as_str(), "no.such.volume")
                } else if path.starts_with("/api/v1/users") {
                    ("alice", "no.such.user")
                } else {
                    (set.as_str(), "no.such.set")
                };
                let query = if path.ends_with("/logs") {
                    "?follow=false"
                } else {
                    ""
                };
                let mine = path.replace("{name}", object) + query;
                let none = path.replace("{name}", missing) + query;
                let (status, _, text) =
                    http_as(&server.addr, Some(&bob), &verb, &mine, Some(&body));
                let (status_missing, _, text_missing) =
                    http_as(&server.addr, Some(&bob), &verb, &none, Some(&body));
                assert_eq!(
                    (status, text.replace(object, "NAME")),
                    (status_missing, text_missing.replace(missing, "NAME")),
                    "{verb} {path}: alice's object answers otherwise than a missing one"
                );
                assert!(status >= 400, "{verb} {path} let bob through: {text}");
            } else {
                let path = if path.ends_with("/events") {
                    "/api/v1/events?follow=false&replay=1000".to_string()
                } else {
                    path.clone()
                };
                let (status, _, text) =
                    http_as(&server.addr, Some(&bob), &verb, &path, Some(&body));
                assert!(
                    !text.contains(&set) && !text.contains(&vol),
                    "{verb} {path} shows bob alice's objects: {text}"
                );
                if path.starts_with("/api/v1/users") {
                    assert_eq!(status, 403, "{verb} {path}: {text}");
                }
            }
        }
    }
    // The walk covered the routes that take a name, and the lists.
    for route in [
        "DELETE /api/v1/replicaSet/{name}",
        "PATCH /api/v1/replicaSet/{name}/stop",
        "POST /api/v1/replicaSet/{name}/clone",
        "PATCH /api/v1/volumes/{name}/size",
        "GET /api/v1/replicaSet",
        "GET /api/v1/events",
        "GET /api/v1/usage",
    ] {
        assert!(walked.contains(route), "{route} not in the document");
    }
    assert!(walked.len() >= 30, "{walked:?}");

    // Binding alice's volume is binding a volume that does not exist.
    let steal = json!({"imageName": TEST_IMAGE, "replicaSetName": "bobs.steal", "gpuCount": 0,
        "binds": [{"src": format!("{vol}-1"), "dest": "/data"}]});
    let (status, reply) = call(&server, &bob, "POST", "/api/v1/replicaSet", steal);
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1033)),
        "{reply}"
    );
    // A GPU alice holds shows as held, by nobody bob may know.
    let (_, gpus) = call(
        &server,
        &bob,
        "GET",
        "/api/v1/resources/gpus?detail=true",
        json!({}),
    );
    let holders: Vec<&str> = gpus["data"]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["holder"].as_str())
        .collect();
    assert!(holders.contains(&"(another user)"), "{gpus}");

    // Nothing of alice's changed: same version, running, volume there; she sees all of it.
    let (_, after) = call(
        &server,
        &alice,
        "GET",
        &format!("/api/v1/replicaSet/{set}"),
        json!({}),
    );
    assert_eq!(
        after["data"]["info"]["version"],
        before["data"]["info"]["version"]
    );
    assert_eq!(after["data"]["status"], "running", "{after}");
    assert_eq!(after["data"]["owner"], "alice");
    ok(&call(
        &server,
        &alice,
        "GET",
        &format!("/api/v1/volumes/{vol}"),
        json!({}),
    ));
    let (_, listed) = call(&server, &alice, "GET", "/api/v1/replicaSet", json!({}));
    let names: Vec<&str> = listed["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&set.as_str()), "{listed}");
    assert!(
        !names.contains(&"bobs.own"),
        "alice sees bob's set: {listed}"
    );
    // The admin sees both, with owners, and can filter by owner.
    let (_, all) = call(&server, ADMIN, "GET", "/api/v1/replicaSet", json!({}));
    let owners: BTreeSet<&str> = all["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["owner"].as_str().unwrap())
        .collect();
    assert!(owners.contains("alice") && owners.contains("bob"), "{all}");
    let (_, only) = call(
        &server,
        ADMIN,
        "GET",
        "/api/v1/replicaSet?owner=bob",
        json!({}),
    );
    assert!(only["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["owner"] == "bob"));
    // Events carry who acted.
    let (_, _, events) = http_as(
        &server.addr,
        Some(ADMIN),
        "GET",
        "/api/v1/events?follow=false&replay=1000",
        None,
    );
    assert!(events.contains("\"actor\":\"alice\""), "{events}");

    for (token, name) in [
        (&alice, set.as_str()),
        (&bob, "bobs.own"),
        (&bob, "bobs.clone"),
    ] {
        call(
            &server,
            token,
            "DELETE",
            &format!("/api/v1/replicaSet/{name}"),
            json!({}),
        );
    }
    call(
        &server,
        &bob,
        "DELETE",
        "/api/v1/volumes/bobs.vol",
        json!({}),
    );
    ok(&call(
        &server,
        &alice,
        "DELETE",
        &format!("/api/v1/volumes/{vol}"),
        json!({}),
    ));
    std::fs::remove_dir_all(dir).ok();
}

/// Runs `count` requests at once, each on its own connection; their answers.
fn at_once(
    server: &Server,
    token: &str,
    count: usize,
    request: impl Fn(usize) -> (&'static str, String, Value) + Sync,
) -> Vec<(u16, Value)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                let (method, path, body) = request(i);
                scope.spawn(move || call(server, token, method, &path, body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn count_codes(answers: &[(u16, Value)]) -> (usize, usize, Vec<String>) {
    let won = answers.iter().filter(|(s, _)| *s == 200).count();
    let over = answers.iter().filter(|(_, v)| v["code"] == 1048).count();
    let other = answers
        .iter()
        .filter(|(s, v)| *s != 200 && v["code"] != 1048)
        .map(|(_, v)| v.to_string())
        .collect();
    (won, over, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_under_sixteen_concurrent_clients() {
    testkit::docker().await;
    let dir = data_dir();
    let server = server(&dir);
    let carol = add_user(
        &server,
        json!({"name": "carol", "maxGpus": 2, "maxSets": 5, "maxVolumeSize": "10GB"}),
    );
    let prefix = testkit::unique_name("q");
    // GPUs: 16 runs of one GPU each for a quota of two (the host has four).
    let answers = at_once(&server, &carol, 16, |i| {
        let body = json!({"imageName": TEST_IMAGE, "replicaSetName": format!("{prefix}g{i}"), "gpuCount": 1});
        ("POST", "/api/v1/replicaSet".into(), body)
    });
    let (won, over, other) = count_codes(&answers);
    assert_eq!((won, over), (2, 14), "{other:?}");
    let refusal = answers.iter().find(|(_, v)| v["code"] == 1048).unwrap();
    assert!(
        refusal.1["msg"]
            .as_str()
            .unwrap()
            .contains("may hold 2 GPU(s), holds 2"),
        "{}",
        refusal.1
    );
    let (_, me) = call(&server, &carol, "GET", "/api/v1/whoami", json!({}));
    assert_eq!(me["data"]["user"]["holdings"]["gpus"], 2, "{me}");
    assert_eq!(me["data"]["user"]["holdings"]["sets"], 2, "{me}");
    // Nothing was created for the refused: no set, no container, no claim.
    let (_, gpus) = call(&server, ADMIN, "GET", "/api/v1/resources/gpus", json!({}));
    let held = gpus["data"]["gpus"]
        .as_object()
        .unwrap()
        .values()
        .filter(|v| **v == 1)
        .count();
    assert_eq!(held, 2, "{gpus}");
    let containers = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name={prefix}g"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&containers.stdout).lines().count(),
        2
    );

    // Sets: 16 cardless runs where three more sets are allowed.
    let answers = at_once(&server, &carol, 16, |i| {
        let body = json!({"imageName": TEST_IMAGE, "replicaSetName": format!("{prefix}s{i}"), "gpuCount": 0});
        ("POST", "/api/v1/replicaSet".into(), body)
    });
    let (won, over, other) = count_codes(&answers);
    assert_eq!((won, over), (3, 13), "{other:?}");

    // Volume bytes: 16 volumes of 3GB each for 10GB.
    let answers = at_once(&server, &carol, 16, |i| {
        (
            "POST",
            "/api/v1/volumes".into(),
            json!({"name": format!("{prefix}v{i}"), "size": "3GB"}),
        )
    });
    let (won, over, other) = count_codes(&answers);
    assert_eq!((won, over), (3, 13), "{other:?}");

    // Continue counts too: a stopped set gives its GPU back, and cannot take it again while
    // another set holds the quota.
    let (_, listed) = call(&server, &carol, "GET", "/api/v1/replicaSet", json!({}));
    let gpu_sets: Vec<String> = listed["data"]["replicaSets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["gpus"].as_array().unwrap().is_empty())
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(gpu_sets.len(), 2);
    ok(&call(
        &server,
        &carol,
        "PATCH",
        &format!("/api/v1/replicaSet/{}/stop", gpu_sets[0]),
        json!({}),
    ));
    ok(&call(
        &server,
        &carol,
        "PATCH",
        &format!("/api/v1/replicaSet/{}", gpu_sets[1]),
        json!({"gpuPatch": {"gpuCount": 2}}),
    ));
    let (status, reply) = call(
        &server,
        &carol,
        "PATCH",
        &format!("/api/v1/replicaSet/{}/continue", gpu_sets[0]),
        json!({}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (403, Some(1048)),
        "{reply}"
    );
    // A patch beyond it is refused as well, and the set keeps running as it was.
    let (status, reply) = call(
        &server,
        &carol,
        "PATCH",
        &format!("/api/v1/replicaSet/{}", gpu_sets[1]),
        json!({"gpuPatch": {"gpuCount": 3}}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (403, Some(1048)),
        "{reply}"
    );
    // Raising the quota lets it through.
    ok(&call(
        &server,
        ADMIN,
        "PATCH",
        "/api/v1/users/carol/quota",
        json!({"maxGpus": null}),
    ));
    // (Its old GPU may be the one the patch took: a restart claims whichever are free.)
    ok(&call(
        &server,
        &carol,
        "PATCH",
        &format!("/api/v1/replicaSet/{}/restart", gpu_sets[0]),
        json!({}),
    ));

    // Carol cannot be removed while she owns things.
    let (status, reply) = call(&server, ADMIN, "DELETE", "/api/v1/users/carol", json!({}));
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1053)),
        "{reply}"
    );
    let (_, listed) = call(&server, &carol, "GET", "/api/v1/replicaSet", json!({}));
    for set in listed["data"]["replicaSets"].as_array().unwrap() {
        ok(&call(
            &server,
            &carol,
            "DELETE",
            &format!("/api/v1/replicaSet/{}", set["name"].as_str().unwrap()),
            json!({}),
        ));
    }
    let (_, volumes) = call(&server, &carol, "GET", "/api/v1/volumes", json!({}));
    for volume in volumes["data"]["volumes"].as_array().unwrap() {
        ok(&call(
            &server,
            &carol,
            "DELETE",
            &format!("/api/v1/volumes/{}", volume["name"].as_str().unwrap()),
            json!({}),
        ));
    }
    ok(&call(
        &server,
        ADMIN,
        "DELETE",
        "/api/v1/users/carol",
        json!({}),
    ));
    let (status, _) = call(&server, &carol, "GET", "/api/v1/whoami", json!({}));
    assert_eq!(status, 401);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_stored_hashed_never_logged_and_guessing_is_slowed() {
    testkit::docker().await;
    let dir = data_dir();
    let mut server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", ADMIN),
            ("GPU_REPLICA_LOG_LEVEL", "debug"),
        ],
    );
    let dave = add_user(&server, json!({"name": "dave", "admin": true}));
    let secret = dave.rsplit('-').next().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    ok(&call(&server, &dave, "GET", "/api/v1/users", json!({})));
    let reset = call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users/dave/token",
        json!({}),
    );
    ok(&reset);
    let fresh = reset.1["data"]["token"].as_str().unwrap().to_string();
    // The old token stopped working at once; the new one works.
    assert_eq!(
        call(&server, &dave, "GET", "/api/v1/whoami", json!({})).0,
        401
    );
    let (_, me) = call(&server, &fresh, "GET", "/api/v1/whoami", json!({}));
    assert_eq!(me["data"]["user"]["role"], "admin", "{me}");

    // Guessing: past a short burst of failures, this address is told to wait, even with a
    // good token, and may try again a moment later.
    let mut limited = 0;
    for i in 0..40 {
        let (status, head, _) = http_as(
            &server.addr,
            Some(&format!("grp-dave-{i:064}")),
            "GET",
            "/api/v1/whoami",
            None,
        );
        if status == 429 {
            assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
            limited += 1;
        } else {
            assert_eq!(status, 401);
        }
    }
    assert!(
        limited >= 20,
        "only {limited} of 40 bad guesses were limited"
    );
    let (status, reply) = call(&server, &fresh, "GET", "/api/v1/whoami", json!({}));
    assert_eq!(
        (status, reply["code"].as_u64()),
        (429, Some(1050)),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(&call(&server, &fresh, "GET", "/api/v1/whoami", json!({})));

    // Neither token is in the log or, once the server is gone, in the store file.
    server.terminate();
    server.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("whoami"), "the log holds the requests");
    let store = std::fs::read(dir.join("state.redb")).unwrap();
    let store = String::from_utf8_lossy(&store);
    let secrets = [
        dave.rsplit('-').next().unwrap(),
        fresh.rsplit('-').next().unwrap(),
        ADMIN,
    ];
    for secret in secrets {
        assert!(!log.contains(secret), "a token is in the log");
        assert!(!store.contains(secret), "a token is in the store");
    }
    assert!(
        store.contains("\"salt\""),
        "the user record is in the store"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_and_reports_usage() {
    testkit::docker().await;
    let dir = data_dir();
    let server = server(&dir);
    let admin = |args: &[&str]| {
        let mut all = vec!["--token", ADMIN];
        all.extend_from_slice(args);
        server.cli(&all)
    };
    let out = admin(&[
        "user",
        "add",
        "erin",
        "--max-gpus",
        "1",
        "--max-volume-size",
        "5GB",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("grp-erin-"), "{token}");
    let erin = |args: &[&str]| {
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        server.cli(&all)
    };
    let name = testkit::unique_name("erin");
    let out = erin(&["run", &name, "--image", TEST_IMAGE, "--gpus", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = erin(&[
        "run",
        &format!("{name}.b"),
        "--image",
        TEST_IMAGE,
        "--gpus",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("code 1048"));
    let listed = String::from_utf8_lossy(&admin(&["user", "ls"]).stdout).to_string();
    assert!(
        listed.contains("erin") && listed.contains("1/1"),
        "{listed}"
    );
    let ls = String::from_utf8_lossy(&admin(&["ls", "--owner", "erin"]).stdout).to_string();
    assert!(ls.contains("OWNER") && ls.contains(&name), "{ls}");
    let who = String::from_utf8_lossy(&erin(&["whoami"]).stdout).to_string();
    assert!(who.contains("erin") && who.contains("user"), "{who}");
    // Erin may not manage users.
    let out = erin(&["user", "ls"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("code 1049"));
    let out = admin(&[
        "user",
        "quota",
        "erin",
        "--max-gpus",
        "none",
        "--max-sets",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let csv =
        String::from_utf8_lossy(&admin(&["usage", "--csv", "--owner", "erin"]).stdout).to_string();
    let line = csv
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{csv}"));
    let seconds: f64 = line.split(',').nth(3).unwrap().parse().unwrap();
    assert!(seconds >= 1.0, "{csv}");
    let report = erin(&["--json", "usage", "--from", "2020-01-01T00:00:00Z"]);
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["users"][0]["owner"], "erin", "{report}");
    assert!(erin(&["rm", &name]).status.success());
    assert!(admin(&["user", "rm", "erin"]).status.success());
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_who_owns_things_asks_for_purge_and_purge_leaves_nothing() {
    let docker = testkit::docker().await;
    let dir = data_dir();
    let server = server(&dir);
    let token = add_user(&server, json!({"name": "frank"}));
    let set = testkit::unique_name("frank");
    let volume = format!("{set}v");
    ok(&call(
        &server,
        &token,
        "POST",
        "/api/v1/volumes",
        json!({"name": volume, "size": "10MB"}),
    ));
    ok(&call(
        &server,
        &token,
        "POST",
        "/api/v1/replicaSet",
        json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 1,
               "binds": [{"src": format!("{volume}-1"), "dest": "/data"}]}),
    ));
    // A second version, so a snapshot image exists.
    ok(&call(
        &server,
        &token,
        "PATCH",
        &format!("/api/v1/replicaSet/{set}"),
        json!({"gpuPatch": {"gpuCount": 2}}),
    ));

    // Without purge: refused, and the refusal says how to purge.
    let (status, answer) = call(&server, ADMIN, "DELETE", "/api/v1/users/frank", json!({}));
    assert_eq!(
        (status, answer["code"].clone()),
        (409, json!(1053)),
        "{answer}"
    );
    let msg = answer["msg"].as_str().unwrap();
    assert!(
        msg.contains("--purge") && msg.contains("purge=true"),
        "{msg}"
    );

    // The CLI does not purge without a confirmation, and there is no terminal here to ask on.
    let admin = |args: &[&str]| {
        let mut all = vec!["--token", ADMIN];
        all.extend_from_slice(args);
        server.cli(&all)
    };
    let out = admin(&["user", "rm", "frank", "--purge"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&call(
        &server,
        ADMIN,
        "GET",
        "/api/v1/users/frank",
        json!({}),
    ));

    // A user may not purge anyone, themselves included.
    let (status, _) = call(
        &server,
        &token,
        "DELETE",
        "/api/v1/users/frank?purge=true",
        json!({}),
    );
    assert_eq!(status, 403);

    let out = admin(&["--json", "user", "rm", "frank", "--purge", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged, json!({"replicaSets": [set], "volumes": [volume]}));

    // Nothing of theirs is left: the account, the token, the records, and in Docker the
    // containers, the snapshot images and the volume; the GPUs are free.
    let (status, _) = call(&server, ADMIN, "GET", "/api/v1/users/frank", json!({}));
    assert_eq!(status, 404);
    let (status, _) = call(&server, &token, "GET", "/api/v1/whoami", json!({}));
    assert_eq!(status, 401);
    let (status, _) = call(
        &server,
        ADMIN,
        "GET",
        &format!("/api/v1/replicaSet/{set}"),
        json!({}),
    );
    assert_eq!(status, 404);
    for version in 1..=2 {
        let container = format!("{set}-{version}");
        assert!(docker
            .inspect_container(&container)
            .await
            .unwrap()
            .is_none());
    }
    let docker_volume = format!("{volume}-1");
    assert!(docker
        .inspect_volume(&docker_volume)
        .await
        .unwrap()
        .is_none());
    let images = docker
        .list_images(gpu_replica_core::LABEL_REPLICA_SET)
        .await
        .unwrap();
    assert!(
        !images
            .iter()
            .any(|i| i.labels.get(gpu_replica_core::LABEL_REPLICA_SET) == Some(&set)),
        "a snapshot of {set} is left"
    );
    let (_, gpus) = call(&server, ADMIN, "GET", "/api/v1/resources/gpus", json!({}));
    assert_all_gpus_free(&gpus);
    // The name is free again.
    add_user(&server, json!({"name": "frank"}));
    ok(&call(
        &server,
        ADMIN,
        "DELETE",
        "/api/v1/users/frank",
        json!({}),
    ));
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}
