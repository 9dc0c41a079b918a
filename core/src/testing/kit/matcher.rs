//! Which jobs an assertion looks for, and the assertions on what was enqueued.

use super::{KitError, TestKit};
use crate::job::{Job, JobStatus};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

type Predicate = Arc<dyn Fn(&Job) -> bool + Send + Sync>;

/// Describes the jobs an assertion looks for. Every part given must hold; an empty
/// matcher ([`JobMatcher::any`]) matches every job. A `&str` converts to
/// [`JobMatcher::task`].
///
/// ```
/// use durable_jobs::testing::kit::JobMatcher;
/// use durable_jobs::JobStatus;
/// let m = JobMatcher::task("send_email")
///     .queue("mail")
///     .payload(serde_json::json!({ "to": "ada@example.com" }))
///     .status(JobStatus::Pending)
///     .matching("priority above 5", |job| job.priority > 5);
/// ```
#[derive(Clone, Default)]
pub struct JobMatcher {
    task: Option<String>,
    queue: Option<String>,
    payload: Option<Value>,
    statuses: Vec<JobStatus>,
    predicates: Vec<(String, Predicate)>,
}

impl JobMatcher {
    /// Matches every job.
    pub fn any() -> Self {
        Self::default()
    }

    /// Matches jobs of `task`.
    pub fn task(task: impl Into<String>) -> Self {
        JobMatcher {
            task: Some(task.into()),
            ..Self::default()
        }
    }

    /// Only jobs in routing queue `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs whose payload contains `partial`: every key of an object in `partial`
    /// must be in the payload's object at that place with a matching value (other keys
    /// may be there too); arrays match element by element with the same length; other
    /// values must be equal.
    pub fn payload(mut self, partial: Value) -> Self {
        self.payload = Some(partial);
        self
    }

    /// Only jobs in `status`; call again to allow several. With none, any status
    /// matches: a job that already ran was still enqueued.
    pub fn status(mut self, status: JobStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Only jobs for which `predicate` holds; `description` names it in failure messages.
    pub fn matching(
        mut self,
        description: impl Into<String>,
        predicate: impl Fn(&Job) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicates
            .push((description.into(), Arc::new(predicate)));
        self
    }

    /// True when `job` matches every part.
    pub fn matches(&self, job: &Job) -> bool {
        self.task.as_ref().is_none_or(|t| *t == job.task)
            && self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self
                .payload
                .as_ref()
                .is_none_or(|p| contains(&job.payload, p))
            && self.predicates.iter().all(|(_, p)| p(job))
    }
}

impl From<&str> for JobMatcher {
    fn from(task: &str) -> Self {
        JobMatcher::task(task)
    }
}

impl fmt::Display for JobMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = &self.task {
            parts.push(format!("task `{t}`"));
        }
        if let Some(q) = &self.queue {
            parts.push(format!("queue `{q}`"));
        }
        if let Some(p) = &self.payload {
            parts.push(format!("payload containing {p}"));
        }
        if !self.statuses.is_empty() {
            let s: Vec<_> = self.statuses.iter().map(|s| s.as_str()).collect();
            parts.push(format!("status {}", s.join(" or ")));
        }
        for (d, _) in &self.predicates {
            parts.push(format!("`{d}`"));
        }
        if parts.is_empty() {
            f.write_str("any job")
        } else {
            write!(f, "a job with {}", parts.join(", "))
        }
    }
}

impl fmt::Debug for JobMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True when `actual` contains `expected` as [`JobMatcher::payload`] describes.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| contains(av, ev))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| contains(av, ev))
        }
        _ => actual == expected,
    }
}

/// One line per job, for failure messages.
fn listing(jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return "  (no jobs at all)".to_string();
    }
    jobs.iter()
        .map(|j| {
            format!(
                "  #{} task `{}` queue `{}` {} run_at {} payload {}",
                j.id, j.task, j.queue, j.status, j.run_at, j.payload
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl TestKit {
    /// Every job stored that matches `matcher`, in id order, whatever its status
    /// (narrow it with [`JobMatcher::status`]).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn enqueued_jobs(
        &self,
        matcher: impl Into<JobMatcher>,
    ) -> Result<Vec<Job>, KitError> {
        let matcher = matcher.into();
        Ok(self
            .jobs(&[])
            .await?
            .into_iter()
            .filter(|j| matcher.matches(j))
            .collect())
    }

    /// Asserts that at least one job matches `matcher` and returns those that do.
    ///
    /// # Panics
    /// When none matches (the message lists every job enqueued instead), or when storage
    /// cannot be read.
    pub async fn assert_enqueued(&self, matcher: impl Into<JobMatcher>) -> Vec<Job> {
        let matcher = matcher.into();
        let all = self.all_jobs_or_panic().await;
        let found: Vec<Job> = all.iter().filter(|j| matcher.matches(j)).cloned().collect();
        if found.is_empty() {
            panic!(
                "expected {matcher} to be enqueued, but none is; the jobs enqueued:\n{}",
                listing(&all)
            );
        }
        found
    }

    /// Asserts that no job matches `matcher`.
    ///
    /// # Panics
    /// When one does (the message lists those that match), or when storage cannot be
    /// read.
    pub async fn assert_not_enqueued(&self, matcher: impl Into<JobMatcher>) {
        let matcher = matcher.into();
        let all = self.all_jobs_or_panic().await;
        let found: Vec<Job> = all.into_iter().filter(|j| matcher.matches(j)).collect();
        if !found.is_empty() {
            panic!(
                "expected no {matcher} to be enqueued, but found {}:\n{}",
                found.len(),
                listing(&found)
            );
        }
    }

    async fn all_jobs_or_panic(&self) -> Vec<Job> {
        match self.jobs(&[]).await {
            Ok(jobs) => jobs,
            Err(e) => panic!("could not read the enqueued jobs: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn partial_payloads() {
        let actual = json!({"to": "ada", "meta": {"lang": "en", "tries": 2}, "tags": [1, 2]});
        assert!(contains(&actual, &json!({"to": "ada"})));
        assert!(contains(&actual, &json!({"meta": {"lang": "en"}})));
        assert!(contains(&actual, &json!({"tags": [1, 2]})));
        assert!(contains(&actual, &json!({})));
        assert!(!contains(&actual, &json!({"to": "bob"})));
        assert!(!contains(&actual, &json!({"cc": "ada"})));
        assert!(!contains(&actual, &json!({"meta": {"lang": "de"}})));
        assert!(!contains(&actual, &json!({"tags": [1]})));
        assert!(!contains(&json!("ada"), &json!({"to": "ada"})));
        assert!(contains(&json!(3), &json!(3)));
    }
}
