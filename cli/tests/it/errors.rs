//! Bad usage that needs no database: exit 2 and one line naming what to fix.

use crate::harness::{run, run_env};

#[test]
fn no_database_is_a_usage_error() {
    let line = run(&["status"]).fails(2);
    assert!(
        line.contains("--database") && line.contains("DATABASE_URL"),
        "{line}"
    );
    let line = run_env(&["status"], &[("DATABASE_URL", "")]).fails(2);
    assert!(line.contains("--database"), "{line}");
}

#[test]
fn malformed_urls_are_usage_errors() {
    for url in [
        "mysql://root:pw@localhost/app",
        "jobs.db",
        "sqlite:",
        "sqlite::memory:",
        "postgres://postgres@127.0.0.1:notaport/postgres",
        "postgres://postgres@127.0.0.1:5432/db?sslmode=bogus",
    ] {
        let out = run(&["--database", url, "status"]);
        let line = out.fails(2);
        assert!(!line.contains("pw@"), "the password leaked: {line}");
        assert!(
            line.contains("URL") || line.contains("sqlite:"),
            "{url}: {line}"
        );
    }
    let line = run(&["--database", "sqlite:jobs.db", "--schema", "s", "status"]).fails(2);
    assert!(line.contains("--schema"), "{line}");
    let line = run(&[
        "--database",
        "postgres://postgres@127.0.0.1/postgres",
        "--schema",
        "bad-schema;",
        "status",
    ])
    .fails(2);
    assert!(line.contains("--schema"), "{line}");
}

#[test]
fn clap_usage_errors_are_one_line_with_exit_2() {
    for args in [
        vec!["no-such-command"],
        vec!["jobs", "show"],
        vec!["jobs", "retry"],
        vec!["jobs", "list", "--limit", "0"],
        vec!["jobs", "list", "--limit", "many"],
        vec!["--connect-timeout", "fast", "status"],
        vec!["jobs", "purge", "--older-than", "7x"],
        vec!["enqueue", "t", "--payload", "{\"a\":"],
        vec!["signal", "1", "go", "--payload", "nope"],
    ] {
        run(&args).fails(2);
    }
}

#[test]
fn help_and_version_succeed() {
    let help = run(&["--help"]).ok();
    for command in [
        "migrate",
        "status",
        "jobs",
        "enqueue",
        "signal",
        "queues",
        "schedules",
        "workers",
        "dashboard",
    ] {
        assert!(
            help.stdout.contains(command),
            "help lacks {command}:\n{}",
            help.stdout
        );
    }
    assert!(run(&["jobs", "--help"]).ok().stdout.contains("purge"));
    assert!(run(&["--version"]).ok().stdout.starts_with("durable-jobs "));
}
