//! What a dashboard may do and how it looks: read-only mode, basic auth for `serve`, the
//! overview's refresh period and the job list's page size.

use crate::error::Error;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How often the overview page refreshes itself. Defaults to 5 seconds.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Jobs per page of the job list when the request names no `limit`. Defaults to 50.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// The most jobs one page of the job list shows, whatever `limit` asks for.
pub const MAX_PAGE_SIZE: usize = 500;

/// Options for [`crate::router_with`] and [`crate::serve`].
///
/// Fields are public so a struct literal with `..Default::default()` works; the setters
/// do the same.
///
/// ```
/// use durable_jobs_dashboard::DashboardOptions;
/// let options = DashboardOptions { read_only: true, ..Default::default() };
/// let same = DashboardOptions::new().read_only(true);
/// assert_eq!(options.read_only, same.read_only);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardOptions {
    /// Shows no action buttons and refuses every POST with 403 Forbidden. Defaults to
    /// false.
    pub read_only: bool,
    /// Credentials every request must present (HTTP basic auth), or none. Defaults to
    /// none: an application that mounts the router puts its own authentication around
    /// it; `durable-jobs dashboard` sets this from its environment.
    pub basic_auth: Option<BasicAuth>,
    /// How often the overview refreshes itself. Defaults to
    /// [`DEFAULT_REFRESH_INTERVAL`]; zero turns the refresh off.
    pub refresh_interval: Duration,
    /// Jobs per page of the job list when the request names no `limit`. Defaults to
    /// [`DEFAULT_PAGE_SIZE`].
    pub page_size: usize,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            read_only: false,
            basic_auth: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

impl DashboardOptions {
    /// The defaults: actions allowed, no authentication of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shows no actions and refuses every POST (403).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Requires these basic-auth credentials on every request.
    pub fn basic_auth(mut self, credentials: BasicAuth) -> Self {
        self.basic_auth = Some(credentials);
        self
    }

    /// How often the overview refreshes itself; zero turns the refresh off.
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every;
        self
    }

    /// Jobs per page of the job list (at least 1, at most [`MAX_PAGE_SIZE`]).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n;
        self
    }

    /// The page size as used: within 1 and [`MAX_PAGE_SIZE`].
    pub(crate) fn effective_page_size(&self) -> usize {
        self.page_size.clamp(1, MAX_PAGE_SIZE)
    }
}

/// A user name and password for HTTP basic authentication. `Debug` hides the password.
///
/// Parses from `user:password` (the password may contain colons):
///
/// ```
/// use durable_jobs_dashboard::BasicAuth;
/// let auth: BasicAuth = "admin:s3cret:with:colons".parse()?;
/// assert_eq!(auth.username(), "admin");
/// assert!("no-colon".parse::<BasicAuth>().is_err());
/// # Ok::<(), durable_jobs_dashboard::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    username: String,
    password: String,
}

impl BasicAuth {
    /// Credentials from a user name and a password.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the user name is empty or holds a colon (basic
    /// auth separates the two with the first colon), or the password is empty.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Result<Self, Error> {
        let username = username.into();
        let password = password.into();
        if username.is_empty() || username.contains(':') {
            return Err(Error::InvalidCredentials(
                "the user name must be non-empty and hold no colon".into(),
            ));
        }
        if password.is_empty() {
            return Err(Error::InvalidCredentials(
                "the password must be non-empty".into(),
            ));
        }
        Ok(BasicAuth { username, password })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// True when `username:password` (as decoded from an `Authorization` header) matches,
    /// compared in time that does not depend on where they differ.
    pub(crate) fn matches(&self, decoded: &[u8]) -> bool {
        let mut expected = Vec::with_capacity(self.username.len() + 1 + self.password.len());
        expected.extend_from_slice(self.username.as_bytes());
        expected.push(b':');
        expected.extend_from_slice(self.password.as_bytes());
        crate::csrf::constant_time_eq(&expected, decoded)
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl FromStr for BasicAuth {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, password) = s.split_once(':').ok_or_else(|| {
            Error::InvalidCredentials("expected `user:password`, found no colon".into())
        })?;
        BasicAuth::new(user, password)
    }
}
