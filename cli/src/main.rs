//! `durable-jobs`: the operator's command line for durable-jobs, on PostgreSQL or SQLite
//! by URL. It uses only the library's public `Queue` and storage APIs, like any
//! application.
//!
//! ```text
//! durable-jobs --database sqlite:jobs.db migrate
//! durable-jobs --database postgres://app@db/app status
//! durable-jobs jobs list --status failed --queue emails
//! durable-jobs jobs show 42 --json
//! durable-jobs jobs retry 42 43 --keep-checkpoints
//! durable-jobs jobs purge --older-than 7d
//! ```
//!
//! Exit codes: 0 on success; 1 when a job, schedule or file is not found, an action is
//! refused, or the database fails; 2 on bad usage. Errors are one line on stderr.

mod cli;
mod command;
mod database;
mod duration;
mod error;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        output::note(&format!(
            "error: internal error ({info}); please report it with the command you ran"
        ));
    }));
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::note(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(error::EXIT_FAILED);
        }
    };
    match runtime.block_on(command::run(cli)) {
        Ok(()) => ExitCode::from(error::EXIT_OK),
        Err(e) => {
            if !e.already_reported() {
                output::note(&format!("error: {e}"));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints clap's help, version or usage error. Usage errors are folded onto one line
/// and exit 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Help asked for is success on stdout; help shown for a missing command is
            // usage, on stderr.
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                output::print_err(&e.render().to_string());
                ExitCode::from(error::EXIT_USAGE)
            } else {
                output::print(&e.render().to_string());
                ExitCode::from(error::EXIT_OK)
            }
        }
        _ => {
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            let mut line = String::new();
            for part in parts {
                if !line.is_empty() {
                    line.push_str(if line.ends_with(':') { " " } else { "; " });
                }
                line.push_str(part);
            }
            output::note(&line);
            ExitCode::from(error::EXIT_USAGE)
        }
    }
}
