//! `gpu-replica-wsecho`: a WebSocket echo server and its client, for testing what a proxy
//! does to WebSockets and plain requests. It uses only std, so it builds as one static
//! binary that runs in a busybox image:
//!
//! ```text
//! gpu-replica-wsecho serve 8080 [--bind 0.0.0.0]
//! gpu-replica-wsecho rtt ws://127.0.0.1:8080/ 100 [-H 'Cookie: a=b'] [--size 32] [--interval-ms 0]
//! gpu-replica-wsecho hold ws://127.0.0.1:8080/ 60 [-H ...] [--ping-ms 10000]
//! ```

mod client;
mod frame;
mod handshake;
mod http;
mod server;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use client::{HoldOutcome, WsUrl};

const USAGE: &str = "usage:
  gpu-replica-wsecho serve PORT [--bind ADDR]
  gpu-replica-wsecho rtt URL COUNT [-H 'Name: value']... [--size BYTES] [--interval-ms MS]
  gpu-replica-wsecho hold URL SECONDS [-H 'Name: value']... [--ping-ms MS]";

/// Exit status of `hold` when the connection did not last.
const EXIT_CLOSED: u8 = 3;

/// What the command line asks for.
enum Command {
    Serve {
        bind: SocketAddr,
    },
    Rtt {
        url: WsUrl,
        headers: Vec<String>,
        count: usize,
        size: usize,
        interval: Option<Duration>,
    },
    Hold {
        url: WsUrl,
        headers: Vec<String>,
        seconds: String,
        length: Duration,
        ping: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(problem) => {
            eprintln!("gpu-replica-wsecho: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match execute(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpu-replica-wsecho: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> io::Result<ExitCode> {
    match command {
        Command::Serve { bind } => {
            let listener = TcpListener::bind(bind)?;
            // Tests wait for this line before connecting.
            println!("listening on {}", listener.local_addr()?);
            io::stdout().flush()?;
            server::run(listener);
        }
        Command::Rtt {
            url,
            headers,
            count,
            size,
            interval,
        } => {
            let samples = client::rtt(&url, &headers, count, size, interval)?;
            println!("{}", client::rtt_summary(&samples));
        }
        Command::Hold {
            url,
            headers,
            seconds,
            length,
            ping,
        } => match client::hold(&url, &headers, length, ping)? {
            HoldOutcome::Open => println!("held {seconds} s: open"),
            HoldOutcome::Closed(after) => {
                println!("closed after {:.1} s", after.as_secs_f64());
                return Ok(ExitCode::from(EXIT_CLOSED));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn parse(args: &[String]) -> Result<Command, String> {
    let (mode, rest) = args.split_first().ok_or("no mode given")?;
    let allowed: &[&str] = match mode.as_str() {
        "serve" => &["--bind"],
        "rtt" => &["-H", "--size", "--interval-ms"],
        "hold" => &["-H", "--ping-ms"],
        other => return Err(format!("unknown mode {other}")),
    };
    let args = Args::split(rest, allowed)?;
    let headers = args.all("-H");
    match (mode.as_str(), args.positional.as_slice()) {
        ("serve", [port]) => {
            // Numeric only: the static binary has no resolver to ask.
            let ip = args.last("--bind").unwrap_or("0.0.0.0");
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("--bind wants an IP, not {ip}"))?;
            let port = port.parse().map_err(|_| format!("bad port {port}"))?;
            let bind = SocketAddr::new(ip, port);
            Ok(Command::Serve { bind })
        }
        ("rtt", [url, count]) => {
            let count = number(count, "COUNT")? as usize;
            if count == 0 {
                return Err("COUNT must be at least 1".into());
            }
            let size = args
                .last("--size")
                .map_or(Ok(32), |s| number(s, "--size"))? as usize;
            let (url, interval) = (parse_url(url)?, args.millis("--interval-ms")?);
            Ok(Command::Rtt {
                url,
                headers,
                count,
                size,
                interval,
            })
        }
        ("hold", [url, seconds]) => {
            let length = seconds
                .parse()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok());
            let length = length.ok_or_else(|| format!("bad SECONDS {seconds}"))?;
            let (url, ping) = (parse_url(url)?, args.millis("--ping-ms")?);
            if ping == Some(Duration::ZERO) {
                return Err("--ping-ms must be at least 1".into());
            }
            let seconds = seconds.clone();
            Ok(Command::Hold {
                url,
                headers,
                seconds,
                length,
                ping,
            })
        }
        _ => Err(format!("wrong arguments for {mode}")),
    }
}

/// A mode's arguments: positionals, and flags that each take one value.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

impl Args {
    fn split(args: &[String], allowed: &[&str]) -> Result<Args, String> {
        let (mut positional, mut options) = (Vec::new(), Vec::new());
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if !arg.starts_with('-') {
                positional.push(arg.clone());
            } else if allowed.contains(&arg.as_str()) {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                options.push((arg.clone(), value.clone()));
            } else {
                return Err(format!("unknown option {arg}"));
            }
        }
        Ok(Args {
            positional,
            options,
        })
    }

    /// Every value given for a repeatable flag, in order.
    fn all(&self, flag: &str) -> Vec<String> {
        self.options
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of a flag; the last one wins, as usual.
    fn last(&self, flag: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn millis(&self, flag: &str) -> Result<Option<Duration>, String> {
        let ms = self.last(flag).map(|ms| number(ms, flag)).transpose()?;
        Ok(ms.map(Duration::from_millis))
    }
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{what} wants a number, not {text}"))
}

fn parse_url(url: &str) -> Result<WsUrl, String> {
    WsUrl::parse(url).map_err(|e| format!("{e}: {url}"))
}
