//! The console's web terminal at the API, on the real server and Docker: the screen WebSocket
//! driven by the typed client (a screen that outlives its page and is found again by its id,
//! ended once unattached for the keep time, as Docker shows; another user's set and session
//! answer as missing ones; a cap per user), and the keystroke round trip's figures.
//!
//! The browser side (drawing, keys, fitting the window) is in `console.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{data_dir, http_as, Server};
use futures_util::{SinkExt, StreamExt};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use gpu_replica_http::client::{Client, ClientTls, Terminal};
use gpu_replica_http::wire::{ScreenControl, ScreenMessage, ScreenQuery};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "web-terminal-admin";

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

fn add_user(server: &Server, name: &str) -> String {
    let (status, added) = call(
        server,
        ADMIN,
        "POST",
        "/api/v1/users",
        json!({ "name": name }),
    );
    assert_eq!(status, 200, "{added}");
    added["data"]["token"].as_str().unwrap().to_string()
}

/// The screen as the messages drew it.
#[derive(Default)]
struct Screen {
    id: String,
    reattached: bool,
    rows: Vec<String>,
    exit: Option<i64>,
}

impl Screen {
    fn text(&self) -> String {
        self.rows.join("\n")
    }

    fn take(&mut self, message: ScreenMessage) {
        match message {
            ScreenMessage::Session { id, reattached } => {
                self.id = id;
                self.reattached = reattached;
            }
            ScreenMessage::Screen(update) => {
                if update.full {
                    self.rows = vec![String::new(); update.rows.into()];
                }
                for line in update.lines {
                    self.rows[usize::from(line.row)] =
                        line.runs.iter().map(|r| r.text.as_str()).collect();
                }
            }
            ScreenMessage::Exit { code } => self.exit = Some(code),
        }
    }
}

/// Reads messages into `screen` until `done` holds of it (or `within`); whether it did.
async fn read_until(
    socket: &mut Terminal,
    screen: &mut Screen,
    within: Duration,
    done: impl Fn(&Screen) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done(screen) {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                screen.take(serde_json::from_str(text.as_str()).expect("a screen message"))
            }
            Ok(Some(Ok(_))) => {}
            _ => return done(screen),
        }
    }
    true
}

async fn open(client: &Client, name: &str, session: Option<&str>) -> (Terminal, Screen) {
    let query = ScreenQuery {
        session: session.map(str::to_string),
        rows: Some(20),
        cols: Some(70),
        ..ScreenQuery::default()
    };
    let mut socket = client.screen(name, &query).await.unwrap();
    let mut screen = Screen::default();
    let ready = read_until(&mut socket, &mut screen, Duration::from_secs(20), |s| {
        !s.id.is_empty() && !s.rows.is_empty()
    })
    .await;
    assert!(ready, "no session and screen: {}", screen.text());
    (socket, screen)
}

async fn type_in(socket: &mut Terminal, text: &str) {
    socket
        .send(Message::Binary(text.as_bytes().to_vec().into()))
        .await
        .unwrap();
}

/// Runs `script` in the set through the execute API; its output.
fn execute(server: &Server, token: &str, name: &str, script: &str) -> String {
    let path = format!("/api/v1/replicaSet/{name}/execute");
    let (status, answer) = call(
        server,
        token,
        "POST",
        &path,
        json!({"cmd": ["sh", "-c", script]}),
    );
    assert_eq!(status, 200, "{answer}");
    answer["data"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_terminal_outlives_its_page_and_only_its_owner_finds_it() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", ADMIN),
            ("GPU_REPLICA_TERMINAL_KEEP", "3s"),
            ("GPU_REPLICA_TERMINALS_PER_USER", "2"),
        ],
    );
    let dora = add_user(&server, "dora");
    let eve = add_user(&server, "eve");
    let name = testkit::unique_name("web.Tty");
    let evename = format!("{name}_eve");
    for (token, set) in [(&dora, &name), (&eve, &evename)] {
        let body = json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 0});
        let (status, answer) = call(&server, token, "POST", "/api/v1/replicaSet", body);
        assert_eq!(status, 200, "{answer}");
    }
    let dora_client = client(&server, &dora);
    let eve_client = client(&server, &eve);

    // Dora's terminal: a command and its output, drawn on the server's screen of 20 × 70.
    let (mut socket, mut screen) = open(&dora_client, &name, None).await;
    assert!(!screen.reattached);
    assert_eq!(screen.rows.len(), 20);
    type_in(
        &mut socket,
        "echo $$ > /tmp/web-pid; echo hello-$((6*7)); stty size\r",
    )
    .await;
    let drawn = read_until(&mut socket, &mut screen, Duration::from_secs(20), |s| {
        s.text().contains("hello-42") && s.text().contains("20 70")
    })
    .await;
    assert!(drawn, "{}", screen.text());
    // A resize reaches both the screen and the program's terminal.
    let resize = serde_json::to_string(&ScreenControl::Resize { rows: 12, cols: 50 }).unwrap();
    socket.send(Message::Text(resize.into())).await.unwrap();
    type_in(&mut socket, "stty size\r").await;
    let resized = read_until(&mut socket, &mut screen, Duration::from_secs(20), |s| {
        s.rows.len() == 12 && s.text().contains("12 50")
    })
    .await;
    assert!(resized, "{}", screen.text());
    let id = screen.id.clone();
    drop(socket);

    // The page went; attaching again by the id finds the same screen, whole.
    let (socket, again) = open(&dora_client, &name, Some(&id)).await;
    assert!(again.reattached, "not attached again");
    assert_eq!(again.id, id);
    assert!(again.text().contains("hello-42"), "{}", again.text());
    drop(socket);

    // Eve: Dora's set answers as a missing one; Dora's session id on Eve's own set opens a
    // new session of her own, as an id that never existed does.
    let error = eve_client
        .screen(&name, &ScreenQuery::default())
        .await
        .unwrap_err();
    let missing = eve_client
        .screen("no.such.set", &ScreenQuery::default())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), missing.code()),
        (Some(1016), Some(1016)),
        "{error}"
    );
    assert_eq!(
        error.to_string().replace(&name, "X"),
        missing.to_string().replace("no.such.set", "X")
    );
    let (socket, eves) = open(&eve_client, &evename, Some(&id)).await;
    assert!(!eves.reattached && eves.id != id);
    assert!(!eves.text().contains("hello-42"));
    drop(socket);
    // The admin may attach to anyone's.
    let (socket, admins) = open(&client(&server, ADMIN), &name, Some(&id)).await;
    assert!(admins.reattached && admins.text().contains("hello-42"));
    drop(socket);

    // Two terminals at most for Dora here: the one kept, one more, then a refusal.
    let (second, _) = open(&dora_client, &name, None).await;
    let refused = dora_client
        .screen(&name, &ScreenQuery::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(1006), "{refused}");
    assert!(refused.to_string().contains("web terminals"), "{refused}");
    drop(second);

    // Unattached past the keep time (3 s): its program is ended, as Docker shows, and the id
    // opens a new session.
    let pid = execute(&server, &dora, &name, "cat /tmp/web-pid")
        .trim()
        .to_string();
    assert!(!pid.is_empty());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let alive = execute(
        &server,
        &dora,
        &name,
        &format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone"),
    );
    assert_eq!(alive.trim(), "gone");
    let (mut socket, mut fresh) = open(&dora_client, &name, Some(&id)).await;
    assert!(!fresh.reattached && fresh.id != id);

    // A session ends with its program: `exit 7` is its code, and the id is forgotten.
    type_in(&mut socket, "exit 7\r").await;
    let ended = read_until(&mut socket, &mut fresh, Duration::from_secs(20), |s| {
        s.exit.is_some()
    })
    .await;
    assert!(ended, "{}", fresh.text());
    assert_eq!(fresh.exit, Some(7));
    let (socket, after) = open(&dora_client, &name, Some(&fresh.id)).await;
    assert!(!after.reattached);
    drop(socket);

    // The set stopping ends its terminal.
    let (mut socket, mut last) = open(&dora_client, &name, None).await;
    let stop = format!("/api/v1/replicaSet/{name}/stop");
    assert_eq!(call(&server, &dora, "PATCH", &stop, json!({})).0, 200);
    let ended = read_until(&mut socket, &mut last, Duration::from_secs(30), |s| {
        s.exit.is_some()
    })
    .await;
    assert!(ended, "no exit after the set stopped");

    for (token, set) in [(&dora, &name), (&eve, &evename)] {
        let path = format!("/api/v1/replicaSet/{set}");
        assert_eq!(call(&server, token, "DELETE", &path, json!({})).0, 200);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// The keystroke round trip over the web terminal: a key sent, until the screen update that
/// draws its echo arrives. Figures only, never asserted:
/// `cargo test --all-features -p gpu-replica-cli --test web_terminal keystroke_round_trip -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn keystroke_round_trip() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    let name = testkit::unique_name("keys");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 0});
    assert_eq!(server.call("POST", "/api/v1/replicaSet", Some(body)).0, 200);
    let admin = Client::new(
        &format!("http://{}", server.addr),
        None,
        &ClientTls::default(),
    )
    .unwrap();
    let (mut socket, mut screen) = open(&admin, &name, None).await;
    let count = 500;
    let mut times = Vec::with_capacity(count);
    let keys = b"abcdefghijklmnopqrstuvwxyz";
    for i in 0..count {
        if i % 60 == 0 {
            // A fresh line now and then: Ctrl-U clears what was typed.
            type_in(&mut socket, "\x15").await;
            read_until(&mut socket, &mut screen, Duration::from_secs(5), |s| {
                s.rows.iter().any(|r| r.trim_end().ends_with('#'))
            })
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = keys[i % keys.len()] as char;
        let before = screen.text();
        let start = Instant::now();
        type_in(&mut socket, &key.to_string()).await;
        let echoed = read_until(&mut socket, &mut screen, Duration::from_secs(5), |s| {
            s.text() != before
        })
        .await;
        assert!(echoed, "no echo of {key:?}");
        times.push(start.elapsed());
        // Typed by a person: a key every 20 ms, not one burst.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "web terminal keystroke round trip over {count} keys: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    let close = serde_json::to_string(&ScreenControl::Close).unwrap();
    socket.send(Message::Text(close.into())).await.unwrap();
    read_until(&mut socket, &mut screen, Duration::from_secs(10), |s| {
        s.exit.is_some()
    })
    .await;
    let path = format!("/api/v1/replicaSet/{name}");
    assert_eq!(server.call("DELETE", &path, None).0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
