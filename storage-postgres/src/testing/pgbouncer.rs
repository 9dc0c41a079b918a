//! A real pgBouncer in transaction mode in front of the test server, for the tests that
//! run the storage behind one ([`crate::PostgresOptions::pgbouncer_transaction_mode`]).
//!
//! It runs the Debian package's binary (`/usr/sbin/pgbouncer`, or `pgbouncer` on PATH).
//! When it is missing and the tests run as root, it is installed with `apt-get update`
//! and `apt-get install pgbouncer`; otherwise starting fails with a message naming the
//! package. The package's own service (port 6432), if the system started one, is never
//! used: each [`PgBouncer`] writes its own configuration in a temporary directory and
//! listens on a free port.
//!
//! [`PgBouncerHarness`] runs the conformance suites through one: each test's storage
//! reaches its schema only through pgBouncer (LISTEN through the direct URL), while the
//! schema is created and dropped over the direct connection.

use super::{server_url, TestSchema};
use crate::{PostgresOptions, PostgresStorage};
use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{DynStorage, Error, JobId, JobStatus, Result, StorageError, StorageErrorKind};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The Debian package that provides pgBouncer.
pub const PGBOUNCER_PACKAGE: &str = "pgbouncer";

/// Where the Debian package installs the binary.
const DEBIAN_BINARY: &str = "/usr/sbin/pgbouncer";

/// How long pgBouncer may take to listen after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A pgBouncer process this test process started: `pool_mode = transaction`, trust
/// authentication, on a free 127.0.0.1 port, in front of one PostgreSQL server. Dropping
/// it kills the process and deletes its directory; a watchdog does the same when the
/// test process dies first (even by SIGKILL), so a shared instance in a `static` never
/// outlives its tests.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    /// Stopped on drop, so it never signals a pid reused after this one ended.
    watchdog: Option<Child>,
    dir: PathBuf,
    port: u16,
    url: String,
}

/// The parts of a `postgres://` URL pgBouncer's configuration needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
}

impl PgBouncer {
    /// Starts pgBouncer in front of `server_url` (`postgres://user[:password]@host:port/db`)
    /// with `pool_size` server connections per database and user.
    ///
    /// # Errors
    /// What failed: pgBouncer missing (naming the package), the URL, the configuration
    /// files, or the process (with its log).
    pub fn start(server_url: &str, pool_size: u32) -> Result<Self, String> {
        let binary = binary()?;
        let server = parse_url(server_url)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for pgbouncer: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "durable-jobs-pgbouncer-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = dir.join("log");
        let ini = dir.join("pgbouncer.ini");
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        write(&ini, &config(&server, port, pool_size, &dir))?;
        write(&dir.join("userlist.txt"), &userlist(&server))?;
        let logfile =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let stderr = logfile
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let mut cmd = Command::new(&binary);
        if is_root() {
            // pgBouncer refuses to run as root; it drops to this user after reading its
            // configuration, which must stay readable to it.
            let user = if user_exists("postgres") {
                "postgres"
            } else {
                "nobody"
            };
            for path in [&dir, &ini, &dir.join("userlist.txt")] {
                let mode = if path.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
            }
            cmd.args(["-u", user]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(logfile)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let mut bouncer = PgBouncer {
            child,
            watchdog: None,
            url: format!(
                "postgres://{}@127.0.0.1:{port}/{}",
                server.user, server.database
            ),
            dir,
            port,
        };
        bouncer.watchdog = Some(bouncer.watch()?);
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    /// The URL that reaches the server through pgBouncer (same user and database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until it accepts connections, or fails with its log if it exits first.
    fn wait_listening(&mut self) -> Result<(), String> {
        let until = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("pgbouncer exited ({status}): {}", self.log()));
            }
            let addr = ([127, 0, 0, 1], self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!(
                    "pgbouncer did not listen on port {} within {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far (for error messages).
    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Starts a watchdog that outlives this process: once the process is gone (even by
    /// SIGKILL), it kills pgBouncer and removes its directory.
    fn watch(&self) -> Result<Child, String> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 {child} 2>/dev/null; rm -rf '{dir}'",
            pid = std::process::id(),
            child = self.child.id(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start the pgbouncer watchdog: {e}"))
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Server connections per database and user in the shared instance: few, so that the
/// tests' many client connections share them as an application's would.
pub const SHARED_POOL_SIZE: u32 = 8;

/// The pgBouncer this test process shares (started on first use in front of
/// [`server_url`], with [`SHARED_POOL_SIZE`]), killed by its watchdog when the process
/// exits.
///
/// # Errors
/// [`Error::Storage`] with what failed (e.g. the package to install).
pub fn shared_pgbouncer() -> Result<&'static PgBouncer> {
    static SHARED: OnceLock<std::result::Result<PgBouncer, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let server = server_url().map_err(|e| e.to_string())?;
            PgBouncer::start(&server, SHARED_POOL_SIZE)
        })
        .as_ref()
        .map_err(|e| Error::Storage(StorageError::new(StorageErrorKind::Unavailable, e.clone())))
}

/// A [`ConformanceHarness`] whose storage runs through the shared pgBouncer in
/// transaction mode ([`PostgresOptions::pgbouncer_transaction_mode`], LISTEN through the
/// direct URL); the fresh schema and its test clock are set up over the direct URL.
#[derive(Debug)]
pub struct PgBouncerHarness {
    schema: TestSchema,
    storage: PostgresStorage,
}

impl PgBouncerHarness {
    /// A fresh schema (over the direct URL) and a storage on it through pgBouncer.
    ///
    /// # Errors
    /// [`Error::Storage`] when pgBouncer or the server is unavailable.
    pub async fn new() -> Result<Self> {
        let bouncer = shared_pgbouncer()?;
        let schema = TestSchema::new().await?;
        let storage = PostgresStorage::connect_with(
            bouncer.url(),
            PostgresOptions::new()
                .schema(schema.schema())
                .max_connections(4)
                .test_clock(true)
                .pgbouncer_transaction_mode(Some(schema.url())),
        )
        .await?;
        Ok(PgBouncerHarness { schema, storage })
    }

    /// The storage behind pgBouncer.
    pub fn storage(&self) -> &PostgresStorage {
        &self.storage
    }

    /// The schema, reached directly (for setup, the test clock and inspection).
    pub fn direct(&self) -> &TestSchema {
        &self.schema
    }
}

#[async_trait]
impl ConformanceHarness for PgBouncerHarness {
    async fn setup() -> Self {
        match PgBouncerHarness::new().await {
            Ok(h) => h,
            Err(e) => panic!("pgbouncer conformance setup: {e}"),
        }
    }

    fn storage(&self) -> DynStorage {
        Arc::new(self.storage.clone())
    }

    async fn advance(&self, by: Duration) {
        if let Err(e) = self.schema.advance(by).await {
            panic!("pgbouncer conformance advance: {e}");
        }
        // The clock moved under the storage behind pgBouncer too: wake its workers.
        self.storage.wake_local();
    }

    /// Written over the direct URL, like the schema's setup and test clock (see
    /// [`TestSchema::finish_out_of_band`]).
    async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> bool {
        if let Err(e) = self.schema.finish_out_of_band(job, status).await {
            panic!("pgbouncer conformance out-of-band write: {e}");
        }
        true
    }

    async fn teardown(self) {
        self.storage.pool().close().await;
        if let Err(e) = self.schema.drop_schema().await {
            panic!("pgbouncer conformance teardown: {e}");
        }
    }
}

/// The lock file that serializes package installs across test processes (the same path
/// as the dashboard's browser tests use).
const APT_LOCK: &str = "/tmp/durable-jobs-apt.lock";

/// The pgBouncer binary, installed first when it is missing and we are root.
fn binary() -> Result<PathBuf, String> {
    if let Some(found) = find_binary() {
        return Ok(found);
    }
    if !is_root() {
        return Err(format!(
            "pgbouncer is not installed (looked for {DEBIAN_BINARY} and `pgbouncer` on PATH) \
             and the tests do not run as root, so they cannot install it: install the \
             Debian package `{PGBOUNCER_PACKAGE}` (`apt-get install {PGBOUNCER_PACKAGE}`)"
        ));
    }
    // Test binaries run tests on many threads: one installs, the others wait and look
    // again. (Other test processes may install at the same time; apt waits for its lock.)
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = find_binary() {
        return Ok(found);
    }
    let apt = |args: &[&str]| -> Result<(), String> {
        // `flock` serializes installs across test processes (nextest runs each test in
        // one of its own; the dashboard's tests install chromium under the same lock),
        // since `apt-get update` fails rather than waits on a held lists lock.
        let out = Command::new("flock")
            .args([
                APT_LOCK,
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=600",
                "-q",
                "-y",
            ])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "pgbouncer is not installed and apt-get could not run ({e}): install \
                     the Debian package `{PGBOUNCER_PACKAGE}`"
                )
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed while installing the Debian package \
                 `{PGBOUNCER_PACKAGE}`: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    apt(&["update"])?;
    apt(&["install", "--no-install-recommends", PGBOUNCER_PACKAGE])?;
    find_binary().ok_or_else(|| {
        format!(
            "apt-get installed `{PGBOUNCER_PACKAGE}` but no pgbouncer binary was found at \
             {DEBIAN_BINARY} or on PATH"
        )
    })
}

fn find_binary() -> Option<PathBuf> {
    let debian = PathBuf::from(DEBIAN_BINARY);
    if debian.is_file() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Splits a `postgres://user[:password]@host[:port][/database][?...]` URL. Percent
/// escapes are decoded in the user and password.
fn parse_url(url: &str) -> Result<Server, String> {
    let bad = |why: &str| format!("cannot put pgbouncer in front of `{url}`: {why}");
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("expected a postgres:// URL"))?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("expected a user name (user@host)"))?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (decode(u), Some(decode(p))),
        None => (decode(userinfo), None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().map_err(|_| bad("expected a numeric port"))?,
        ),
        None => (hostport.to_string(), 5432),
    };
    if host.is_empty() || user.is_empty() {
        return Err(bad("expected a host and a user name"));
    }
    Ok(Server {
        host,
        port,
        database: if database.is_empty() {
            user.clone()
        } else {
            database.to_string()
        },
        user,
        password,
    })
}

/// Decodes `%XX` escapes (anything malformed is kept as written).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A value quoted for a libpq-style connection string in pgBouncer's `[databases]`.
fn conn_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The configuration: every database name maps to the same database on the server,
/// transaction pooling, trust authentication for clients (the server still checks the
/// password given in the URL), and no `ignore_startup_parameters`, so a client that
/// sends `extra_float_digits` is refused as a default pgBouncer refuses it.
fn config(server: &Server, port: u16, pool_size: u32, dir: &Path) -> String {
    let mut target = format!(
        "host={} port={} user={}",
        conn_value(&server.host),
        server.port,
        conn_value(&server.user)
    );
    if let Some(p) = &server.password {
        target.push_str(&format!(" password={}", conn_value(p)));
    }
    format!(
        "[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
logfile =
pidfile =
",
        userlist = dir.join("userlist.txt").display(),
    )
}

/// The user list for `auth_file` (trust only needs the name to be listed).
fn userlist(server: &Server) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        server.user.replace('"', "\"\""),
        server
            .password
            .as_deref()
            .unwrap_or("")
            .replace('"', "\"\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_server_parts() {
        assert_eq!(
            parse_url("postgres://postgres@127.0.0.1:5432/postgres"),
            Ok(Server {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                password: None,
                database: "postgres".into(),
            })
        );
        assert_eq!(
            parse_url("postgresql://app:p%40ss@db/app_db?sslmode=disable"),
            Ok(Server {
                host: "db".into(),
                port: 5432,
                user: "app".into(),
                password: Some("p@ss".into()),
                database: "app_db".into(),
            })
        );
        assert!(parse_url("mysql://x@y/z").is_err());
        assert!(parse_url("postgres://host-only:5432/db").is_err());
        assert!(parse_url("postgres://u@h:port/db").is_err());
    }

    #[test]
    fn config_quotes_values() {
        let server = Server {
            host: "h".into(),
            port: 1,
            user: "o'neil".into(),
            password: Some("s3cret".into()),
            database: "d".into(),
        };
        let ini = config(&server, 7, 3, Path::new("/tmp/x"));
        assert!(ini.contains("* = host='h' port=1 user='o\\'neil' password='s3cret'"));
        assert!(ini.contains("pool_mode = transaction"));
        assert!(ini.contains("default_pool_size = 3"));
        assert!(!ini.contains("ignore_startup_parameters"));
        assert_eq!(userlist(&server), "\"o'neil\" \"s3cret\"\n");
    }
}
