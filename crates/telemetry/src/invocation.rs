//! The in-flight invocation handle. The gateway creates it, the runtime adds what only it knows
//! (cold start, outcome, log lines), the response body adds bytes out; when the last clone is
//! dropped — after the function finished and the response body ended — the record is emitted.
//! It also carries the invocation's trace context and, when its trace is exported, the spans of
//! its outbound calls, handed to the trace exporter with the record.

use crate::otlp::{ChildSpan, FinishedSpans, MAX_OUTBOUND_SPANS, Tracer};
use crate::trace::TraceContext;
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
    /// The memory the function was given (its `memory` limit), when the runtime said.
    pub memory_limit_bytes: Option<u64>,
    /// The most memory the invocation used, where the runtime can measure it: a wasm
    /// instance's linear-memory high-water mark, a process worker's cgroup high-water mark.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time spent running the function, where the runtime can measure it.
    pub cpu_time: Option<Duration>,
    /// From the start to the moment the invocation got its concurrency slot (the end of its
    /// wait in the dispatcher's queue), when marked.
    pub dispatched_after: Option<Duration>,
    /// From the start to the moment the function began to run: its instance or worker was ready
    /// (the end of instantiation or cold start), when marked.
    pub running_after: Option<Duration>,
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
    /// Exports the spans of sampled invocations, when tracing is on.
    tracer: Option<Tracer>,
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

    /// The same sink, also handing the spans of sampled invocations to `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Whether invocations' spans are exported (the server has an OTLP endpoint).
    pub fn tracing(&self) -> bool {
        self.tracer.is_some()
    }

    fn offer(&self, rec: FinishedInvocation, trace: Option<(TraceContext, Vec<ChildSpan>)>) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&rec);
        }
        if let (Some(tracer), Some((trace, outbound))) = (&self.tracer, trace) {
            tracer.offer(FinishedSpans {
                trace,
                meta: rec.meta.clone(),
                started_at: rec.started_at,
                duration: rec.duration,
                dispatched_after: rec.dispatched_after,
                running_after: rec.running_after,
                outcome: rec.outcome,
                status: rec.status,
                cold: rec.cold,
                outbound,
            });
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
            tracer: None,
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
    /// Bytes; 0 until known.
    memory_limit: AtomicU64,
    /// Bytes; 0 until measured.
    peak_memory: AtomicU64,
    /// Nanoseconds of CPU time.
    cpu_ns: AtomicU64,
    /// Whether any CPU time was reported (a measured zero is still a measurement).
    cpu_known: AtomicBool,
    /// Microseconds from `start`, plus one; 0 until marked.
    dispatched_us: AtomicU64,
    /// Microseconds from `start`, plus one; 0 until marked.
    running_us: AtomicU64,
    logs: Mutex<LogBuf>,
    /// The trace the invocation runs in, when it has one.
    trace: Option<TraceContext>,
    /// Spans of its outbound calls; filled only while its trace is recorded.
    outbound_spans: Mutex<Vec<ChildSpan>>,
    sink: RecordSink,
}

/// An outbound call in progress: the context its request carries, and when it began.
#[derive(Debug)]
pub struct OutboundSpan {
    context: TraceContext,
    start: Instant,
    /// Whether the call becomes a span of its own (else its request carries the invocation's
    /// context unchanged).
    recorded: bool,
}

impl OutboundSpan {
    /// The `traceparent` for the call's request.
    pub fn traceparent(&self) -> String {
        self.context.traceparent()
    }

    /// The `tracestate` for the call's request, if the trace carries one.
    pub fn tracestate(&self) -> Option<&str> {
        self.context.tracestate.as_deref()
    }
}

/// A handle on one invocation in flight. Clones share state; the record is emitted when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Invocation(Arc<Inner>);

impl Invocation {
    /// Starts the clock for a new invocation.
    pub fn start(meta: InvocationMeta, sink: &RecordSink) -> Self {
        Invocation::start_traced(meta, sink, None)
    }

    /// Starts the clock for a new invocation that runs in `trace` (see
    /// [`TraceContext::for_invocation`]).
    pub fn start_traced(
        meta: InvocationMeta,
        sink: &RecordSink,
        trace: Option<TraceContext>,
    ) -> Self {
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
            memory_limit: AtomicU64::new(0),
            peak_memory: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            cpu_known: AtomicBool::new(false),
            dispatched_us: AtomicU64::new(0),
            running_us: AtomicU64::new(0),
            logs: Mutex::new(LogBuf::default()),
            trace,
            outbound_spans: Mutex::new(Vec::new()),
            sink: sink.clone(),
        }))
    }

    /// The trace the invocation runs in: its span is the parent named by the `traceparent`
    /// the function is given.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.0.trace.as_ref()
    }

    /// Whether the invocation's spans are exported: its trace is sampled and the server
    /// exports traces.
    pub fn recording(&self) -> bool {
        self.0.trace.as_ref().is_some_and(|t| t.sampled) && self.0.sink.tracing()
    }

    /// Begins an outbound call: a child span when the invocation is recorded, else the
    /// invocation's own context passed on. `None` when the invocation has no trace.
    pub fn outbound_span(&self) -> Option<OutboundSpan> {
        let trace = self.0.trace.as_ref()?;
        let recorded = self.recording();
        Some(OutboundSpan {
            context: if recorded {
                trace.child()
            } else {
                trace.clone()
            },
            start: Instant::now(),
            recorded,
        })
    }

    /// Ends an outbound call to `target` (`scheme://host:port`) that got `status` (none when it
    /// failed). At most [`MAX_OUTBOUND_SPANS`] calls are kept per invocation.
    pub fn end_outbound(
        &self,
        span: OutboundSpan,
        method: &str,
        target: &str,
        status: Option<u16>,
    ) {
        if !span.recorded {
            return;
        }
        let mut spans = self
            .0
            .outbound_spans
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if spans.len() >= MAX_OUTBOUND_SPANS {
            return;
        }
        spans.push(ChildSpan {
            span_id: span.context.span_id,
            method: method.to_string(),
            target: target.to_string(),
            start: span.start.saturating_duration_since(self.0.start),
            end: self.0.start.elapsed(),
            status,
        });
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

    /// Records the memory the function was given (its configured limit), in bytes.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.0.memory_limit.store(bytes, Ordering::Relaxed);
    }

    /// Reports memory in use, in bytes; the record keeps the highest value reported.
    pub fn observe_memory(&self, bytes: u64) {
        self.0.peak_memory.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Adds CPU time spent running the function; reports add up.
    pub fn add_cpu_time(&self, cpu: Duration) {
        let ns = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.0.cpu_ns.fetch_add(ns, Ordering::Relaxed);
        self.0.cpu_known.store(true, Ordering::Relaxed);
    }

    /// Marks the end of the wait for a concurrency slot. The first call counts.
    pub fn mark_dispatched(&self) {
        mark_once(&self.0.dispatched_us, self.0.start);
    }

    /// Marks the moment the function starts running, its instance or worker ready. The first
    /// call counts.
    pub fn mark_running(&self) {
        mark_once(&self.0.running_us, self.0.start);
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

/// Stores the time since `start` in `slot` (microseconds plus one) unless it is already set.
fn mark_once(slot: &AtomicU64, start: Instant) {
    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
    let _ = slot.compare_exchange(
        0,
        us.saturating_add(1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// The offset stored by [`mark_once`], if any.
fn marked(slot: &AtomicU64) -> Option<Duration> {
    match slot.load(Ordering::Relaxed) {
        0 => None,
        us => Some(Duration::from_micros(us - 1)),
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
            memory_limit_bytes: match self.memory_limit.load(Ordering::Relaxed) {
                0 => None,
                b => Some(b),
            },
            peak_memory_bytes: match self.peak_memory.load(Ordering::Relaxed) {
                0 => None,
                b => Some(b),
            },
            cpu_time: self
                .cpu_known
                .load(Ordering::Relaxed)
                .then(|| Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))),
            dispatched_after: marked(&self.dispatched_us),
            running_after: marked(&self.running_us),
            logs_truncated: logs.truncated,
            logs: std::mem::take(&mut logs.entries),
        };
        let trace = match &self.trace {
            Some(t) if t.sampled && self.sink.tracing() => Some((
                t.clone(),
                std::mem::take(
                    self.outbound_spans
                        .get_mut()
                        .unwrap_or_else(|e| e.into_inner()),
                ),
            )),
            _ => None,
        };
        self.sink.offer(rec, trace);
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
    fn a_recorded_invocation_hands_its_spans_to_the_tracer() {
        let (tracer, mut spans) = Tracer::channel(4);
        let (sink, records) = record_channel(4);
        let sink = sink.with_tracer(tracer);
        let trace = TraceContext::root(true);
        let inv = Invocation::start_traced(meta(), &sink, Some(trace.clone()));
        assert!(inv.recording());
        let call = inv.outbound_span().unwrap();
        let header = call.traceparent();
        inv.end_outbound(call, "GET", "http://example.com:80", Some(204));
        inv.mark_dispatched();
        inv.mark_running();
        inv.finish(Outcome::Ok, None);
        drop(inv);
        assert!(records.try_recv().is_ok(), "the record is still written");
        let got = spans.try_recv().unwrap();
        assert_eq!(got.trace, trace);
        assert_eq!(got.outbound.len(), 1);
        let child = &got.outbound[0];
        // The span the call's traceparent named is the one exported, under the same trace.
        let named = TraceContext::parse_traceparent(header.as_bytes()).unwrap();
        assert_eq!(named.trace_id, trace.trace_id);
        assert_eq!(named.span_id, child.span_id);
        assert_ne!(child.span_id, trace.span_id);
        assert!(child.start <= child.end && child.end <= got.duration);
        assert_eq!((child.method.as_str(), child.status), ("GET", Some(204)));
        assert!(got.dispatched_after.unwrap() <= got.running_after.unwrap());
    }

    #[test]
    fn unsampled_or_untraced_invocations_send_no_spans() {
        let (tracer, mut spans) = Tracer::channel(4);
        let (sink, _records) = record_channel(4);
        let sink = sink.with_tracer(tracer);
        let mut unsampled = TraceContext::root(false);
        unsampled.tracestate = Some("a=1".into());
        let inv = Invocation::start_traced(meta(), &sink, Some(unsampled.clone()));
        assert!(!inv.recording());
        // The call passes the invocation's own context on, unchanged.
        let call = inv.outbound_span().unwrap();
        assert_eq!(call.traceparent(), unsampled.traceparent());
        assert_eq!(call.tracestate(), Some("a=1"));
        inv.end_outbound(call, "GET", "http://example.com:80", Some(200));
        drop(inv);
        let untraced = Invocation::start(meta(), &sink);
        assert!(untraced.outbound_span().is_none());
        drop(untraced);
        assert!(spans.try_recv().is_err());

        // Without a tracer nothing is recorded even for a sampled trace.
        let (plain, _records) = record_channel(4);
        let inv = Invocation::start_traced(meta(), &plain, Some(TraceContext::root(true)));
        assert!(!inv.recording());
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
