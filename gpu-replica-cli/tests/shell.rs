//! A shell in the instance, on the real server and Docker: the terminal WebSocket driven by the
//! typed client (sizes, resize, input, end of input, exit codes, ownership), and the CLI under a
//! real pseudo-terminal (`stty size`, `exit 3`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{data_dir, http_as, Server, BIN};
use futures_util::{SinkExt, StreamExt};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use gpu_replica_http::client::{Client, ClientError, ClientTls, Terminal};
use gpu_replica_http::wire::{TerminalMessage, TerminalQuery};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "sh3ll-admin-t0ken";

fn call(server: &Server, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, text) = http_as(&server.addr, Some(token), method, path, Some(&body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn client(server: &Server, token: &str) -> Client {
    Client::new(
        &format!("http://{}", server.addr),
        Some(token.to_string()),
        &ClientTls::default(),
    )
    .unwrap()
}

/// Reads the terminal until the exit message (or `within`); what was written, and the code.
async fn read_to_exit(socket: &mut Terminal, within: Duration) -> (String, Option<i64>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        match next {
            Ok(Some(Ok(Message::Binary(data)))) => seen.extend_from_slice(&data),
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(TerminalMessage::Exit { code }) = serde_json::from_str(text.as_str()) {
                    return (String::from_utf8_lossy(&seen).into_owned(), Some(code));
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return (String::from_utf8_lossy(&seen).into_owned(), None),
        }
    }
}

/// Reads until `needle` shows (or `within`); everything read.
async fn read_until(socket: &mut Terminal, needle: &str, within: Duration) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => seen.extend_from_slice(&data),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

async fn send(socket: &mut Terminal, text: &str) {
    socket
        .send(Message::Binary(text.as_bytes().to_vec().into()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_carries_input_output_sizes_and_the_exit_code() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", ADMIN)]);
    let (_, added) = call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users",
        json!({"name": "dora"}),
    );
    let dora = added["data"]["token"].as_str().unwrap().to_string();
    let (_, added) = call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users",
        json!({"name": "eve"}),
    );
    let eve = added["data"]["token"].as_str().unwrap().to_string();
    let name = testkit::unique_name("tty");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    assert_eq!(
        call(&server, &dora, "POST", "/api/v1/replicaSet", body).0,
        200
    );
    let dora_client = client(&server, &dora);

    // A terminal of 30 × 100 (the image has no bash: sh), resized to 50 × 132, then `exit 3`.
    let query = TerminalQuery {
        rows: Some(30),
        cols: Some(100),
        ..TerminalQuery::default()
    };
    let mut socket = dora_client.terminal(&name, &query).await.unwrap();
    send(&mut socket, "stty size\r").await;
    let seen = read_until(&mut socket, "30 100", Duration::from_secs(20)).await;
    assert!(seen.contains("30 100"), "{seen:?}");
    let resize = serde_json::to_string(&TerminalMessage::Resize {
        rows: 50,
        cols: 132,
    })
    .unwrap();
    socket.send(Message::Text(resize.into())).await.unwrap();
    send(&mut socket, "stty size; echo $TERM\r").await;
    let seen = read_until(&mut socket, "xterm-256color", Duration::from_secs(20)).await;
    assert!(seen.contains("50 132"), "{seen:?}");
    send(&mut socket, "exit 3\r").await;
    let (_, code) = read_to_exit(&mut socket, Duration::from_secs(20)).await;
    assert_eq!(code, Some(3));

    // Without a terminal: input until its end, then the program's own exit code.
    let query = TerminalQuery {
        cmd: Some(json!(["sh", "-c", "cat; exit 5"]).to_string()),
        tty: Some(false),
        ..TerminalQuery::default()
    };
    let mut socket = dora_client.terminal(&name, &query).await.unwrap();
    send(&mut socket, "piped line\n").await;
    let eof = serde_json::to_string(&TerminalMessage::Eof).unwrap();
    socket.send(Message::Text(eof.into())).await.unwrap();
    let (seen, code) = read_to_exit(&mut socket, Duration::from_secs(20)).await;
    assert_eq!((seen.as_str(), code), ("piped line\n", Some(5)));

    // Another user's set is a missing one; a program that is no program is refused.
    let error = client(&server, &eve)
        .terminal(&name, &TerminalQuery::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(1016), "{error}");
    let missing = dora_client
        .terminal("no.such.set", &TerminalQuery::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(1016), "{missing}");
    let bad = TerminalQuery {
        cmd: Some("top".into()),
        ..TerminalQuery::default()
    };
    let error = dora_client.terminal(&name, &bad).await.unwrap_err();
    assert_eq!(error.code(), Some(1000), "{error}");
    // A plain GET is told it is a WebSocket.
    let (status, answer) = call(
        &server,
        &dora,
        "GET",
        &format!("/api/v1/replicaSet/{name}/terminal"),
        json!({}),
    );
    assert_eq!(
        (status, answer["code"].as_u64()),
        (400, Some(1000)),
        "{answer}"
    );

    // A page of another origin gets no terminal (browsers do not ask before a WebSocket);
    // one of this server's own origin does.
    for (origin, want) in [
        ("http://evil.example", 400),
        (&*format!("http://{}", server.addr), 101),
    ] {
        let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
        let request = format!(
            "GET /api/v1/replicaSet/{name}/terminal HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {dora}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n",
            server.addr
        );
        use std::io::{Read, Write};
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        let status: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
        assert_eq!(status, want, "{origin}");
    }

    // A session ends when its set stops, with an exit message.
    let mut socket = dora_client
        .terminal(&name, &TerminalQuery::default())
        .await
        .unwrap();
    send(&mut socket, "echo ready\r").await;
    read_until(&mut socket, "ready", Duration::from_secs(20)).await;
    let stop = format!("/api/v1/replicaSet/{name}/stop");
    assert_eq!(call(&server, &dora, "PATCH", &stop, json!({})).0, 200);
    let (_, code) = read_to_exit(&mut socket, Duration::from_secs(30)).await;
    assert!(code.is_some(), "no exit after the set stopped");
    // A stopped set opens no terminal.
    let error = dora_client
        .terminal(&name, &TerminalQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Api { .. }), "{error}");
    assert_ne!(error.code(), Some(1016), "{error}");

    let path = format!("/api/v1/replicaSet/{name}");
    assert_eq!(call(&server, &dora, "DELETE", &path, json!({})).0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Drives `gpu-replica … shell NAME` under a pseudo-terminal of 40 × 120 made by Python's `pty`
/// module: types `stty size` and `exit 3`; prints what the terminal showed, then the exit
/// status, and whether the terminal's settings were put back.
const PTY_DRIVER: &str = r##"
import fcntl, os, pty, struct, sys, termios, time, select
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
before = termios.tcgetattr(fd)
seen = b""
def read_for(seconds, until=None):
    global seen
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen += chunk
            if until and until in seen:
                return
read_for(15, b"# ")
os.write(fd, b"stty size\r")
read_for(10, b"40 120")
os.write(fd, b"exit 3\r")
read_for(10)
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.stdout.write("\nSTATUS=%d\n" % os.waitstatus_to_exitcode(status))
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shell_under_a_real_terminal_gives_its_size_and_exit_code() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let name = testkit::unique_name("cli.tty");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    assert_eq!(server.call("POST", "/api/v1/replicaSet", Some(body)).0, 200);
    let out = Command::new("python3")
        .args(["-c", PTY_DRIVER, BIN, "--server"])
        .arg(format!("http://{}", server.addr))
        .args(["shell", &name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("40 120"), "{text}");
    assert!(text.contains("STATUS=3"), "{text}");
    // exec -it is the same door; without a terminal here it says so.
    let refused = server.cli(&["exec", "-it", &name, "--", "true"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a terminal"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // exec -i: standard input in, the exit code out.
    let piped = Command::new(BIN)
        .arg("--server")
        .arg(format!("http://{}", server.addr))
        .args(["exec", "-i", &name, "--", "sh", "-c", "wc -l; exit 4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = piped.stdin.as_ref().unwrap();
        stdin.write_all(b"one\ntwo\n").unwrap();
    }
    let mut piped = piped;
    drop(piped.stdin.take());
    let done = piped.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&done.stdout).trim(), "2");
    let path = format!("/api/v1/replicaSet/{name}");
    assert_eq!(server.call("DELETE", &path, None).0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
