//! `gpu-replica`: the server (`serve`) and a client for it (every other subcommand).
//!
//! The binary holds no logic of its own: `serve` wires the core engine to the HTTP router,
//! and the client subcommands turn arguments into HTTP requests and answers into tables.

mod commands;
mod log_writer;
mod nodes;
mod serve;
mod table;
mod terminal;
mod top;
mod users;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use gpu_replica_http::client;

/// Versioned GPU containers over Docker: change GPUs, roll back, never lose what you installed.
#[derive(Debug, Parser)]
#[command(name = "gpu-replica", version, propagate_version = true)]
struct Cli {
    /// Server to talk to (client subcommands): http://HOST:PORT, https://HOST:PORT or
    /// unix:PATH.
    #[arg(
        long,
        global = true,
        env = "GPU_REPLICA_SERVER",
        default_value = "http://127.0.0.1:2378"
    )]
    server: String,
    /// Bearer token: the server requires it (serve), the client sends it.
    #[arg(long, global = true, env = "GPU_REPLICA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to check an https:// server against, instead of the system's.
    #[arg(long, global = true, env = "GPU_REPLICA_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that requires one (mutual TLS).
    #[arg(long, global = true, env = "GPU_REPLICA_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, global = true, env = "GPU_REPLICA_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Print the server's JSON data instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(serve::ServeArgs),
    /// Put a backup (`gpu-replica backup`) into a stopped server's store: the redb file of
    /// --data-dir (or --store), or an etcd prefix. The next `serve` settles it with Docker.
    Restore(RestoreArgs),
    /// Print shell completions (bash, zsh, fish, …) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(commands::ClientCommand),
}

/// `gpu-replica restore`.
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The backup file.
    file: std::path::PathBuf,
    /// Replace the records the store holds (a redb file is first kept beside itself as
    /// `state.redb.before-restore-TIME`); without it the store must be empty.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    state: serve::StoreArgs,
}

/// Restores a backup into the store `args` name; the server must be stopped.
async fn restore(args: RestoreArgs) -> Result<String, String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let backup = gpu_replica_core::backup::read(&bytes).map_err(|e| e.to_string())?;
    let redb = match args.state.store.as_deref() {
        Some(spec) if spec.starts_with("etcd://") => None,
        Some(path) => Some(std::path::PathBuf::from(path)),
        None => Some(args.state.data_dir.join("state.redb")),
    };
    let (done, into) = match redb {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let done = gpu_replica_core::backup::restore_file(&path, &backup, args.replace)
                .await
                .map_err(|e| e.to_string())?;
            (done, format!("redb {}", path.display()))
        }
        None => {
            let store = serve::open_store(&args.state).await?;
            let done = gpu_replica_core::backup::restore(store.as_ref(), &backup, args.replace)
                .await
                .map_err(|e| e.to_string())?;
            (done, store.describe())
        }
    };
    let mut text = format!(
        "restored {} records (schema {}, taken at {} from {}) into {}",
        done.records, done.header.schema, done.header.created, done.header.store, into
    );
    if let Some(aside) = &done.kept_aside {
        text.push_str(&format!(
            "; the store it replaced is kept as {}",
            aside.display()
        ));
    }
    text.push_str("; start the server: it reports what differs from Docker and removes nothing it does not know");
    Ok(text)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve::serve(args, cli.token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpu-replica: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Restore(args) => match restore(args).await {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gpu-replica: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gpu-replica",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Client(command) => {
            // A client piped into `head` ends quietly when the pipe closes, as Unix tools do
            // (Rust ignores SIGPIPE, and printing would panic); never the server.
            // SAFETY: setting a signal's disposition to its default, before any thread writes.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let tls = client::ClientTls {
                cacert: cli.cacert,
                cert: cli.cert,
                key: cli.key,
            };
            let client = match client::Client::new(&cli.server, cli.token, &tls) {
                Ok(client) => client,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match commands::execute(&client, command, cli.json).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
