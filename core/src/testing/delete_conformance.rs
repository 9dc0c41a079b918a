//! Conformance cases for deleting jobs by filter in bounded batches: every filter term,
//! never a running job, and a workflow's children only with their root. The
//! [`crate::conformance_tests`] macro turns them into one test each.

use super::ConformanceHarness;
use crate::job::{JobId, JobStatus, NewJob};
use crate::queue::Queue;
use crate::storage::{
    ClaimedJob, DeletedBatch, DequeueParams, DynStorage, JobFilter, ManualOutcome,
    SpawnChildrenParams,
};
use crate::Error;
use serde_json::json;
use std::time::Duration;

fn params(queue: &str, limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec![queue.into()],
        tasks: Vec::new(),
        limit,
        lease_duration: Duration::from_secs(30),
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    }
}

fn in_queue(queue: &str, payload: i64) -> NewJob {
    let mut j = NewJob::new("t", json!(payload));
    j.queue = queue.into();
    j
}

async fn all_ids(s: &DynStorage) -> Vec<JobId> {
    s.list_jobs(JobFilter {
        limit: Some(10_000),
        ..JobFilter::default()
    })
    .await
    .expect("list")
    .iter()
    .map(|j| j.id)
    .collect()
}

async fn claim_one(s: &DynStorage, queue: &str) -> ClaimedJob {
    let mut got = s.dequeue(params(queue, 1)).await.expect("dequeue");
    assert_eq!(got.len(), 1, "one job of queue {queue} should be claimable");
    got.remove(0)
}

/// One batch deletes at most `limit` matching jobs, by ascending id, and says where the
/// next starts; batches run until none is left; jobs the filter does not match stay.
pub async fn delete_jobs_runs_in_bounded_batches<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut doomed = Vec::new();
    for i in 0..7 {
        doomed.push(s.enqueue(in_queue("a", i)).await.expect("enqueue").id);
    }
    let kept = s.enqueue(in_queue("b", 0)).await.expect("enqueue").id;
    let filter = JobFilter {
        queue: Some("a".into()),
        limit: Some(3),
        ..JobFilter::default()
    };
    let first = s.delete_jobs(filter.clone()).await.expect("delete");
    assert_eq!(
        first,
        DeletedBatch {
            deleted: 3,
            last_id: Some(doomed[2])
        }
    );
    let second = s
        .delete_jobs(JobFilter {
            after_id: first.last_id,
            ..filter.clone()
        })
        .await
        .expect("delete");
    assert_eq!(second.deleted, 3);
    assert_eq!(second.last_id, Some(doomed[5]));
    let mut rest = doomed[6..].to_vec();
    rest.push(kept);
    assert_eq!(all_ids(&s).await, rest);
    // The queue's loop finishes the job in batches of one.
    let queue = Queue::new(s.clone());
    assert_eq!(
        queue.delete_jobs(filter.clone(), 1).await.expect("delete"),
        1
    );
    assert_eq!(all_ids(&s).await, vec![kept]);
    let done = s.delete_jobs(filter.clone()).await.expect("delete");
    assert_eq!(done, DeletedBatch::default(), "nothing left: no next batch");
    assert!(matches!(
        queue.delete_jobs(filter, 0).await,
        Err(Error::InvalidOption {
            option: "batch_size",
            ..
        })
    ));
}

/// Every filter term narrows a delete as it narrows a listing: status, queue, task, tag,
/// metadata and creation time ("older than").
pub async fn delete_jobs_honours_every_filter_term<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let queue = Queue::new(s.clone());
    let old = s.enqueue(in_queue("a", 0)).await.expect("enqueue").id;
    let cutoff = s.now().await.expect("now") + chrono::Duration::seconds(1);
    h.advance(Duration::from_secs(10)).await;
    let finished = s.enqueue(in_queue("a", 1)).await.expect("enqueue").id;
    s.finish_jobs(&[finished], ManualOutcome::Fail("boom".into()))
        .await
        .expect("fail by hand");
    let mut other_task = in_queue("a", 2);
    other_task.task = "u".into();
    let other_task = s.enqueue(other_task).await.expect("enqueue").id;
    let mut tagged = in_queue("a", 3);
    tagged.tags = vec!["eu".into()];
    let tagged = s.enqueue(tagged).await.expect("enqueue").id;
    let mut acme = in_queue("a", 4);
    acme.metadata.insert("tenant".into(), json!("acme"));
    let acme = s.enqueue(acme).await.expect("enqueue").id;
    let other_queue = s.enqueue(in_queue("b", 5)).await.expect("enqueue").id;

    let mut remaining = all_ids(&s).await;
    for (filter, gone) in [
        (
            JobFilter {
                created_before: Some(cutoff),
                ..JobFilter::default()
            },
            old,
        ),
        (
            JobFilter {
                statuses: vec![JobStatus::Failed],
                ..JobFilter::default()
            },
            finished,
        ),
        (
            JobFilter {
                task: Some("u".into()),
                ..JobFilter::default()
            },
            other_task,
        ),
        (
            JobFilter {
                tag: Some("eu".into()),
                ..JobFilter::default()
            },
            tagged,
        ),
        (
            JobFilter {
                metadata: Some(("tenant".into(), json!("acme"))),
                ..JobFilter::default()
            },
            acme,
        ),
        (
            JobFilter {
                queue: Some("b".into()),
                ..JobFilter::default()
            },
            other_queue,
        ),
    ] {
        assert_eq!(
            queue.delete_jobs(filter.clone(), 10).await.expect("delete"),
            1,
            "{filter:?}"
        );
        remaining.retain(|id| *id != gone);
        assert_eq!(all_ids(&s).await, remaining, "{filter:?}");
    }
    assert!(remaining.is_empty());
    assert!(matches!(
        s.delete_jobs(JobFilter {
            metadata: Some(("tenant".into(), json!({"a": 1}))),
            ..JobFilter::default()
        })
        .await,
        Err(Error::InvalidOption {
            option: "metadata",
            ..
        })
    ));
}

/// A running job is never deleted, even when the filter names its status.
pub async fn delete_jobs_never_deletes_a_running_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let running = s.enqueue(in_queue("a", 0)).await.expect("enqueue").id;
    s.enqueue(in_queue("b", 1)).await.expect("enqueue");
    let claimed = claim_one(&s, "a").await;
    assert_eq!(claimed.job.id, running);
    let batch = s
        .delete_jobs(JobFilter {
            statuses: vec![JobStatus::Running, JobStatus::Pending],
            ..JobFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(batch.deleted, 1);
    assert_eq!(all_ids(&s).await, vec![running]);
    // Its lease still holds: the attempt finishes normally.
    s.complete(&claimed.lease, json!("done"))
        .await
        .expect("complete");
}

/// A workflow's child is deleted only with its root: a child never matches on its own
/// while its parent exists; deleting the root takes its whole tree; a tree with a
/// running job is left whole; a child whose parent is gone is a root of its own.
pub async fn delete_jobs_takes_children_only_with_their_root<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let queue = Queue::new(s.clone());
    // A workflow waiting on two pending children, one of which has a child of its own.
    let root = s.enqueue(in_queue("wf", 0)).await.expect("enqueue").id;
    let parent = claim_one(&s, "wf").await;
    assert_eq!(parent.job.id, root);
    let kids = s
        .spawn_children(SpawnChildrenParams {
            lease: &parent.lease,
            key: "0",
            name: "kids",
            jobs: vec![in_queue("kids", 1), in_queue("kids", 2)],
        })
        .await
        .expect("spawn");
    s.suspend(&parent.lease, None).await.expect("suspend");
    let kid = claim_one(&s, "kids").await;
    let grandkids = s
        .spawn_children(SpawnChildrenParams {
            lease: &kid.lease,
            key: "0",
            name: "grandkids",
            jobs: vec![in_queue("grandkids", 3)],
        })
        .await
        .expect("spawn");
    s.suspend(&kid.lease, None).await.expect("suspend");
    let bystander = s.enqueue(in_queue("other", 4)).await.expect("enqueue").id;

    // Children match the filter but their parent exists: none is deleted.
    for statuses in [vec![JobStatus::Pending], vec![JobStatus::Waiting]] {
        let n = queue
            .delete_jobs(
                JobFilter {
                    statuses: statuses.clone(),
                    queue: Some("kids".into()),
                    ..JobFilter::default()
                },
                10,
            )
            .await
            .expect("delete");
        assert_eq!(n, 0, "children of a live parent never match: {statuses:?}");
    }
    assert_eq!(
        queue
            .delete_jobs(
                JobFilter {
                    queue: Some("grandkids".into()),
                    ..JobFilter::default()
                },
                10
            )
            .await
            .expect("delete"),
        0
    );

    // A running grandchild keeps the whole tree.
    let grandkid = claim_one(&s, "grandkids").await;
    assert_eq!(grandkid.job.id, grandkids[0]);
    let waiting_roots = JobFilter {
        statuses: vec![JobStatus::Waiting],
        queue: Some("wf".into()),
        ..JobFilter::default()
    };
    let batch = s.delete_jobs(waiting_roots.clone()).await.expect("delete");
    assert_eq!(
        batch,
        DeletedBatch {
            deleted: 0,
            last_id: Some(root)
        },
        "the root was examined and skipped"
    );
    assert_eq!(all_ids(&s).await.len(), 5);

    // Once nothing in it runs, the root goes with all its descendants.
    s.complete(&grandkid.lease, json!(null))
        .await
        .expect("complete");
    assert_eq!(
        queue.delete_jobs(waiting_roots, 10).await.expect("delete"),
        4,
        "root, two children and a grandchild"
    );
    assert_eq!(all_ids(&s).await, vec![bystander]);
    assert!(s.get_job(kids[1]).await.expect("get").is_none());

    // A child whose parent was deleted by id is a root of its own.
    let lone_root = s.enqueue(in_queue("wf", 5)).await.expect("enqueue").id;
    let lone = claim_one(&s, "wf").await;
    assert_eq!(lone.job.id, lone_root);
    s.spawn_children(SpawnChildrenParams {
        lease: &lone.lease,
        key: "0",
        name: "kids",
        jobs: vec![in_queue("kids", 6)],
    })
    .await
    .expect("spawn");
    s.suspend(&lone.lease, None).await.expect("suspend");
    assert!(s.delete_job(lone_root).await.expect("delete by id"));
    assert_eq!(
        queue
            .delete_jobs(
                JobFilter {
                    queue: Some("kids".into()),
                    ..JobFilter::default()
                },
                10
            )
            .await
            .expect("delete"),
        1
    );
    assert_eq!(all_ids(&s).await, vec![bystander]);
}
