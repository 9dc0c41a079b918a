//! Background services a worker runs beside its queues.

pub(crate) mod lease_sweeper;
pub(crate) mod metrics_sampler;
pub(crate) mod retention;
pub(crate) mod scheduler;
