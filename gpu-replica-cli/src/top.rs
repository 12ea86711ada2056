//! `gpu-replica top`: a live view of the GPUs and sets, redrawn every interval until `q` (or
//! Ctrl-C, or the end of input) is pressed. On a terminal, keys are read one at a time without
//! echo, and the terminal is restored on the way out.

use std::io::{Read, Write};
use std::time::Duration;

use gpu_replica_http::wire::{GpuDetails, ReplicaSetList};

use crate::table;
use gpu_replica_http::client::{Client, ClientError};

/// The terminal's settings while `top` reads keys one by one; restored when dropped.
struct KeysOneByOne {
    saved: Option<libc::termios>,
}

impl KeysOneByOne {
    fn enter() -> KeysOneByOne {
        // SAFETY: tcgetattr/tcsetattr on descriptor 0 with a zeroed termios they fill in; a
        // descriptor that is not a terminal makes tcgetattr fail and nothing changes.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return KeysOneByOne { saved: None };
            }
            let mut keys = saved;
            keys.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            keys.c_cc[libc::VMIN] = 1;
            keys.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &keys);
            KeysOneByOne { saved: Some(saved) }
        }
    }
}

impl Drop for KeysOneByOne {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: puts back the settings read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

/// Resolves when a quitting key arrives: `q`, `Q`, Ctrl-C (as a byte, signals being off), or
/// the end of input.
fn quit_keys() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        loop {
            match stdin.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(_) if matches!(byte[0], b'q' | b'Q' | 3) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// Runs the view against `client`, redrawing every `interval`.
pub async fn top(client: &Client, interval: Duration) -> Result<(), ClientError> {
    let terminal = KeysOneByOne::enter();
    let mut quit = quit_keys();
    // Leave the cursor where the user can see it, whatever happens.
    let result = loop {
        let gpus = client.gpu_details().await;
        let sets = client.list(None, None).await;
        match (gpus, sets) {
            (Ok(gpus), Ok(sets)) => draw(client, &gpus, &sets),
            (Err(e), _) | (_, Err(e)) => break Err(e),
        }
        tokio::select! {
            _ = &mut quit => break Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    };
    drop(terminal);
    println!();
    result
}

fn bar(percent: Option<u32>) -> String {
    match percent {
        Some(p) => {
            let filled = (p.min(100) / 10) as usize;
            format!("{}{} {p:>3}%", "#".repeat(filled), ".".repeat(10 - filled))
        }
        None => "?".into(),
    }
}

fn draw(client: &Client, gpus: &GpuDetails, sets: &ReplicaSetList) {
    // Home, clear the screen, then the frame.
    print!("\x1b[H\x1b[2J");
    let held = gpus.gpus.iter().filter(|g| g.holder.is_some()).count();
    println!(
        "gpu-replica top   {}   {} GPUs, {held} held   {} sets   (q quits)\n",
        client.base(),
        gpus.gpus.len(),
        sets.replica_sets.len()
    );
    let mib = |bytes: Option<u64>| bytes.map_or("?".to_string(), |b| format!("{}", b / 1048576));
    let rows: Vec<Vec<String>> = gpus
        .gpus
        .iter()
        .map(|g| {
            vec![
                g.index.to_string(),
                g.uuid.clone(),
                g.name.clone(),
                bar(g.utilization),
                format!("{}/{} MiB", mib(g.memory_used), mib(g.memory_total)),
                g.holder.clone().unwrap_or_else(|| "-".into()),
                g.node.clone(),
            ]
        })
        .collect();
    table::print(
        &["GPU", "UUID", "MODEL", "UTIL", "MEMORY", "HELD BY", "NODE"],
        &rows,
    );
    println!();
    let rows: Vec<Vec<String>> = sets
        .replica_sets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.status.clone(),
                s.version.to_string(),
                s.gpus.len().to_string(),
                s.owner.clone(),
                s.node.clone(),
            ]
        })
        .collect();
    table::print(
        &["SET", "STATUS", "VERSION", "GPUS", "OWNER", "NODE"],
        &rows,
    );
    let _ = std::io::stdout().flush();
}
