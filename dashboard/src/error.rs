//! The dashboard's errors: serving it and configuring it.

use std::net::SocketAddr;

/// What can go wrong setting up or serving the dashboard. Errors of single requests
/// (a storage failure, an unknown job) are pages with their status code, not this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the dashboard server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// Basic-auth credentials that cannot work.
    #[error("invalid basic auth credentials: {0}")]
    InvalidCredentials(String),
}
