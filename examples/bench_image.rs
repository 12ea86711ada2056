//! Imports a busybox test image carrying BYTES extra bytes at /opt/blob, for benchmarks.
//!
//! ```text
//! cargo run --release --example bench_image -- IMAGE BYTES
//! ```

use gpu_replica_core::testkit;
use gpu_replica_core::DockerRuntime;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let image = args.next().ok_or("usage: bench_image IMAGE BYTES")?;
    let bytes: usize = args
        .next()
        .ok_or("usage: bench_image IMAGE BYTES")?
        .parse()?;
    let docker = DockerRuntime::connect().await?;
    testkit::ensure_image(&docker, &image, bytes).await?;
    println!("{image}");
    Ok(())
}
