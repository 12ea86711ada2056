//! State stores: get, put, list and compare-and-swap on memory and redb (and etcd when
//! `GPU_REPLICA_TEST_ETCD` is set and the `etcd` feature is on).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use gpu_replica_core::store::{StateStore, Txn};
use gpu_replica_core::testkit::TestStore;

fn stores() -> Vec<(&'static str, TestStore)> {
    let mut stores = vec![("memory", TestStore::memory()), ("redb", TestStore::redb())];
    #[cfg(feature = "etcd")]
    if std::env::var("GPU_REPLICA_TEST_ETCD").is_ok() {
        stores.push(("etcd", TestStore::etcd()));
    }
    stores
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (name, test_store) in stores() {
        let store: Arc<dyn StateStore> = runtime.block_on(test_store.open());
        let value = vec![7u8; 512];
        // A history of 100 versions, as the engine lays it out.
        runtime.block_on(async {
            for v in 0..100 {
                store
                    .put(&format!("versions/bench/{v:010}"), value.clone())
                    .await
                    .unwrap();
            }
        });
        let mut group = c.benchmark_group(format!("store/{name}"));
        group.bench_function("get", |b| {
            b.to_async(&runtime)
                .iter(|| store.get("versions/bench/0000000042"))
        });
        group.bench_function("put", |b| {
            b.to_async(&runtime)
                .iter(|| store.put("bench/put", value.clone()))
        });
        group.bench_function("list_100", |b| {
            b.to_async(&runtime).iter(|| store.list("versions/bench/"))
        });
        group.bench_function("compare_and_swap", |b| {
            b.to_async(&runtime).iter(|| async {
                let entry = store.get("bench/cas").await.unwrap();
                let txn = match entry {
                    Some(e) => Txn::new().unchanged("bench/cas", e.revision),
                    None => Txn::new().absent("bench/cas"),
                };
                assert!(store
                    .commit(txn.put("bench/cas", value.clone()))
                    .await
                    .unwrap());
            })
        });
        group.finish();
    }
}

criterion_group!(benches, store);
criterion_main!(benches);
