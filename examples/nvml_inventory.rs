//! The GPU inventory as the server sees it, read through NVML on a real host: index, UUID,
//! name, memory, utilization and topology distances, as JSON. A check to run on a GPU machine
//! (compare with `nvidia-smi --query-gpu=index,uuid,name,memory.total,utilization.gpu
//! --format=csv`).
//!
//! ```text
//! cargo run --release --example nvml_inventory
//! ```

use gpu_replica_core::{GpuInventory, NvmlInventory};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let inventory = NvmlInventory::open()?;
    eprintln!("{}", inventory.describe());
    let gpus = inventory.gpus().await?;
    println!("{}", serde_json::to_string_pretty(&gpus)?);
    if gpus.is_empty() {
        return Err("NVML answered but lists no GPU".into());
    }
    Ok(())
}
