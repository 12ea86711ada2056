//! One conformance suite for every state store: memory, redb and etcd (feature `etcd`).
//! The engine's guarantees (no GPU handed out twice, versions never reused) rest on these.

use std::sync::Arc;

use gpu_replica_core::store::{StateStore, Txn};
use gpu_replica_core::testkit::TestStore;

async fn a_value_reads_back_with_a_revision_that_moves(store: Arc<dyn StateStore>) {
    assert_eq!(store.get("a").await.unwrap(), None);
    let r1 = store.put("a", b"1".to_vec()).await.unwrap();
    let entry = store.get("a").await.unwrap().unwrap();
    assert_eq!(entry.value, b"1");
    assert_eq!(entry.revision, r1);
    let r2 = store.put("a", b"2".to_vec()).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(store.get("a").await.unwrap().unwrap().revision, r2);
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
}

async fn a_prefix_lists_its_keys_in_order_and_no_others(store: Arc<dyn StateStore>) {
    for key in ["v/foo/2", "v/foo/1", "v/foobar/1", "v/fo", "w/foo/3"] {
        store.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let keys: Vec<String> = store
        .list("v/foo/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec!["v/foo/1", "v/foo/2"]);
    assert_eq!(store.list("v/").await.unwrap().len(), 4);
    assert!(store.list("nothing/").await.unwrap().is_empty());
}

async fn a_transaction_applies_all_or_nothing(store: Arc<dyn StateStore>) {
    let held = store.put("held", b"x".to_vec()).await.unwrap();
    // One failing condition: nothing is written.
    let refused = Txn::new()
        .absent("new")
        .absent("held")
        .put("new", b"1".to_vec())
        .delete("held");
    assert!(!store.commit(refused).await.unwrap());
    assert_eq!(store.get("new").await.unwrap(), None);
    assert!(store.get("held").await.unwrap().is_some());
    // All conditions hold: every write lands.
    let accepted = Txn::new()
        .absent("new")
        .unchanged("held", held)
        .put("new", b"1".to_vec())
        .delete("held");
    assert!(store.commit(accepted).await.unwrap());
    assert_eq!(store.get("new").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.get("held").await.unwrap(), None);
    // A stale revision is refused.
    let stale = Txn::new().unchanged("new", held).put("new", b"2".to_vec());
    assert!(!store.commit(stale).await.unwrap());
}

async fn two_claims_on_one_key_race_and_exactly_one_wins(store: Arc<dyn StateStore>) {
    for round in 0..20 {
        let key = format!("claims/gpus/race{round}");
        let tasks: Vec<_> = (0..2)
            .map(|who| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let txn = Txn::new()
                        .absent(&key)
                        .put(&key, format!("engine{who}").into_bytes());
                    store.commit(txn).await.unwrap()
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            wins += usize::from(task.await.unwrap());
        }
        assert_eq!(wins, 1, "round {round}");
    }
    // The same with a revision both read.
    let revision = store.put("head", b"0".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..2)
        .map(|who| {
            let store = store.clone();
            tokio::spawn(async move {
                let txn = Txn::new()
                    .unchanged("head", revision)
                    .put("head", format!("{who}").into_bytes());
                store.commit(txn).await.unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.unwrap());
    }
    assert_eq!(wins, 1);
}

macro_rules! conformance {
    ($module:ident, $store:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn values_and_revisions() {
                let store = $store;
                a_value_reads_back_with_a_revision_that_moves(store.open().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prefixes() {
                let store = $store;
                a_prefix_lists_its_keys_in_order_and_no_others(store.open().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactions() {
                let store = $store;
                a_transaction_applies_all_or_nothing(store.open().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn races() {
                let store = $store;
                two_claims_on_one_key_race_and_exactly_one_wins(store.open().await).await;
            }
        }
    };
}

conformance!(memory, TestStore::memory());
conformance!(redb, TestStore::redb());
#[cfg(feature = "etcd")]
conformance!(etcd, TestStore::etcd());

#[tokio::test]
async fn redb_keeps_state_across_reopening() {
    let store = TestStore::redb();
    store.open().await.put("k", b"v".to_vec()).await.unwrap();
    let again = store.open().await;
    assert_eq!(again.get("k").await.unwrap().unwrap().value, b"v");
}
