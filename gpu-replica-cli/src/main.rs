//! `gpu-replica`: the server (`serve`) and a client for it (every other subcommand).
//!
//! The binary holds no logic of its own: `serve` wires the core engine to the HTTP router,
//! and the client subcommands turn arguments into HTTP requests and answers into tables.

mod commands;
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
    /// Print shell completions (bash, zsh, fish, …) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(commands::ClientCommand),
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
