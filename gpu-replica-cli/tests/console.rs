//! The web console in a real browser: Debian's chromium, headless, driven through WebDriver
//! (chromedriver, spoken to over plain HTTP: the protocol is JSON over HTTP). Sign in, run a
//! set with 2 fake GPUs, patch it to 1, roll back to version 1, watch an event arrive live,
//! resize a volume, see an error as the API words it, delete; a user sees only their own, and
//! adds, lists and removes their SSH keys.
//! Each page is saved as a screenshot under `target/ui-screenshots/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{data_dir, free_port, http_as, Server};
use gpu_replica_core::testkit::{self, TEST_IMAGE};
use serde_json::{json, Value};

/// One WebDriver call: JSON over HTTP/1.1. chromedriver keeps the connection open after its
/// answer (whatever `Connection: close` says), so the body is read by its length.
fn http(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload).unwrap();
    (
        status,
        serde_json::from_slice(&payload).unwrap_or(Value::Null),
    )
}

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    shots: PathBuf,
}

fn binary(candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|c| std::path::Path::new(c).exists())
        .unwrap_or_else(|| {
            panic!("none of {candidates:?} is installed: scripts/test.sh installs chromium and chromium-driver")
        })
        .to_string()
}

impl Browser {
    fn start() -> Browser {
        let driver_bin = binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = binary(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = data_dir();
        let (status, answer) = http(
            &addr,
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,900",
                             format!("--user-data-dir={}", profile.display())],
                },
            }}})),
        );
        assert_eq!(status, 200, "new session: {answer}");
        let session = answer["value"]["sessionId"].as_str().unwrap().to_string();
        let shots = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/ui-screenshots"
        ));
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            addr,
            session,
            shots,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = http(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        );
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects, if there is one now.
    fn find(&self, css: &str) -> Option<String> {
        let (status, answer) = http(
            &self.addr,
            "POST",
            &format!("/session/{}/element", self.session),
            Some(json!({"using": "css selector", "value": css})),
        );
        (status == 200).then(|| answer["value"][ELEMENT].as_str().unwrap().to_string())
    }

    /// Waits for `css` to select an element.
    fn wait(&self, css: &str) -> String {
        let mut found = None;
        self.until(&format!("{css} appears"), || {
            found = self.find(css);
            found.is_some()
        });
        found.unwrap()
    }

    fn until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            if Instant::now() > deadline {
                self.screenshot(&format!(
                    "failed-{}",
                    what.replace(|c: char| !c.is_alphanumeric(), "_")
                ));
                panic!("{what}: not within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the element `css` selects now ("" when there is none, or it just went
    /// stale).
    fn text(&self, css: &str) -> String {
        let Some(id) = self.find(css) else {
            return String::new();
        };
        let (_, answer) = http(
            &self.addr,
            "GET",
            &format!("/session/{}/element/{id}/text", self.session),
            None,
        );
        answer["value"].as_str().unwrap_or_default().to_string()
    }

    /// Does `steps` (element commands) on the element `css` selects; the page redraws its
    /// tables as events arrive, so an element gone stale meanwhile is found again.
    fn on(&self, css: &str, steps: &[(&str, Value)]) {
        for _ in 0..20 {
            let id = self.wait(css);
            let stale = steps.iter().any(|(command, body)| {
                let (status, answer) = http(
                    &self.addr,
                    "POST",
                    &format!("/session/{}/element/{id}/{command}", self.session),
                    Some(body.clone()),
                );
                if status == 200 {
                    return false;
                }
                assert_eq!(
                    answer["value"]["error"], "stale element reference",
                    "{command} on {css}: {answer}"
                );
                true
            });
            if !stale {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{css} kept going stale");
    }

    fn click(&self, css: &str) {
        self.on(css, &[("click", json!({}))]);
    }

    fn fill(&self, css: &str, text: &str) {
        self.on(
            css,
            &[("clear", json!({})), ("value", json!({ "text": text }))],
        );
    }

    /// The browser's console errors (failed loads, script errors) since the last call: each
    /// read empties the log.
    fn errors(&self) -> Vec<String> {
        let entries = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .unwrap_or_else(|| panic!("no browser log: {entries}"))
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Asserts the console logged no error since the last look, `at` saying where.
    fn quiet(&self, at: &str) {
        let errors = self.errors();
        assert!(errors.is_empty(), "{at}: the browser logged {errors:#?}");
    }

    /// Asserts the console logged exactly the failed requests a step asked for on purpose
    /// (`path` answered `status`), and nothing else.
    fn logged_only(&self, at: &str, path: &str, status: u16) {
        let errors = self.errors();
        assert!(
            !errors.is_empty()
                && errors
                    .iter()
                    .all(|e| e.contains(path) && e.contains(&format!("status of {status}"))),
            "{at}: expected only {path} answering {status}, the browser logged {errors:#?}"
        );
    }

    /// Types `text` into whatever has the focus, a key at a time (WebDriver actions: `\n` is
    /// Enter, `\x1b` Escape).
    fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .map(|c| match c {
                '\n' => '\u{E007}',
                '\x1b' => '\u{E00C}',
                c => c,
            })
            .flat_map(|c| {
                let key = c.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// The attribute `name` of the element `css` selects now.
    fn attribute(&self, css: &str, name: &str) -> String {
        let id = self.wait(css);
        self.call("GET", &format!("/element/{id}/attribute/{name}"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves the page as `{name}.png`.
    fn screenshot(&self, name: &str) {
        let (_, answer) = http(
            &self.addr,
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        if let Some(png) = answer["value"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap();
            std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_patches_rolls_back_and_deletes_in_a_real_browser() {
    let docker = testkit::docker().await;
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    let dir = data_dir();
    let token = "console-admin-token";
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", token)]);
    let api = |method: &str, path: &str, body: Option<Value>| -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, answer) = http_as(&server.addr, Some(token), method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(&answer).unwrap()
    };
    let browser = Browser::start();
    let ui = format!("http://{}/ui", server.addr);
    let name = testkit::unique_name("ui");
    let row = |cell: &str| format!("tr[data-set=\"{name}\"] {cell}");

    // Sign in.
    browser.open(&ui);
    browser.wait("#token");
    // Loading the page before anyone signs in sends nothing that fails (the icon needs no
    // token, the page asks whether one is needed before it calls the API).
    std::thread::sleep(Duration::from_millis(500));
    browser.quiet("loading the page");
    browser.screenshot("1-sign-in");
    browser.fill("#token", "a-wrong-token");
    browser.click("#signin");
    browser.until("the API's message for a wrong token", || {
        browser.text("#error").contains("missing or wrong token")
    });
    browser.logged_only("a wrong token", "/api/v1/whoami", 401);
    browser.fill("#token", token);
    browser.click("#signin");
    browser.until("signed in as admin", || {
        browser.text("#who").contains("admin")
    });
    browser.wait("#sets tbody");
    browser.quiet("signing in");

    // Run a set with 2 fake GPUs: it appears with them.
    browser.fill("#run-name", &name);
    browser.fill("#run-image", TEST_IMAGE);
    browser.fill("#run-gpus", "2");
    browser.click("#run-submit");
    browser.until("the set runs with 2 GPUs", || {
        browser.text(&row(".gpus")) == "2" && browser.text(&row(".status")) == "running"
    });
    // A timer set through the API shows in its column.
    api(
        "PUT",
        &format!("/api/v1/replicaSet/{name}/timers"),
        Some(json!({"idleStop": "2h"})),
    );
    browser.until("the timer shows", || {
        browser.text(&row(".timers")).contains("idle 7200s")
    });
    browser.screenshot("2-sets");
    // The same name again: the API's own message, shown as it is.
    let (_, _, again) = http_as(
        &server.addr,
        Some(token),
        "POST",
        "/api/v1/replicaSet",
        Some(&json!({"imageName": TEST_IMAGE, "replicaSetName": name}).to_string()),
    );
    let message = serde_json::from_str::<Value>(&again).unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_string();
    browser.fill("#run-name", &name);
    browser.fill("#run-gpus", "0");
    browser.click("#run-submit");
    browser.until("the error as the API gives it", || {
        browser.text("#error").contains(&message)
    });
    browser.logged_only("running a name taken", "/api/v1/replicaSet", 409);

    // Patch to 1 GPU: version 2.
    browser.fill(&row("input.patch-gpus"), "1");
    browser.click(&row("button.patch"));
    browser.until("version 2 with 1 GPU", || {
        browser.text(&row(".version")) == "2" && browser.text(&row(".gpus")) == "1"
    });
    // Roll back to version 1 from the history: version 3, with 2 GPUs again.
    browser.click(&row("button.history"));
    browser.wait("#history button.rollback[data-version=\"1\"]");
    browser.screenshot("3-history");
    browser.click("#history button.rollback[data-version=\"1\"]");
    browser.until("version 3 with 2 GPUs", || {
        browser.text(&row(".version")) == "3" && browser.text(&row(".gpus")) == "2"
    });
    let info = api("GET", &format!("/api/v1/replicaSet/{name}"), None);
    assert_eq!(info["data"]["info"]["version"], 3, "{info}");

    // An event appears live: a stop made through the API, outside the browser.
    browser.click("button[data-tab=\"events\"]");
    browser.wait("#events li");
    api("PATCH", &format!("/api/v1/replicaSet/{name}/stop"), None);
    browser.until("the stop event arrives", || {
        browser.text("#events").contains(&format!("stop {name}"))
    });
    browser.screenshot("4-events");

    // GPUs: the set stopped, so all 4 are listed free.
    browser.click("button[data-tab=\"gpus\"]");
    browser.wait("#gpus tbody tr");
    browser.until("4 GPUs listed", || {
        browser.text("#gpus tbody").matches("GPU-").count() == 4
    });
    browser.screenshot("5-gpus");

    // Volumes: create one, resize it.
    let volume = format!("{name}v");
    browser.click("button[data-tab=\"volumes\"]");
    browser.fill("#volume-name", &volume);
    browser.fill("#volume-size", "10MB");
    browser.click("#volume-submit");
    let vrow = |cell: &str| format!("tr[data-volume=\"{volume}\"] {cell}");
    browser.wait(&vrow(".size"));
    browser.fill(&vrow("input.resize-size"), "20MB");
    browser.click(&vrow("button.resize"));
    browser.until("resized to 20MB", || {
        browser.text(&vrow(".size")).starts_with("20MB")
    });
    browser.screenshot("6-volumes");
    browser.click(&vrow("button.delete"));
    browser.click(&vrow("button.confirm-delete"));
    browser.until("the volume is gone", || {
        browser.find(&vrow(".size")).is_none()
    });

    // A user sees only their own sets.
    let bob = api(
        "POST",
        "/api/v1/users",
        Some(json!({"name": format!("{name}bob")})),
    );
    let bob_token = bob["data"]["token"].as_str().unwrap().to_string();
    let bobs = format!("{name}b");
    let (status, _, answer) = http_as(
        &server.addr,
        Some(&bob_token),
        "POST",
        "/api/v1/replicaSet",
        Some(&json!({"imageName": TEST_IMAGE, "replicaSetName": bobs}).to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    browser.click("#signout");
    browser.fill("#token", &bob_token);
    browser.click("#signin");
    browser.until("signed in as bob", || browser.text("#who").contains("bob"));
    // The table is drawn (bob's own set is in it), without the admin's.
    browser.wait(&format!("tr[data-set=\"{bobs}\"] .name"));
    assert!(
        browser.find(&row(".name")).is_none(),
        "bob sees the admin's set"
    );
    browser.screenshot("7-user");
    browser.quiet("everything between");
    browser.click("#signout");
    browser.fill("#token", token);
    browser.click("#signin");
    browser.until("signed in as admin again", || {
        browser.text("#who").contains("admin")
    });

    // Delete, after a confirmation.
    browser.click(&row("button.delete"));
    browser.click(&row("button.confirm-delete"));
    browser.until("the set is gone", || browser.find(&row(".name")).is_none());
    browser.quiet("signing out and in, deleting");
    let (status, _, _) = http_as(
        &server.addr,
        Some(token),
        "GET",
        &format!("/api/v1/replicaSet/{name}"),
        None,
    );
    assert_eq!(status, 404);
    api("DELETE", &format!("/api/v1/replicaSet/{bobs}"), None);
    api("DELETE", &format!("/api/v1/users/{name}bob"), None);
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tokens_opens_the_console_at_once_and_quietly() {
    testkit::docker().await;
    let dir = data_dir();
    let server = Server::start(&dir, None);
    // The icon is an asset: no token, an image.
    let (status, head, icon) = http_as(&server.addr, None, "GET", "/favicon.ico", None);
    assert_eq!(status, 200);
    assert!(
        head.contains("image/svg+xml") && icon.starts_with("<svg"),
        "{head}"
    );
    let browser = Browser::start();
    browser.open(&format!("http://{}/ui", server.addr));
    browser.until("signed in as admin without a token", || {
        browser.text("#who").contains("admin")
    });
    browser.wait("#sets tbody");
    browser.click("button[data-tab=\"gpus\"]");
    browser.wait("#gpus tbody tr");
    browser.quiet("a server without tokens");
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// The web terminal as a person uses it: a command and its output, a full-screen program, the
/// terminal fitted to the window and resized with it (as `stty size` in the container says),
/// and a reload that finds the same screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_terminal_runs_commands_and_vi_fits_the_window_and_survives_a_reload() {
    let docker = testkit::docker().await;
    testkit::ensure_image(&docker, TEST_IMAGE, 0).await.unwrap();
    let dir = data_dir();
    let token = "console-terminal-token";
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", token)]);
    let name = testkit::unique_name("web.Term");
    let body = json!({"imageName": TEST_IMAGE, "replicaSetName": name}).to_string();
    let (status, _, answer) = http_as(
        &server.addr,
        Some(token),
        "POST",
        "/api/v1/replicaSet",
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
    let browser = Browser::start();
    browser.open(&format!("http://{}/ui", server.addr));
    browser.fill("#token", token);
    browser.click("#signin");
    browser.click(&format!("tr[data-set=\"{name}\"] button.terminal"));
    browser.until("the terminal connects", || {
        browser.text("#terminal-state") == "connected"
    });
    let screen = || browser.text("#terminal .screen");
    let lines = || {
        screen()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
    };
    let size = || {
        let rows: usize = browser.attribute("#terminal", "data-rows").parse().unwrap();
        let cols: usize = browser.attribute("#terminal", "data-cols").parse().unwrap();
        (rows, cols)
    };

    // A command and its output.
    browser.click("#terminal");
    browser.keys("echo hello-$((6*7))\n");
    browser.until("the output is drawn", || {
        lines().iter().any(|l| l == "hello-42")
    });
    // The terminal fills its element, and the program's terminal is as large.
    let (rows, cols) = size();
    assert!(
        rows >= 20 && cols >= 100,
        "{rows} × {cols} in a 1400 × 900 window"
    );
    browser.keys("echo size-$(stty size | tr ' ' x)\n");
    let want = format!("size-{rows}x{cols}");
    browser.until("stty size is the drawn size", || lines().contains(&want));
    browser.screenshot("8-terminal");

    // A full-screen program: vi draws its empty-line marks down the whole screen.
    browser.keys("vi /tmp/note.txt\n");
    browser.until("vi fills the screen", || {
        lines().iter().filter(|l| l.starts_with('~')).count() >= rows - 3
    });
    // Escape alone: a key right after it would read as one escape sequence (as in any
    // terminal).
    browser.keys("ihello from vi\x1b");
    browser.until("vi leaves insert mode", || {
        lines().last().is_some_and(|l| !l.starts_with("I "))
    });
    browser.keys(":wq\n");
    browser.until("vi is gone", || !lines().iter().any(|l| l.starts_with('~')));
    browser.keys("cat /tmp/note.txt\n");
    browser.until("what vi wrote", || {
        lines().iter().any(|l| l == "hello from vi")
    });
    browser.screenshot("9-terminal-after-vi");

    // A smaller window: fewer rows and columns, for the screen and the program alike.
    browser.call(
        "POST",
        "/window/rect",
        Some(json!({"width": 900, "height": 600})),
    );
    browser.until("the terminal is refitted", || {
        size().0 < rows && size().1 < cols
    });
    let (rows, cols) = size();
    browser.keys("echo size-$(stty size | tr ' ' x)\n");
    let want = format!("size-{rows}x{cols}");
    browser.until("stty size follows the window", || lines().contains(&want));
    browser.quiet("typing, vi and resizing in the terminal");

    // A reload attaches to the same session, its screen intact.
    browser.call("POST", "/refresh", Some(json!({})));
    browser.until("attached again after the reload", || {
        browser.text("#terminal-state") == "attached again"
    });
    browser.until("the screen is as it was", || lines().contains(&want));
    browser.click("#terminal");
    browser.keys("exit 3\n");
    browser.until("the end is shown", || {
        browser.text("#terminal-state") == "exited with 3"
    });
    browser.screenshot("10-terminal-exited");
    browser.quiet("reloading and leaving the terminal");
    drop(browser);
    let path = format!("/api/v1/replicaSet/{name}");
    let (status, _, _) = http_as(&server.addr, Some(token), "DELETE", &path, None);
    assert_eq!(status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// SSH keys, as a user adds their own: a key pasted in is listed with the fingerprint the API
/// gives, a malformed one is refused with the API's message, a removed one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_adds_lists_and_removes_a_users_ssh_keys() {
    testkit::docker().await;
    let dir = data_dir();
    let token = "console-keys-token";
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", token)]);
    let call = |who: &str, method: &str, path: &str, body: Option<Value>| -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, answer) = http_as(&server.addr, Some(who), method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(&answer).unwrap()
    };
    let user = testkit::unique_name("keys");
    let created = call(
        token,
        "POST",
        "/api/v1/users",
        Some(json!({ "name": user })),
    );
    let user_token = created["data"]["token"].as_str().unwrap().to_string();

    // A fresh key, as a user would make one.
    let key_file = dir.join("k");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "console@test", "-f"])
        .arg(&key_file)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let public = std::fs::read_to_string(dir.join("k.pub")).unwrap();

    let browser = Browser::start();
    browser.open(&format!("http://{}/ui", server.addr));
    browser.fill("#token", &user_token);
    browser.click("#signin");
    browser.until("signed in as the user", || {
        browser.text("#who").contains(&user)
    });
    browser.click("button[data-tab=\"keys\"]");
    browser.until("the keys page, empty", || {
        browser.text("#keys-empty") == "No keys yet."
    });
    assert!(
        browser.text("#keys-page .hint").contains("SETNAME@HOST"),
        "the page tells how to log in"
    );
    browser.quiet("opening the keys page");

    // Add it: listed with the API's fingerprint, type and comment.
    browser.fill("#key-text", public.trim());
    browser.click("#key-submit");
    browser.wait("#keys tbody tr .fingerprint");
    let keys = call(
        &user_token,
        "GET",
        &format!("/api/v1/users/{user}/keys"),
        None,
    );
    let listed = keys["data"]["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{keys}");
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    let key_row = |cell: &str| format!("#keys tr[data-fingerprint=\"{fingerprint}\"] {cell}");
    browser.until("the key is listed with its fingerprint", || {
        browser.text(&key_row(".fingerprint")) == fingerprint
    });
    assert_eq!(browser.text(&key_row(".type")), "ssh-ed25519");
    assert_eq!(browser.text(&key_row(".comment")), "console@test");
    assert!(!browser.text(&key_row(".added")).is_empty());
    assert_eq!(browser.attribute("#key-text", "value"), "");
    assert_eq!(browser.text("#error"), "", "no error shown");
    browser.screenshot("8-keys");
    browser.quiet("adding a key");

    // A malformed key: the API's message, shown as other errors are.
    let path = format!("/api/v1/users/{user}/keys");
    let (status, _, refused) = http_as(
        &server.addr,
        Some(&user_token),
        "POST",
        &path,
        Some(&json!({"key": "ssh-ed25519 not-base64!"}).to_string()),
    );
    assert_eq!(status, 400, "{refused}");
    let message = serde_json::from_str::<Value>(&refused).unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_string();
    browser.fill("#key-text", "ssh-ed25519 not-base64!");
    browser.click("#key-submit");
    browser.until("the error as the API gives it", || {
        browser.text("#error").contains(&message)
    });
    browser.logged_only("adding a malformed key", &path, 400);
    assert_eq!(browser.text(&key_row(".fingerprint")), fingerprint);

    // Remove it: the list is empty again, here and in the API.
    browser.click(&key_row("button.remove"));
    browser.until("the key is gone", || {
        browser.find(&key_row(".fingerprint")).is_none()
            && browser.text("#keys-empty") == "No keys yet."
    });
    let keys = call(&user_token, "GET", &path, None);
    assert_eq!(keys["data"]["keys"], json!([]), "{keys}");
    browser.quiet("removing a key");

    call(token, "DELETE", &format!("/api/v1/users/{user}"), None);
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A page that tries to take the console's token from wherever it could be reachable, and
/// writes what it found into `#result` as JSON.
const HOSTILE_PAGE: &str = r#"<!doctype html><title>hostile</title><pre id="result"></pre><script>
(async () => {
  const r = { origin: location.origin };
  r.session = sessionStorage.getItem("gpu-replica-token");
  r.local = localStorage.length;
  r.cookie = document.cookie;
  r.opener = window.opener === null ? "null" : "present";
  try { r.openerToken = window.opener && window.opener.sessionStorage.getItem("gpu-replica-token"); }
  catch (e) { r.openerToken = "blocked"; }
  try { const a = await fetch("API/api/v1/replicaSet", { credentials: "include" }); r.api = String(a.status) + " " + (await a.text()).slice(0, 80); }
  catch (e) { r.api = "blocked"; }
  const frame = document.createElement("iframe");
  frame.src = "API/ui/";
  document.body.append(frame);
  await new Promise((done) => setTimeout(done, 1500));
  try { r.frame = String(frame.contentWindow.sessionStorage.getItem("gpu-replica-token")); }
  catch (e) { r.frame = "blocked"; }
  document.getElementById("result").textContent = JSON.stringify(r);
})();
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_served_through_the_proxy_cannot_reach_the_consoles_token() {
    testkit::docker().await;
    let dir = data_dir();
    let token = "console-proxy-token";
    let proxy_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with_env(
        &dir,
        None,
        &[
            ("GPU_REPLICA_TOKEN", token),
            ("GPU_REPLICA_PROXY_ADDR", proxy_addr.as_str()),
        ],
    );
    let call = |who: &str, method: &str, path: &str, body: Option<Value>| -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, answer) = http_as(&server.addr, Some(who), method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(&answer).unwrap()
    };
    let user = testkit::unique_name("web");
    let created = call(
        token,
        "POST",
        "/api/v1/users",
        Some(json!({ "name": user })),
    );
    let user_token = created["data"]["token"].as_str().unwrap().to_string();
    // The user's set serves the hostile page on 80, at the path the proxy gives it.
    let set = testkit::unique_name("site");
    call(
        &user_token,
        "POST",
        "/api/v1/replicaSet",
        Some(
            json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 0,
                    "cmd": ["sh", "-c", "mkdir -p /www && httpd -p 80 -h /www; exec sleep 100000"]}),
        ),
    );
    let page = HOSTILE_PAGE.replace("API", &format!("http://{}", server.addr));
    let write = format!("mkdir -p /www/{set}/80 && printf %s \"$0\" > /www/{set}/80/index.html");
    let written = call(
        &user_token,
        "POST",
        &format!("/api/v1/replicaSet/{set}/execute"),
        Some(json!({"cmd": ["sh", "-c", write, page]})),
    );
    assert_eq!(written["data"]["exitCode"], 0, "{written}");

    let browser = Browser::start();
    browser.open(&format!("http://{}/ui", server.addr));
    browser.fill("#token", &user_token);
    browser.click("#signin");
    browser.until("signed in", || browser.text("#who").contains(&user));
    let row = format!("#sets tr[data-set=\"{set}\"]");
    browser.click(&format!("{row} button.services"));
    // The services: port 80, marked as a web page.
    browser.until("port 80 listed as web", || {
        browser.text("#services tr[data-port=\"80\"] .web") == "web"
    });
    browser.screenshot("9-services");
    browser.quiet("listing the services");
    let console = browser.call("GET", "/window", None);
    browser.click("#services tr[data-port=\"80\"] a.open");
    let mut proxied = None;
    browser.until("the service opens in a new tab", || {
        let handles = browser.call("GET", "/window/handles", None);
        proxied = handles
            .as_array()
            .unwrap()
            .iter()
            .find(|h| **h != console)
            .cloned();
        proxied.is_some()
    });
    browser.call(
        "POST",
        "/window",
        Some(json!({ "handle": proxied.unwrap() })),
    );
    let mut found = String::new();
    browser.until("the hostile page's findings", || {
        found = browser.text("#result");
        !found.is_empty()
    });
    browser.screenshot("10-proxied-page");
    let found: Value = serde_json::from_str(&found).unwrap();
    // Served from the proxy's origin, not the console's; nothing of the console's reachable.
    assert_eq!(found["origin"], format!("http://{proxy_addr}"), "{found}");
    assert_eq!(found["session"], Value::Null, "{found}");
    assert_eq!(found["local"], 0, "{found}");
    assert_eq!(found["opener"], "null", "{found}");
    assert!(
        !found["cookie"]
            .as_str()
            .unwrap()
            .contains("gpu_replica_proxy"),
        "the proxy's cookie is HttpOnly: {found}"
    );
    assert_eq!(found["api"], "blocked", "{found}");
    assert_eq!(found["frame"], "blocked", "{found}");
    // The browser's log holds the hostile page's refusals, and nothing else.
    let errors = browser.errors();
    assert!(
        errors.iter().all(|e| e.contains("blocked by CORS policy")
            || e.contains("net::ERR_FAILED")
            || e.contains("frame-ancestors 'none'")),
        "{errors:#?}"
    );
    // The console itself logged nothing wrong.
    browser.call("POST", "/window", Some(json!({ "handle": console })));
    browser.quiet("back on the console");
    call(
        &user_token,
        "DELETE",
        &format!("/api/v1/replicaSet/{set}"),
        None,
    );
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_changes_a_sets_image_keeping_root() {
    testkit::docker().await;
    let dir = data_dir();
    let token = "console-image-token";
    let server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_TOKEN", token)]);
    let call = |method: &str, path: &str, body: Option<Value>| -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, answer) = http_as(&server.addr, Some(token), method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(&answer).unwrap()
    };
    let set = testkit::unique_name("img");
    call(
        "POST",
        "/api/v1/replicaSet",
        Some(json!({"imageName": TEST_IMAGE, "replicaSetName": set, "gpuCount": 0})),
    );
    let exec = |script: &str| {
        call(
            "POST",
            &format!("/api/v1/replicaSet/{set}/execute"),
            Some(json!({"cmd": ["sh", "-c", script]})),
        )["data"]["stdout"]
            .as_str()
            .unwrap()
            .to_string()
    };
    exec("echo kept > /root/kept && echo gone > /opt/gone");

    let browser = Browser::start();
    browser.open(&format!("http://{}/ui", server.addr));
    browser.fill("#token", token);
    browser.click("#signin");
    let row = format!("#sets tr[data-set=\"{set}\"]");
    browser.wait(&format!("{row} button.change-image"));
    browser.click(&format!("{row} button.change-image"));
    // Two questions: the image, then the folders to keep (the default, /root).
    browser.call("POST", "/alert/text", Some(json!({ "text": TEST_IMAGE })));
    browser.call("POST", "/alert/accept", Some(json!({})));
    browser.until("the folders question", || {
        let (status, _) = http(
            &browser.addr,
            "GET",
            &format!("/session/{}/alert/text", browser.session),
            None,
        );
        status == 200
    });
    browser.call("POST", "/alert/accept", Some(json!({})));
    browser.until("version 2 is current", || {
        browser.text(&format!("{row} .version")) == "2"
    });
    assert_eq!(
        exec("cat /root/kept; test -e /opt/gone || echo fresh"),
        "kept\nfresh\n"
    );
    browser.click(&format!("{row} button.history"));
    browser.until("history names the image", || {
        browser.text("#history tr[data-version=\"2\"] .image") == TEST_IMAGE
    });
    browser.quiet("changing the image");
    call("DELETE", &format!("/api/v1/replicaSet/{set}"), None);
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
