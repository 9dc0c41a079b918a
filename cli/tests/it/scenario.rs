//! Checks every command against a seeded database; each backend's module runs them on
//! its own fresh database.

use crate::harness::{DbArgs, Seeded};
use serde_json::Value;

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

fn status_of(db: &DbArgs, id: i64) -> String {
    let out = db.run(&["--json", "jobs", "show", &id.to_string()]).ok();
    out.json()["job"]["status"].as_str().unwrap().to_string()
}

/// `status`, `jobs list` with every filter, `jobs show`, `queues list`, `schedules list`
/// and `workers`, as tables and as JSON.
pub fn read_commands(db: &DbArgs, s: &Seeded) {
    // status: counts per queue and status, the paused queue, workers, schedules.
    let status = db.run(&["--json", "status"]).ok().json();
    let queues = status["queues"].as_array().unwrap();
    let default = queues.iter().find(|q| q["queue"] == "default").unwrap();
    assert_eq!(default["counts"]["completed"], 4, "{status:#}"); // echo, workflow, 2 children
    assert_eq!(default["counts"]["failed"], 1);
    assert_eq!(default["counts"]["retrying"], 1);
    assert_eq!(default["counts"]["waiting"], 1);
    assert_eq!(default["counts"]["cancelled"], 1);
    assert_eq!(default["paused"], false);
    let emails = queues.iter().find(|q| q["queue"] == "emails").unwrap();
    assert_eq!(emails["paused"], true);
    assert_eq!(emails["counts"]["pending"], 1);
    let held = queues.iter().find(|q| q["queue"] == "held").unwrap();
    assert_eq!(held["counts"]["running"], 1);
    assert_eq!(status["paused_queues"], serde_json::json!(["emails"]));
    let workers = status["workers"].as_array().unwrap();
    let dead: Vec<(&str, bool)> = workers
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w["dead"].as_bool().unwrap()))
        .collect();
    assert_eq!(dead, [("alive-worker", false), ("dead-worker", true)]);
    assert_eq!(status["schedules"][0]["name"], "nightly-report");

    let text = db.run(&["status"]).ok().stdout;
    for needle in [
        "Queues (",
        "default",
        "emails",
        "Paused queues: emails",
        "alive-worker",
        "dead",
        "nightly-report",
        "cron 0 3 * * *",
        "COMPLETED",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }

    // jobs list: everything, then each filter.
    let all = db.run(&["--json", "jobs", "list"]).ok().json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 10, "{all:#}");
    assert_eq!(all["next_after"], Value::Null);
    let failed = db
        .run(&["--json", "jobs", "list", "--status", "failed"])
        .ok()
        .json();
    assert_eq!(ids(&failed["jobs"]), [s.failed]);
    let two = db
        .run(&["--json", "jobs", "list", "--status", "failed,cancelled"])
        .ok()
        .json();
    assert_eq!(ids(&two["jobs"]), {
        let mut v = vec![s.failed, s.cancelled];
        v.sort();
        v
    });
    let emails = db
        .run(&["--json", "jobs", "list", "--queue", "emails"])
        .ok()
        .json();
    assert_eq!(ids(&emails["jobs"]), [s.pending]);
    let charges = db
        .run(&["--json", "jobs", "list", "--task", "charge"])
        .ok()
        .json();
    assert_eq!(ids(&charges["jobs"]), [s.failed]);
    let vip = db
        .run(&["--json", "jobs", "list", "--tag", "vip"])
        .ok()
        .json();
    assert_eq!(ids(&vip["jobs"]), [s.completed]);
    let children = db
        .run(&[
            "--json",
            "jobs",
            "list",
            "--parent",
            &s.workflow.to_string(),
        ])
        .ok()
        .json();
    assert_eq!(ids(&children["jobs"]), s.children);
    // Keyset pagination: a full page names where the next one starts.
    let page = db
        .run(&["--json", "jobs", "list", "--limit", "3"])
        .ok()
        .json();
    let first = ids(&page["jobs"]);
    assert_eq!(first.len(), 3);
    assert_eq!(page["next_after"], first[2]);
    let next = db
        .run(&[
            "--json",
            "jobs",
            "list",
            "--limit",
            "3",
            "--after",
            &first[2].to_string(),
        ])
        .ok()
        .json();
    assert!(ids(&next["jobs"]).iter().all(|id| *id > first[2]));
    let table = db.run(&["jobs", "list", "--limit", "3"]).ok();
    assert!(table.stdout.starts_with("ID "), "{table:#?}");
    assert_eq!(table.stdout.lines().count(), 4);
    assert!(table.stderr.contains(&format!("--after {}", first[2])));
    let none = db.run(&["jobs", "list", "--task", "nothing-like-it"]).ok();
    assert_eq!(none.stdout, "no jobs match\n");

    // jobs show: the workflow's checkpoints and children.
    let shown = db
        .run(&["--json", "jobs", "show", &s.workflow.to_string()])
        .ok()
        .json();
    assert_eq!(shown["job"]["id"], s.workflow);
    assert_eq!(shown["job"]["status"], "completed");
    assert_eq!(shown["job"]["payload"], 1299);
    assert_eq!(shown["job"]["result"]["receipt"], "charged 1299");
    assert_eq!(shown["job"]["progress"]["step"], "reserved");
    let text = db.run(&["jobs", "show", &s.workflow.to_string()]).ok();
    assert!(
        text.stdout.contains("\nprogress:\n") && text.stdout.contains("\"reserved\""),
        "{}",
        text.stdout
    );
    let kinds: Vec<(&str, &str)> = shown["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("charge", "call/step"),
            ("reserve", "call/step"),
            ("spawn:echo", "children"),
            ("join:echo", "join")
        ],
        "{shown:#}"
    );
    assert_eq!(ids(&shown["children"]), s.children);
    assert!(
        shown["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["created_at"].is_string()),
        "{shown:#}"
    );
    let outcomes: Vec<&str> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["suspended", "completed"], "{shown:#}");
    let child = db
        .run(&["--json", "jobs", "show", &s.children[0].to_string()])
        .ok()
        .json();
    assert_eq!(child["job"]["parent_id"], s.workflow);
    let vip = db
        .run(&["--json", "jobs", "show", &s.completed.to_string()])
        .ok()
        .json();
    assert_eq!(vip["job"]["tags"], serde_json::json!(["vip"]));
    let text = db
        .run(&["jobs", "show", &s.workflow.to_string()])
        .ok()
        .stdout;
    let head = format!("job {}  completed", s.workflow);
    for needle in [
        head.as_str(),
        "checkout",
        "charged 1299",
        "checkpoints (4):",
        "spawn:echo",
        "attempts (2):",
        "suspended",
        "children (2):",
        "payload:",
    ] {
        assert!(text.contains(needle), "show lacks {needle:?}:\n{text}");
    }
    let failed = db
        .run(&["--json", "jobs", "show", &s.failed.to_string()])
        .ok()
        .json();
    assert!(failed["job"]["last_error"]
        .as_str()
        .unwrap()
        .contains("card declined"));
    assert_eq!(failed["attempts"][0]["outcome"], "failed");
    assert!(failed["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("card declined"));
    let retrying = db
        .run(&["--json", "jobs", "show", &s.retrying.to_string()])
        .ok()
        .json();
    assert_eq!(retrying["attempts"][0]["outcome"], "retrying");
    let running = db
        .run(&["jobs", "show", &s.running.to_string()])
        .ok()
        .stdout;
    assert!(running.contains("held by ghost-worker"), "{running}");
    assert!(running.contains("running"), "{running}");

    // queues, schedules, workers.
    let queues = db.run(&["--json", "queues", "list"]).ok().json();
    assert!(queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["queue"] == "emails" && q["paused"] == true));
    assert!(db.run(&["queues", "list"]).ok().stdout.contains("emails"));
    let schedules = db.run(&["--json", "schedules", "list"]).ok().json();
    let nightly = &schedules["schedules"][0];
    assert_eq!(nightly["name"], "nightly-report");
    assert_eq!(nightly["task"], "echo");
    assert_eq!(nightly["paused"], false);
    assert_eq!(nightly["when"], "cron 0 3 * * *");
    assert!(nightly["next_tick"].is_string());
    let text = db.run(&["schedules", "list"]).ok().stdout;
    assert!(
        text.contains("nightly-report") && text.contains("active"),
        "{text}"
    );
    let workers = db.run(&["--json", "workers"]).ok().json();
    assert_eq!(workers["workers"].as_array().unwrap().len(), 2);
    assert_eq!(workers["workers"][0]["host"], "test-host");
    let text = db.run(&["workers"]).ok().stdout;
    assert!(text.contains("2 workers: 1 alive, 1 dead"), "{text}");

    // Unknown ids and names.
    db.run(&["jobs", "show", "987654321"]).fails(1);
    db.run(&["--json", "jobs", "show", "987654321"]).fails(1);
}

/// `jobs retry|cancel|delete|purge`, with their refusals and unknown ids.
pub fn job_actions(db: &DbArgs, s: &Seeded) {
    let id = |i: i64| i.to_string();

    // retry: only failed or cancelled jobs.
    let out = db.run(&["jobs", "retry", &id(s.failed)]).ok();
    assert!(out.stdout.contains(&format!("retried job {}", s.failed)));
    assert_eq!(status_of(db, s.failed), "pending");
    let line = db.run(&["jobs", "retry", &id(s.completed)]).fails(1);
    assert!(line.contains("only failed or cancelled"), "{line}");
    let line = db.run(&["jobs", "retry", "987654321"]).fails(1);
    assert!(line.contains("not found"), "{line}");
    let out = db.run(&[
        "--json",
        "jobs",
        "retry",
        &id(s.cancelled),
        "--keep-checkpoints",
    ]);
    let report = out.ok().json();
    assert_eq!(report["done"], serde_json::json!([s.cancelled]));
    assert_eq!(status_of(db, s.cancelled), "pending");

    // A mix: the good one is done, the bad one is reported, and the exit says so.
    let out = db.run(&["--json", "jobs", "cancel", &id(s.cancelled), "987654321"]);
    assert_eq!(out.code, 1, "{out:#?}");
    let report = out.json();
    assert_eq!(report["done"], serde_json::json!([s.cancelled]));
    assert_eq!(report["errors"][0]["id"], 987654321);
    assert_eq!(report["errors"][0]["kind"], "not_found");
    assert_eq!(status_of(db, s.cancelled), "cancelled");

    // cancel: refused for a finished job; a waiting workflow can be cancelled.
    let line = db.run(&["jobs", "cancel", &id(s.completed)]).fails(1);
    assert!(line.contains("already completed"), "{line}");
    db.run(&["jobs", "cancel", &id(s.waiting)]).ok();
    assert_eq!(status_of(db, s.waiting), "cancelled");

    // delete: refused while running, done otherwise.
    let line = db.run(&["jobs", "delete", &id(s.running)]).fails(1);
    assert!(line.contains("is running"), "{line}");
    assert_eq!(status_of(db, s.running), "running");
    db.run(&["jobs", "delete", &id(s.pending)]).ok();
    db.run(&["jobs", "show", &id(s.pending)]).fails(1);
    db.run(&["jobs", "delete", &id(s.pending)]).fails(1);

    // purge: nothing is an hour old; everything finished is older than zero seconds.
    let out = db
        .run(&["--json", "jobs", "purge", "--older-than", "1h"])
        .ok()
        .json();
    assert_eq!(out["purged"], 0);
    let out = db
        .run(&[
            "--json",
            "jobs",
            "purge",
            "--older-than",
            "0s",
            "--status",
            "cancelled",
        ])
        .ok()
        .json();
    assert_eq!(out["purged"], 2, "{out:#}"); // the cancelled job and the waiting workflow
    db.run(&["jobs", "show", &id(s.waiting)]).fails(1);
    db.run(&["jobs", "show", &id(s.completed)]).ok();
    let out = db.run(&["jobs", "purge", "--older-than", "0s"]).ok();
    assert!(out.stdout.starts_with("purged 4 finished jobs"), "{out:#?}");
    db.run(&["jobs", "show", &id(s.completed)]).fails(1);
    db.run(&["jobs", "show", &id(s.running)]).ok();

    // Bad durations and statuses are usage errors.
    let line = db.run(&["jobs", "purge", "--older-than", "7x"]).fails(2);
    assert!(line.contains("unknown unit `x`"), "{line}");
    db.run(&["jobs", "purge", "--older-than", "30"]).fails(2);
    db.run(&["jobs", "purge"]).fails(2);
    db.run(&["jobs", "purge", "--older-than", "1d", "--status", "running"])
        .fails(2);
    db.run(&["jobs", "list", "--status", "done"]).fails(2);
    db.run(&["jobs", "show", "not-a-number"]).fails(2);
}

/// `enqueue`, `signal`, `queues pause|resume` and `schedules pause|resume|remove`.
pub fn writes(db: &DbArgs, s: &Seeded) {
    // enqueue: a note on stderr that nothing checked the payload; options stored.
    let out = db
        .run(&[
            "--json",
            "enqueue",
            "send_report",
            "--payload",
            r#"{"to": "ops@example.com"}"#,
            "--queue",
            "reports",
            "--priority",
            "-5",
            "--delay",
            "2h",
            "--key",
            "daily-report",
        ])
        .ok();
    assert!(out.stderr.contains("not checked"), "{out:#?}");
    let enqueued = out.json();
    assert_eq!(enqueued["created"], true);
    let id = enqueued["id"].as_i64().unwrap();
    let job = db
        .run(&["--json", "jobs", "show", &id.to_string()])
        .ok()
        .json();
    assert_eq!(job["job"]["task"], "send_report");
    assert_eq!(job["job"]["queue"], "reports");
    assert_eq!(job["job"]["priority"], -5);
    assert_eq!(job["job"]["payload"]["to"], "ops@example.com");
    assert_eq!(job["job"]["dedupe_key"], "daily-report");
    assert_eq!(job["job"]["status"], "pending");
    // The same key again: the existing job, nothing new.
    let again = db
        .run(&["enqueue", "send_report", "--key", "daily-report"])
        .ok();
    assert!(
        again
            .stdout
            .contains(&format!("job {id} already holds key")),
        "{again:#?}"
    );
    let plain = db.run(&["enqueue", "ping"]).ok();
    assert!(plain.stdout.starts_with("enqueued job "), "{plain:#?}");
    // Bad input.
    let line = db.run(&["enqueue", "t", "--payload", "{not json"]).fails(2);
    assert!(line.contains("not valid JSON"), "{line}");
    db.run(&["enqueue", "t", "--delay", "soon"]).fails(2);
    db.run(&["enqueue", "bad task name"]).fails(2);
    db.run(&["enqueue", "t", "--queue", "bad queue"]).fails(2);

    // signal: the waiting workflow gets it; unknown and finished jobs are refused.
    db.run(&[
        "signal",
        &s.waiting.to_string(),
        "go",
        "--payload",
        r#"{"ok": true}"#,
    ])
    .ok();
    let line = db.run(&["signal", "987654321", "go"]).fails(1);
    assert!(line.contains("not found"), "{line}");
    let line = db.run(&["signal", &s.completed.to_string(), "go"]).fails(1);
    assert!(line.contains("finished"), "{line}");
    db.run(&["signal", &s.waiting.to_string(), "go", "--payload", "{"])
        .fails(2);

    // queues.
    let out = db.run(&["queues", "resume", "emails"]).ok();
    assert!(out.stdout.contains("resumed queue emails"), "{out:#?}");
    let out = db
        .run(&["--json", "queues", "pause", "reports"])
        .ok()
        .json();
    assert_eq!(out["changed"], true);
    let status = db.run(&["--json", "status"]).ok().json();
    assert_eq!(status["paused_queues"], serde_json::json!(["reports"]));
    let out = db.run(&["queues", "pause", "reports"]).ok();
    assert!(out.stdout.contains("already paused"), "{out:#?}");
    db.run(&["queues", "pause", "bad queue!"]).fails(2);

    // schedules.
    db.run(&["schedules", "pause", "nightly-report"]).ok();
    let list = db.run(&["--json", "schedules", "list"]).ok().json();
    assert_eq!(list["schedules"][0]["paused"], true);
    db.run(&["schedules", "resume", "nightly-report"]).ok();
    let list = db.run(&["--json", "schedules", "list"]).ok().json();
    assert_eq!(list["schedules"][0]["paused"], false);
    let line = db.run(&["schedules", "pause", "no-such-schedule"]).fails(1);
    assert!(line.contains("no schedule named"), "{line}");
    db.run(&["schedules", "remove", "nightly-report"]).ok();
    let list = db.run(&["--json", "schedules", "list"]).ok().json();
    assert_eq!(list["schedules"], serde_json::json!([]));
    db.run(&["schedules", "remove", "nightly-report"]).fails(1);
    assert_eq!(db.run(&["schedules", "list"]).ok().stdout, "no schedules\n");
}

/// `jobs delete` by filter: ids or filters, a count without `--yes`, batches with it;
/// never a running job; a workflow's children go with it; metadata set by `enqueue
/// --meta` is listed and deleted by `--meta`.
pub fn delete_by_filter(db: &DbArgs, s: &Seeded) {
    let id = |i: i64| i.to_string();
    // Neither ids nor filters, or both: usage errors.
    db.run(&["jobs", "delete"]).fails(2);
    db.run(&["jobs", "delete", &id(s.failed), "--status", "failed"])
        .fails(2);
    db.run(&["jobs", "delete", "--meta", "no-equals-sign"])
        .fails(2);

    // Without --yes, a count and nothing deleted.
    let line = db.run(&["jobs", "delete", "--status", "failed"]).fails(1);
    assert!(line.contains("1 job match"), "{line}");
    assert!(line.contains("--yes"), "{line}");
    db.run(&["jobs", "show", &id(s.failed)]).ok();
    let out = db
        .run(&["--json", "jobs", "delete", "--status", "failed", "--yes"])
        .ok()
        .json();
    assert_eq!(out["deleted"], 1, "{out:#}");
    db.run(&["jobs", "show", &id(s.failed)]).fails(1);

    // A running job is never deleted, even by name.
    let out = db
        .run(&["--json", "jobs", "delete", "--status", "running", "--yes"])
        .ok()
        .json();
    assert_eq!(out["deleted"], 0, "{out:#}");
    assert_eq!(status_of(db, s.running), "running");

    // The completed roots go, the workflow with its children, one per batch.
    let out = db
        .run(&[
            "--json",
            "jobs",
            "delete",
            "--status",
            "completed",
            "--batch-size",
            "1",
            "--yes",
        ])
        .ok()
        .json();
    assert_eq!(out["deleted"], 2 + s.children.len(), "{out:#}");
    db.run(&["jobs", "show", &id(s.workflow)]).fails(1);
    for &child in &s.children {
        db.run(&["jobs", "show", &id(child)]).fails(1);
    }
    db.run(&["jobs", "show", &id(s.completed)]).fails(1);

    // Metadata: set at enqueue, listed and deleted by key and value.
    for tenant in ["acme", "globex"] {
        db.run(&[
            "enqueue",
            "echo",
            "--meta",
            &format!("tenant={tenant}"),
            "--meta",
            "n=3",
        ])
        .ok();
    }
    let listed = db
        .run(&["--json", "jobs", "list", "--meta", "tenant=acme"])
        .ok()
        .json();
    let jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{listed:#}");
    assert_eq!(jobs[0]["metadata"]["tenant"], "acme");
    assert_eq!(jobs[0]["metadata"]["n"], 3);
    let shown = db.run(&["jobs", "show", &jobs[0]["id"].to_string()]).ok();
    assert!(shown.stdout.contains(r#""tenant":"acme""#), "{shown:#?}");
    let out = db
        .run(&["--json", "jobs", "delete", "--meta", "n=3", "--yes"])
        .ok()
        .json();
    assert_eq!(out["deleted"], 2, "{out:#}");

    // Older than an hour: nothing here is.
    let out = db
        .run(&["--json", "jobs", "delete", "--older-than", "1h", "--yes"])
        .ok()
        .json();
    assert_eq!(out["deleted"], 0, "{out:#}");
    db.run(&["jobs", "show", &id(s.pending)]).ok();
}
