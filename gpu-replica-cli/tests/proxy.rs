//! The web-service proxy on the real server and Docker, driven by real clients: `curl` with a
//! cookie jar (links, redirects, cookies, downloads) and the workspace's WebSocket client
//! (`gpu-replica-wsecho`, also the echo server inside the set). A busybox `httpd` and the
//! echo server run in alice's set; through the proxy: the link and its cookie, what the
//! application is told (forwarded headers, no proxy cookie), another user's set answered as a
//! missing one, a WebSocket echoed, idle WebSockets cut unless they ping, a 300 MB download
//! with the server's memory flat, the per-user limit, a reset token signing out, a stopped
//! set, the services list, `gpu-replica open`, and host names under `--proxy-domain`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{call_as as call, data_dir, free_port, output_text as text, until, Server, BIN};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

const ADMIN: &str = "proxy-admin-t0ken";

/// `curl -s` with `args`; (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = all.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The link `POST …/open` hands `token` for port `port` of `set`.
fn link(server: &Server, token: &str, set: &str, port: u16) -> String {
    let (status, reply) = call(
        server,
        token,
        "POST",
        &format!("/api/v1/replicaSet/{set}/open"),
        json!({ "port": port }),
    );
    assert_eq!(status, 200, "{reply}");
    reply["data"]["url"].as_str().unwrap().to_string()
}

/// Opens `url` with curl into cookie jar `jar`, following the redirect; (status, body).
fn open(url: &str, jar: &Path) -> (u16, String) {
    let jar = jar.to_str().unwrap();
    curl(&["-L", "-c", jar, "-b", jar, url])
}

/// The proxy's cookie in curl's jar.
fn cookie_in(jar: &Path) -> String {
    let jar = std::fs::read_to_string(jar).unwrap();
    let line = jar
        .lines()
        .find(|l| l.contains("\tgpu_replica_proxy\t"))
        .unwrap_or_else(|| panic!("no proxy cookie in the jar:\n{jar}"));
    // curl marks HttpOnly cookies so.
    assert!(line.starts_with("#HttpOnly_"), "{line}");
    line.rsplit('\t').next().unwrap().to_string()
}

fn wsecho(args: &[&str]) -> Output {
    Command::new(testkit::wsecho_binary().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `VmRSS` or `VmHWM` of process `pid`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_a_sets_web_services_to_its_owner_only() {
    testkit::docker().await;
    let dir = data_dir();
    let proxy_port = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy_port}");
    let env = [
        ("GPU_REPLICA_TOKEN", ADMIN),
        ("GPU_REPLICA_PROXY_ADDR", proxy_addr.as_str()),
        ("GPU_REPLICA_PROXY_CONNECTIONS_PER_USER", "4"),
        ("GPU_REPLICA_PROXY_IDLE_TIMEOUT", "3s"),
    ];
    let mut server = Server::start_with_env(&dir, None, &env);
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

    // alice's set serves web pages on 80 (busybox httpd, under the path the proxy gives it),
    // a WebSocket echo and its request heads on 9000; something that is no web server on 7000.
    let web = testkit::unique_name("web");
    let script = format!(
        "mkdir -p /www/{web}/80 && echo hello-proxy > /www/{web}/80/index.html && \
         echo root-page > /www/index.html && httpd -p 80 -h /www && \
         (nc -l -p 7000 >/dev/null 2>&1 &) ; exec {} serve 9000",
        testkit::WSECHO
    );
    let (status, reply) = call(
        &server,
        &alice,
        "POST",
        "/api/v1/replicaSet",
        json!({"imageName": TEST_IMAGE, "replicaSetName": web, "gpuCount": 0,
               "cmd": ["sh", "-c", script]}),
    );
    assert_eq!(status, 200, "{reply}");
    let bobs = testkit::unique_name("bobs");
    let (status, reply) = call(
        &server,
        &bob,
        "POST",
        "/api/v1/replicaSet",
        json!({"imageName": TEST_IMAGE, "replicaSetName": bobs, "gpuCount": 0,
               "cmd": ["sh", "-c", "httpd -p 80 -h /; exec sleep 100000"]}),
    );
    assert_eq!(status, 200, "{reply}");

    // The services: three listening ports, two of them web servers.
    let mut services = Value::Null;
    until("the set's services", Duration::from_secs(20), || {
        let (status, reply) = call(
            &server,
            &alice,
            "GET",
            &format!("/api/v1/replicaSet/{web}/services"),
            json!({}),
        );
        assert_eq!(status, 200, "{reply}");
        services = reply["data"]["services"].clone();
        services.as_array().unwrap().len() >= 3
    });
    let by_port = |port: u64| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"] == port)
            .unwrap_or_else(|| panic!("no port {port} in {services}"))
            .clone()
    };
    assert_eq!(by_port(80)["http"], true, "{services}");
    assert_eq!(by_port(9000)["http"], true, "{services}");
    assert_eq!(by_port(7000)["http"], false, "{services}");
    assert_eq!(by_port(7000)["listening"], true, "{services}");

    // Without a cookie: a page saying how to get in, the same for a set that does not exist.
    let base = format!("http://{proxy_addr}");
    let (status, page) = curl(&[&format!("{base}/{web}/80/")]);
    assert_eq!(status, 401, "{page}");
    assert!(
        page.contains(&format!("gpu-replica open {web} 80")),
        "{page}"
    );
    let (status, _) = curl(&[&format!("{base}/nosuchset/80/")]);
    assert_eq!(status, 401);

    // alice's link: lands on her page, with an HttpOnly cookie.
    let jars = dir.join("jars");
    std::fs::create_dir_all(&jars).unwrap();
    let alice_jar = jars.join("alice");
    let url = link(&server, &alice, &web, 80);
    assert!(
        url.starts_with(&format!("{base}/_gpu-replica/open/{web}/80?ticket=")),
        "{url}"
    );
    let (status, body) = open(&url, &alice_jar);
    assert_eq!((status, body.trim()), (200, "hello-proxy"));
    let cookie80 = cookie_in(&alice_jar);
    let jar = alice_jar.to_str().unwrap();
    let (status, body) = curl(&["-b", jar, &format!("{base}/{web}/80/index.html")]);
    assert_eq!((status, body.trim()), (200, "hello-proxy"));
    // Without the slash: sent on to it.
    let (status, body) = curl(&["-L", "-b", jar, &format!("{base}/{web}/80")]);
    assert_eq!((status, body.trim()), (200, "hello-proxy"));
    // A link is good once, and a made-up one never.
    let (status, page) = open(&url, &jars.join("again"));
    assert_eq!(status, 403, "{page}");
    let (status, _) = open(
        &format!("{base}/_gpu-replica/open/{web}/80?ticket=eyJrIjoibGluayJ9.AAAA"),
        &jars.join("forged"),
    );
    assert_eq!(status, 403);
    // The cookie is for port 80 of this set: not for another port, nor another set.
    let with_cookie = format!("Cookie: gpu_replica_proxy={cookie80}");
    let (status, _) = curl(&["-H", &with_cookie, &format!("{base}/{web}/9000/")]);
    assert_eq!(status, 401);
    let (status, _) = curl(&["-H", &with_cookie, &format!("{base}/{bobs}/80/")]);
    assert_eq!(status, 401);

    // bob cannot get a link to alice's set: the same answer as a set that does not exist.
    let (status, reply) = call(
        &server,
        &bob,
        "POST",
        &format!("/api/v1/replicaSet/{web}/open"),
        json!({"port": 80}),
    );
    let (missing_status, missing) = call(
        &server,
        &bob,
        "POST",
        "/api/v1/replicaSet/nosuchset/open",
        json!({"port": 80}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (404, Some(1016)),
        "{reply}"
    );
    assert_eq!(
        (missing_status, missing["code"].as_u64()),
        (404, Some(1016))
    );
    let (status, reply) = call(
        &server,
        &alice,
        "POST",
        &format!("/api/v1/replicaSet/{web}/open"),
        json!({"port": 0}),
    );
    assert_eq!(
        (status, reply["code"].as_u64()),
        (400, Some(1000)),
        "{reply}"
    );

    // `gpu-replica open` prints a link too (port 9000 here): the application learns where it
    // is served and for whom, and never sees the proxy's cookie.
    let out = Command::new(BIN)
        .env("GPU_REPLICA_TOKEN", &alice)
        .args([
            "--server",
            &format!("http://{}", server.addr),
            "open",
            &web,
            "9000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let url9000 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (status, _) = open(&url9000, &alice_jar);
    assert_eq!(status, 200);
    let (status, head) = curl(&[
        "-b",
        jar,
        "-H",
        "Cookie: theirs=kept",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        &format!("{base}/{web}/9000/headers?x=1"),
    ]);
    assert_eq!(status, 200, "{head}");
    let head_lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with(&format!("GET /{web}/9000/headers?x=1 HTTP/1.1")),
        "{head}"
    );
    assert!(
        head_lower.contains(&format!("x-forwarded-prefix: /{web}/9000\r\n")),
        "{head}"
    );
    assert!(
        head_lower.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        !head.contains("6.6.6.6"),
        "a client's own claim is not passed on: {head}"
    );
    assert!(head_lower.contains("x-forwarded-proto: http\r\n"), "{head}");
    assert!(
        head_lower.contains(&format!("x-forwarded-host: {proxy_addr}\r\n")),
        "{head}"
    );
    assert!(head.contains("theirs=kept"), "{head}");
    assert!(!head.contains("gpu_replica_proxy"), "{head}");
    assert!(!head_lower.contains("authorization"), "{head}");
    let cookie9000 = {
        let jar = std::fs::read_to_string(&alice_jar).unwrap();
        jar.lines()
            .find(|l| l.contains("\tgpu_replica_proxy\t") && l.contains(&format!("/{web}/9000")))
            .unwrap_or_else(|| panic!("{jar}"))
            .rsplit('\t')
            .next()
            .unwrap()
            .to_string()
    };
    let ws_cookie = format!("Cookie: gpu_replica_proxy={cookie9000}");
    let ws_url = format!("ws://{proxy_addr}/{web}/9000/echo");

    // A WebSocket through the proxy: 200 messages echoed; none without the cookie.
    let out = wsecho(&["rtt", &ws_url, "200", "-H", &ws_cookie, "--size", "1000"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rtt n=200"),
        "{}",
        text(&out)
    );
    let out = wsecho(&["rtt", &ws_url, "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401")
            || String::from_utf8_lossy(&out.stdout).contains("401"),
        "{}",
        text(&out)
    );

    // Idle for the proxy's 3 s: a WebSocket that pings stays, a silent one is cut.
    let pinging = std::thread::spawn({
        let (ws_url, ws_cookie) = (ws_url.clone(), ws_cookie.clone());
        move || wsecho(&["hold", &ws_url, "7", "-H", &ws_cookie, "--ping-ms", "500"])
    });
    let silent = wsecho(&["hold", &ws_url, "7", "-H", &ws_cookie]);
    assert_eq!(silent.status.code(), Some(3), "{}", text(&silent));
    let pinging = pinging.join().unwrap();
    assert!(pinging.status.success(), "{}", text(&pinging));
    assert!(
        String::from_utf8_lossy(&pinging.stdout).contains("open"),
        "{}",
        text(&pinging)
    );

    // 300 MB streams through with the server's memory flat.
    let pid = server.child.id();
    let before = memory_kib(pid, "VmRSS:");
    let out = Command::new("curl")
        .args([
            "-s",
            "-b",
            jar,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("{base}/{web}/9000/big?bytes=300000000"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 300000000",
        "{}",
        text(&out)
    );
    let peak = memory_kib(pid, "VmHWM:");
    assert!(
        peak < before + 100 * 1024,
        "the server grew from {before} KiB to a peak of {peak} KiB for a 300 MB download"
    );

    // Four requests or WebSockets at once per user (this server's limit): a fifth waits.
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (ws_url, ws_cookie) = (ws_url.clone(), ws_cookie.clone());
            std::thread::spawn(move || {
                wsecho(&["hold", &ws_url, "4", "-H", &ws_cookie, "--ping-ms", "500"])
            })
        })
        .collect();
    let mut refused = false;
    until(
        "the fifth connection refused",
        Duration::from_secs(4),
        || {
            let (status, _) = curl(&["-b", jar, &format!("{base}/{web}/80/")]);
            refused = status == 429;
            refused
        },
    );
    for holder in holders {
        let out = holder.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let (status, _) = curl(&["-b", jar, &format!("{base}/{web}/80/")]);
    assert_eq!(status, 200, "let in again once the others closed");

    // A reset token signs alice out of the proxy; a new link lets her in again.
    let (status, reply) = call(
        &server,
        ADMIN,
        "POST",
        "/api/v1/users/alice/token",
        json!({}),
    );
    assert_eq!(status, 200, "{reply}");
    let alice = reply["data"]["token"].as_str().unwrap().to_string();
    // (An admission is kept a second.)
    until("the old cookie refused", Duration::from_secs(5), || {
        curl(&["-b", jar, &format!("{base}/{web}/80/")]).0 == 401
    });
    let (status, body) = open(&link(&server, &alice, &web, 80), &alice_jar);
    assert_eq!((status, body.trim()), (200, "hello-proxy"));

    // A stopped set says so.
    let (status, reply) = call(
        &server,
        &alice,
        "PATCH",
        &format!("/api/v1/replicaSet/{web}/stop"),
        json!({}),
    );
    assert_eq!(status, 200, "{reply}");
    let mut answer = (0, String::new());
    until("the stopped set said so", Duration::from_secs(5), || {
        answer = curl(&["-b", jar, &format!("{base}/{web}/80/")]);
        answer.0 == 503
    });
    assert!(answer.1.contains("not running"), "{}", answer.1);

    // Made-up cookies are failed authentications, limited per address as the API's tokens.
    let mut limited = false;
    for _ in 0..40 {
        let (status, _) = curl(&[
            "-H",
            "Cookie: gpu_replica_proxy=eyJrIjoiY29va2llIn0.AAAA",
            &format!("{base}/{web}/80/"),
        ]);
        if status == 429 {
            limited = true;
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(limited, "made-up cookies are limited");
    // A good cookie from the same address still goes through (here to the stopped set's page).
    let (status, _) = curl(&["-b", jar, &format!("{base}/{web}/80/")]);
    assert_eq!(status, 503, "a good cookie is never turned away");
    std::thread::sleep(Duration::from_secs(2));

    // Host names: with --proxy-domain, a link names `{set}-{port}.{domain}`, the application
    // is served at `/` (no prefix), and the cookie is that host's alone.
    server
        .env
        .push(("GPU_REPLICA_PROXY_DOMAIN".into(), "apps.test".into()));
    server.restart();
    let (status, reply) = call(
        &server,
        &alice,
        "PATCH",
        &format!("/api/v1/replicaSet/{web}/restart"),
        json!({}),
    );
    assert_eq!(status, 200, "{reply}");
    let host = format!("{web}-80.apps.test");
    let url = link(&server, &alice, &web, 80);
    assert_eq!(
        url.split("/_gpu-replica").next().unwrap(),
        format!("http://{host}:{proxy_port}"),
        "{url}"
    );
    let resolve = format!("{host}:{proxy_port}:127.0.0.1");
    let host_jar = jars.join("host");
    let host_jar_s = host_jar.to_str().unwrap();
    let mut answered = (0, String::new());
    until("the restarted set's httpd", Duration::from_secs(20), || {
        answered = curl(&[
            "--resolve",
            &resolve,
            "-L",
            "-c",
            host_jar_s,
            "-b",
            host_jar_s,
            &url,
        ]);
        answered.0 != 502
    });
    assert_eq!((answered.0, answered.1.trim()), (200, "root-page"));
    let (status, body) = curl(&[
        "--resolve",
        &resolve,
        "-b",
        host_jar_s,
        &format!("http://{host}:{proxy_port}/index.html"),
    ]);
    assert_eq!((status, body.trim()), (200, "root-page"));
    // The host's cookie does not open the same set by path.
    let (status, _) = curl(&["-b", host_jar_s, &format!("{base}/{web}/80/")]);
    assert_eq!(status, 401);
    drop(server);
}
