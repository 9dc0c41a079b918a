//! `dashboard`: serves the web dashboard (the `durable-jobs-dashboard` crate's router)
//! over the database, until Ctrl-C or SIGTERM.

use crate::cli::DashboardArgs;
use crate::database::{self, Target};
use crate::error::CliError;
use crate::output;
use durable_jobs_dashboard::{BasicAuth, DashboardOptions};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The environment variable holding the basic-auth user name.
pub const USER_ENV: &str = "DURABLE_JOBS_DASHBOARD_USER";
/// The environment variable holding the basic-auth password.
pub const PASSWORD_ENV: &str = "DURABLE_JOBS_DASHBOARD_PASSWORD";

/// `dashboard [--listen ADDR] [--read-only]`.
pub async fn run(target: &Target, timeout: Duration, args: DashboardArgs) -> Result<(), CliError> {
    let addr = listen_addr(&args.listen)?;
    let auth = auth_from_env()?;
    let db = database::open_existing(target, timeout).await?;
    if auth.is_none() && !addr.ip().is_loopback() {
        output::note(&format!(
            "warning: serving on {addr} without authentication: anyone who reaches it can \
             {}; set {USER_ENV} and {PASSWORD_ENV}",
            if args.read_only {
                "read every job"
            } else {
                "retry, cancel and delete jobs"
            }
        ));
    }
    let options = DashboardOptions {
        read_only: args.read_only,
        basic_auth: auth.clone(),
        ..DashboardOptions::default()
    };
    output::print(&format!(
        "dashboard for {} on http://{addr}/{}{} (Ctrl-C stops it)\n",
        target.describe(),
        if args.read_only { ", read-only" } else { "" },
        auth.as_ref()
            .map(|a| format!(", basic auth as `{}`", a.username()))
            .unwrap_or_default()
    ));
    let served = durable_jobs_dashboard::serve(db.queue.clone(), addr, options).await;
    db.close().await;
    served.map_err(|e| CliError::Failed(e.to_string()))
}

fn listen_addr(listen: &str) -> Result<SocketAddr, CliError> {
    let bad = |why: String| {
        CliError::Usage(format!(
            "--listen `{listen}`: {why}; expected HOST:PORT, like 127.0.0.1:8080 or [::1]:8080"
        ))
    };
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A host name (localhost:8080) resolves to its first address.
    listen
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

fn auth_from_env() -> Result<Option<BasicAuth>, CliError> {
    let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (read(USER_ENV), read(PASSWORD_ENV)) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => BasicAuth::new(user, password)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("{USER_ENV}/{PASSWORD_ENV}: {e}"))),
        (Some(_), None) => Err(CliError::Usage(format!(
            "{USER_ENV} is set but {PASSWORD_ENV} is not: set both for basic auth, or neither"
        ))),
        (None, Some(_)) => Err(CliError::Usage(format!(
            "{PASSWORD_ENV} is set but {USER_ENV} is not: set both for basic auth, or neither"
        ))),
    }
}
