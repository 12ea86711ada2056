//! Measures what a patch costs on the real Docker engine: the same 1 MB change, patched on an
//! image of ~2 MB and on one carrying ~500 MB. A patch should cost the diff, not the image.
//!
//! ```text
//! cargo run --release --example patch_cost -- [rounds]
//! ```
//!
//! It imports its two test images, runs one replicaSet on each with a memory store and
//! `fake:2` GPUs, writes 1 MB, patches, and prints the median over the rounds. Everything it
//! creates is removed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_replica_core::testkit::{self, sh};
use gpu_replica_core::{Engine, MemoryStore, PatchRequest, RunRequest};

const HEAVY_IMAGE: &str = "gpu-replica-test/busybox-heavy:latest";

async fn patch_times(engine: &Engine, image: &str, rounds: usize) -> Vec<Duration> {
    let name = testkit::unique_name("cost");
    engine
        .run(RunRequest {
            name: name.clone(),
            image: image.to_string(),
            gpu_count: 1,
            ..Default::default()
        })
        .await
        .expect("run");
    let mut times = Vec::new();
    for round in 0..rounds {
        let (_, code) = sh(
            engine,
            &name,
            &format!("dd if=/dev/urandom of=/root/change{round} bs=1024 count=1024 2>/dev/null"),
        )
        .await;
        assert_eq!(code, 0);
        let start = Instant::now();
        let gpus = if round % 2 == 0 { 2 } else { 1 };
        engine
            .patch(
                &name,
                PatchRequest {
                    gpu_count: Some(gpus),
                    ..Default::default()
                },
            )
            .await
            .expect("patch");
        times.push(start.elapsed());
    }
    engine.delete(&name).await.expect("delete");
    times
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let docker = testkit::docker().await;
    testkit::ensure_image(&docker, HEAVY_IMAGE, 500 << 20)
        .await
        .expect("heavy image");
    let engine = Engine::new(
        Arc::new(docker),
        Arc::new(MemoryStore::new()),
        Arc::new(gpu_replica_core::StaticInventory::fake(2)),
        testkit::config(),
    );
    println!("| image | image size | change | patch (median of {rounds}) | min | max |");
    println!("|---|---|---|---|---|---|");
    for (image, size) in [(testkit::TEST_IMAGE, "~2 MB"), (HEAVY_IMAGE, "~502 MB")] {
        let times = patch_times(&engine, image, rounds).await;
        let (min, max) = (times.iter().min().copied(), times.iter().max().copied());
        println!(
            "| {image} | {size} | 1 MB | {:.3} s | {:.3} s | {:.3} s |",
            median(times).as_secs_f64(),
            min.unwrap_or_default().as_secs_f64(),
            max.unwrap_or_default().as_secs_f64()
        );
    }
    engine
        .runtime()
        .remove_image(HEAVY_IMAGE)
        .await
        .expect("remove heavy image");
}
