//! `gpu-replica user …`, `whoami` and `usage`: accounts, quotas and GPU-time.

use std::process::ExitCode;

use gpu_replica_http::wire::{QuotaBody, QuotaView, UserAddBody, UserView};
use serde::Serialize;

use crate::table;
use gpu_replica_http::client::{Client, ClientError};

/// `gpu-replica user …` (admins; `token-reset` also for oneself).
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user and print their token (shown only this once).
    Add {
        /// Name: letters, digits, '_' and '.'.
        name: String,
        /// An admin: sees and acts on everything, manages users.
        #[arg(long)]
        admin: bool,
        /// GPUs they may hold at once.
        #[arg(long)]
        max_gpus: Option<u32>,
        /// ReplicaSets they may have.
        #[arg(long)]
        max_sets: Option<u32>,
        /// Total size of their volumes (500GB).
        #[arg(long)]
        max_volume_size: Option<String>,
        /// Total disk: volumes and their sets' root filesystems (1TB).
        #[arg(long)]
        max_disk: Option<String>,
    },
    /// List users with their quota and what they hold.
    Ls,
    /// Remove a user (refused while they own replicaSets or volumes, unless --purge).
    Rm {
        /// User name.
        name: String,
        /// Delete their replicaSets and volumes too (asks first on a terminal).
        #[arg(long)]
        purge: bool,
        /// Do not ask before purging.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Give a user a new token (the old one stops working) and print it.
    TokenReset {
        /// User name.
        name: String,
    },
    /// Change a user's limits; `none` removes one, a limit not given stays.
    Quota {
        /// User name.
        name: String,
        /// GPUs held at once, or none.
        #[arg(long)]
        max_gpus: Option<String>,
        /// ReplicaSets, or none.
        #[arg(long)]
        max_sets: Option<String>,
        /// Total volume size (500GB), or none.
        #[arg(long)]
        max_volume_size: Option<String>,
        /// Total disk: volumes and root filesystems (1TB), or none.
        #[arg(long)]
        max_disk: Option<String>,
    },
    /// A user's SSH public keys: `ssh -p PORT SET@host` logs in to their sets with one.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `gpu-replica user key …` (admins for anyone; a user for themselves).
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Add the keys of a `.pub` or `authorized_keys` file (`-`: standard input).
    Add {
        /// User name.
        name: String,
        /// File of public keys, one per line.
        file: std::path::PathBuf,
    },
    /// List a user's keys.
    Ls {
        /// User name.
        name: String,
    },
    /// Remove a key by its fingerprint (`SHA256:…`, as `ls` shows it).
    Rm {
        /// User name.
        name: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
}

/// The key lines of an `authorized_keys`-style text: blank lines and `#` comments skipped.
fn key_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

async fn key(client: &Client, command: KeyCommand, as_json: bool) -> Result<(), ClientError> {
    match command {
        KeyCommand::Add { name, file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| ClientError::Transport(format!("reading standard input: {e}")))?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| ClientError::Transport(format!("{}: {e}", file.display())))?
            };
            let lines = key_lines(&text);
            if lines.is_empty() {
                return Err(ClientError::Transport(format!(
                    "{}: no public key in it",
                    file.display()
                )));
            }
            for line in lines {
                let reply = client.add_ssh_key(&name, line).await?;
                if as_json {
                    print_json(&reply);
                } else {
                    println!(
                        "added {} {} {}",
                        reply.key.fingerprint, reply.key.kind, reply.key.comment
                    );
                }
            }
        }
        KeyCommand::Ls { name } => {
            let reply = client.ssh_keys(&name).await?;
            if as_json {
                print_json(&reply);
            } else {
                let rows: Vec<Vec<String>> = reply
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.fingerprint.clone(),
                            k.kind.clone(),
                            k.comment.clone(),
                            k.added_at.clone(),
                        ]
                    })
                    .collect();
                table::print(&["FINGERPRINT", "TYPE", "COMMENT", "ADDED"], &rows);
            }
        }
        KeyCommand::Rm { name, fingerprint } => {
            client.remove_ssh_key(&name, &fingerprint).await?;
            if !as_json {
                println!("removed {fingerprint} from {name}");
            }
        }
    }
    Ok(())
}

/// Asks on the terminal whether to delete `name` with everything they own (what that is,
/// listed first); without a terminal to ask on, refuses: `--yes` says it up front.
async fn confirm_purge(client: &Client, name: &str) -> Result<bool, ClientError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Transport(format!(
            "--purge deletes every replicaSet and volume of '{name}': add --yes to confirm \
             (there is no terminal to ask on)"
        )));
    }
    let sets = client.list(Some(name), None).await?;
    let volumes = client.volumes(Some(name)).await?;
    let sets: Vec<&str> = sets.replica_sets.iter().map(|s| s.name.as_str()).collect();
    let volumes: Vec<&str> = volumes.volumes.iter().map(|v| v.name.as_str()).collect();
    eprint!(
        "remove user '{name}' and delete their {} replicaSet(s) [{}] and {} volume(s) [{}], \
         with every snapshot and file in them? [y/N] ",
        sets.len(),
        sets.join(", "),
        volumes.len(),
        volumes.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `none` → `Some(None)`, a number → `Some(Some(n))`.
fn limit<T: std::str::FromStr>(
    what: &str,
    text: Option<String>,
) -> Result<Option<Option<T>>, ClientError> {
    match text.as_deref() {
        None => Ok(None),
        Some("none" | "unlimited") => Ok(Some(None)),
        Some(number) => number.parse().map(|n| Some(Some(n))).map_err(|_| {
            ClientError::Transport(format!("--{what} '{number}' is not a number or 'none'"))
        }),
    }
}

fn size_limit(text: Option<String>) -> Option<Option<String>> {
    text.map(|t| (t != "none" && t != "unlimited").then_some(t))
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn or_none<T: std::fmt::Display>(limit: Option<T>) -> String {
    limit.map_or("-".into(), |l| l.to_string())
}

fn gib(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else {
        format!("{:.1}GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

fn quota_words(quota: &QuotaView) -> [String; 4] {
    [
        or_none(quota.max_gpus),
        or_none(quota.max_sets),
        quota.max_volume_bytes.map_or("-".into(), gib),
        quota.max_disk_bytes.map_or("-".into(), gib),
    ]
}

fn print_users(users: &[UserView]) {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let [gpus, sets, volumes, disk] = quota_words(&u.quota);
            let used_disk = u.holdings.volume_bytes + u.holdings.rootfs_bytes;
            vec![
                u.name.clone(),
                u.role.clone(),
                format!("{}/{gpus}", u.holdings.gpus),
                format!("{}/{sets}", u.holdings.sets),
                format!("{}/{volumes}", gib(u.holdings.volume_bytes)),
                format!("{}/{disk}", gib(used_disk)),
                u.create_time.clone(),
            ]
        })
        .collect();
    table::print(
        &["NAME", "ROLE", "GPUS", "SETS", "VOLUMES", "DISK", "ADDED"],
        &rows,
    );
}

/// Runs one `user` command.
pub async fn user(
    client: &Client,
    command: UserCommand,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    use UserCommand as U;
    match command {
        U::Add {
            name,
            admin,
            max_gpus,
            max_sets,
            max_volume_size,
            max_disk,
        } => {
            let body = UserAddBody {
                name,
                admin,
                max_gpus,
                max_sets,
                max_volume_size,
                max_disk_size: max_disk,
            };
            let reply = client.add_user(&body).await?;
            if as_json {
                print_json(&reply);
            } else {
                eprintln!(
                    "added {} ({}); their token, shown only now:",
                    reply.user.name, reply.user.role
                );
                println!("{}", reply.token);
            }
        }
        U::Ls => {
            let reply = client.users().await?;
            if as_json {
                print_json(&reply);
            } else {
                print_users(&reply.users);
            }
        }
        U::Rm { name, purge, yes } => {
            if purge && !yes && !confirm_purge(client, &name).await? {
                eprintln!("nothing removed");
                return Ok(ExitCode::FAILURE);
            }
            let reply = client.remove_user(&name, purge).await?;
            if as_json {
                print_json(&reply);
            } else {
                for set in &reply.replica_sets {
                    println!("deleted replicaSet {set}");
                }
                for volume in &reply.volumes {
                    println!("deleted volume {volume}");
                }
                println!("removed user {name}");
            }
        }
        U::TokenReset { name } => {
            let reply = client.reset_token(&name).await?;
            if as_json {
                print_json(&reply);
            } else {
                eprintln!("new token for {name} (the old one no longer works):");
                println!("{}", reply.token);
            }
        }
        U::Quota {
            name,
            max_gpus,
            max_sets,
            max_volume_size,
            max_disk,
        } => {
            let body = QuotaBody {
                max_gpus: limit("max-gpus", max_gpus)?,
                max_sets: limit("max-sets", max_sets)?,
                max_volume_size: size_limit(max_volume_size),
                max_disk_size: size_limit(max_disk),
            };
            let reply = client.set_quota(&name, &body).await?;
            if as_json {
                print_json(&reply);
            } else {
                print_users(&[reply.user]);
            }
        }
        U::Key(command) => key(client, command, as_json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `gpu-replica whoami`.
pub async fn whoami(client: &Client, as_json: bool) -> Result<ExitCode, ClientError> {
    let reply = client.whoami().await?;
    if as_json {
        print_json(&reply);
    } else {
        print_users(&[reply.user]);
    }
    Ok(ExitCode::SUCCESS)
}

/// `gpu-replica usage`.
pub async fn usage(
    client: &Client,
    from: Option<String>,
    to: Option<String>,
    owner: Option<String>,
    csv: bool,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    let reply = client
        .usage(from.as_deref(), to.as_deref(), owner.as_deref())
        .await?;
    if as_json {
        print_json(&reply);
    } else if csv {
        println!("owner,replica_set,id,gpu_seconds,gpu_hours");
        for s in &reply.replica_sets {
            println!(
                "{},{},{},{},{:.6}",
                s.owner, s.replica_set, s.id, s.gpu_seconds, s.gpu_hours
            );
        }
    } else {
        println!("from {} to {}", reply.from, reply.to);
        let rows: Vec<Vec<String>> = reply
            .replica_sets
            .iter()
            .map(|s| {
                vec![
                    s.owner.clone(),
                    s.replica_set.clone(),
                    format!("{:.0}", s.gpu_seconds),
                    format!("{:.2}", s.gpu_hours),
                    s.gpus_at_end.to_string(),
                ]
            })
            .chain(reply.users.iter().map(|u| {
                vec![
                    u.owner.clone(),
                    "(total)".into(),
                    format!("{:.0}", u.gpu_seconds),
                    format!("{:.2}", u.gpu_hours),
                    String::new(),
                ]
            }))
            .collect();
        table::print(
            &[
                "OWNER",
                "REPLICASET",
                "GPU-SECONDS",
                "GPU-HOURS",
                "GPUS NOW",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
