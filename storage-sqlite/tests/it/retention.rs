//! The SQLite purge runs in steps, each its own transaction on the writer's background
//! lane: what a failing step does to the steps before it.

use crate::TempDb;
use durable_jobs::testing::retention_conformance::completed_together;
use durable_jobs::{DynStorage, JobId, ManualClock, RetentionBatch, RetentionPolicy};
use rusqlite::Connection;
use std::sync::Arc;
use std::time::Duration;

/// The purge's step (`retention::STEP` in the crate): the tests below place a failing
/// job in the first or the second step by finishing the steps' jobs at different times.
const STEP: usize = 100;

async fn exists(s: &DynStorage, id: JobId) -> bool {
    s.get_job(id).await.expect("get_job").is_some()
}

/// A SQLite file holding two steps' worth of finished jobs, the first step's finished a
/// minute before the second's, both past the default retention, and a retention batch
/// larger than both.
struct TwoSteps {
    db: TempDb,
    s: DynStorage,
    first: Vec<JobId>,
    second: Vec<JobId>,
    batch: RetentionBatch,
}

impl TwoSteps {
    async fn new() -> Self {
        let db = TempDb::fresh();
        let clock = ManualClock::new();
        let s: DynStorage = Arc::new(db.open(&clock).await);
        let first = completed_together(&s, STEP).await;
        clock.advance(Duration::from_secs(60));
        let second = completed_together(&s, 50).await;
        clock.advance(Duration::from_secs(3 * 24 * 3600));
        let batch = RetentionPolicy::default().batch(s.now().await.expect("now"), 1000);
        TwoSteps {
            db,
            s,
            first,
            second,
            batch,
        }
    }

    /// A trigger that makes deleting job `id` fail, as a constraint or a full disk
    /// would, until [`TwoSteps::allow`].
    fn refuse(&self, id: JobId) {
        let conn = Connection::open(self.db.path()).expect("open raw");
        conn.execute_batch(&format!(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON durable_jobs WHEN old.id = {id}
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        ))
        .expect("create the trigger");
    }

    fn allow(&self) {
        let conn = Connection::open(self.db.path()).expect("open raw");
        conn.execute_batch("DROP TRIGGER refuse_delete")
            .expect("drop the trigger");
    }

    /// One retention pass of the batch.
    async fn purge(&self) -> durable_jobs::Result<durable_jobs::RetentionPurged> {
        self.s.purge_retained(self.batch).await
    }
}

/// A step that fails after earlier steps committed: the pass reports what the committed
/// steps deleted, the failed step deletes nothing, and the next pass (once the cause is
/// gone) deletes the rest.
#[tokio::test]
async fn a_failing_later_step_reports_what_the_earlier_steps_deleted() {
    let t = TwoSteps::new().await;
    t.refuse(t.second[20]);
    let p = t.purge().await.expect("the first step committed");
    assert_eq!((p.roots, p.completed), (STEP as u64, STEP as u64));
    for id in &t.first {
        assert!(
            !exists(&t.s, *id).await,
            "job {id} of the first step is gone"
        );
    }
    for id in &t.second {
        assert!(exists(&t.s, *id).await, "job {id} of the failed step stays");
    }

    t.allow();
    let p = t.purge().await.expect("the next pass");
    assert_eq!((p.roots, p.completed), (50, 50));
    for id in &t.second {
        assert!(!exists(&t.s, *id).await, "job {id} is gone");
    }
}

/// A first step that fails is the pass's error: nothing was deleted to report.
#[tokio::test]
async fn a_failing_first_step_is_the_pass_s_error() {
    let t = TwoSteps::new().await;
    t.refuse(t.first[7]);
    let err = t.purge().await.expect_err("the first step failed");
    assert!(
        err.to_string().contains("refused by the test"),
        "the cause is in the error: {err}"
    );
    for id in t.first.iter().chain(&t.second) {
        assert!(exists(&t.s, *id).await, "job {id} stays");
    }
}
