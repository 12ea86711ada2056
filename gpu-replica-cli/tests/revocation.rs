//! Users and tokens are served from memory on every node, and kept true: a token reset or a
//! user removed on one node of a cluster is refused by the other within a second (its copy is
//! read again after half a second; the writing node drops its own at once). Two real servers
//! on one etcd.
#![cfg(feature = "etcd")]

mod common;

use std::time::{Duration, Instant};

use common::{call_as, data_dir, Server};
use gpu_replica_core::testkit::{self, EtcdProcess};
use serde_json::{json, Value};

const ADMIN: &str = "revocation-admin-token";

fn node(name: &str, etcd: &EtcdProcess) -> Server {
    let store = format!("etcd://{}", etcd.host_port());
    Server::start_with_env(
        &data_dir(),
        None,
        &[
            ("GPU_REPLICA_STORE", &store),
            ("GPU_REPLICA_NODE", name),
            ("GPU_REPLICA_TOKEN", ADMIN),
        ],
    )
}

fn whoami(server: &Server, token: &str) -> u16 {
    call_as(server, token, "GET", "/api/v1/whoami", Value::Null).0
}

/// How long until `server` answers `status` to `token`, polled every 20 ms for at most `within`.
fn until_answered(server: &Server, token: &str, status: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if whoami(server, token) == status {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reset_or_removed_on_one_node_is_refused_by_the_other_within_a_second() {
    testkit::docker().await;
    let etcd = EtcdProcess::start();
    let n1 = node("n1", &etcd);
    let n2 = node("n2", &etcd);
    let user = testkit::unique_name("bob");
    let (_, added) = call_as(&n1, ADMIN, "POST", "/api/v1/users", json!({"name": user}));
    assert_eq!(added["code"], 200, "{added}");
    let old = added["data"]["token"].as_str().unwrap().to_string();
    // Known at the other node too, and served there from its copy.
    assert!(until_answered(&n2, &old, 200, Duration::from_secs(1)).is_some());
    for _ in 0..50 {
        assert_eq!(whoami(&n2, &old), 200);
    }

    let (_, reset) = call_as(
        &n1,
        ADMIN,
        "POST",
        &format!("/api/v1/users/{user}/token"),
        Value::Null,
    );
    assert_eq!(reset["code"], 200, "{reset}");
    let new = reset["data"]["token"].as_str().unwrap().to_string();
    // At the node that reset it: at once.
    assert_eq!(whoami(&n1, &old), 401);
    let refused = until_answered(&n2, &old, 401, Duration::from_secs(1));
    assert!(
        refused.is_some(),
        "the old token still works at n2 after 1 s"
    );
    println!("reset token refused at the other node after {refused:?}");
    assert!(until_answered(&n2, &new, 200, Duration::from_secs(1)).is_some());

    // Removed: refused everywhere within a second as well.
    for _ in 0..50 {
        assert_eq!(whoami(&n2, &new), 200);
    }
    let (_, removed) = call_as(
        &n1,
        ADMIN,
        "DELETE",
        &format!("/api/v1/users/{user}"),
        Value::Null,
    );
    assert_eq!(removed["code"], 200, "{removed}");
    assert_eq!(whoami(&n1, &new), 401);
    let refused = until_answered(&n2, &new, 401, Duration::from_secs(1));
    assert!(
        refused.is_some(),
        "a removed user's token still works at n2 after 1 s"
    );
    println!("removed user's token refused at the other node after {refused:?}");
    drop((n1, n2, etcd));
}
