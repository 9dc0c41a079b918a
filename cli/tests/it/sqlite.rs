//! Every command on SQLite files, each test on a file of its own in a temporary directory.

use crate::harness::{self, DbArgs, Seeded};
use crate::scenario;
use durable_jobs_sqlite::SqliteStorage;
use std::sync::Arc;

/// A seeded SQLite file; the directory is removed when this drops.
struct SeededFile {
    _dir: tempfile::TempDir,
    db: DbArgs,
    seeded: Seeded,
}

async fn seeded_file() -> SeededFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let storage = SqliteStorage::open(&path).await.unwrap();
    let seeded = harness::seed(Arc::new(storage.clone())).await;
    storage.close().await;
    SeededFile {
        db: DbArgs(vec![
            "--database".into(),
            format!("sqlite:{}", path.display()),
        ]),
        _dir: dir,
        seeded,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_commands() {
    let f = seeded_file().await;
    scenario::read_commands(&f.db, &f.seeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_actions() {
    let f = seeded_file().await;
    scenario::job_actions(&f.db, &f.seeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_delete_by_filter() {
    let f = seeded_file().await;
    scenario::delete_by_filter(&f.db, &f.seeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes() {
    let f = seeded_file().await;
    scenario::writes(&f.db, &f.seeded);
}

#[test]
fn sqlite_migrate_creates_the_file_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let url = format!("sqlite://{}", path.display());
    let out = harness::run(&["--database", &url, "--json", "migrate"]).ok();
    let report = out.json();
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["from_version"], 0);
    assert_eq!(report["to_version"], durable_jobs_sqlite::SCHEMA_VERSION);
    assert!(path.exists());
    let again = harness::run(&["--database", &url, "migrate"]).ok();
    assert!(
        again.stdout.contains("already at schema version"),
        "{again:#?}"
    );
    let status = harness::run(&["--database", &url, "--json", "status"])
        .ok()
        .json();
    assert_eq!(status["queues"], serde_json::json!([]));
    // The environment variable works like --database.
    let env = harness::run_env(&["jobs", "list"], &[("DATABASE_URL", &url)]).ok();
    assert_eq!(env.stdout, "no jobs match\n");
}

#[test]
fn sqlite_missing_file_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let url = format!("sqlite:{}", path.display());
    for args in [
        vec!["status"],
        vec!["jobs", "list"],
        vec!["jobs", "show", "1"],
        vec!["enqueue", "t"],
        vec!["queues", "pause", "q"],
        vec!["workers"],
    ] {
        let mut all = vec!["--database", url.as_str()];
        all.extend(args);
        let line = harness::run(&all).fails(1);
        assert!(line.contains("no SQLite database at"), "{line}");
        assert!(line.contains("durable-jobs migrate"), "{line}");
    }
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn sqlite_never_migrated_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // An empty file is an empty SQLite database.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let url = format!("sqlite:{}", empty.display());
    for args in [vec!["status"], vec!["jobs", "list"], vec!["enqueue", "t"]] {
        let mut all = vec!["--database", url.as_str()];
        all.extend(args);
        let line = harness::run(&all).fails(1);
        assert!(line.contains("never migrated"), "{line}");
        assert!(line.contains("run `durable-jobs migrate`"), "{line}");
    }
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "the file was written"
    );

    // An application's own database without our tables.
    let other = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        .unwrap();
    drop(conn);
    let url = format!("sqlite:{}", other.display());
    let line = harness::run(&["--database", &url, "status"]).fails(1);
    assert!(line.contains("never migrated"), "{line}");

    // A file that is not SQLite at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just some words to fill a page",
    )
    .unwrap();
    let url = format!("sqlite:{}", text.display());
    let line = harness::run(&["--database", &url, "status"]).fails(1);
    assert!(line.contains("not a SQLite database"), "{line}");
}

/// Kills the served dashboard if a check fails before it is stopped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status code and the whole response.
fn http(port: u16, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: Basic {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dashboard_serves_read_only_behind_basic_auth() {
    let f = seeded_file().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = f.db.0.clone();
    args.extend(["dashboard", "--listen", &listen, "--read-only"].map(String::from));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_durable-jobs"))
        .args(&args)
        .env_remove("DATABASE_URL")
        .env("DURABLE_JOBS_DASHBOARD_USER", "admin")
        .env("DURABLE_JOBS_DASHBOARD_PASSWORD", "s3cret")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the dashboard exited early with {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // base64("admin:s3cret") and base64("admin:wrong").
    let good = "YWRtaW46czNjcmV0";
    let bad = "YWRtaW46d3Jvbmc=";
    assert_eq!(http(port, "GET", "/", None).0, 401);
    assert_eq!(http(port, "GET", "/", Some(bad)).0, 401);
    let (code, page) = http(port, "GET", "/", Some(good));
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("emails"),
        "the overview lacks the paused queue:\n{page}"
    );
    let (code, page) = http(
        port,
        "GET",
        &format!("/jobs/{}", f.seeded.workflow),
        Some(good),
    );
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("checkout"), "{page}");
    let (code, _) = http(port, "POST", "/queues/emails/resume", Some(good));
    assert_eq!(code, 403, "read-only mode must refuse actions");

    // SIGTERM stops it gracefully.
    let pid = child.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop it"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains(&format!("http://{listen}/")), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dashboard_bad_input() {
    let f = seeded_file().await;
    let line =
        f.db.run(&["dashboard", "--listen", "not an address"])
            .fails(2);
    assert!(line.contains("--listen"), "{line}");
    let mut args: Vec<&str> = f.db.0.iter().map(String::as_str).collect();
    args.extend(["dashboard", "--listen", "127.0.0.1:0"]);
    let line = harness::run_env(&args, &[("DURABLE_JOBS_DASHBOARD_USER", "admin")]).fails(2);
    assert!(line.contains("DURABLE_JOBS_DASHBOARD_PASSWORD"), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let url = format!("sqlite:{}", empty.display());
    let line = harness::run(&["--database", &url, "dashboard", "--listen", "127.0.0.1:0"]).fails(1);
    assert!(line.contains("never migrated"), "{line}");
}
