//! Trace propagation: a job carries the W3C trace context of the span that enqueued it,
//! and each attempt's span continues that trace, in this process or another one.
//!
//! Every enqueue (through [`crate::Queue`], a bundle, or a workflow's children) runs in a
//! `durable_jobs.enqueue` span and stores a `traceparent` with its jobs
//! ([`crate::NewJob::trace_context`]). Its trace id is, in order:
//! 1. with the `opentelemetry` feature, the current OpenTelemetry trace (the enqueue
//!    span's own OpenTelemetry context, whose parent is the current span);
//! 2. the trace of the job attempt running in this task (so jobs enqueued by jobs, and
//!    workflow children, stay in their parent's trace), or of an enclosing [`scope`];
//! 3. a fresh random trace id.
//!
//! Its span id is a fresh id, recorded as the enqueue span's `span_id` field (with the
//! `opentelemetry` feature, the enqueue span's own OpenTelemetry span id).
//!
//! The worker runs each attempt in a `durable_jobs.attempt` span whose `trace_id` and
//! `parent_span_id` fields come from the job's stored `traceparent`, with a fresh
//! `span_id`: a reader matches an attempt to its enqueue by these fields. With the
//! `opentelemetry` feature the stored context also becomes the attempt span's remote
//! OpenTelemetry parent, so exporters draw the link across processes. Durable calls and
//! steps run in `durable_jobs.call` and `durable_jobs.step` spans nested in the attempt's.
//!
//! Spans cost nothing when no subscriber wants them: ids are formatted only when a span
//! is recorded, and the only per-job allocation is the stored `traceparent` itself.
//!
//! # Level
//! These spans are at [`DEFAULT_SPAN_LEVEL`] (debug) unless [`set_span_level`] says
//! otherwise, as tower-http's request spans are: a subscriber at info level records none
//! of them, so an application that logs at info pays nothing per job. A recorded span is
//! not free: tracing-subscriber's fmt layer spends about 8,000 instructions formatting an
//! attempt span's fields, close to what a no-op job costs the worker on the memory
//! backend. To trace jobs, either let the subscriber take `durable_jobs=debug` or call
//! `set_span_level(Level::INFO)` at startup.

use crate::job::Job;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use tracing::field;
#[cfg(feature = "opentelemetry")]
use tracing::field::Empty;
use tracing::{Level, Span};

/// The level of the enqueue, attempt, call and step spans unless [`set_span_level`]
/// changes it: debug.
pub const DEFAULT_SPAN_LEVEL: Level = Level::DEBUG;

static SPAN_LEVEL: AtomicU8 = AtomicU8::new(level_code(DEFAULT_SPAN_LEVEL));

const fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

/// Sets the level of durable-jobs' spans (enqueue, attempt, call, step) for the whole
/// process; call it at startup. Defaults to [`DEFAULT_SPAN_LEVEL`].
pub fn set_span_level(level: Level) {
    SPAN_LEVEL.store(level_code(level), Ordering::Relaxed);
}

/// The level durable-jobs' spans are made at.
pub fn span_level() -> Level {
    match SPAN_LEVEL.load(Ordering::Relaxed) {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        4 => Level::TRACE,
        _ => Level::DEBUG,
    }
}

/// A span at [`span_level`]: `tracing`'s span macros take a constant level, so this
/// picks one of five call sites.
macro_rules! leveled_span {
    ($($arg:tt)*) => {
        match $crate::trace::span_level() {
            ::tracing::Level::ERROR => ::tracing::error_span!($($arg)*),
            ::tracing::Level::WARN => ::tracing::warn_span!($($arg)*),
            ::tracing::Level::INFO => ::tracing::info_span!($($arg)*),
            ::tracing::Level::DEBUG => ::tracing::debug_span!($($arg)*),
            _ => ::tracing::trace_span!($($arg)*),
        }
    };
}
pub(crate) use leveled_span;

/// A W3C trace context: the trace a span belongs to, the span's id, and whether the
/// trace is sampled. Its text form is the `traceparent` header,
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
///
/// ```
/// use durable_jobs::trace::TraceContext;
/// let tc: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
///     .parse()
///     .expect("valid traceparent");
/// assert_eq!(tc.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert_eq!(tc.span_id, 0x00f067aa0ba902b7);
/// assert!(tc.sampled);
/// assert_eq!(tc.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace's id; never zero in a valid context.
    pub trace_id: u128,
    /// The span's id (the parent of whatever continues this context); never zero in a
    /// valid context.
    pub span_id: u64,
    /// The `sampled` flag: the caller may have recorded this trace.
    pub sampled: bool,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {reason}")]
pub struct InvalidTraceparent {
    reason: &'static str,
}

impl InvalidTraceparent {
    fn new(reason: &'static str) -> Self {
        InvalidTraceparent { reason }
    }

    /// What was wrong with it.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

impl TraceContext {
    /// A new trace: a random trace id and span id, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// A new span in the same trace: same trace id and flags, a fresh span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// True when neither id is zero (the W3C rule for a usable context).
    pub fn is_valid(&self) -> bool {
        self.trace_id != 0 && self.span_id != 0
    }

    /// Parses a `traceparent` header value. Version `00` must be exactly 55 characters;
    /// later versions may append fields after a `-`, which are ignored. Hex must be
    /// lowercase, ids must not be all zeros, and version `ff` is invalid.
    ///
    /// # Errors
    /// [`InvalidTraceparent`] for anything else; never panics.
    pub fn parse(s: &str) -> Result<Self, InvalidTraceparent> {
        let b = s.trim_matches(|c: char| c == ' ' || c == '\t').as_bytes();
        if b.len() < TRACEPARENT_LEN {
            return Err(InvalidTraceparent::new("too short"));
        }
        let version = hex(&b[0..2]).ok_or(InvalidTraceparent::new("bad version"))?;
        if version == 0xff {
            return Err(InvalidTraceparent::new("version ff is invalid"));
        }
        if version == 0 && b.len() != TRACEPARENT_LEN {
            return Err(InvalidTraceparent::new("version 00 must be 55 characters"));
        }
        if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
            return Err(InvalidTraceparent::new("bad delimiter after flags"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(InvalidTraceparent::new("bad delimiter"));
        }
        let bad_trace = || InvalidTraceparent::new("bad trace id");
        let trace_hi = hex16(&b[3..19]).ok_or_else(bad_trace)?;
        let trace_lo = hex16(&b[19..35]).ok_or_else(bad_trace)?;
        let trace_id = (u128::from(trace_hi) << 64) | u128::from(trace_lo);
        let span_id = hex16(&b[36..52]).ok_or(InvalidTraceparent::new("bad parent id"))?;
        let flags = hex(&b[53..55]).ok_or(InvalidTraceparent::new("bad flags"))?;
        if trace_id == 0 {
            return Err(InvalidTraceparent::new("trace id is all zeros"));
        }
        if span_id == 0 {
            return Err(InvalidTraceparent::new("parent id is all zeros"));
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value (version `00`).
    pub fn to_traceparent(&self) -> String {
        ascii(&self.encode()).to_string()
    }

    /// The trace id as 32 lowercase hex digits, as the spans' `trace_id` fields show it.
    pub fn trace_id_hex(&self) -> String {
        TraceIdHex(self.trace_id).to_string()
    }

    /// The span id as 16 lowercase hex digits, as the spans' `span_id` fields show it.
    pub fn span_id_hex(&self) -> String {
        SpanIdHex(self.span_id).to_string()
    }

    /// The `traceparent` bytes.
    fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut b = [b'-'; TRACEPARENT_LEN];
        b[0..2].copy_from_slice(b"00");
        encode_hex(&mut b[3..19], (self.trace_id >> 64) as u64);
        encode_hex(&mut b[19..35], self.trace_id as u64);
        encode_hex(&mut b[36..52], self.span_id);
        encode_hex(&mut b[53..55], u64::from(self.sampled));
        b
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.encode()))
    }
}

impl FromStr for TraceContext {
    type Err = InvalidTraceparent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceContext::parse(s)
    }
}

/// Each byte's value as a lowercase hex digit, or 0xff.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Lowercase hex digits to a number; `None` for anything else. At most 16 digits.
fn hex(digits: &[u8]) -> Option<u64> {
    let mut acc = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        let v = HEX_VALUE[usize::from(d)];
        bad |= v;
        acc = (acc << 4) | u64::from(v & 0xf);
    }
    (bad & 0xf0 == 0).then_some(acc)
}

/// Sixteen lowercase hex digits (`digits` must hold exactly 16 bytes) to a number;
/// `None` for anything else. Every attempt of every job parses its job's trace context,
/// and a digit at a time this cost about as much as the rest of making the attempt's
/// span, so eight digits go at once (see [`hex8`]).
fn hex16(digits: &[u8]) -> Option<u64> {
    let (hi, lo) = digits.split_first_chunk::<8>()?;
    let lo: &[u8; 8] = lo.try_into().ok()?;
    Some((u64::from(hex8(*hi)?) << 32) | u64::from(hex8(*lo)?))
}

/// Eight lowercase hex digits to a number, `None` for anything else, all eight bytes at
/// once in one `u64` (first digit in the high byte).
fn hex8(digits: [u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let x = u64::from_be_bytes(digits);
    if x & HIGH != 0 {
        return None;
    }
    // Every byte is below 0x80 now, so adding 0x80 - c to it sets its high bit exactly
    // when it is at least c, and never carries into the next byte.
    let at_least = |c: u8| x.wrapping_add(ONES * u64::from(0x80 - c)) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if digit | letter != HIGH {
        return None;
    }
    // A digit's value is its low nibble; a letter's is its low nibble plus 9.
    let v = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Gather the nibbles: pairs into bytes, bytes into 16-bit lanes, lanes into 32 bits.
    let v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
    let v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
    let v = (v | (v >> 16)) & 0x0000_0000_ffff_ffff;
    u32::try_from(v).ok()
}

/// Writes the low `out.len()` hex digits of `v` into `out`, lowercase, zero-padded.
fn encode_hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Bytes this module encoded (hex digits and `-`), as text.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

/// A trace id shown as 32 hex digits, formatted only when a subscriber records it.
#[derive(Clone, Copy)]
struct TraceIdHex(u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = [0u8; 32];
        encode_hex(&mut b[..16], (self.0 >> 64) as u64);
        encode_hex(&mut b[16..], self.0 as u64);
        f.write_str(ascii(&b))
    }
}

/// A span id shown as 16 hex digits, formatted only when a subscriber records it.
#[derive(Clone, Copy)]
struct SpanIdHex(u64);

impl fmt::Display for SpanIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = [0u8; 16];
        encode_hex(&mut b, self.0);
        f.write_str(ascii(&b))
    }
}

/// A random non-zero 64-bit number: SplitMix64 over a per-thread state seeded from the
/// process's random hasher keys, the time and the thread. Not cryptographic; unique
/// enough for trace and span ids.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        let mut state = s.get();
        if state == 0 {
            state = seed();
        }
        loop {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                s.set(state);
                return z;
            }
        }
    })
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let s = std::collections::hash_map::RandomState::new().hash_one((
        nanos,
        std::process::id(),
        std::thread::current().id(),
    ));
    s | 1
}

/// A fresh, non-zero trace id.
fn new_trace_id() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

/// A fresh, non-zero span id.
fn new_span_id() -> u64 {
    random_u64()
}

tokio::task_local! {
    /// The trace context of the attempt (or [`scope`]) running in this task.
    static CURRENT: TraceContext;
}

/// The trace context of the job attempt running in this task (the attempt span's trace
/// id and span id), or of the innermost [`scope`]; `None` elsewhere. Jobs enqueued here
/// join this trace.
///
/// It is a task-local value: a future spawned onto another task from inside a handler
/// does not see it (wrap that future in [`scope`] with this value to carry it over).
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `fut` with `context` as the current trace context: jobs it enqueues join
/// `context`'s trace, with `context.span_id` as their enqueue span's parent. Use it to
/// continue a trace that arrived from elsewhere without OpenTelemetry (a `traceparent`
/// header parsed with [`TraceContext::parse`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use durable_jobs::trace::{self, TraceContext};
/// let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .expect("valid");
/// let seen = trace::scope(incoming, async { trace::current() }).await;
/// assert_eq!(seen, Some(incoming));
/// # }
/// ```
pub fn scope<F: Future>(context: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(context, fut)
}

/// The `durable_jobs.enqueue` span for an enqueue of `count` jobs of `task` on `queue`,
/// and the context to store with them. `inherited` is the enqueuing job's context when
/// the caller knows it (workflow children), used when no task-local context is set.
pub(crate) fn enqueue_span(
    task: &str,
    queue: &str,
    count: usize,
    inherited: Option<TraceContext>,
) -> (Span, TraceContext) {
    let local = current();
    let context = match local.or(inherited) {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    };
    // The parent span is known only from the task's own context; an inherited one names
    // the enqueuing job's trace, not the span that enqueues here.
    let parent_span = local.map(|p| p.span_id);
    macro_rules! span {
        ($trace_id:expr, $span_id:expr, $parent_span_id:expr) => {
            leveled_span!(
                "durable_jobs.enqueue",
                task = field::display(task),
                queue = field::display(queue),
                count,
                trace_id = $trace_id,
                span_id = $span_id,
                parent_span_id = $parent_span_id,
            )
        };
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let span = span!(
            field::display(TraceIdHex(context.trace_id)),
            field::display(SpanIdHex(context.span_id)),
            parent_span.map(|p| field::display(SpanIdHex(p)))
        );
        (span, context)
    }
    #[cfg(feature = "opentelemetry")]
    {
        // The ids come from the span's own OpenTelemetry context when a layer records it,
        // so they are known only once the span exists.
        let span = span!(Empty, Empty, Empty);
        let (context, parent_span) = match otel::context_of(&span) {
            Some(otel) => (
                otel,
                local
                    .filter(|p| p.trace_id == otel.trace_id)
                    .map(|p| p.span_id),
            ),
            None => (context, parent_span),
        };
        if !span.is_disabled() {
            span.record("trace_id", field::display(TraceIdHex(context.trace_id)));
            span.record("span_id", field::display(SpanIdHex(context.span_id)));
            if let Some(p) = parent_span {
                span.record("parent_span_id", field::display(SpanIdHex(p)));
            }
        }
        (span, context)
    }
}

/// The trace context stored with a job, if it has a valid one.
pub(crate) fn stored(job: &Job) -> Option<TraceContext> {
    job.trace_context
        .as_deref()
        .and_then(|s| TraceContext::parse(s).ok())
}

/// The `durable_jobs.attempt` span for attempt `attempt` of `job` on worker `worker`, and
/// the attempt's own context (the job's trace, a fresh span id). The span is a root in
/// `tracing`'s tree: its parent is the enqueuing span, linked by the `trace_id` and
/// `parent_span_id` fields (and, with the `opentelemetry` feature, the remote parent).
pub(crate) fn attempt_span(job: &Job, attempt: i32, worker: &str) -> (Span, TraceContext) {
    let parent = stored(job);
    let context = match parent {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    };
    macro_rules! span {
        ($trace_id:expr, $parent_span_id:expr, $span_id:expr) => {
            leveled_span!(
                parent: None,
                "durable_jobs.attempt",
                job_id = job.id,
                // Display, not the default Debug of a str: a formatting subscriber then
                // copies the text instead of escaping it character by character.
                task = field::display(&job.task),
                queue = field::display(&job.queue),
                attempt,
                worker = field::display(worker),
                trace_id = $trace_id,
                parent_span_id = $parent_span_id,
                span_id = $span_id,
            )
        };
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let span = span!(
            field::display(TraceIdHex(context.trace_id)),
            parent.map(|p| field::display(SpanIdHex(p.span_id))),
            field::display(SpanIdHex(context.span_id))
        );
        (span, context)
    }
    #[cfg(feature = "opentelemetry")]
    {
        // The remote parent must be set before anything builds the span's OpenTelemetry
        // context; the ids then come from that context when a layer records it.
        let span = span!(Empty, Empty, Empty);
        if let Some(p) = parent {
            otel::set_remote_parent(&span, p);
        }
        let context = otel::context_of(&span).unwrap_or(context);
        if !span.is_disabled() {
            span.record("trace_id", field::display(TraceIdHex(context.trace_id)));
            if let Some(p) = parent {
                span.record("parent_span_id", field::display(SpanIdHex(p.span_id)));
            }
            span.record("span_id", field::display(SpanIdHex(context.span_id)));
        }
        (span, context)
    }
}

/// Runs an attempt's future with its context as the task's current one.
pub(crate) fn in_attempt<F: Future>(
    context: TraceContext,
    fut: F,
) -> impl Future<Output = F::Output> {
    CURRENT.scope(context, fut)
}

#[cfg(feature = "opentelemetry")]
mod otel {
    //! The bridge to OpenTelemetry through `tracing-opentelemetry`.

    use super::TraceContext;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The span's OpenTelemetry context, when an OpenTelemetry layer records it.
    pub(super) fn context_of(span: &tracing::Span) -> Option<TraceContext> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        })
    }

    /// Makes `parent` (a context stored with a job, from another process maybe) the
    /// span's remote OpenTelemetry parent. Must run before the span is first entered.
    pub(super) fn set_remote_parent(span: &tracing::Span, parent: TraceContext) {
        if span.is_disabled() {
            return;
        }
        let flags = if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        };
        let sc = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        // No OpenTelemetry layer (or a disabled span) is not an error: the link then
        // lives in the span's `trace_id` and `parent_span_id` fields only.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn eight_digits_at_once_read_as_the_table_reads_them() {
        // Every byte value in every position, the other seven a valid digit.
        for pos in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = *b"0f9a5c3e";
                digits[pos] = byte;
                let one_by_one = hex(&digits).map(|v| v as u32);
                assert_eq!(hex8(digits), one_by_one, "{digits:?}");
            }
        }
        assert_eq!(hex8(*b"ffffffff"), Some(u32::MAX));
        assert_eq!(hex8(*b"00000000"), Some(0));
        assert_eq!(hex16(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(hex16(b"0123456789abcdeF"), None);
        assert_eq!(hex16(b"0123456789abcde"), None);
    }

    #[test]
    fn parses_and_formats_a_traceparent() {
        let tc = TraceContext::parse(SAMPLE).expect("valid");
        assert_eq!(tc.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(tc.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(tc.sampled);
        assert_eq!(tc.to_traceparent(), SAMPLE);
        assert_eq!(tc.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.span_id_hex(), "00f067aa0ba902b7");
        let unsampled = TraceContext {
            sampled: false,
            ..tc
        };
        assert!(unsampled.to_string().ends_with("-00"));
        assert_eq!(unsampled.to_string().parse::<TraceContext>(), Ok(unsampled));
        // Small ids keep their leading zeros.
        let small = TraceContext {
            trace_id: 1,
            span_id: 2,
            sampled: true,
        };
        assert_eq!(
            small.to_string(),
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
    }

    #[test]
    fn accepts_later_versions_with_extra_fields() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-whatever";
        let tc = TraceContext::parse(v1).expect("valid");
        assert!(tc.sampled);
        assert!(TraceContext::parse(&SAMPLE.replacen("00", "cc", 1)).is_ok());
    }

    #[test]
    fn rejects_malformed_traceparents_without_panicking() {
        let bad = [
            "",
            "00",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            // Multi-byte characters where hex digits or delimiters belong.
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for s in bad {
            assert!(TraceContext::parse(s).is_err(), "accepted {s:?}");
        }
        assert_eq!(
            TraceContext::parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .map_err(|e| e.reason()),
            Err("version ff is invalid")
        );
    }

    #[test]
    fn fresh_ids_are_valid_and_distinct() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert!(a.is_valid() && b.is_valid());
        assert_ne!(a.trace_id, b.trace_id);
        let c = a.child();
        assert_eq!(c.trace_id, a.trace_id);
        assert_ne!(c.span_id, a.span_id);
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(TraceContext::parse(&a.to_traceparent()), Ok(a));
    }

    #[tokio::test]
    async fn scope_sets_the_current_context() {
        assert_eq!(current(), None);
        let tc = TraceContext::new_root();
        assert_eq!(scope(tc, async { current() }).await, Some(tc));
        assert_eq!(current(), None);
        // Enqueues inside a scope continue its trace, with its span as their parent.
        let (_, inner) = scope(tc, async { enqueue_span("t", "q", 1, None) }).await;
        assert_eq!(inner.trace_id, tc.trace_id);
        assert_ne!(inner.span_id, tc.span_id);
        let (_, outside) = enqueue_span("t", "q", 1, Some(tc));
        assert_eq!(outside.trace_id, tc.trace_id);
        let (_, fresh) = enqueue_span("t", "q", 1, None);
        assert_ne!(fresh.trace_id, tc.trace_id);
    }
}
