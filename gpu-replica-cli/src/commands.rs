//! Client subcommands: arguments → one HTTP request → a table (or `--json`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use gpu_replica_http::wire::{
    BindBody, CloneBody, CommitReply, ContainerNameReply, EventView, ExecuteBody, ExecuteReply,
    GpuDetails, GpuPatch, HistoryReply, InfoReply, MigrateBody, MigrateReply, NodeList, PatchBody,
    PortsReply, ReplicaSetList, ResourcesBody, RunBody, RunReply, StatsReply, TimersBody,
    TimersView, VolumeCreateBody, VolumeHistoryReply, VolumeInfoReply, VolumeList, VolumePatch,
    VolumeReply,
};
use serde_json::Value;

use crate::table;
use gpu_replica_http::client::{Client, ClientError};

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
        /// In a cluster, the node to run on (default: placement picks one).
        #[arg(long)]
        node: Option<String>,
        /// Command replacing the image's.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// List replicaSets (with their owners and nodes).
    Ls {
        /// Only this user's (admins).
        #[arg(long)]
        owner: Option<String>,
    },
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
        /// Another image (local): the new version is made from it, keeping --keep folders
        /// (default /root); `rollback` returns the old image.
        #[arg(long)]
        image: Option<String>,
        /// An absolute folder to carry into the new image (repeatable; replaces the default).
        #[arg(long = "keep", requires = "image")]
        keep: Vec<String>,
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
    /// A link that opens port PORT of the set in a browser, through the server's web-service
    /// proxy (serve --proxy-addr): good for a minute, once. Prints the link.
    Open {
        /// ReplicaSet name.
        name: String,
        /// The port inside the container (8888 for JupyterLab, 6006 for TensorBoard).
        port: u16,
    },
    /// The set's TCP ports: published ones and those a program listens on, marked when they
    /// answer HTTP (what `open` opens).
    Services {
        /// ReplicaSet name.
        name: String,
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
    /// Move a replicaSet to another node of the cluster (a new version there, same files).
    Migrate {
        /// ReplicaSet name.
        name: String,
        /// The node it moves to.
        #[arg(long, value_name = "NODE")]
        to: String,
        /// GPUs it gets there (default: as many as now).
        #[arg(long, short)]
        gpus: Option<i64>,
        /// Take its volumes' data along (needed when it mounts volumes).
        #[arg(long)]
        move_volumes: bool,
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
    /// Run a command (no shell) in the current container; exits with its exit code. With -i
    /// its input is ours; with -t it gets a terminal (raw mode, window size, Ctrl-C to it).
    Exec {
        /// ReplicaSet name.
        name: String,
        /// Working directory.
        #[arg(long, short)]
        workdir: Option<String>,
        /// Keep standard input attached.
        #[arg(long, short)]
        interactive: bool,
        /// Give the command a terminal (needs one here).
        #[arg(long, short)]
        tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// A shell in the current container (`bash` if the image has it, else `sh`), or CMD, with
    /// this terminal attached; exits with its exit code.
    Shell {
        /// ReplicaSet name.
        name: String,
        /// A command to run instead of the shell.
        #[arg(last = true)]
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
    /// Host port usage (in a cluster, every node's).
    Ports {
        /// In a cluster, this node's usage first.
        #[arg(long)]
        node: Option<String>,
    },
    /// The nodes of the cluster: state, free and total GPUs, sets.
    Nodes,
    /// Save a backup of the server's whole state store to FILE (admins; the server keeps
    /// running). `gpu-replica restore` puts it back.
    Backup {
        /// The file to write: replaced whole, never left half-written.
        file: std::path::PathBuf,
    },
    /// Cordon, uncordon or drain a node of the cluster (admins).
    #[command(subcommand)]
    Node(crate::nodes::NodeCommand),
    /// A live view of the GPUs and sets, redrawn until q is pressed.
    Top {
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Users, their quotas and tokens (admins).
    #[command(subcommand)]
    User(crate::users::UserCommand),
    /// Who the token belongs to, with quota and holdings.
    Whoami,
    /// GPU-hours per user and per replicaSet over a period.
    Usage {
        /// Start: RFC 3339 (2026-11-01T00:00:00Z) or seconds since 1970 (default: the
        /// beginning).
        #[arg(long)]
        from: Option<String>,
        /// End (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this user's (admins).
        #[arg(long)]
        owner: Option<String>,
        /// Print CSV: owner,replica_set,id,gpu_seconds,gpu_hours.
        #[arg(long)]
        csv: bool,
    },
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
        /// In a cluster, the node whose Docker holds it (default: the server asked).
        #[arg(long)]
        node: Option<String>,
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
    fn body(&self) -> Option<ResourcesBody> {
        if self.cpus.is_none() && self.memory.is_none() && self.shm.is_none() {
            return None;
        }
        Some(ResourcesBody {
            cpus: self.cpus,
            memory: self.memory.clone(),
            shm_size: self.shm.clone(),
        })
    }
}

fn bind(text: &str) -> Result<BindBody, ClientError> {
    let (src, dest) = text
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Transport(format!("bind '{text}' is not SRC:DEST")))?;
    Ok(BindBody {
        src: src.into(),
        dest: dest.into(),
    })
}

/// `-` for what is not known.
fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{} MiB", b >> 20))
}

/// Runs `future` behind a spinner on a terminal (long operations).
async fn with_spinner<T>(message: String, future: impl std::future::Future<Output = T>) -> T {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = future.await;
    spinner.finish_and_clear();
    out
}

/// What the server answered, in the contract's types.
enum Answer {
    Done,
    Run(RunReply),
    NewVersion(ContainerNameReply),
    Migrated(MigrateReply),
    Commit(CommitReply),
    Volume(VolumeReply),
    ReplicaSets(ReplicaSetList),
    Info(Box<InfoReply>),
    History(HistoryReply),
    Exec(ExecuteReply),
    Volumes(VolumeList),
    VolumeInfo(VolumeInfoReply),
    VolumeHistory(VolumeHistoryReply),
    Gpus(GpuDetails),
    Ports(PortsReply),
    Timers(TimersView),
    Nodes(NodeList),
    Stats(StatsReply),
    Open(gpu_replica_http::wire::OpenReply),
    Services(gpu_replica_http::wire::ServicesReply),
}

impl Answer {
    /// The answer's `data` as JSON, as the server sent it.
    fn json(&self) -> Value {
        let value = match self {
            Answer::Done => Ok(Value::Null),
            Answer::Run(a) => serde_json::to_value(a),
            Answer::NewVersion(a) => serde_json::to_value(a),
            Answer::Migrated(a) => serde_json::to_value(a),
            Answer::Commit(a) => serde_json::to_value(a),
            Answer::Volume(a) => serde_json::to_value(a),
            Answer::ReplicaSets(a) => serde_json::to_value(a),
            Answer::Info(a) => serde_json::to_value(a),
            Answer::History(a) => serde_json::to_value(a),
            Answer::Exec(a) => serde_json::to_value(a),
            Answer::Volumes(a) => serde_json::to_value(a),
            Answer::VolumeInfo(a) => serde_json::to_value(a),
            Answer::VolumeHistory(a) => serde_json::to_value(a),
            Answer::Gpus(a) => serde_json::to_value(a),
            Answer::Ports(a) => serde_json::to_value(a),
            Answer::Timers(a) => serde_json::to_value(a),
            Answer::Nodes(a) => serde_json::to_value(a),
            Answer::Stats(a) => serde_json::to_value(a),
            Answer::Open(a) => serde_json::to_value(a),
            Answer::Services(a) => serde_json::to_value(a),
        };
        value.unwrap_or(Value::Null)
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Answer::Exec(e) => ExitCode::from(u8::try_from(e.exit_code).unwrap_or(1)),
            _ => ExitCode::SUCCESS,
        }
    }
}

/// Sends one command; prints the answer; returns the exit code.
pub async fn execute(
    client: &Client,
    command: ClientCommand,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    use ClientCommand as C;
    let answer = match command {
        C::Run {
            name,
            image,
            gpus,
            binds,
            env,
            ports,
            resources,
            node,
            cmd,
        } => {
            let body = RunBody {
                node,
                image_name: image,
                replica_set_name: name.clone(),
                gpu_count: gpus,
                binds: binds.iter().map(|b| bind(b)).collect::<Result<_, _>>()?,
                env,
                cmd: (!cmd.is_empty()).then_some(cmd),
                container_ports: ports,
                resources: resources.body(),
            };
            Answer::Run(with_spinner(format!("running {name}"), client.run(&body)).await?)
        }
        C::Ls { owner } => Answer::ReplicaSets(client.list(owner.as_deref(), None).await?),
        C::User(command) => return crate::users::user(client, command, as_json).await,
        C::Node(command) => return crate::nodes::node(client, command, as_json).await,
        C::Top { interval } => {
            crate::top::top(client, std::time::Duration::from_secs(interval.max(1))).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Whoami => return crate::users::whoami(client, as_json).await,
        C::Usage {
            from,
            to,
            owner,
            csv,
        } => return crate::users::usage(client, from, to, owner, csv, as_json).await,
        C::Info { name } => Answer::Info(Box::new(client.info(&name).await?)),
        C::History { name } => Answer::History(client.history(&name).await?),
        C::Patch {
            name,
            gpus,
            old_bind,
            new_bind,
            resources,
            image,
            keep,
        } => {
            let volume_patch = match (old_bind, new_bind) {
                (Some(old), Some(new)) => Some(VolumePatch {
                    old_bind: bind(&old)?,
                    new_bind: bind(&new)?,
                }),
                _ => None,
            };
            let body = PatchBody {
                gpu_patch: gpus.map(|gpu_count| GpuPatch { gpu_count }),
                volume_patch,
                resource_patch: resources.body(),
                keep_paths: (!keep.is_empty()).then_some(keep),
                image_name: image,
            };
            let call = client.patch(&name, &body);
            Answer::NewVersion(with_spinner(format!("patching {name}"), call).await?)
        }
        C::Migrate {
            name,
            to,
            gpus,
            move_volumes,
        } => {
            let body = MigrateBody {
                node: to.clone(),
                gpu_count: gpus,
                move_volumes,
            };
            let call = client.migrate(&name, &body);
            let message = format!("moving {name} to node {to}");
            Answer::Migrated(with_spinner(message, call).await?)
        }
        C::Rollback {
            name,
            target: version,
        } => {
            let call = client.rollback(&name, version);
            let message = format!("rolling {name} back to version {version}");
            Answer::NewVersion(with_spinner(message, call).await?)
        }
        C::Restart { name } => {
            let call = client.restart(&name);
            Answer::NewVersion(with_spinner(format!("restarting {name}"), call).await?)
        }
        C::Stop { name } => client.stop(&name).await.map(|()| Answer::Done)?,
        C::Pause { name } => client.pause(&name).await.map(|()| Answer::Done)?,
        C::Continue { name } => client.resume(&name).await.map(|()| Answer::Done)?,
        C::Rm { name } => client.delete(&name).await.map(|()| Answer::Done)?,
        C::Exec {
            name,
            workdir,
            cmd,
            interactive,
            tty,
        } if interactive || tty => {
            return crate::terminal::attach(client, &name, cmd, workdir, tty).await;
        }
        C::Shell { name, cmd } => {
            use std::io::IsTerminal;
            let tty = std::io::stdin().is_terminal();
            return crate::terminal::attach(client, &name, cmd, None, tty).await;
        }
        C::Exec {
            name, workdir, cmd, ..
        } => {
            let body = ExecuteBody {
                cmd,
                work_dir: workdir,
            };
            Answer::Exec(client.execute(&name, &body).await?)
        }
        C::Commit { name, image } => Answer::Commit(client.commit(&name, &image).await?),
        C::Volume(command) => volume(client, command).await?,
        C::Timers {
            name,
            idle,
            at,
            clear,
        } => Answer::Timers(if clear || idle.is_some() || at.is_some() {
            let body = TimersBody {
                idle_stop: idle,
                stop_at: at,
            };
            client.set_timers(&name, &body).await?
        } else {
            client.timers(&name).await?
        }),
        C::Clone {
            source,
            name,
            from_version,
            gpus,
            resources,
        } => {
            let body = CloneBody {
                name: name.clone(),
                version: from_version,
                gpu_count: gpus,
                resources: resources.body(),
            };
            let call = client.clone_set(&source, &body);
            Answer::Run(with_spinner(format!("cloning {source} into {name}"), call).await?)
        }
        C::Logs { name, tail, follow } => {
            stream_logs(client.logs(&name, tail, follow).await?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Stats { name } => Answer::Stats(client.stats(&name).await?),
        C::Open { name, port } => Answer::Open(client.open_link(&name, port).await?),
        C::Services { name } => Answer::Services(client.services(&name).await?),
        C::Events { tail, follow } => {
            stream_events(client.events(tail, follow).await?, as_json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Gpus => Answer::Gpus(client.gpu_details().await?),
        C::Nodes => Answer::Nodes(client.nodes().await?),
        C::Backup { file } => {
            backup(client, &file, as_json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        C::Ports { node } => Answer::Ports(client.ports(node.as_deref()).await?),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer.json()).unwrap_or_default()
        );
    } else {
        print(&answer);
    }
    Ok(answer.exit_code())
}

/// Fetches a backup, checks it, and writes it to `file` whole.
async fn backup(client: &Client, file: &std::path::Path, as_json: bool) -> Result<(), ClientError> {
    let bytes = client.backup().await?;
    let header = gpu_replica_core::backup::read(&bytes)
        .map_err(|e| ClientError::Transport(format!("the server's backup does not check: {e}")))?
        .header;
    gpu_replica_core::backup::write_file(file, &bytes)
        .map_err(|e| ClientError::Transport(format!("cannot write {}: {e}", file.display())))?;
    if as_json {
        let line = serde_json::json!({
            "file": file.display().to_string(),
            "bytes": bytes.len(),
            "header": header,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&line).unwrap_or_default()
        );
    } else {
        println!(
            "{}: {} records of schema {} from {}, taken at {} ({} bytes)",
            file.display(),
            header.records,
            header.schema,
            header.store,
            header.created,
            bytes.len()
        );
    }
    Ok(())
}

async fn volume(client: &Client, command: VolumeCommand) -> Result<Answer, ClientError> {
    use VolumeCommand as V;
    Ok(match command {
        V::Create { name, size, node } => {
            let body = VolumeCreateBody { name, size, node };
            Answer::Volume(client.create_volume(&body).await?)
        }
        V::Resize { name, size } => {
            let call = client.resize_volume(&name, &size);
            Answer::Volume(with_spinner(format!("resizing {name}"), call).await?)
        }
        V::Ls => Answer::Volumes(client.volumes(None).await?),
        V::Info { name } => Answer::VolumeInfo(client.volume(&name).await?),
        V::History { name } => Answer::VolumeHistory(client.volume_history(&name).await?),
        V::Rm { name } => client.delete_volume(&name).await.map(|()| Answer::Done)?,
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
            let Ok(event) = serde_json::from_str::<EventView>(data.trim()) else {
                continue;
            };
            if as_json {
                println!("{}", serde_json::to_string(&event).unwrap_or_default());
            } else {
                println!(
                    "{}  {:<14} {:<16} {:<6} {}",
                    event.time,
                    event.kind,
                    event.target,
                    if event.ok { "ok" } else { "FAILED" },
                    event.message
                );
            }
        }
    }
    Ok(())
}

fn idle_words(secs: Option<u64>) -> String {
    secs.map_or("-".into(), |s| format!("after {s} s of idle GPUs"))
}

fn print(answer: &Answer) {
    match answer {
        Answer::Done => println!("ok"),
        Answer::Run(a) => println!("{}", a.name),
        Answer::NewVersion(a) => println!("{}", a.container_name),
        Answer::Migrated(a) => println!("{} on node {}", a.container_name, a.node),
        Answer::Commit(a) => println!("{}", a.image_name),
        Answer::Volume(a) => println!("{}", a.name),
        Answer::Exec(a) => print!("{}", a.stdout),
        Answer::ReplicaSets(list) => {
            let rows: Vec<Vec<String>> = list
                .replica_sets
                .iter()
                .map(|r| {
                    let ports = r
                        .ports
                        .iter()
                        .map(|(c, h)| format!("{h}->{c}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        r.name.clone(),
                        r.status.clone(),
                        r.version.to_string(),
                        r.gpus.len().to_string(),
                        ports,
                        r.image.clone(),
                        r.create_time.clone(),
                        r.owner.clone(),
                        if r.node.is_empty() {
                            "-".into()
                        } else {
                            r.node.clone()
                        },
                    ]
                })
                .collect();
            table::print(
                &[
                    "NAME", "STATUS", "VERSION", "GPUS", "PORTS", "IMAGE", "UPDATED", "OWNER",
                    "NODE",
                ],
                &rows,
            );
        }
        Answer::Nodes(list) => {
            let rows: Vec<Vec<String>> = list
                .nodes
                .iter()
                .map(|n| {
                    // `ready,cordoned`, `ready,draining`: kubectl's way.
                    let mut state = n.state.clone();
                    if n.drain.as_deref() == Some("running") {
                        state.push_str(",draining");
                    } else if n.cordoned {
                        state.push_str(",cordoned");
                    }
                    vec![
                        n.name.clone(),
                        state,
                        format!("{}/{}", n.free_gpus, n.gpus),
                        n.sets.to_string(),
                        n.advertise.clone(),
                        n.port_range.clone(),
                    ]
                })
                .collect();
            table::print(
                &["NODE", "STATE", "FREE GPUS", "SETS", "ADVERTISE", "PORTS"],
                &rows,
            );
        }
        Answer::Timers(t) => {
            println!("idle stop  {}", idle_words(t.idle_stop_secs));
            println!("stop at    {}", or_dash(t.stop_at.as_ref()));
        }
        Answer::Open(o) => {
            println!("{}", o.url);
            eprintln!(
                "(open it within a minute, once; it leads to {})",
                o.service_url
            );
        }
        Answer::Services(s) => {
            let rows: Vec<Vec<String>> = s
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.port.to_string(),
                        s.host_port.map(|p| p.to_string()).unwrap_or("-".into()),
                        if s.listening { "yes" } else { "no" }.to_string(),
                        if s.http { "yes" } else { "no" }.to_string(),
                    ]
                })
                .collect();
            table::print(&["PORT", "HOST PORT", "LISTENING", "HTTP"], &rows);
        }
        Answer::Stats(s) => {
            println!("container  {}", s.container);
            println!("cpu        {}%", s.cpu_percent);
            println!(
                "memory     {} / {}",
                mib(Some(s.memory_used)),
                mib(Some(s.memory_limit))
            );
            println!("network    rx {} B, tx {} B", s.net_rx, s.net_tx);
            println!("pids       {}", s.pids);
            for g in &s.gpus {
                println!(
                    "gpu {}      {}  util {}%  memory {} / {}",
                    g.index,
                    g.uuid,
                    or_dash(g.utilization),
                    mib(g.memory_used),
                    mib(g.memory_total)
                );
            }
        }
        Answer::Info(reply) => {
            let info = &reply.info;
            println!("container  {}", info.container_name);
            println!("status     {}", reply.status);
            println!("version    {}", info.version);
            println!("created    {}", info.create_time);
            // config and hostConfig are Docker's own create request, in Docker's words.
            println!(
                "image      {}",
                info.config["Image"].as_str().unwrap_or("-")
            );
            println!(
                "gpus       {}",
                if info.gpus.is_empty() {
                    "-".into()
                } else {
                    info.gpus.join(",")
                }
            );
            if let Some(ports) = info.host_config["PortBindings"].as_object() {
                for (container, host) in ports {
                    let host = host[0]["HostPort"].as_str().unwrap_or("-");
                    println!("port       {host} -> {container}");
                }
            }
            for bind in info.host_config["Binds"].as_array().into_iter().flatten() {
                println!("bind       {}", bind.as_str().unwrap_or("-"));
            }
            println!(
                "resources  cpus {}, memory {}, shm {}",
                or_dash(info.resources.cpus),
                mib(info.resources.memory),
                mib(info.resources.shm_size)
            );
            let timers = &reply.timers;
            if timers.idle_stop_secs.is_some() || timers.stop_at.is_some() {
                println!(
                    "timers     idle stop {}, stop at {}",
                    idle_words(timers.idle_stop_secs),
                    or_dash(timers.stop_at.as_ref())
                );
            }
        }
        Answer::History(history) => {
            let rows: Vec<Vec<String>> = history
                .history
                .iter()
                .map(|h| {
                    vec![
                        h.version.to_string(),
                        h.status.container_name.clone(),
                        h.status.gpus.len().to_string(),
                        h.status.image.clone(),
                        h.create_time.clone(),
                    ]
                })
                .collect();
            table::print(&["VERSION", "CONTAINER", "GPUS", "IMAGE", "CREATED"], &rows);
        }
        Answer::Volumes(list) => {
            let rows: Vec<Vec<String>> = list
                .volumes
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.version.to_string(),
                        v.docker_name.clone(),
                        v.size.clone(),
                        v.create_time.clone(),
                        v.owner.clone(),
                        v.node.clone(),
                    ]
                })
                .collect();
            table::print(
                &[
                    "NAME",
                    "VERSION",
                    "DOCKER VOLUME",
                    "SIZE",
                    "CREATED",
                    "OWNER",
                    "NODE",
                ],
                &rows,
            );
        }
        Answer::VolumeInfo(reply) => {
            let info = &reply.info;
            println!("volume     {}", info.opt.name);
            println!("version    {}", info.version);
            println!("size       {}", or_dash(info.opt.driver_opts.get("size")));
            println!("enforced   {}", info.size_enforced);
            println!("created    {}", info.create_time);
        }
        Answer::VolumeHistory(history) => {
            let rows: Vec<Vec<String>> = history
                .history
                .iter()
                .map(|h| {
                    vec![
                        h.version.to_string(),
                        h.status.opt.name.clone(),
                        or_dash(h.status.opt.driver_opts.get("size")),
                        h.create_time.clone(),
                    ]
                })
                .collect();
            table::print(&["VERSION", "DOCKER VOLUME", "SIZE", "CREATED"], &rows);
        }
        Answer::Gpus(gpus) => {
            let rows: Vec<Vec<String>> = gpus
                .gpus
                .iter()
                .map(|g| {
                    let memory = match (g.memory_used, g.memory_total) {
                        (Some(used), Some(total)) => format!("{}/{} MiB", used >> 20, total >> 20),
                        _ => "-".into(),
                    };
                    vec![
                        g.index.to_string(),
                        g.uuid.clone(),
                        g.name.clone(),
                        memory,
                        or_dash(g.utilization),
                        or_dash(g.holder.as_ref()),
                        if g.node.is_empty() {
                            "-".into()
                        } else {
                            g.node.clone()
                        },
                    ]
                })
                .collect();
            table::print(
                &[
                    "INDEX", "UUID", "NAME", "MEMORY", "UTIL%", "HELD BY", "NODE",
                ],
                &rows,
            );
        }
        Answer::Ports(reply) => {
            let ports = &reply.ports;
            println!("range      {}-{}", ports.start_port, ports.end_port);
            println!("available  {}", ports.available_count);
            let used: Vec<String> = ports.used_port_set.keys().cloned().collect();
            println!(
                "used       {}",
                if used.is_empty() {
                    "-".into()
                } else {
                    used.join(",")
                }
            );
            if !reply.nodes.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = reply
                    .nodes
                    .iter()
                    .map(|n| {
                        let used: Vec<String> = n.used_ports.iter().map(u16::to_string).collect();
                        vec![
                            n.node.clone(),
                            format!("{}-{}", n.start_port, n.end_port),
                            n.available_count.to_string(),
                            if used.is_empty() {
                                "-".into()
                            } else {
                                used.join(",")
                            },
                        ]
                    })
                    .collect();
                table::print(&["NODE", "RANGE", "AVAILABLE", "USED"], &rows);
            }
        }
    }
}
