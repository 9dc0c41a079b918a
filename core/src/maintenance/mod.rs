//! Background services a worker runs beside its queues.

pub(crate) mod lease_sweeper;
pub(crate) mod scheduler;
