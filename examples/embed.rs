//! Embedding the engine in a Rust program, without HTTP.
//!
//! ```text
//! cargo run --example embed -- [IMAGE]
//! ```
//!
//! Runs a replicaSet with 2 (synthetic) GPUs from a local image, installs a file, moves it to 1
//! GPU, shows that the file survived, rolls back, prints the history, and deletes everything it
//! made. State lives in a redb file in a temp folder. With no IMAGE it imports the tiny busybox
//! test image (from Debian's busybox-static) and removes it at the end.

use std::sync::Arc;
use std::time::Duration;

use gpu_replica_core::testkit;
use gpu_replica_core::{
    ContainerRuntime, DockerRuntime, Engine, EngineConfig, GpuAttach, PatchRequest, RedbStore,
    RunRequest, StaticInventory,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = std::env::args().nth(1);
    let docker = DockerRuntime::connect().await?;
    println!("{}", docker.version().await?);
    let imported = image.is_none() && docker.inspect_image(testkit::TEST_IMAGE).await?.is_none();
    let image = match image {
        Some(image) => image,
        None => {
            testkit::ensure_image(&docker, testkit::TEST_IMAGE, 0).await?;
            testkit::TEST_IMAGE.to_string()
        }
    };
    let state = std::env::temp_dir().join(format!("gpu-replica-embed-{}.redb", std::process::id()));
    // Started as `gpu-replica serve` starts it: recovery first, then the timers and the
    // reconciler in the background (they stop when `running` is dropped).
    let running = Engine::builder(
        Arc::new(docker),
        Arc::new(RedbStore::open(&state)?),
        Arc::new(StaticInventory::fake(4)),
    )
    .config(EngineConfig {
        gpu_attach: GpuAttach::Env, // fake GPUs: only NVIDIA_VISIBLE_DEVICES
        stop_timeout: Duration::from_secs(1),
        ..EngineConfig::default()
    })
    .start()
    .await?;
    println!("recovery: {}", running.recovery());
    let engine = running.engine();

    let name = format!("embed{}", std::process::id());
    let first = engine
        .run(RunRequest {
            name: name.clone(),
            image: image.clone(),
            gpu_count: 2,
            container_ports: vec!["22".into()],
            ..Default::default()
        })
        .await?;
    println!(
        "{} runs with GPUs {:?}, ports {:?}",
        first.version.container, first.version.gpus, first.version.ports
    );

    let sh = |script: &str| ["sh", "-c", script].map(String::from).to_vec();
    engine
        .exec(&name, &sh("echo installed > /root/package"), None)
        .await?;
    let second = engine
        .patch(
            &name,
            PatchRequest {
                gpu_count: Some(1),
                ..Default::default()
            },
        )
        .await?;
    let out = engine.exec(&name, &sh("cat /root/package"), None).await?;
    println!(
        "{} has GPUs {:?} and /root/package = {}",
        second.version.container,
        second.version.gpus,
        out.output.trim()
    );

    let third = engine.rollback(&name, 1).await?;
    println!(
        "rolled back: {} with {} GPUs",
        third.version.container,
        third.version.gpus.len()
    );
    for version in engine.history(&name).await? {
        println!(
            "  v{} {} gpus={} from {}",
            version.version,
            version.created_at,
            version.gpus.len(),
            version.image
        );
    }
    let free = engine
        .gpu_status()
        .await?
        .iter()
        .filter(|g| g.holder.is_none())
        .count();
    println!("{free} of 4 GPUs free");

    engine.delete(&name).await?;
    if imported {
        engine.runtime().remove_image(testkit::TEST_IMAGE).await?;
    }
    drop(running);
    std::fs::remove_file(state)?;
    println!("cleaned up");
    Ok(())
}
