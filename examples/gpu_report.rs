//! A small custom tool on the library: print every replicaSet with its GPUs, read from the
//! server's state store (the redb file; stop the server first, redb allows one process).
//!
//! ```text
//! cargo run --example gpu_report -- [./gpu-replica-data/state.redb] [fake:N]
//! ```

use std::sync::Arc;

use gpu_replica_core::{
    DockerRuntime, Engine, EngineConfig, GpuInventory, NvmlInventory, RedbStore, StaticInventory,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "./gpu-replica-data/state.redb".into());
    let inventory: Arc<dyn GpuInventory> = match args.next() {
        Some(spec) => Arc::new(StaticInventory::parse(&spec)?),
        None => match NvmlInventory::open() {
            Ok(nvml) => Arc::new(nvml),
            Err(_) => Arc::new(StaticInventory::parse("none")?),
        },
    };
    let engine = Engine::new(
        Arc::new(DockerRuntime::connect().await?),
        Arc::new(RedbStore::open(&path)?),
        inventory,
        EngineConfig::default(),
    );
    for status in engine.gpu_status().await? {
        println!(
            "GPU {} {} {}",
            status.gpu.index,
            status.gpu.uuid,
            status.holder.as_deref().unwrap_or("free")
        );
    }
    for info in engine.list().await? {
        let set = &info.replica_set;
        println!(
            "{} v{} {:?}: {}",
            set.name,
            set.current,
            set.status,
            if set.gpus.is_empty() {
                "no GPUs".to_string()
            } else {
                set.gpus.join(", ")
            }
        );
    }
    Ok(())
}
