//! `gpu-replica user …`, `whoami` and `usage`: accounts, quotas and GPU-time.

use std::process::ExitCode;

use gpu_replica_http::wire::{
    QuotaBody, QuotaView, TokenReply, UsageReply, UserAddBody, UserList, UserReply, UserTokenReply,
    UserView, WhoamiReply,
};
use hyper::Method;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::table;

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
    },
    /// List users with their quota and what they hold.
    Ls,
    /// Remove a user (refused while they own replicaSets or volumes).
    Rm {
        /// User name.
        name: String,
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
    },
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

fn quota_words(quota: &QuotaView) -> [String; 3] {
    [
        or_none(quota.max_gpus),
        or_none(quota.max_sets),
        quota.max_volume_bytes.map_or("-".into(), gib),
    ]
}

fn print_users(users: &[UserView]) {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let [gpus, sets, volumes] = quota_words(&u.quota);
            vec![
                u.name.clone(),
                u.role.clone(),
                format!("{}/{gpus}", u.holdings.gpus),
                format!("{}/{sets}", u.holdings.sets),
                format!("{}/{volumes}", gib(u.holdings.volume_bytes)),
                u.create_time.clone(),
            ]
        })
        .collect();
    table::print(&["NAME", "ROLE", "GPUS", "SETS", "VOLUMES", "ADDED"], &rows);
}

/// Runs one `user` command.
pub async fn user(
    client: &Client,
    command: UserCommand,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    use UserCommand as U;
    let path = |name: &str| format!("/api/v1/users/{name}");
    let none = None::<&()>;
    match command {
        U::Add {
            name,
            admin,
            max_gpus,
            max_sets,
            max_volume_size,
        } => {
            let body = UserAddBody {
                name,
                admin,
                max_gpus,
                max_sets,
                max_volume_size,
            };
            let reply: UserTokenReply = client
                .request(Method::POST, "/api/v1/users", Some(&body))
                .await?;
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
            let reply: UserList = client.request(Method::GET, "/api/v1/users", none).await?;
            if as_json {
                print_json(&reply);
            } else {
                print_users(&reply.users);
            }
        }
        U::Rm { name } => {
            let _: Value = client.request(Method::DELETE, path(&name), none).await?;
            println!("ok");
        }
        U::TokenReset { name } => {
            let reply: TokenReply = client
                .request(Method::POST, format!("{}/token", path(&name)), none)
                .await?;
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
        } => {
            let body = QuotaBody {
                max_gpus: limit("max-gpus", max_gpus)?,
                max_sets: limit("max-sets", max_sets)?,
                max_volume_size: size_limit(max_volume_size),
            };
            let reply: UserReply = client
                .request(Method::PATCH, format!("{}/quota", path(&name)), Some(&body))
                .await?;
            if as_json {
                print_json(&reply);
            } else {
                print_users(&[reply.user]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gpu-replica whoami`.
pub async fn whoami(client: &Client, as_json: bool) -> Result<ExitCode, ClientError> {
    let reply: WhoamiReply = client
        .request(Method::GET, "/api/v1/whoami", None::<&()>)
        .await?;
    if as_json {
        print_json(&reply);
    } else {
        print_users(&[reply.user]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value (RFC 3339 times carry ':' and '+').
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    let query: Vec<String> = [("from", from), ("to", to), ("owner", owner)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
        .collect();
    let path = format!("/api/v1/usage?{}", query.join("&"));
    let reply: UsageReply = client.request(Method::GET, path, None::<&()>).await?;
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
