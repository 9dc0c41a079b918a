//! Throwaway PostgreSQL clusters: `initdb` and `pg_ctl` in a temporary directory on a
//! free port. The test harness starts one when no server runs; a test that must stop or
//! restart a server (an outage, a crash) starts its own, never touching a shared server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A PostgreSQL cluster this process started, in its own directory on its own port.
/// Dropping it stops the server and deletes its files; a watchdog does the same if the
/// process dies first (even by SIGKILL).
#[derive(Debug)]
pub struct ThrowawayCluster {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
    url: String,
    running: bool,
}

/// Runs `cmd` with its program resolved; as root, through `runuser -u postgres` since
/// PostgreSQL refuses to run as root.
fn pg_command(program: &str, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl ThrowawayCluster {
    /// Creates a cluster with `initdb` (trust auth, user `postgres`, fsync off) on a free
    /// port and starts it.
    ///
    /// # Errors
    /// What failed, e.g. `initdb` not found: install the PostgreSQL server binaries
    /// (Debian: `postgresql`) and put them on PATH.
    pub fn start() -> Result<Self, String> {
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir: PathBuf =
            std::env::temp_dir().join(format!("durable-jobs-pg-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let data = dir.join("data");
        if as_root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(&dir);
                    c
                },
                "chown the cluster directory to postgres",
            )?;
        }
        let mut initdb = pg_command("initdb", as_root);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        let mut cluster = ThrowawayCluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            data,
            port,
            as_root,
            running: false,
        };
        cluster.start_again()?;
        cluster.watch()?;
        Ok(cluster)
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open connections are cut), keeping its data.
    ///
    /// # Errors
    /// `pg_ctl`'s output when it fails.
    pub fn stop(&mut self) -> Result<(), String> {
        let mut stop = pg_command("pg_ctl", self.as_root);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(stop, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port and data (after [`Self::stop`]).
    ///
    /// # Errors
    /// `pg_ctl`'s output when it fails.
    pub fn start_again(&mut self) -> Result<(), String> {
        let mut start = pg_command("pg_ctl", self.as_root);
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=200",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// Starts a watchdog that outlives this process: once the process is gone (even by
    /// SIGKILL), it stops the cluster and removes its files.
    fn watch(&self) -> Result<(), String> {
        let stop = if self.as_root {
            "runuser -u postgres -- pg_ctl"
        } else {
            "pg_ctl"
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D '{data}' -m immediate stop; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("start the cluster watchdog: {e}"))
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        if self.running {
            let mut stop = pg_command("pg_ctl", self.as_root);
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = run(stop, "pg_ctl stop");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
