//! Conformance cases for job metadata: stored at enqueue, read back on every job read,
//! matched by key and value in listings. The [`crate::conformance_tests`]
//! macro turns them into one test each.

use super::ConformanceHarness;
use crate::job::{JobId, KeyMode, NewJob};
use crate::metadata::Metadata;
use crate::storage::{DequeueParams, DynStorage, JobFilter};
use crate::Error;
use serde_json::{json, Value};
use std::time::Duration;

fn with_metadata(payload: Value, metadata: Value) -> NewJob {
    let mut j = NewJob::new("t", payload);
    j.metadata = crate::metadata::validate_metadata(metadata).expect("an object");
    j
}

fn object(v: Value) -> Metadata {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

async fn ids(s: &DynStorage, filter: JobFilter) -> Vec<JobId> {
    s.list_jobs(filter)
        .await
        .expect("list")
        .iter()
        .map(|j| j.id)
        .collect()
}

fn by_meta(key: &str, value: Value) -> JobFilter {
    JobFilter {
        metadata: Some((key.into(), value)),
        ..JobFilter::default()
    }
}

/// Metadata comes back as it was set (nested values, every JSON type) from `get_job`,
/// `list_jobs`, a claim and a job-key replace; a job without any has an empty object.
pub async fn metadata_is_stored_and_read_back<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let rich = json!({
        "tenant": "acme",
        "n": 7,
        "ok": true,
        "none": null,
        "nested": {"a": [1, "two", {"b": false}]},
        "quote's \"key\".x": "v"
    });
    let a = s
        .enqueue(with_metadata(json!(1), rich.clone()))
        .await
        .expect("enqueue")
        .id;
    // A batch mixing jobs with and without metadata keeps each job's own.
    let batch = s
        .enqueue_many(vec![
            NewJob::new("t", json!(2)),
            with_metadata(json!(3), json!({"tenant": "globex"})),
        ])
        .await
        .expect("enqueue_many");
    let got = s.get_job(a).await.expect("get").expect("exists");
    assert_eq!(got.metadata, object(rich.clone()));
    let plain = s.get_job(batch[0].id).await.expect("get").expect("exists");
    assert!(plain.metadata.is_empty(), "{:?}", plain.metadata);
    let listed = s.list_jobs(JobFilter::default()).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|j| Value::Object(j.metadata.clone()))
            .collect::<Vec<_>>(),
        vec![rich.clone(), json!({}), json!({"tenant": "globex"})]
    );
    let claimed = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 1,
            lease_duration: Duration::from_secs(30),
            holder: "conformance".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.metadata, object(rich));

    // A job-key replace takes the replacing enqueue's metadata with its payload.
    let mut first = with_metadata(json!(1), json!({"v": 1}));
    first.dedupe_key = Some("k".into());
    first.key_mode = KeyMode::Replace;
    first.delay = Some(Duration::from_secs(60));
    let first = s.enqueue(first).await.expect("enqueue").id;
    let mut second = with_metadata(json!(2), json!({"v": 2, "w": "x"}));
    second.dedupe_key = Some("k".into());
    second.key_mode = KeyMode::Replace;
    let second = s.enqueue(second).await.expect("enqueue");
    assert_eq!(second.id, first);
    let replaced = s.get_job(first).await.expect("get").expect("exists");
    assert_eq!(replaced.metadata, object(json!({"v": 2, "w": "x"})));
}

/// A metadata term matches jobs holding the key with an equal value: strings exactly,
/// numbers by value, booleans and null only as themselves; it combines with the other
/// terms; keys with dots and quotes are plain keys.
pub async fn list_filters_by_metadata_key_and_value<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids_of = Vec::new();
    for m in [
        json!({"tenant": "acme", "n": 1}),
        json!({"tenant": "globex", "n": 2.5}),
        json!({"tenant": "acme", "flag": true, "none": null}),
        json!({"tenant": "Acme", "n": "1", "a.b": "dot", "it's \"q\"": "quoted"}),
        json!({}),
    ] {
        ids_of.push(
            s.enqueue(with_metadata(json!(null), m))
                .await
                .expect("enqueue")
                .id,
        );
    }
    let [acme, globex, flagged, upper, _bare] = ids_of[..] else {
        panic!("five jobs")
    };
    assert_eq!(
        ids(&s, by_meta("tenant", json!("acme"))).await,
        vec![acme, flagged]
    );
    assert_eq!(ids(&s, by_meta("tenant", json!("Acme"))).await, vec![upper]);
    assert_eq!(ids(&s, by_meta("n", json!(1))).await, vec![acme]);
    assert_eq!(ids(&s, by_meta("n", json!(1.0))).await, vec![acme]);
    assert_eq!(ids(&s, by_meta("n", json!(2.5))).await, vec![globex]);
    assert_eq!(ids(&s, by_meta("n", json!("1"))).await, vec![upper]);
    assert_eq!(ids(&s, by_meta("flag", json!(true))).await, vec![flagged]);
    assert!(ids(&s, by_meta("flag", json!(1))).await.is_empty());
    assert!(ids(&s, by_meta("flag", json!(false))).await.is_empty());
    assert_eq!(ids(&s, by_meta("none", json!(null))).await, vec![flagged]);
    assert!(ids(&s, by_meta("missing", json!(null))).await.is_empty());
    assert_eq!(ids(&s, by_meta("a.b", json!("dot"))).await, vec![upper]);
    assert_eq!(
        ids(&s, by_meta("it's \"q\"", json!("quoted"))).await,
        vec![upper]
    );
    // With other terms: status, paging.
    let mut f = by_meta("tenant", json!("acme"));
    f.after_id = Some(acme);
    assert_eq!(ids(&s, f.clone()).await, vec![flagged]);
    f.after_id = None;
    f.statuses = vec![crate::JobStatus::Completed];
    assert!(ids(&s, f).await.is_empty());
    // Objects and arrays are not scalar values to match; an empty key is no key.
    for bad in [
        by_meta("tenant", json!({"a": 1})),
        by_meta("tenant", json!(["acme"])),
        by_meta("", json!("acme")),
    ] {
        assert!(
            matches!(
                s.list_jobs(bad).await,
                Err(Error::InvalidOption {
                    option: "metadata",
                    ..
                })
            ),
            "a malformed metadata term is a typed error"
        );
    }
}
