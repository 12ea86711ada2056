//! `gpu-replica node …`: cordoning and draining a node of a cluster (admins), with a drain's
//! progress followed set by set.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use gpu_replica_http::client::{Client, ClientError};
use gpu_replica_http::wire::{DrainView, NodeView};

/// How often a followed drain is read again.
const POLL: Duration = Duration::from_millis(500);

/// `gpu-replica node …`
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Take no new sets on the node (its sets stay).
    Cordon {
        /// Node name.
        node: String,
    },
    /// Take new sets on the node again; cancels a drain under way.
    Uncordon {
        /// Node name.
        node: String,
    },
    /// Cordon the node and move every set on it to other nodes, printing each set as it
    /// moves; exits non-zero when a set could not move or the drain was cancelled.
    Drain {
        /// Node name.
        node: String,
        /// Migrations at once (default 2).
        #[arg(long, default_value_t = 0)]
        parallel: u32,
        /// Start it and return; follow it with `node drain-status`.
        #[arg(long)]
        detach: bool,
    },
    /// A node's drain: in flight, moved, and not moved with why.
    DrainStatus {
        /// Node name.
        node: String,
    },
    /// Cancel a node's drain: no new move starts; those in flight finish or are undone.
    CancelDrain {
        /// Node name.
        node: String,
    },
}

/// Runs one `node` subcommand.
pub async fn node(
    client: &Client,
    command: NodeCommand,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    let drain = match command {
        NodeCommand::Cordon { node } => return print_node(&client.cordon(&node).await?, as_json),
        NodeCommand::Uncordon { node } => {
            return print_node(&client.uncordon(&node).await?, as_json)
        }
        NodeCommand::Drain {
            node,
            parallel,
            detach,
        } => {
            let drain = client.drain(&node, parallel).await?;
            if !detach && !as_json {
                return follow(client, drain).await;
            }
            drain
        }
        NodeCommand::DrainStatus { node } => client.drain_status(&node).await?,
        NodeCommand::CancelDrain { node } => client.cancel_drain(&node).await?,
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&drain).unwrap_or_default()
        );
    } else {
        print_drain(&drain);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_node(node: &NodeView, as_json: bool) -> Result<ExitCode, ClientError> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(node).unwrap_or_default());
    } else {
        let cordon = if node.cordoned {
            "cordoned: takes no new sets"
        } else {
            "uncordoned: takes new sets"
        };
        println!("node {} {cordon} ({} set(s) on it)", node.name, node.sets);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_drain(drain: &DrainView) {
    println!(
        "node {}: {}{}, drain {}",
        drain.node,
        if drain.cordoned {
            "cordoned"
        } else {
            "not cordoned"
        },
        if drain.started_at.is_empty() {
            String::new()
        } else {
            format!(" (drain started {})", drain.started_at)
        },
        drain.state
    );
    for set in &drain.in_flight {
        println!("  moving   {set}");
    }
    for moved in &drain.moved {
        println!("  moved    {} -> {}", moved.set, moved.to);
    }
    for failed in &drain.failed {
        println!(
            "  failed   {}: {} ({})",
            failed.set, failed.reason, failed.code
        );
    }
}

/// Prints each set of the drain as it starts moving, moves or fails, until the drain ends;
/// success when every set moved.
async fn follow(client: &Client, mut drain: DrainView) -> Result<ExitCode, ClientError> {
    println!(
        "draining node {}, {} at a time",
        drain.node,
        drain.parallel.max(1)
    );
    let mut told: HashSet<(&'static str, String)> = HashSet::new();
    loop {
        for set in &drain.in_flight {
            if told.insert(("moving", set.clone())) {
                println!("moving   {set}");
            }
        }
        for moved in &drain.moved {
            if told.insert(("moved", moved.set.clone())) {
                println!("moved    {} -> node {}", moved.set, moved.to);
            }
        }
        for failed in &drain.failed {
            if told.insert(("failed", failed.set.clone())) {
                println!("failed   {}: {}", failed.set, failed.reason);
            }
        }
        let ended = drain.state != "running" && drain.in_flight.is_empty();
        if ended {
            break;
        }
        tokio::time::sleep(POLL).await;
        drain = client.drain_status(&drain.node).await?;
    }
    println!(
        "node {} drain {}: {} moved, {} not moved",
        drain.node,
        drain.state,
        drain.moved.len(),
        drain.failed.len()
    );
    if drain.state == "finished" && drain.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
