//! Custom tooling on the typed client: drives a remote `gpu-replica serve` through
//! `gpu_replica_http::client::Client`, with no JSON written by hand.
//!
//! ```text
//! cargo run --example remote -- http://127.0.0.1:2378 [TOKEN] [IMAGE]
//! ```
//!
//! Prints the GPUs and who holds them, then runs a cardless set from IMAGE (default: the
//! busybox test image), writes a file in it, moves it to one GPU, reads the file back from
//! the new version, prints its history and GPU-time, and deletes it. Any error answer is
//! printed with the contract's code.

use gpu_replica_http::client::{Client, ClientError, ClientTls};
use gpu_replica_http::wire::{ExecuteBody, GpuPatch, PatchBody, RunBody};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2378".into());
    let token = args.next().filter(|t| !t.is_empty());
    let image = args
        .next()
        .unwrap_or_else(|| "gpu-replica-test/busybox:latest".into());
    let client = Client::new(&server, token, &ClientTls::default())?;

    let me = client.whoami().await?;
    println!("signed in as {} ({})", me.user.name, me.user.role);
    for gpu in client.gpu_details().await?.gpus {
        let holder = gpu.holder.unwrap_or_else(|| "free".into());
        println!("GPU {} {} {}: {holder}", gpu.index, gpu.uuid, gpu.name);
    }

    let name = format!("remote{}", std::process::id());
    let run = RunBody {
        image_name: image,
        replica_set_name: name.clone(),
        gpu_count: 0,
        ..RunBody::default()
    };
    println!("ran {}", client.run(&run).await?.name);
    let sh = |script: &str| ExecuteBody {
        cmd: ["sh", "-c", script].map(String::from).to_vec(),
        work_dir: Some("/root".into()),
    };
    client.execute(&name, &sh("echo kept > /root/work")).await?;
    let patch = PatchBody {
        gpu_patch: Some(GpuPatch { gpu_count: 1 }),
        ..PatchBody::default()
    };
    let moved = client.patch(&name, &patch).await?;
    let read = client.execute(&name, &sh("cat /root/work")).await?;
    println!(
        "{} has 1 GPU and /root/work = {}",
        moved.container_name,
        read.stdout.trim()
    );
    for version in client.history(&name).await?.history {
        println!(
            "  v{} {} gpus={:?}",
            version.version, version.create_time, version.status.gpus
        );
    }
    let usage = client.usage(None, None, None).await?;
    if let Some(set) = usage.replica_sets.iter().find(|s| s.replica_set == name) {
        println!("{name}: {:.1} GPU-seconds so far", set.gpu_seconds);
    }
    // An error answer carries the contract's code.
    match client.info("no.such.set").await {
        Err(e) => println!("info of a missing set: code {:?}: {e}", e.code()),
        Ok(_) => println!("info of a missing set answered"),
    }
    client.delete(&name).await?;
    println!("deleted {name}");
    Ok(())
}
