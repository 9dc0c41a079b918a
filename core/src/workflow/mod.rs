//! Durable workflows: the job context and checkpointed calls.

mod call;
mod context;
mod key;

pub use call::call;
pub use context::JobContext;
pub use key::CheckpointKey;
