//! The SSH gateway on the real server and Docker, driven by Debian's OpenSSH client (`ssh`,
//! `scp`, `sftp`, `ssh-keygen`, `ssh-keyscan`): keys through the API and the CLI, a command's
//! output and exit status, a PTY session under a real pseudo-terminal, `scp` of 50 MB both
//! ways, `sftp` put/get/ls/rename/rm, `-L` and `-W` to a busybox `httpd` listening on the
//! container's loopback, another user's key refused exactly as a missing set, sessions as
//! events and ended by a stop, the host key kept across a restart, failed logins limited.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    call_as as call, data_dir, free_port, http_as, output_text as text, until, Server, BIN,
};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

const ADMIN: &str = "ssh-admin-t0ken";

/// A fresh ed25519 key pair in `dir`; the private key's path.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@test"))
        .arg("-f")
        .arg(&key)
        .output()
        .expect("ssh-keygen (Debian's openssh-client; scripts/test.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    key
}

/// The options every client here runs with: this key only, no known_hosts, no agent.
fn options(port: u16, key: &Path) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.display().to_string()])
    .chain(["-p".to_string(), port.to_string()])
    .collect()
}

fn ssh(port: u16, key: &Path, target: &str, command: &str) -> Output {
    Command::new("ssh")
        .args(options(port, key))
        .arg(target)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Drives a command under a pseudo-terminal of 40 × 120 made by Python's `pty` module: types
/// `stty size` and `exit 3`; prints what the terminal showed and the exit status.
const PTY_DRIVER: &str = r##"
import fcntl, os, pty, struct, sys, termios, time, select
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
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
read_for(20, b"# ")
os.write(fd, b"stty size; echo $TERM\r")
read_for(10, b"40 120")
os.write(fd, b"exit 3\r")
read_for(10)
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.stdout.write("\nSTATUS=%d\n" % os.waitstatus_to_exitcode(status))
"##;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_shells_commands_scp_sftp_and_forwards_to_the_owner_only() {
    testkit::docker().await;
    let dir = data_dir();
    let port = free_port();
    let ssh_addr = format!("127.0.0.1:{port}");
    let env = [
        ("GPU_REPLICA_TOKEN", ADMIN),
        ("GPU_REPLICA_SSH_ADDR", ssh_addr.as_str()),
        ("GPU_REPLICA_SSH_SESSIONS_PER_USER", "4"),
    ];
    let mut server = Server::start_with_env(&dir, None, &env);
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let alice_key = keygen(&keys, "alice");
    let bob_key = keygen(&keys, "bob");
    let stranger_key = keygen(&keys, "stranger");
    let mut tokens = Vec::new();
    for user in ["alice", "bob"] {
        let (status, added) = call(
            &server,
            ADMIN,
            "POST",
            "/api/v1/users",
            json!({"name": user}),
        );
        assert_eq!(status, 200, "{added}");
        tokens.push(added["data"]["token"].as_str().unwrap().to_string());
    }
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());

    // Keys: alice adds hers through the CLI, bob his through the API.
    let api = format!("http://{}", server.addr);
    let cli = |token: &str, args: &[&str]| {
        Command::new(BIN)
            .env("GPU_REPLICA_TOKEN", token)
            .arg("--server")
            .arg(&api)
            .args(args)
            .output()
            .unwrap()
    };
    let pubkey = |key: &Path| {
        std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    };
    let added = cli(
        &alice,
        &[
            "user",
            "key",
            "add",
            "alice",
            alice_key.with_extension("pub").to_str().unwrap(),
        ],
    );
    assert!(added.status.success(), "{}", text(&added));
    assert!(String::from_utf8_lossy(&added.stdout).contains("SHA256:"));
    let (status, reply) = call(
        &server,
        &bob,
        "POST",
        "/api/v1/users/bob/keys",
        json!({"key": pubkey(&bob_key)}),
    );
    assert_eq!(status, 200, "{reply}");
    // The fingerprint is OpenSSH's own.
    let keygen_fp = Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(bob_key.with_extension("pub"))
        .output()
        .unwrap();
    let bob_fp = reply["data"]["key"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        String::from_utf8_lossy(&keygen_fp.stdout).contains(&bob_fp),
        "{reply}"
    );
    // A key is one person's: alice cannot add bob's; nor may she touch bob's list.
    let (status, reply) = call(
        &server,
        &alice,
        "POST",
        "/api/v1/users/alice/keys",
        json!({"key": pubkey(&bob_key)}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (409, Some(1061)),
        "{reply}"
    );
    let (status, reply) = call(&server, &alice, "GET", "/api/v1/users/bob/keys", json!({}));
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1051)),
        "{reply}"
    );
    let (status, reply) = call(
        &server,
        &alice,
        "POST",
        "/api/v1/users/alice/keys",
        json!({"key": "ssh-ed25519 not-base64"}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (400, Some(1000)),
        "{reply}"
    );
    let listed = cli(&alice, &["user", "key", "ls", "alice"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("alice@test"),
        "{}",
        text(&listed)
    );

    // alice's set, and one of bob's.
    let train = testkit::unique_name("train");
    let other = testkit::unique_name("bobs");
    for (token, name) in [(&alice, &train), (&bob, &other)] {
        let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name, "gpuCount": 1});
        let (status, reply) = call(&server, token, "POST", "/api/v1/replicaSet", body);
        assert_eq!(status, 200, "{reply}");
    }
    let at = |set: &str| format!("{set}@127.0.0.1");

    // A command: its output and exit status; the GPU it was given is there.
    let out = ssh(
        port,
        &alice_key,
        &at(&train),
        "echo hello-$((6*7)); echo $NVIDIA_VISIBLE_DEVICES; echo oops >&2; exit 7",
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello-42"), "{}", text(&out));
    assert!(stdout.contains("GPU-"), "{}", text(&out));
    // Standard error comes back on its own stream, as from sshd.
    assert!(!stdout.contains("oops"), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "oops",
        "{}",
        text(&out)
    );
    // Standard input reaches the command.
    let mut piped = Command::new("ssh")
        .args(options(port, &alice_key))
        .arg(at(&train))
        .arg("wc -l")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        piped.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
    }
    let counted = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&counted.stdout).trim(), "3");

    // Another user's key answers as a missing set does: the same refusal, word for word.
    let refused_other = ssh(port, &bob_key, &at(&train), "true");
    let refused_missing = ssh(port, &bob_key, &at("no.such.set"), "true");
    let refused_stranger = ssh(port, &stranger_key, &at(&train), "true");
    for refused in [&refused_other, &refused_missing, &refused_stranger] {
        assert_eq!(refused.status.code(), Some(255), "{}", text(refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("Permission denied (publickey)"),
            "{}",
            text(refused)
        );
    }
    let said = |out: &Output, set: &str| String::from_utf8_lossy(&out.stderr).replace(set, "SET");
    assert_eq!(
        said(&refused_other, &train),
        said(&refused_missing, "no.such.set")
    );
    // A public key alone (public keys are public) tells nothing: offered without its private
    // key, the server's answer is the same for alice's set and for a missing one.
    let only_public = keys.join("only-public");
    std::fs::create_dir_all(&only_public).unwrap();
    std::fs::copy(
        alice_key.with_extension("pub"),
        only_public.join("alice.pub"),
    )
    .unwrap();
    let offered = |set: &str| {
        let out = Command::new("ssh")
            .args(
                options(port, &only_public.join("alice"))
                    .into_iter()
                    .map(|o| {
                        if o == "LogLevel=ERROR" {
                            "LogLevel=DEBUG1".to_string()
                        } else {
                            o
                        }
                    }),
            )
            .arg(at(set))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).contains("Server accepts key")
    };
    assert_eq!(offered(&train), offered("no.such.set"));

    // The admin's key opens anyone's set (the admin adds a key of their own).
    let admin_key = keygen(&keys, "admin");
    let (status, _) = call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users/admin/keys",
        json!({"key": pubkey(&admin_key)}),
    );
    assert_eq!(status, 200);
    let out = ssh(port, &admin_key, &at(&other), "echo admin-in");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("admin-in"),
        "{}",
        text(&out)
    );

    // A PTY session under a real pseudo-terminal: its size, TERM, and the exit code.
    let mut args = vec!["ssh".to_string(), "-tt".to_string()];
    args.extend(options(port, &alice_key));
    args.push(at(&train));
    let out = Command::new("python3")
        .args(["-c", PTY_DRIVER])
        .args(&args)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("40 120"), "{shown}");
    assert!(shown.contains("STATUS=3"), "{shown}");

    // scp of 50 MB in and out: the same bytes.
    let big = dir.join("big.bin");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&big).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..50u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(i)
                    .to_le_bytes()[1];
            }
            file.write_all(&block).unwrap();
        }
    }
    let scp = |from: &str, to: &str| {
        let mut command = Command::new("scp");
        command.arg("-q");
        for o in options(port, &alice_key) {
            // scp and sftp take the port as -P.
            command.arg(if o == "-p" { "-P".to_string() } else { o });
        }
        command.arg(from).arg(to).output().unwrap()
    };
    let started = Instant::now();
    let up = scp(
        big.to_str().unwrap(),
        &format!("{}:/tmp/big.bin", at(&train)),
    );
    assert!(up.status.success(), "{}", text(&up));
    let up_took = started.elapsed();
    let out = ssh(port, &alice_key, &at(&train), "wc -c < /tmp/big.bin");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (50u64 << 20).to_string()
    );
    let back = dir.join("back.bin");
    let started = Instant::now();
    let down = scp(
        &format!("{}:/tmp/big.bin", at(&train)),
        back.to_str().unwrap(),
    );
    assert!(down.status.success(), "{}", text(&down));
    eprintln!(
        "scp 50 MB: in {:.2}s, out {:.2}s",
        up_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sha256(&big), sha256(&back));

    // sftp: put, ls, rename, get, rm, mkdir, rmdir.
    let small = dir.join("small.txt");
    std::fs::write(&small, "sftp-bytes\n").unwrap();
    let fetched = dir.join("fetched.txt");
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir /tmp/work\ncd /tmp/work\nput {}\nls -l\nrename small.txt renamed.txt\nls\nget renamed.txt {}\nrm renamed.txt\nls\ncd /\nrmdir /tmp/work\n",
            small.display(),
            fetched.display()
        ),
    )
    .unwrap();
    let mut command = Command::new("sftp");
    let opts = options(port, &alice_key);
    for o in &opts {
        command.arg(if o == "-p" { "-P" } else { o });
    }
    let out = command
        .arg("-b")
        .arg(&batch)
        .arg(at(&train))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // What the listings printed (sftp echoes each command after "sftp> ").
    let listing = String::from_utf8_lossy(&out.stdout);
    let printed: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .collect();
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("-rw") && l.ends_with("small.txt") && l.contains(" 11 ")),
        "{listing}"
    );
    assert!(
        printed.iter().any(|l| l.trim() == "renamed.txt"),
        "{listing}"
    );
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "sftp-bytes\n");
    let out = ssh(
        port,
        &alice_key,
        &at(&train),
        "ls /tmp/work 2>&1; echo done",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No such file"),
        "{}",
        text(&out)
    );

    // -L and -W to a busybox httpd on the container's loopback (no host port published).
    let out = ssh(
        port,
        &alice_key,
        &at(&train),
        "mkdir -p /www && echo hello-from-httpd > /www/index.html && httpd -p 127.0.0.1:8080 -h /www && echo started",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started"),
        "{}",
        text(&out)
    );
    let local = free_port();
    let mut tunnel = Command::new("ssh")
        .args(options(port, &alice_key))
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{local}:localhost:8080"))
        .arg(at(&train))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut page = String::new();
    until("the -L tunnel", Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{local}/"))
            .output()
            .unwrap();
        page = String::from_utf8_lossy(&out.stdout).into_owned();
        page.contains("hello-from-httpd")
    });
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    let mut through = Command::new("ssh")
        .args(options(port, &alice_key))
        .args(["-W", "localhost:8080"])
        .arg(at(&train))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        through
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .unwrap();
    }
    let answer = through.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&answer.stdout).contains("hello-from-httpd"),
        "{}",
        text(&answer)
    );
    // Only the set itself: no way through the gateway to another address.
    let out = Command::new("ssh")
        .args(options(port, &alice_key))
        .args(["-W", "10.213.0.1:80"])
        .arg(at(&train))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));

    // Sessions are events: who, which set, from where, how long.
    let (_, _, stream) = http_as(
        &server.addr,
        Some(&alice),
        "GET",
        "/api/v1/events?replay=500&follow=false",
        None,
    );
    let ssh_events: Vec<Value> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .filter(|e| e["kind"] == "ssh" && e["target"] == train.as_str())
        .collect();
    let said_in = |needle: &str| {
        ssh_events
            .iter()
            .any(|e| e["message"].as_str().unwrap_or_default().contains(needle))
    };
    assert!(said_in("alice logged in from 127.0.0.1"), "{stream}");
    assert!(said_in("left after"), "{ssh_events:?}");

    // A client that goes away (killed, its network gone) takes its program with it, with or
    // without a terminal: Docker alone would keep both running.
    let container = format!("{train}-1");
    for (tty, marker) in [("-tt", "777"), ("-T", "778")] {
        let mut client = Command::new("ssh")
            .args(options(port, &alice_key))
            .arg(tty)
            .arg(at(&train))
            .arg(format!("sleep {marker}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = |m: &str| {
            let out = Command::new("docker")
                .args(["top", &container])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("sleep {m}"))
        };
        until("the program to start", Duration::from_secs(20), || {
            running(marker)
        });
        client.kill().unwrap();
        let _ = client.wait();
        until("the program to be hung up", Duration::from_secs(20), || {
            !running(marker)
        });
    }

    // A session ends when its set stops.
    let mut long = Command::new("ssh")
        .args(options(port, &alice_key))
        .arg(at(&train))
        .arg("sleep 600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(long.try_wait().unwrap().is_none());
    let stop = format!("/api/v1/replicaSet/{train}/stop");
    assert_eq!(call(&server, &alice, "PATCH", &stop, json!({})).0, 200);
    until(
        "the session to end with its set",
        Duration::from_secs(30),
        || long.try_wait().unwrap().is_some(),
    );
    let out = ssh(port, &alice_key, &at(&train), "true");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        text(&out)
    );

    // The host key is made once and kept: the same after a restart.
    let scan = || {
        let out = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = scan();
    assert!(before.contains("ssh-ed25519"), "{before}");
    server.restart();
    until(
        "the gateway after a restart",
        Duration::from_secs(20),
        || !scan().is_empty(),
    );
    assert_eq!(scan(), before);

    // Removing a key shuts its door; the list says so.
    let fp = call(
        &server,
        &alice,
        "GET",
        "/api/v1/users/alice/keys",
        json!({}),
    )
    .1["data"]["keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = cli(&alice, &["user", "key", "rm", "alice", &fp]);
    assert!(removed.status.success(), "{}", text(&removed));
    let (status, reply) = call(
        &server,
        &alice,
        "DELETE",
        &format!(
            "/api/v1/users/alice/keys/{}",
            gpu_replica_http::wire::paths::encode(&fp)
        ),
        json!({}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1060)),
        "{reply}"
    );
    let out = ssh(port, &alice_key, &at(&other), "true");
    assert_eq!(out.status.code(), Some(255));

    // Sessions per user are limited (4 here): a fifth connection of bob's is refused while
    // four are open, and let in once one has gone.
    let mut held: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("ssh")
                .args(options(port, &bob_key))
                .arg(at(&other))
                .arg("sleep 600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let other_container = format!("{other}-1");
    until("four of bob's sessions", Duration::from_secs(30), || {
        let out = Command::new("docker")
            .args(["top", &other_container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .matches("sleep 600")
            .count()
            == 4
    });
    let out = ssh(port, &bob_key, &at(&other), "echo fifth");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let mut first = held.remove(0);
    first.kill().unwrap();
    let _ = first.wait();
    until(
        "a fifth session once one has gone",
        Duration::from_secs(30),
        || {
            let out = ssh(port, &bob_key, &at(&other), "echo fifth");
            String::from_utf8_lossy(&out.stdout).contains("fifth")
        },
    );
    for mut session in held {
        let _ = session.kill();
        let _ = session.wait();
    }

    // Failed logins are limited per address, as failed tokens are: past the burst even a good
    // key is refused for a moment.
    // Six clients keep failing (faster than the allowance refills) while bob tries his good
    // key five times: at least one of his tries is turned away. Once they stop and the
    // allowance refills, he is let in again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            let (key, target) = (stranger_key.clone(), at(&other));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = Command::new("ssh")
                        .args(options(port, &key))
                        .arg(&target)
                        .arg("true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let refused = (0..5)
        .filter(|_| {
            let out = ssh(port, &bob_key, &at(&other), "echo in");
            out.status.code() == Some(255)
        })
        .count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for hammer in hammers {
        hammer.join().unwrap();
    }
    assert!(
        refused > 0,
        "a good key got in 5 times out of 5 during a flood of failed logins"
    );
    until("the allowance to refill", Duration::from_secs(30), || {
        let out = ssh(port, &bob_key, &at(&other), "echo in");
        String::from_utf8_lossy(&out.stdout).contains("in")
    });

    for (token, name) in [(&alice, &train), (&bob, &other)] {
        let path = format!("/api/v1/replicaSet/{name}");
        assert_eq!(call(&server, token, "DELETE", &path, json!({})).0, 200);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
