//! Durable workflows: the job context, checkpointed calls and steps, durable sleep,
//! signals, child jobs and versioning.

mod call;
mod children;
mod commit;
mod context;
mod key;
mod signal;
mod sleep;
mod step;
mod version;

pub use call::call;
pub use children::{ChildResult, FanOut};
pub(crate) use commit::CheckpointCommitter;
pub use context::JobContext;
pub use key::CheckpointKey;
