//! Real headless Chromium through WebDriver: Debian's `chromium` and `chromium-driver`,
//! installed with apt-get when missing and the tests run as root, else a failure naming
//! the packages. Never skipped.
//!
//! A [`Browser`] starts its own chromedriver on a free port and one session with a fresh
//! profile, and ends both when dropped. Starting one takes seconds, so the tests of this
//! binary share one through [`Lease`]: each test holds a lease while it runs (the browser
//! lives while any test does), and takes the browser for itself, with its cookies
//! cleared, for the part that drives it.

use crate::http;
use base64::Engine;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The lock file that serializes package installs across test processes.
const APT_LOCK: &str = "/tmp/durable-jobs-apt.lock";

/// Installs the browser and its driver once per process if they are missing.
fn ensure_installed() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done || (Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
        *done = true;
        return;
    }
    assert!(
        is_root(),
        "the dashboard's browser tests need Debian's packages `chromium` and `chromium-driver` \
         ({CHROMIUM}, {CHROMEDRIVER}); install them with `apt-get install chromium chromium-driver` \
         (run the tests as root to have them installed automatically)"
    );
    // nextest runs every test in a process of its own, so several may get here at once:
    // `flock` lets one process install while the others wait, then find the packages
    // there (apt's own locks would make the latecomers fail instead of waiting).
    let script = format!(
        "test -x {CHROMIUM} && test -x {CHROMEDRIVER} || {{ \
         apt-get -q -o DPkg::Lock::Timeout=600 update && \
         apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends \
         chromium chromium-driver; }}"
    );
    let status = Command::new("flock")
        .args([APT_LOCK, "sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .expect("run flock and apt-get to install chromium and chromium-driver");
    assert!(
        status.success(),
        "`apt-get install chromium chromium-driver` failed ({status}): install Debian's \
         packages `chromium` and `chromium-driver` by hand"
    );
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "apt-get installed chromium and chromium-driver, but {CHROMIUM} or {CHROMEDRIVER} is missing"
    );
    *done = true;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free local port")
}

/// A WebDriver error: its `error` code and message.
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

/// An element reference.
#[derive(Debug, Clone)]
pub struct Element(String);

/// Tests running now or about to drive the shared browser.
static USERS: Mutex<usize> = Mutex::new(0);
/// The shared browser, started by the first test that drives it.
static SHARED: Mutex<Option<Browser>> = Mutex::new(None);

/// A running test's claim on the shared browser: while any lease lives, the browser
/// does; the last one to go ends it (a test binary has no teardown of its own).
pub struct Lease(());

impl Lease {
    /// Registers a test as a user of the browser.
    pub fn new() -> Lease {
        *USERS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Lease(())
    }

    /// The shared browser for this test alone, started if none runs, on a blank page with
    /// no cookies; screenshots are named after `label`.
    pub fn browser(&self, label: &str) -> SharedBrowser {
        let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Browser::start(label));
        }
        let browser = guard.as_mut().expect("started above");
        browser.label = label.to_string();
        browser.reset();
        SharedBrowser(guard)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users == 0 {
            let browser = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(browser);
        }
    }
}

/// The shared browser, held by one test.
pub struct SharedBrowser(MutexGuard<'static, Option<Browser>>);

impl Deref for SharedBrowser {
    type Target = Browser;

    fn deref(&self) -> &Browser {
        self.0.as_ref().expect("a started browser")
    }
}

impl DerefMut for SharedBrowser {
    fn deref_mut(&mut self) -> &mut Browser {
        self.0.as_mut().expect("a started browser")
    }
}

/// One browser session with its own chromedriver.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
    /// Screenshot names start with this (the backend and the test).
    label: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start(label: &str) -> Browser {
        ensure_installed();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempfile::tempdir().expect("a temporary Chromium profile directory");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
            label: label.to_string(),
        };
        browser.wait_for_driver();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "unhandledPromptBehavior": "ignore",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--disable-extensions",
                        "--disable-default-apps", "--no-default-browser-check",
                        "--disable-breakpad", "--disable-crash-reporter",
                        "--window-size=1280,1000", "--hide-scrollbars",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                    ]
                }
            }}
        });
        let created = browser
            .send("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("start a Chromium session: {}: {}", e.error, e.message));
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id in WebDriver's answer")
            .to_string();
        browser
            .cmd(
                "POST",
                "/timeouts",
                Some(json!({"pageLoad": 30_000, "script": 10_000})),
            )
            .expect("set timeouts");
        browser
    }

    /// Back to a fresh state for the next test: no alert, no cookies, a blank page, the
    /// starting window size.
    fn reset(&self) {
        let _ = self.cmd("POST", "/alert/dismiss", Some(json!({})));
        let _ = self.cmd("DELETE", "/cookie", None);
        let _ = self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": 1280, "height": 1000})),
        );
        self.goto("about:blank");
    }

    fn wait_for_driver(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(r) = http::request(self.addr, "GET", "/status", &[], b"") {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                if v["value"]["ready"].as_bool() == Some(true) {
                    return;
                }
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not become ready on {} within 30 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json; charset=utf-8")]
        };
        let r = http::request(self.addr, method, path, headers, body.as_bytes()).map_err(|e| {
            WdError {
                error: "transport".into(),
                message: e.to_string(),
            }
        })?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| WdError {
            error: "bad response".into(),
            message: format!("{e}: {}", r.text()),
        })?;
        let value = v["value"].clone();
        if r.status >= 400 {
            return Err(WdError {
                error: value["error"].as_str().unwrap_or("unknown").to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(value)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        self.send(method, &format!("/session/{}{path}", self.session), body)
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {}: {}", e.error, e.message))
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current address.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.must("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Elements matching a CSS selector (none is an empty list).
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        match self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        ) {
            Ok(v) => v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e[ELEMENT].as_str())
                        .map(|id| Element(id.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            Err(e) => panic!("find `{css}`: {}: {}", e.error, e.message),
        }
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        self.find_all(css).into_iter().next()
    }

    /// Waits until `check` returns true, polling; fails with `what` and a screenshot at
    /// the deadline.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let start = Instant::now();
        loop {
            if check(self) {
                return;
            }
            if start.elapsed() > DEADLINE {
                self.screenshot("timeout");
                panic!(
                    "timed out after {DEADLINE:?} waiting until {what} (at {}):\n{}",
                    self.url(),
                    self.body_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an element matching `css` and returns it.
    pub fn wait_for(&self, css: &str) -> Element {
        let mut found = None;
        self.wait_until(&format!("`{css}` is on the page"), |b| {
            found = b.find(css);
            found.is_some()
        });
        found.expect("found above")
    }

    /// An element's rendered text.
    pub fn text(&self, el: &Element) -> String {
        self.must("GET", &format!("/element/{}/text", el.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of the first element matching `css`, read in one step (no
    /// element reference to go stale when a page refreshes part of itself).
    pub fn text_at(&self, css: &str) -> Option<String> {
        self.exec(
            "var e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// An element's attribute.
    pub fn attr(&self, el: &Element, name: &str) -> Option<String> {
        self.must("GET", &format!("/element/{}/attribute/{name}", el.0), None)
            .as_str()
            .map(str::to_string)
    }

    /// An element's DOM property (e.g. `href` resolved to an absolute address).
    pub fn prop(&self, el: &Element, name: &str) -> Option<String> {
        self.must("GET", &format!("/element/{}/property/{name}", el.0), None)
            .as_str()
            .map(str::to_string)
    }

    /// Clicks an element.
    pub fn click(&self, el: &Element) {
        self.must("POST", &format!("/element/{}/click", el.0), Some(json!({})));
    }

    /// Types `text` into an input after clearing it.
    pub fn type_text(&self, el: &Element, text: &str) {
        self.must("POST", &format!("/element/{}/clear", el.0), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        );
    }

    /// Runs a script in the page (`arguments` are `args`) and returns its value.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The open alert's text, if an alert (or confirm) is open.
    pub fn alert_text(&self) -> Option<String> {
        match self.cmd("GET", "/alert/text", None) {
            Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
            Err(e) if e.error == "no such alert" => None,
            Err(e) => panic!("read the alert: {}: {}", e.error, e.message),
        }
    }

    /// Accepts the open alert or confirm dialog.
    pub fn accept_alert(&self) {
        self.must("POST", "/alert/accept", Some(json!({})));
    }

    /// The page body's visible text.
    pub fn body_text(&self) -> String {
        self.find("body").map(|b| self.text(&b)).unwrap_or_default()
    }

    /// Saves a screenshot of the viewport as
    /// `target/dashboard-screenshots/<label>-<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let Ok(v) = self.cmd("GET", "/screenshot", None) else {
            return PathBuf::new();
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("WebDriver's screenshot is base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        let path = dir.join(format!("{}-{name}.png", self.label));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Browser {
    /// Like [`Browser::screenshot`], of the whole page: the window grows to the page's
    /// height (at most 4000 px) for the shot, then returns to its size.
    pub fn screenshot_full(&self, name: &str) -> PathBuf {
        let sizes = self.exec(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight, \
             window.outerWidth, window.outerHeight];",
            vec![],
        );
        let n = |i: usize| sizes[i].as_i64().unwrap_or(0);
        let height = (n(0) + n(1)).min(4000);
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": n(2), "height": height})),
        );
        let path = self.screenshot(name);
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": n(2), "height": n(3)})),
        );
        path
    }
}

/// `target/dashboard-screenshots`, found from the test binary's own path
/// (`target/debug/deps/it-...`).
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("dashboard-screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; chromedriver would leave it running if killed first.
            let _ = self.send("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
