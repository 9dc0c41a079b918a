//! The `workflow` scenario's peer: underway (crates.io `underway`, durable step functions
//! on PostgreSQL) with the same three no-op steps, on the same server in the same run.
//!
//! underway 0.2 is built on sqlx 0.8, whose SQLite driver cannot share a dependency graph
//! with our rusqlite (both link `sqlite3`), so it runs as a process of its own:
//! bench/underway-peer, built and started with `cargo run --release` on a fresh database,
//! timing itself (from its worker's start to the last workflow's third step) and printing
//! workflows/s. Its build happens before its clock starts.

use crate::cli::Config;
use crate::pgdb::FreshDb;
use std::path::Path;

/// `workflows` three-step underway workflows at `concurrency`; returns workflows/s.
pub async fn workflows(cfg: &Config, workflows: usize, concurrency: usize) -> Result<f64, String> {
    let db = FreshDb::create(&cfg.database_url).await?;
    let out = peer(cfg, &db.url, workflows, concurrency).await;
    db.drop_db().await?;
    out
}

async fn peer(
    cfg: &Config,
    url: &str,
    workflows: usize,
    concurrency: usize,
) -> Result<f64, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("underway-peer/Cargo.toml");
    let mut cmd = tokio::process::Command::new(env!("CARGO"));
    // The rustc of the toolchain that built the bench, named outright: cargo otherwise
    // runs `rustc` from PATH, rustup's proxy, inside each dependency's directory, where a
    // crate's own rust-toolchain.toml (atoi 2.0 pins 1.57.0) picks a toolchain that a
    // machine without automatic installs does not have.
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    if rustc.is_file() {
        cmd.env("RUSTC", rustc);
    }
    let out = cmd
        .args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .arg(url)
        .arg(workflows.to_string())
        .arg(concurrency.to_string())
        .arg(cfg.pool.to_string())
        .arg(cfg.timeout.as_secs().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("start the underway peer ({}): {e}", manifest.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the underway peer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    stdout
        .trim()
        .parse()
        .map_err(|_| format!("the underway peer printed `{}`, not a rate", stdout.trim()))
}
