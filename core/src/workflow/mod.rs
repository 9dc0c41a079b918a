//! Durable workflows: the job context, checkpointed calls and steps, durable sleep,
//! signals, child jobs, versioning, progress and the determinism of call arguments.

mod call;
mod children;
mod commit;
mod context;
mod determinism;
mod key;
mod signal;
mod sleep;
mod step;
mod transactional;
mod version;

pub use call::call;
pub use children::{ChildResult, FanOut};
pub(crate) use commit::CheckpointCommitter;
pub use context::JobContext;
pub(crate) use determinism::args_hash;
pub use determinism::Determinism;
pub use key::CheckpointKey;
pub use transactional::TransactionalStep;
