//! The pages: one module each, every one a GET handler that reads through the public
//! `Queue` API and writes escaped HTML.

pub(crate) mod job;
pub(crate) mod job_list;
pub(crate) mod overview;
pub(crate) mod schedules;
