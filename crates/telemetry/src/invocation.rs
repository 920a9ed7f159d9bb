//! The in-flight invocation handle. The gateway creates it, the runtime adds what only it knows
//! (cold start, outcome, log lines), the response body adds bytes out; when the last clone is
//! dropped — after the function finished and the response body ended — the record is emitted.

use nubo_core::{InvocationId, Outcome, limits};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What is known when an invocation starts.
#[derive(Debug, Clone)]
pub struct InvocationMeta {
    /// Its id.
    pub id: InvocationId,
    /// App name.
    pub app: Arc<str>,
    /// Function name.
    pub function: Arc<str>,
    /// App revision.
    pub revision: u64,
    /// What triggered it: `http` or `invoke`.
    pub trigger: &'static str,
}

/// One captured log line.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// When it was written.
    pub time: SystemTime,
    /// Which stream.
    pub stream: Stream,
    /// The text without its newline (lossily decoded as UTF-8).
    pub line: String,
}

/// A complete invocation: its record and its logs.
#[derive(Debug, Clone)]
pub struct FinishedInvocation {
    /// Identity.
    pub meta: InvocationMeta,
    /// Start time.
    pub started_at: SystemTime,
    /// Wall time from start to the end of the response.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// First instantiation of this function on this server (wasm), or served by a worker
    /// started for it (process).
    pub cold: bool,
    /// Cold-start duration of a process function's worker: spawn to its first request for work.
    pub init_ms: Option<u64>,
    /// Request body bytes read by the function.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Outbound requests the function made (allowed or refused).
    pub outbound_requests: u64,
    /// Bytes the function sent in outbound requests (bodies).
    pub outbound_bytes_out: u64,
    /// Bytes the function received from outbound requests (bodies).
    pub outbound_bytes_in: u64,
    /// Captured log lines.
    pub logs: Vec<LogEntry>,
    /// Whether some output was cut (a marker line says so too).
    pub logs_truncated: bool,
}

/// Counters of the sink, for health and metrics.
#[derive(Debug, Default)]
pub struct RecordSinkStats {
    /// Records handed to the writer.
    pub sent: AtomicU64,
    /// Records dropped because the writer was behind.
    pub dropped: AtomicU64,
}

/// The sending side of the record channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordSink {
    tx: SyncSender<FinishedInvocation>,
    stats: Arc<RecordSinkStats>,
    /// Counts every finished invocation, written or dropped.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl RecordSink {
    /// Counters.
    pub fn stats(&self) -> &Arc<RecordSinkStats> {
        &self.stats
    }

    /// The same sink, also counting each finished invocation in `metrics` (before the record
    /// is offered to the writer, so dropped records are counted too).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn offer(&self, rec: FinishedInvocation) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&rec);
        }
        match self.tx.try_send(rec) {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A bounded channel for finished invocations; the receiver belongs to the batching writer.
pub fn record_channel(capacity: usize) -> (RecordSink, Receiver<FinishedInvocation>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (
        RecordSink {
            tx,
            stats: Arc::default(),
            metrics: None,
        },
        rx,
    )
}

/// Log levels a line can carry, least severe first: the order `--level` filters by.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Maps the level names of common logging libraries (`WARNING`, `err`, `fatal`, `Information`
/// …) to one of [`LOG_LEVELS`], ignoring case; `None` when the name is not a level.
pub fn normalize_level(name: &str) -> Option<&'static str> {
    let level = match name.trim().to_ascii_lowercase().as_str() {
        "trace" | "trc" | "verbose" => "trace",
        "debug" | "dbg" => "debug",
        "info" | "inf" | "information" | "notice" => "info",
        "warn" | "warning" | "wrn" => "warn",
        "error" | "err" | "fatal" | "critical" | "crit" | "alert" | "emergency" | "panic" => {
            "error"
        }
        _ => return None,
    };
    Some(level)
}

/// The marker that replaces the cut notice once the invocation is over and the number of
/// dropped lines is known.
fn dropped_marker(dropped: u64, id: &InvocationId) -> String {
    format!(
        "[nubo] {dropped} lines of invocation {id} were dropped (the {} lines / {} KiB cap)",
        thousands(limits::MAX_LOG_LINES_PER_INVOCATION),
        limits::MAX_LOG_BYTES_PER_INVOCATION / 1024
    )
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Default)]
struct LogBuf {
    entries: Vec<LogEntry>,
    bytes: usize,
    truncated: bool,
    /// Lines not kept once the cap was reached (the one that crossed it included).
    dropped: u64,
    partial: [Vec<u8>; 2],
    /// Secret values replaced by `[secret]` in every line.
    mask: Option<Arc<crate::mask::LogMask>>,
}

impl LogBuf {
    fn push_line(&mut self, stream: Stream, mut line: &[u8]) {
        if self.truncated {
            self.dropped += 1;
            return;
        }
        if self.entries.len() >= limits::MAX_LOG_LINES_PER_INVOCATION
            || self.bytes + line.len() > limits::MAX_LOG_BYTES_PER_INVOCATION
        {
            self.truncated = true;
            self.dropped = 1;
            self.entries.push(LogEntry {
                time: SystemTime::now(),
                stream,
                line: format!(
                    "[nubo] log output cut: an invocation keeps at most {} lines and {} bytes",
                    limits::MAX_LOG_LINES_PER_INVOCATION,
                    limits::MAX_LOG_BYTES_PER_INVOCATION
                ),
            });
            return;
        }
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let masked = match &self.mask {
            Some(mask) => mask.apply(line),
            None => std::borrow::Cow::Borrowed(line),
        };
        self.bytes += masked.len();
        self.entries.push(LogEntry {
            time: SystemTime::now(),
            stream,
            line: String::from_utf8_lossy(&masked).into_owned(),
        });
    }

    fn write(&mut self, stream: Stream, data: &[u8]) {
        let idx = stream as usize;
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            if self.partial[idx].is_empty() {
                self.push_line(stream, head);
            } else {
                let mut line = std::mem::take(&mut self.partial[idx]);
                line.extend_from_slice(head);
                self.push_line(stream, &line);
            }
            rest = &tail[1..];
        }
        if !rest.is_empty() && self.truncated {
            // A partial line after the cap is a dropped line too; count it once.
            if self.partial[idx].is_empty() {
                self.partial[idx].push(b'\n');
            }
        } else if !rest.is_empty() {
            let room = limits::MAX_LOG_LINE_BYTES.saturating_sub(self.partial[idx].len());
            self.partial[idx].extend_from_slice(&rest[..rest.len().min(room)]);
            if self.partial[idx].len() >= limits::MAX_LOG_LINE_BYTES {
                let line = std::mem::take(&mut self.partial[idx]);
                self.push_line(stream, &line);
            }
        }
    }

    /// Ends the capture: pushes unfinished lines and, when output was cut, rewrites the cut
    /// notice (the last entry) to say how many lines of invocation `id` were dropped.
    fn flush(&mut self, id: &InvocationId) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.partial[stream as usize]);
            if !line.is_empty() {
                self.push_line(stream, &line);
            }
        }
        if self.truncated
            && let Some(marker) = self.entries.last_mut()
        {
            marker.line = dropped_marker(self.dropped, id);
        }
    }
}

#[derive(Debug)]
struct Inner {
    meta: InvocationMeta,
    started_at: SystemTime,
    start: Instant,
    end: Mutex<Option<(Instant, Outcome)>>,
    /// HTTP status answered; 0 until known.
    status: std::sync::atomic::AtomicU16,
    cold: AtomicBool,
    /// `u64::MAX` until known.
    init_ms: AtomicU64,
    /// Microseconds from `start` to the end of the response, plus one; 0 until marked.
    response_end_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    outbound_requests: AtomicU64,
    outbound_bytes_out: AtomicU64,
    outbound_bytes_in: AtomicU64,
    logs: Mutex<LogBuf>,
    sink: RecordSink,
}

/// A handle on one invocation in flight. Clones share state; the record is emitted when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Invocation(Arc<Inner>);

impl Invocation {
    /// Starts the clock for a new invocation.
    pub fn start(meta: InvocationMeta, sink: &RecordSink) -> Self {
        Invocation(Arc::new(Inner {
            meta,
            started_at: SystemTime::now(),
            start: Instant::now(),
            end: Mutex::new(None),
            status: std::sync::atomic::AtomicU16::new(0),
            cold: AtomicBool::new(false),
            init_ms: AtomicU64::new(u64::MAX),
            response_end_us: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            outbound_requests: AtomicU64::new(0),
            outbound_bytes_out: AtomicU64::new(0),
            outbound_bytes_in: AtomicU64::new(0),
            logs: Mutex::new(LogBuf::default()),
            sink: sink.clone(),
        }))
    }

    /// Identity of the invocation.
    pub fn meta(&self) -> &InvocationMeta {
        &self.0.meta
    }

    /// Its id.
    pub fn id(&self) -> InvocationId {
        self.0.meta.id
    }

    /// Marks the invocation as a cold start.
    pub fn set_cold(&self, cold: bool) {
        self.0.cold.store(cold, Ordering::Relaxed);
    }

    /// Records the cold-start duration of the worker that served it (spawn to its first
    /// request for work), in milliseconds.
    pub fn set_init_ms(&self, ms: u64) {
        self.0
            .init_ms
            .store(ms.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Counts request body bytes.
    pub fn add_bytes_in(&self, n: u64) {
        self.0.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts response body bytes.
    pub fn add_bytes_out(&self, n: u64) {
        self.0.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the function's outbound calls: `requests` made, body bytes sent (`bytes_out`)
    /// and received (`bytes_in`). Called as each call progresses; the totals add up.
    pub fn add_outbound(&self, requests: u64, bytes_out: u64, bytes_in: u64) {
        let inner = &self.0;
        inner
            .outbound_requests
            .fetch_add(requests, Ordering::Relaxed);
        inner
            .outbound_bytes_out
            .fetch_add(bytes_out, Ordering::Relaxed);
        inner
            .outbound_bytes_in
            .fetch_add(bytes_in, Ordering::Relaxed);
    }

    /// Outbound requests counted so far (for the per-invocation limit).
    pub fn outbound_requests(&self) -> u64 {
        self.0.outbound_requests.load(Ordering::Relaxed)
    }

    /// Records how the invocation ended (and, when given, the status answered). The first
    /// outcome wins: the runtime reports a trap or timeout as it happens, and a later report
    /// from the gateway does not overwrite it.
    pub fn finish(&self, outcome: Outcome, status: Option<u16>) {
        if let Some(s) = status {
            self.set_status(s);
        }
        let mut end = self.0.end.lock().unwrap_or_else(|e| e.into_inner());
        if end.is_none() {
            *end = Some((Instant::now(), outcome));
        }
    }

    /// Records the HTTP status answered to the client; the last call wins.
    pub fn set_status(&self, status: u16) {
        self.0.status.store(status, Ordering::Relaxed);
    }

    /// Whether an outcome was already recorded.
    pub fn is_finished(&self) -> bool {
        self.0
            .end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Marks the end of the response to the client (sent to its end, or dropped). The record's
    /// duration stops here even when someone (a process worker's log reader, catching its last
    /// lines) holds the invocation a little longer. The first call counts.
    pub fn response_done(&self) {
        let us = u64::try_from(self.0.start.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let _ = self.0.response_end_us.compare_exchange(
            0,
            us.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Masks the values in `mask` in every log line captured from now on (the function's
    /// secrets, set by the runtime before the function runs).
    pub fn set_log_mask(&self, mask: Arc<crate::mask::LogMask>) {
        self.0.logs.lock().unwrap_or_else(|e| e.into_inner()).mask = Some(mask);
    }

    /// Appends function output; split into lines and bounded per invocation.
    pub fn write_log(&self, stream: Stream, data: &[u8]) {
        self.0
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(stream, data);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let now = Instant::now();
        // Without a mark (callers other than the gateway), the last holder's drop is the end.
        let response_end = match self.response_end_us.load(Ordering::Relaxed) {
            0 => now,
            us => self.start + Duration::from_micros(us - 1),
        };
        let (end, outcome) = self
            .end
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or((now, Outcome::Cancelled));
        let status = match self.status.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        };
        let logs = self.logs.get_mut().unwrap_or_else(|e| e.into_inner());
        logs.flush(&self.meta.id);
        let rec = FinishedInvocation {
            meta: self.meta.clone(),
            started_at: self.started_at,
            // The response body may end after the function: count until the later of the two.
            duration: response_end.max(end).duration_since(self.start),
            outcome,
            status,
            cold: self.cold.load(Ordering::Relaxed),
            init_ms: match self.init_ms.load(Ordering::Relaxed) {
                u64::MAX => None,
                ms => Some(ms),
            },
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            outbound_requests: self.outbound_requests.load(Ordering::Relaxed),
            outbound_bytes_out: self.outbound_bytes_out.load(Ordering::Relaxed),
            outbound_bytes_in: self.outbound_bytes_in.load(Ordering::Relaxed),
            logs_truncated: logs.truncated,
            logs: std::mem::take(&mut logs.entries),
        };
        self.sink.offer(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> InvocationMeta {
        InvocationMeta {
            id: InvocationId::new(),
            app: "a".into(),
            function: "f".into(),
            revision: 1,
            trigger: "http",
        }
    }

    #[test]
    fn record_emitted_once_when_last_clone_drops() {
        let (sink, rx) = record_channel(4);
        let inv = Invocation::start(meta(), &sink);
        let other = inv.clone();
        inv.write_log(Stream::Stdout, b"hello\nwor");
        inv.write_log(Stream::Stdout, b"ld\npartial");
        inv.finish(Outcome::Trap, None);
        inv.set_status(500);
        inv.add_bytes_out(3);
        inv.add_outbound(1, 10, 100);
        other.add_outbound(2, 5, 0);
        assert_eq!(inv.outbound_requests(), 3);
        drop(inv);
        assert!(
            rx.try_recv().is_err(),
            "emitted before the last clone dropped"
        );
        drop(other);
        let rec = rx.try_recv().unwrap();
        assert_eq!(rec.outcome, Outcome::Trap);
        assert_eq!(rec.status, Some(500));
        assert_eq!(rec.bytes_out, 3);
        assert_eq!(
            (
                rec.outbound_requests,
                rec.outbound_bytes_out,
                rec.outbound_bytes_in
            ),
            (3, 15, 100)
        );
        let lines: Vec<_> = rec.logs.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(lines, ["hello", "world", "partial"]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn logs_are_bounded_with_a_marker() {
        let (sink, rx) = record_channel(4);
        let inv = Invocation::start(meta(), &sink);
        for _ in 0..(limits::MAX_LOG_LINES_PER_INVOCATION + 50) {
            inv.write_log(Stream::Stderr, b"spam\n");
        }
        drop(inv);
        let rec = rx.try_recv().unwrap();
        assert!(rec.logs_truncated);
        assert_eq!(rec.logs.len(), limits::MAX_LOG_LINES_PER_INVOCATION + 1);
        let marker = &rec.logs.last().unwrap().line;
        assert_eq!(
            *marker,
            format!(
                "[nubo] 50 lines of invocation {} were dropped (the 1,000 lines / 64 KiB cap)",
                rec.meta.id
            )
        );
        assert_eq!(rec.outcome, Outcome::Cancelled);
    }

    #[test]
    fn an_unfinished_line_after_the_cap_counts_as_one_dropped_line() {
        let (sink, rx) = record_channel(4);
        let inv = Invocation::start(meta(), &sink);
        for _ in 0..limits::MAX_LOG_LINES_PER_INVOCATION {
            inv.write_log(Stream::Stdout, b"kept\n");
        }
        inv.write_log(Stream::Stdout, b"cut\npart");
        inv.write_log(Stream::Stdout, b"ial");
        drop(inv);
        let rec = rx.try_recv().unwrap();
        let marker = &rec.logs.last().unwrap().line;
        assert!(
            marker.starts_with("[nubo] 2 lines of invocation"),
            "{marker}"
        );
    }

    #[test]
    fn level_names_are_normalized() {
        assert_eq!(normalize_level("WARNING"), Some("warn"));
        assert_eq!(normalize_level("Err"), Some("error"));
        assert_eq!(normalize_level("fatal"), Some("error"));
        assert_eq!(normalize_level("information"), Some("info"));
        assert_eq!(normalize_level("trace"), Some("trace"));
        assert_eq!(normalize_level("loud"), None);
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn full_sink_counts_drops() {
        let (sink, _rx) = record_channel(1);
        drop(Invocation::start(meta(), &sink));
        drop(Invocation::start(meta(), &sink));
        assert_eq!(sink.stats().sent.load(Ordering::Relaxed), 1);
        assert_eq!(sink.stats().dropped.load(Ordering::Relaxed), 1);
    }
}
