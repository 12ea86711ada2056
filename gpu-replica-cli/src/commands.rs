//! Client subcommands: arguments → one HTTP request → a table (or `--json`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::table;

/// Subcommands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Run a new replicaSet (version 1) from a local image.
    Run {
        /// Name: letters, digits, '_' and '.'.
        name: String,
        /// Local image (never pulled).
        #[arg(long, short)]
        image: String,
        /// Number of GPUs (0 = none).
        #[arg(long, short, default_value_t = 0)]
        gpus: i64,
        /// Mount SRC:DEST; SRC is a volume name (bar-1) or an allowed host path.
        #[arg(long = "bind", short = 'v')]
        binds: Vec<String>,
        /// Environment KEY=VALUE.
        #[arg(long = "env", short)]
        env: Vec<String>,
        /// Container port to publish on a host port (22, 53/udp).
        #[arg(long = "port", short)]
        ports: Vec<String>,
        #[command(flatten)]
        resources: ResourceArgs,
        /// Command replacing the image's.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// List replicaSets.
    Ls,
    /// Show the current version of a replicaSet.
    Info {
        /// ReplicaSet name.
        name: String,
    },
    /// List every version of a replicaSet, newest first.
    History {
        /// ReplicaSet name.
        name: String,
    },
    /// Change GPUs and/or swap one bind (a new version keeping the filesystem).
    Patch {
        /// ReplicaSet name.
        name: String,
        /// New GPU count.
        #[arg(long, short)]
        gpus: Option<i64>,
        /// Bind to replace, SRC:DEST (with --new-bind).
        #[arg(long, requires = "new_bind")]
        old_bind: Option<String>,
        /// Its replacement, SRC:DEST.
        #[arg(long, requires = "old_bind")]
        new_bind: Option<String>,
        #[command(flatten)]
        resources: ResourceArgs,
    },
    /// Show or set the timers that stop a replicaSet (idle GPUs, a set time).
    Timers {
        /// ReplicaSet name.
        name: String,
        /// Stop after the GPUs were idle this long (30m, 2h).
        #[arg(long)]
        idle: Option<String>,
        /// Stop at this time, RFC 3339 (2026-11-23T08:00:00Z).
        #[arg(long)]
        at: Option<String>,
        /// Remove both timers.
        #[arg(long, conflicts_with_all = ["idle", "at"])]
        clear: bool,
    },
    /// A new replicaSet from a version of another (its spec and filesystem).
    Clone {
        /// ReplicaSet to clone.
        source: String,
        /// Name of the new replicaSet.
        name: String,
        /// Version to clone (default: the current one).
        #[arg(long = "from-version", value_name = "VERSION")]
        from_version: Option<i64>,
        /// GPUs of the clone (default: as the cloned version).
        #[arg(long, short)]
        gpus: Option<i64>,
        #[command(flatten)]
        resources: ResourceArgs,
    },
    /// Print the current container's log.
    Logs {
        /// ReplicaSet name.
        name: String,
        /// Only the last N lines.
        #[arg(long = "tail", short = 'n')]
        tail: Option<u64>,
        /// Keep printing what the container writes until it stops.
        #[arg(long, short)]
        follow: bool,
    },
    /// CPU, memory, network and GPU figures of the current container.
    Stats {
        /// ReplicaSet name.
        name: String,
    },
    /// Lifecycle events: the last N, then (with -f) live ones.
    Events {
        /// Stored events to show first.
        #[arg(long = "tail", short = 'n', default_value_t = 20)]
        tail: usize,
        /// Keep printing events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
    /// Return to an earlier version's spec and filesystem (as a new version).
    Rollback {
        /// ReplicaSet name.
        name: String,
        /// Version to return to.
        #[arg(value_name = "VERSION")]
        target: i64,
    },
    /// Stop the container and release its GPUs and ports.
    Stop {
        /// ReplicaSet name.
        name: String,
    },
    /// Stop the container but keep its GPUs and ports.
    Pause {
        /// ReplicaSet name.
        name: String,
    },
    /// Start a paused or stopped replicaSet again (same GPUs and ports).
    Continue {
        /// ReplicaSet name.
        name: String,
    },
    /// Recreate with the same spec and filesystem, claiming GPUs again.
    Restart {
        /// ReplicaSet name.
        name: String,
    },
    /// Run a command (no shell) in the current container; exits with its exit code.
    Exec {
        /// ReplicaSet name.
        name: String,
        /// Working directory.
        #[arg(long, short)]
        workdir: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Commit the current container to an image.
    Commit {
        /// ReplicaSet name.
        name: String,
        /// Image name (repo:tag).
        image: String,
    },
    /// Delete a replicaSet: containers, records, snapshots.
    Rm {
        /// ReplicaSet name.
        name: String,
    },
    /// Versioned volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// GPU usage.
    Gpus,
    /// Host port usage.
    Ports,
}

/// `gpu-replica volume …`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create volume NAME (as NAME-1).
    Create {
        /// Name: letters, digits, '_' and '.'.
        name: String,
        /// Size with KB, MB, GB or TB (20GB).
        size: String,
    },
    /// Resize: a new version with the data, users moved onto it.
    Resize {
        /// Volume name.
        name: String,
        /// New size (50GB).
        size: String,
    },
    /// List volumes.
    Ls,
    /// Show the current version.
    Info {
        /// Volume name.
        name: String,
    },
    /// List every version, newest first.
    History {
        /// Volume name.
        name: String,
    },
    /// Delete a volume (refused while mounted).
    Rm {
        /// Volume name.
        name: String,
    },
}

/// CPU, memory and shm asked for (each within the share of the GPU count).
#[derive(Debug, clap::Args)]
pub struct ResourceArgs {
    /// CPUs (1.5 allowed).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory with KB, MB, GB or TB.
    #[arg(long)]
    memory: Option<String>,
    /// Size of /dev/shm with KB, MB, GB or TB.
    #[arg(long)]
    shm: Option<String>,
}

impl ResourceArgs {
    /// The request's `resources` object, or `None` when nothing was asked.
    fn body(&self) -> Option<Value> {
        if self.cpus.is_none() && self.memory.is_none() && self.shm.is_none() {
            return None;
        }
        Some(json!({ "cpus": self.cpus, "memory": self.memory, "shmSize": self.shm }))
    }
}

fn bind(text: &str) -> Result<Value, ClientError> {
    let (src, dest) = text
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Transport(format!("bind '{text}' is not SRC:DEST")))?;
    Ok(json!({ "src": src, "dest": dest }))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs `future` behind a spinner on a terminal (long operations).
async fn with_spinner<T>(message: String, future: impl std::future::Future<Output = T>) -> T {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = future.await;
    spinner.finish_and_clear();
    out
}

/// Sends one command; prints the answer; returns the exit code.
pub async fn execute(
    client: &Client,
    command: ClientCommand,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    use ClientCommand as C;
    let rs = |name: &str| format!("/api/v1/replicaSet/{name}");
    let (data, view) = match command {
        C::Run {
            name,
            image,
            gpus,
            binds,
            env,
            ports,
            resources,
            cmd,
        } => {
            let binds = binds
                .iter()
                .map(|b| bind(b))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({
                "imageName": image, "replicaSetName": name, "gpuCount": gpus,
                "binds": binds, "env": env, "containerPorts": ports,
            });
            if !cmd.is_empty() {
                body["cmd"] = json!(cmd);
            }
            if let Some(resources) = resources.body() {
                body["resources"] = resources;
            }
            let data = with_spinner(
                format!("running {name}"),
                client.call(Method::POST, "/api/v1/replicaSet", Some(body)),
            )
            .await?;
            (data, View::Field("name"))
        }
        C::Ls => (
            client.call(Method::GET, "/api/v1/replicaSet", None).await?,
            View::ReplicaSets,
        ),
        C::Info { name } => (
            client.call(Method::GET, &rs(&name), None).await?,
            View::Info,
        ),
        C::History { name } => (
            client
                .call(Method::GET, &format!("{}/history", rs(&name)), None)
                .await?,
            View::History,
        ),
        C::Patch {
            name,
            gpus,
            old_bind,
            new_bind,
            resources,
        } => {
            let mut body = json!({});
            if let Some(resources) = resources.body() {
                body["resourcePatch"] = resources;
            }
            if let Some(gpus) = gpus {
                body["gpuPatch"] = json!({ "gpuCount": gpus });
            }
            if let (Some(old), Some(new)) = (old_bind, new_bind) {
                body["volumePatch"] = json!({ "oldBind": bind(&old)?, "newBind": bind(&new)? });
            }
            let call = client.call(Method::PATCH, rs(&name), Some(body));
            (
                with_spinner(format!("patching {name}"), call).await?,
                View::Field("containerName"),
            )
        }
        C::Rollback {
            name,
            target: version,
        } => {
            let call = client.call(
                Method::PATCH,
                format!("{}/rollback", rs(&name)),
                Some(json!({ "version": version })),
            );
            (
                with_spinner(format!("rolling {name} back to version {version}"), call).await?,
                View::Field("containerName"),
            )
        }
        C::Restart { name } => {
            let call = client.call(Method::PATCH, format!("{}/restart", rs(&name)), None);
            (
                with_spinner(format!("restarting {name}"), call).await?,
                View::Field("containerName"),
            )
        }
        C::Stop { name } => (
            client
                .call(Method::PATCH, &format!("{}/stop", rs(&name)), None)
                .await?,
            View::Done,
        ),
        C::Pause { name } => (
            client
                .call(Method::PATCH, &format!("{}/pause", rs(&name)), None)
                .await?,
            View::Done,
        ),
        C::Continue { name } => (
            client
                .call(Method::PATCH, &format!("{}/continue", rs(&name)), None)
                .await?,
            View::Done,
        ),
        C::Rm { name } => (
            client.call(Method::DELETE, &rs(&name), None).await?,
            View::Done,
        ),
        C::Exec { name, workdir, cmd } => {
            let body = json!({ "cmd": cmd, "workDir": workdir });
            (
                client
                    .call(Method::POST, &format!("{}/execute", rs(&name)), Some(body))
                    .await?,
                View::Exec,
            )
        }
        C::Commit { name, image } => {
            let body = json!({ "newImageName": image });
            (
                client
                    .call(Method::POST, &format!("{}/commit", rs(&name)), Some(body))
                    .await?,
                View::Field("imageName"),
            )
        }
        C::Volume(command) => volume(client, command).await?,
        C::Timers {
            name,
            idle,
            at,
            clear,
        } => {
            let path = format!("{}/timers", rs(&name));
            let data = if clear || idle.is_some() || at.is_some() {
                let body = json!({ "idleStop": idle, "stopAt": at });
                client.call(Method::PUT, path, Some(body)).await?
            } else {
                client.call(Method::GET, path, None).await?
            };
            (data, View::Timers)
        }
        C::Clone {
            source,
            name,
            from_version,
            gpus,
            resources,
        } => {
            let mut body = json!({ "name": name, "version": from_version, "gpuCount": gpus });
            if let Some(resources) = resources.body() {
                body["resources"] = resources;
            }
            let call = client.call(Method::POST, format!("{}/clone", rs(&source)), Some(body));
            (
                with_spinner(format!("cloning {source} into {name}"), call).await?,
                View::Field("name"),
            )
        }
        C::Logs { name, tail, follow } => {
            let mut path = format!("{}/logs?follow={follow}", rs(&name));
            if let Some(tail) = tail {
                path.push_str(&format!("&tail={tail}"));
            }
            stream_logs(client.open(path).await?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Stats { name } => (
            client
                .call(Method::GET, format!("{}/stats", rs(&name)), None)
                .await?,
            View::Stats,
        ),
        C::Events { tail, follow } => {
            let path = format!("/api/v1/events?replay={tail}&follow={follow}");
            stream_events(client.open(path).await?, as_json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Gpus => (
            client
                .call(Method::GET, "/api/v1/resources/gpus?detail=true", None)
                .await?,
            View::Gpus,
        ),
        C::Ports => (
            client
                .call(Method::GET, "/api/v1/resources/ports", None)
                .await?,
            View::Ports,
        ),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&data).unwrap_or_default()
        );
        return Ok(exit_code(&view, &data));
    }
    print(&view, &data);
    Ok(exit_code(&view, &data))
}

async fn volume(client: &Client, command: VolumeCommand) -> Result<(Value, View), ClientError> {
    use VolumeCommand as V;
    let path = |name: &str| format!("/api/v1/volumes/{name}");
    Ok(match command {
        V::Create { name, size } => {
            let body = json!({ "name": name, "size": size });
            (
                client
                    .call(Method::POST, "/api/v1/volumes", Some(body))
                    .await?,
                View::Field("name"),
            )
        }
        V::Resize { name, size } => {
            let call = client.call(
                Method::PATCH,
                format!("{}/size", path(&name)),
                Some(json!({ "size": size })),
            );
            (
                with_spinner(format!("resizing {name}"), call).await?,
                View::Field("name"),
            )
        }
        V::Ls => (
            client.call(Method::GET, "/api/v1/volumes", None).await?,
            View::Volumes,
        ),
        V::Info { name } => (
            client.call(Method::GET, &path(&name), None).await?,
            View::VolumeInfo,
        ),
        V::History { name } => (
            client
                .call(Method::GET, &format!("{}/history", path(&name)), None)
                .await?,
            View::VolumeHistory,
        ),
        V::Rm { name } => (
            client.call(Method::DELETE, &path(&name), None).await?,
            View::Done,
        ),
    })
}

/// Copies a log response to stdout as it arrives.
async fn stream_logs(response: hyper::Response<hyper::body::Incoming>) -> Result<(), ClientError> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let mut body = response.into_body();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport(format!("log stream: {e}")))?;
        if let Some(chunk) = frame.data_ref() {
            let _ = out.write_all(chunk);
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Prints Server-Sent Events, one line each (or their JSON with --json).
async fn stream_events(
    response: hyper::Response<hyper::body::Incoming>,
    as_json: bool,
) -> Result<(), ClientError> {
    use http_body_util::BodyExt;
    let mut body = response.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport(format!("event stream: {e}")))?;
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if as_json {
                println!("{event}");
            } else {
                println!(
                    "{}  {:<14} {:<16} {:<6} {}",
                    text(&event["time"]),
                    text(&event["kind"]),
                    text(&event["target"]),
                    if event["ok"] == Value::Bool(true) {
                        "ok"
                    } else {
                        "FAILED"
                    },
                    text(&event["message"])
                );
            }
        }
    }
    Ok(())
}

/// How an answer is shown.
enum View {
    Timers,
    Stats,
    Done,
    Field(&'static str),
    ReplicaSets,
    Info,
    History,
    Exec,
    Volumes,
    VolumeInfo,
    VolumeHistory,
    Gpus,
    Ports,
}

fn idle_words(secs: &Value) -> String {
    secs.as_u64()
        .map_or("-".into(), |s| format!("after {s} s of idle GPUs"))
}

fn exit_code(view: &View, data: &Value) -> ExitCode {
    match view {
        View::Exec => {
            let code = data["exitCode"].as_i64().unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        _ => ExitCode::SUCCESS,
    }
}

fn print(view: &View, data: &Value) {
    let rows = |key: &str| data[key].as_array().cloned().unwrap_or_default();
    match view {
        View::Done => println!("ok"),
        View::Field(key) => println!("{}", text(&data[*key])),
        View::Exec => print!("{}", data["stdout"].as_str().unwrap_or_default()),
        View::ReplicaSets => {
            let rows: Vec<Vec<String>> = rows("replicaSets")
                .iter()
                .map(|r| {
                    let ports = r["ports"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(c, h)| format!("{h}->{c}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        text(&r["name"]),
                        text(&r["status"]),
                        text(&r["version"]),
                        r["gpus"]
                            .as_array()
                            .map(|g| g.len())
                            .unwrap_or(0)
                            .to_string(),
                        ports,
                        text(&r["image"]),
                        text(&r["createTime"]),
                    ]
                })
                .collect();
            table::print(
                &[
                    "NAME", "STATUS", "VERSION", "GPUS", "PORTS", "IMAGE", "UPDATED",
                ],
                &rows,
            );
        }
        View::Timers => {
            println!("idle stop  {}", idle_words(&data["idleStopSecs"]));
            println!("stop at    {}", text(&data["stopAt"]));
        }
        View::Stats => {
            let mib = |v: &Value| {
                v.as_u64()
                    .map_or("-".into(), |b| format!("{} MiB", b >> 20))
            };
            println!("container  {}", text(&data["container"]));
            println!("cpu        {}%", text(&data["cpuPercent"]));
            println!(
                "memory     {} / {}",
                mib(&data["memoryUsed"]),
                mib(&data["memoryLimit"])
            );
            println!(
                "network    rx {} B, tx {} B",
                text(&data["netRx"]),
                text(&data["netTx"])
            );
            println!("pids       {}", text(&data["pids"]));
            for g in data["gpus"].as_array().into_iter().flatten() {
                println!(
                    "gpu {}      {}  util {}%  memory {} / {}",
                    text(&g["index"]),
                    text(&g["uuid"]),
                    text(&g["utilization"]),
                    mib(&g["memoryUsed"]),
                    mib(&g["memoryTotal"])
                );
            }
        }
        View::Info => {
            let info = &data["info"];
            println!("container  {}", text(&info["containerName"]));
            println!("status     {}", text(&data["status"]));
            println!("version    {}", text(&info["version"]));
            println!("created    {}", text(&info["createTime"]));
            println!("image      {}", text(&info["config"]["Image"]));
            let gpus: Vec<String> = info["gpus"]
                .as_array()
                .map(|g| g.iter().map(text).collect())
                .unwrap_or_default();
            println!(
                "gpus       {}",
                if gpus.is_empty() {
                    "-".into()
                } else {
                    gpus.join(",")
                }
            );
            if let Some(ports) = info["hostConfig"]["PortBindings"].as_object() {
                for (container, host) in ports {
                    println!("port       {} -> {}", text(&host[0]["HostPort"]), container);
                }
            }
            for bind in info["hostConfig"]["Binds"].as_array().into_iter().flatten() {
                println!("bind       {}", text(bind));
            }
            let limits = &info["resources"];
            let bytes = |v: &Value| {
                v.as_u64()
                    .map_or("-".into(), |b| format!("{} MiB", b >> 20))
            };
            println!(
                "resources  cpus {}, memory {}, shm {}",
                text(&limits["cpus"]),
                bytes(&limits["memory"]),
                bytes(&limits["shmSize"])
            );
            let timers = &data["timers"];
            if !timers["idleStopSecs"].is_null() || !timers["stopAt"].is_null() {
                println!(
                    "timers     idle stop {}, stop at {}",
                    idle_words(&timers["idleStopSecs"]),
                    text(&timers["stopAt"])
                );
            }
        }
        View::History => {
            let rows: Vec<Vec<String>> = rows("history")
                .iter()
                .map(|h| {
                    vec![
                        text(&h["version"]),
                        text(&h["status"]["containerName"]),
                        h["status"]["gpus"]
                            .as_array()
                            .map(|g| g.len())
                            .unwrap_or(0)
                            .to_string(),
                        text(&h["createTime"]),
                    ]
                })
                .collect();
            table::print(&["VERSION", "CONTAINER", "GPUS", "CREATED"], &rows);
        }
        View::Volumes => {
            let rows: Vec<Vec<String>> = rows("volumes")
                .iter()
                .map(|v| {
                    vec![
                        text(&v["name"]),
                        text(&v["version"]),
                        text(&v["dockerName"]),
                        text(&v["size"]),
                        text(&v["createTime"]),
                    ]
                })
                .collect();
            table::print(
                &["NAME", "VERSION", "DOCKER VOLUME", "SIZE", "CREATED"],
                &rows,
            );
        }
        View::VolumeInfo => {
            let info = &data["Info"];
            println!("volume     {}", text(&info["opt"]["Name"]));
            println!("version    {}", text(&info["version"]));
            println!("size       {}", text(&info["opt"]["DriverOpts"]["size"]));
            println!("enforced   {}", text(&info["sizeEnforced"]));
            println!("created    {}", text(&info["createTime"]));
        }
        View::VolumeHistory => {
            let rows: Vec<Vec<String>> = rows("history")
                .iter()
                .map(|h| {
                    vec![
                        text(&h["version"]),
                        text(&h["status"]["opt"]["Name"]),
                        text(&h["status"]["opt"]["DriverOpts"]["size"]),
                        text(&h["createTime"]),
                    ]
                })
                .collect();
            table::print(&["VERSION", "DOCKER VOLUME", "SIZE", "CREATED"], &rows);
        }
        View::Gpus => {
            let rows: Vec<Vec<String>> = rows("gpus")
                .iter()
                .map(|g| {
                    let memory = match (g["memoryUsed"].as_u64(), g["memoryTotal"].as_u64()) {
                        (Some(used), Some(total)) => format!("{}/{} MiB", used >> 20, total >> 20),
                        _ => "-".into(),
                    };
                    vec![
                        text(&g["index"]),
                        text(&g["uuid"]),
                        text(&g["name"]),
                        memory,
                        text(&g["utilization"]),
                        text(&g["holder"]),
                    ]
                })
                .collect();
            table::print(
                &["INDEX", "UUID", "NAME", "MEMORY", "UTIL%", "HELD BY"],
                &rows,
            );
        }
        View::Ports => {
            let ports = &data["ports"];
            println!(
                "range      {}-{}",
                text(&ports["StartPort"]),
                text(&ports["EndPort"])
            );
            println!("available  {}", text(&ports["AvailableCount"]));
            let used: Vec<String> = ports["UsedPortSet"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            println!(
                "used       {}",
                if used.is_empty() {
                    "-".into()
                } else {
                    used.join(",")
                }
            );
        }
    }
}
