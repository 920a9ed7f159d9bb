//! Trace export over OTLP/HTTP: spans built from finished invocations, batched by a background
//! task and posted as protobuf `ExportTraceServiceRequest`s to `{endpoint}/v1/traces`.
//!
//! Spans are not built while an invocation runs. The invocation keeps a few ids and offsets
//! (and a bounded list of its outbound calls); when its record is emitted, those are offered to
//! a bounded channel with `try_send`, and the exporter task turns them into spans. A full
//! channel or a failed export drops spans and counts them; requests never wait on the exporter.
//!
//! The protobuf is written field by field with `prost`'s wire-format helpers (see
//! [`encode_export`]; the tests decode it with the messages `opentelemetry-proto` generates),
//! and the request goes out through the hyper client already in the tree. The OpenTelemetry
//! SDK and its OTLP
//! exporter are not used: they create spans as code runs, with ids and clocks of their own,
//! while these spans are reconstructed afterwards from recorded times and from ids already
//! handed to functions; and their HTTP transport would add a second client stack.

use crate::invocation::InvocationMeta;
use crate::trace::{SpanId, TraceContext};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nubo_core::Outcome;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Finished invocations waiting to become spans. Bounds the memory held when the collector is
/// slow or down: past it, invocations' spans are dropped and counted.
pub const TRACE_QUEUE: usize = 4096;

/// Most invocations whose spans go into one export request. Bounds the size of a request
/// (each invocation is a handful of spans).
const MAX_BATCH: usize = 512;

/// How long the exporter gathers more spans after the first one arrives before it sends, so
/// a busy server sends a few large requests instead of many small ones.
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// How often the exporter looks at its queue while it gathers a batch.
const GATHER_TICK: Duration = Duration::from_millis(10);

/// Longest wait for the collector's answer to one export. Bounds how far a hung collector
/// holds the exporter (spans arriving meanwhile queue up to [`TRACE_QUEUE`], then drop).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most outbound-call spans one invocation keeps. Bounds the memory one invocation's trace
/// holds (an invocation may make `MAX_OUTBOUND_REQUESTS` calls, allowed or refused).
pub const MAX_OUTBOUND_SPANS: usize = 128;

/// The instrumentation scope the spans are reported under.
const SCOPE: &str = "nubo";

/// One outbound call of an invocation, kept until the invocation's spans are built.
#[derive(Debug, Clone)]
pub struct ChildSpan {
    /// The span's id (the one its `traceparent` named).
    pub span_id: SpanId,
    /// Span name (`GET`, as OpenTelemetry's HTTP client spans are named by method).
    pub method: String,
    /// Where the call went: `scheme://host:port`.
    pub target: String,
    /// From the invocation's start to the call's start.
    pub start: Duration,
    /// From the invocation's start to the call's answer (its response head) or failure.
    pub end: Duration,
    /// The status answered, if any.
    pub status: Option<u16>,
}

/// What an invocation's spans are built from.
#[derive(Debug, Clone)]
pub struct FinishedSpans {
    /// The invocation's trace and span.
    pub trace: TraceContext,
    /// Identity.
    pub meta: InvocationMeta,
    /// Start time.
    pub started_at: SystemTime,
    /// Wall time to the end of the response.
    pub duration: Duration,
    /// Start to the concurrency slot, when marked.
    pub dispatched_after: Option<Duration>,
    /// Start to the function running, when marked.
    pub running_after: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// Whether it was a cold start.
    pub cold: bool,
    /// Its outbound calls.
    pub outbound: Vec<ChildSpan>,
}

/// Counters of the exporter.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Invocations whose spans were dropped: the queue was full, or the export failed.
    pub dropped: AtomicU64,
    /// Export requests that failed: the collector refused them, did not answer in time or
    /// could not be reached (each drops the spans of a whole batch).
    pub failed_exports: AtomicU64,
}

/// The sending side of the exporter. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer {
    tx: mpsc::Sender<FinishedSpans>,
    stats: Arc<TraceStats>,
}

impl Tracer {
    /// Counters.
    pub fn stats(&self) -> &Arc<TraceStats> {
        &self.stats
    }

    pub(crate) fn offer(&self, spans: FinishedSpans) {
        if self.tx.try_send(spans).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A tracer whose spans go to the returned receiver instead of an exporter task.
    #[cfg(test)]
    pub(crate) fn channel(capacity: usize) -> (Tracer, mpsc::Receiver<FinishedSpans>) {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::default();
        (Tracer { tx, stats }, rx)
    }
}

/// The exporter task; [`TraceExporter::shutdown`] sends what is queued and stops it.
#[derive(Debug)]
pub struct TraceExporter {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TraceExporter {
    /// Stops taking spans, sends the ones queued (waiting at most `timeout`), and ends.
    pub async fn shutdown(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            self.task.abort();
            tracing::warn!(
                "traces still queued at shutdown were dropped: the collector did not answer in time"
            );
        }
    }
}

/// The URL spans are posted to: `endpoint` itself when it ends in `/v1/traces`, else that path
/// appended (as OTLP's `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let full = if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    };
    let uri: http::Uri = full.parse().map_err(|e| {
        format!(
            "the OTLP endpoint {endpoint:?} is not a URL ({e}); give one like http://127.0.0.1:4318"
        )
    })?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => Err(format!(
            "the OTLP endpoint {endpoint:?} uses https, which the exporter does not speak; point --otlp-endpoint at a collector's plain-HTTP port (e.g. http://127.0.0.1:4318)"
        )),
        _ => Err(format!(
            "the OTLP endpoint {endpoint:?} needs an http:// scheme and a host, like http://127.0.0.1:4318"
        )),
    }
}

/// Starts the exporter for `endpoint` (an OTLP/HTTP base URL, with or without `/v1/traces`).
/// Must be called inside a tokio runtime.
pub fn trace_exporter(endpoint: &str) -> Result<(Tracer, TraceExporter), String> {
    let url = traces_url(endpoint)?;
    let (tx, rx) = mpsc::channel(TRACE_QUEUE);
    let stats = Arc::new(TraceStats::default());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(export_loop(url, rx, stopped, Arc::clone(&stats)));
    Ok((
        Tracer { tx, stats },
        TraceExporter {
            stop: Some(stop),
            task,
        },
    ))
}

async fn export_loop(
    url: http::Uri,
    mut rx: mpsc::Receiver<FinishedSpans>,
    mut stopped: oneshot::Receiver<()>,
    stats: Arc<TraceStats>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
        }
        // Let more arrive without being woken for each one (at thousands of invocations a
        // second that cost more than the export): look every GATHER_TICK until BATCH_WAIT has
        // passed or a full batch is waiting.
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() + rx.len() < MAX_BATCH && tokio::time::Instant::now() < deadline {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    stopping = true;
                    break;
                }
                () = tokio::time::sleep(GATHER_TICK) => {}
            }
        }
        let room = MAX_BATCH - batch.len();
        if room > 0 && !rx.is_empty() {
            rx.recv_many(&mut batch, room).await;
        }
        send(&client, &url, &mut batch, &stats, &mut failing).await;
    }
    // Orderly shutdown: what is queued now goes out, in full batches.
    rx.close();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        send(&client, &url, &mut batch, &stats, &mut failing).await;
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &http::Uri,
    batch: &mut Vec<FinishedSpans>,
    stats: &TraceStats,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let invocations = batch.len() as u64;
    let (body, count) = encode_export(batch);
    batch.clear();
    let request = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)));
    let Ok(request) = request else {
        stats.dropped.fetch_add(invocations, Ordering::Relaxed);
        stats.failed_exports.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let result = tokio::time::timeout(EXPORT_TIMEOUT, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer to its end so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {} s", EXPORT_TIMEOUT.as_secs())));
    match result {
        Ok(()) => {
            stats.exported.fetch_add(count, Ordering::Relaxed);
            if *failing {
                tracing::info!(url = %url, "trace export works again");
                *failing = false;
            }
        }
        Err(error) => {
            stats.dropped.fetch_add(invocations, Ordering::Relaxed);
            stats.failed_exports.fetch_add(1, Ordering::Relaxed);
            // Said once per outage, not once per batch.
            if !*failing {
                tracing::warn!(url = %url, %error, "trace export failed; spans are dropped until the collector answers");
                *failing = true;
            }
        }
    }
}

/// The protobuf `ExportTraceServiceRequest` carrying the spans of `batch` for the `nubo`
/// service, and how many spans it holds.
///
/// The bytes are written straight from the finished invocations, field by field, instead of
/// building `opentelemetry-proto` messages first: those own every id, name and attribute as a
/// separate allocation, which cost more than the encoding itself (about 3 µs per invocation).
/// Field numbers follow `opentelemetry/proto/trace/v1/trace.proto`; the tests decode the
/// output with the generated messages.
pub(crate) fn encode_export(batch: &[FinishedSpans]) -> (Vec<u8>, u64) {
    let mut spans = Vec::with_capacity(batch.len() * 640);
    let mut scratch = SpanScratch::default();
    let mut count = 0;
    for f in batch {
        count += encode_spans(f, &mut spans, &mut scratch);
    }
    // ResourceSpans { resource = 1, scope_spans = 2 }; ScopeSpans { scope = 1, spans = 2 }.
    let mut resource = Vec::new();
    attribute(&mut resource, 1, "service.name", Value::Str("nubo"));
    let mut scope = Vec::new();
    string(&mut scope, 1, SCOPE);
    string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
    let scope_spans_len = field_len(scope.len()) + spans.len();
    let resource_spans_len = field_len(resource.len()) + field_len(scope_spans_len);
    let mut out = Vec::with_capacity(field_len(resource_spans_len));
    header(&mut out, 1, resource_spans_len);
    header(&mut out, 1, resource.len());
    out.extend_from_slice(&resource);
    header(&mut out, 2, scope_spans_len);
    header(&mut out, 1, scope.len());
    out.extend_from_slice(&scope);
    out.extend_from_slice(&spans);
    (out, count)
}

/// Buffers reused from one span to the next.
#[derive(Default)]
struct SpanScratch {
    span: Vec<u8>,
    id: String,
}

/// What a span needs besides its own fields.
struct SpanCommon<'a> {
    trace_id: &'a [u8],
    trace_state: &'a str,
    flags: u32,
}

/// One span's fields that vary.
struct SpanFields<'a> {
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: Name<'a>,
    kind: SpanKind,
    start: u64,
    end: u64,
    /// `None`: no status; `Some(None)`: unset; `Some(Some(message))`: an error.
    status: Option<Option<&'a str>>,
}

/// A span name: one string, or two joined by a space (`app function`).
#[derive(Clone, Copy)]
enum Name<'a> {
    One(&'a str),
    Two(&'a str, &'a str),
}

/// OpenTelemetry's `SpanKind` numbers.
#[derive(Clone, Copy)]
enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Consumer = 5,
}

/// The `StatusCode` of a failed span.
const STATUS_ERROR: u64 = 2;

/// An attribute's value.
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

/// Writes the spans of one invocation into `out` as `ScopeSpans.spans` fields: the invocation
/// itself, then its phases (queueing, instantiation or cold start, execution) and its outbound
/// calls as children. Returns how many it wrote.
fn encode_spans(f: &FinishedSpans, out: &mut Vec<u8>, scratch: &mut SpanScratch) -> u64 {
    let ctx = &f.trace;
    let start = unix_nanos(f.started_at);
    let at = |d: Duration| start.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let end = at(f.duration);
    let common = SpanCommon {
        trace_id: &ctx.trace_id,
        trace_state: ctx.tracestate.as_deref().unwrap_or_default(),
        flags: u32::from(ctx.sampled),
    };
    let failed = f.outcome != Outcome::Ok || f.status.is_some_and(|s| s >= 500);
    let kind = match f.meta.trigger {
        "http" | "invoke" => SpanKind::Server,
        _ => SpanKind::Consumer,
    };
    let parent = ctx.parent_span_id;
    let root = SpanFields {
        span_id: &ctx.span_id,
        parent_span_id: parent.as_ref().map_or(&[], |p| p.as_slice()),
        name: Name::Two(&f.meta.app, &f.meta.function),
        kind,
        start,
        end,
        status: Some(failed.then(|| f.outcome.as_str())),
    };
    scratch.id.clear();
    let _ = write!(scratch.id, "{}", f.meta.id);
    let SpanScratch { span, id } = scratch;
    let mut count = 1;
    write_span(out, span, &common, &root, |a| {
        attribute(a, 9, "faas.invocation_id", Value::Str(id.as_str()));
        attribute(
            a,
            9,
            "faas.trigger",
            Value::Str(faas_trigger(f.meta.trigger)),
        );
        attribute(a, 9, "nubo.trigger", Value::Str(f.meta.trigger));
        attribute(a, 9, "nubo.app", Value::Str(&f.meta.app));
        attribute(a, 9, "nubo.function", Value::Str(&f.meta.function));
        let revision = i64::try_from(f.meta.revision).unwrap_or(i64::MAX);
        attribute(a, 9, "nubo.revision", Value::Int(revision));
        attribute(a, 9, "faas.coldstart", Value::Bool(f.cold));
        attribute(a, 9, "nubo.outcome", Value::Str(f.outcome.as_str()));
        if let Some(status) = f.status {
            attribute(
                a,
                9,
                "http.response.status_code",
                Value::Int(i64::from(status)),
            );
        }
    });
    let mut child = |name: &str, from: Duration, to: Duration, cold: Option<bool>| {
        let id = crate::trace::new_span_id();
        let fields = SpanFields {
            span_id: &id,
            parent_span_id: &ctx.span_id,
            name: Name::One(name),
            kind: SpanKind::Internal,
            start: at(from),
            end: at(to.max(from)),
            status: None,
        };
        write_span(out, span, &common, &fields, |a| {
            if let Some(cold) = cold {
                attribute(a, 9, "faas.coldstart", Value::Bool(cold));
            }
        });
        count += 1;
    };
    // The phases follow each other; a mark that was not made leaves its phase out.
    let queued_until = f.dispatched_after.map(|d| d.min(f.duration));
    if let Some(d) = queued_until {
        child("queue", Duration::ZERO, d, None);
    }
    let ready_at = f.running_after.map(|r| r.min(f.duration));
    if let Some(r) = ready_at {
        let from = queued_until.unwrap_or_default().min(r);
        let name = if f.cold { "cold start" } else { "instantiate" };
        child(name, from, r, Some(f.cold));
    }
    let run_from = ready_at.or(queued_until).unwrap_or_default();
    child("execute", run_from, f.duration, None);
    for call in &f.outbound {
        let failed = call.status.is_none_or(|s| s >= 500);
        let fields = SpanFields {
            span_id: &call.span_id,
            parent_span_id: &ctx.span_id,
            name: Name::One(&call.method),
            kind: SpanKind::Client,
            start: at(call.start),
            end: at(call.end.max(call.start)),
            status: failed.then_some(Some("")),
        };
        write_span(out, span, &common, &fields, |a| {
            attribute(a, 9, "http.request.method", Value::Str(&call.method));
            attribute(a, 9, "url.full", Value::Str(&call.target));
            if let Some(status) = call.status {
                attribute(
                    a,
                    9,
                    "http.response.status_code",
                    Value::Int(i64::from(status)),
                );
            }
        });
        count += 1;
    }
    count
}

/// Writes one `Span` (field 2 of `ScopeSpans`) into `out`, its body built in `span` first so
/// its length is known; `attributes` writes the span's attributes (field 9).
fn write_span(
    out: &mut Vec<u8>,
    span: &mut Vec<u8>,
    common: &SpanCommon<'_>,
    fields: &SpanFields<'_>,
    attributes: impl FnOnce(&mut Vec<u8>),
) {
    span.clear();
    bytes(span, 1, common.trace_id);
    bytes(span, 2, fields.span_id);
    string(span, 3, common.trace_state);
    bytes(span, 4, fields.parent_span_id);
    match fields.name {
        Name::One(name) => string(span, 5, name),
        Name::Two(a, b) => {
            header(span, 5, a.len() + 1 + b.len());
            span.extend_from_slice(a.as_bytes());
            span.push(b' ');
            span.extend_from_slice(b.as_bytes());
        }
    }
    varint(span, 6, fields.kind as u64);
    fixed64(span, 7, fields.start);
    fixed64(span, 8, fields.end);
    attributes(span);
    if let Some(error) = fields.status {
        // Status { message = 2, code = 3 }; an unset status is an empty message.
        let (message, code) = error.map_or(("", 0), |m| (m, STATUS_ERROR));
        let len = string_len(message) + varint_len(code);
        header(span, 15, len);
        string(span, 2, message);
        varint(span, 3, code);
    }
    if common.flags != 0 {
        tag(span, 16, WireType::ThirtyTwoBit);
        span.extend_from_slice(&common.flags.to_le_bytes());
    }
    header(out, 2, span.len());
    out.extend_from_slice(span);
}

/// Writes `KeyValue { key = 1, value = 2 }` as field `field` of the message being built.
fn attribute(out: &mut Vec<u8>, field: u32, key: &str, value: Value<'_>) {
    // AnyValue { string_value = 1, bool_value = 2, int_value = 3 }: a oneof, so written even
    // when it is the type's default.
    let value_len = match value {
        Value::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Int(i) => 1 + encoded_len_varint(i as u64),
        Value::Bool(_) => 2,
    };
    header(out, field, string_len(key) + field_len(value_len));
    string(out, 1, key);
    header(out, 2, value_len);
    match value {
        Value::Str(s) => {
            header(out, 1, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Int(i) => {
            tag(out, 3, WireType::Varint);
            encode_varint(i as u64, out);
        }
        Value::Bool(b) => {
            tag(out, 2, WireType::Varint);
            out.push(u8::from(b));
        }
    }
}

fn tag(out: &mut Vec<u8>, field: u32, wire: WireType) {
    encode_key(field, wire, out);
}

/// The key and length of a length-delimited field whose body (`len` bytes) follows.
fn header(out: &mut Vec<u8>, field: u32, len: usize) {
    tag(out, field, WireType::LengthDelimited);
    encode_varint(len as u64, out);
}

/// Bytes a length-delimited field with a `len`-byte body takes (fields up to 15: one-byte key).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A `bytes` field; empty ones are left out, as proto3 does.
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        header(out, field, value.len());
        out.extend_from_slice(value);
    }
}

fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn string_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(value.len())
    }
}

/// A varint field; zero is left out, as proto3 does.
fn varint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, WireType::Varint);
        encode_varint(value, out);
    }
}

fn varint_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, WireType::SixtyFourBit);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// OpenTelemetry's `faas.trigger` values for Nubo's trigger kinds.
fn faas_trigger(kind: &str) -> &'static str {
    match kind {
        "http" => "http",
        "cron" => "timer",
        "queue" | "mqtt" | "nats" => "pubsub",
        "object" => "datasource",
        _ => "other",
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_core::InvocationId;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
    use prost::Message as _;

    /// What a collector decodes from the export of `batch`.
    fn decoded(batch: &[FinishedSpans]) -> ExportTraceServiceRequest {
        let (bytes, count) = encode_export(batch);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            spans.len() as u64,
            count,
            "the count matches the spans written"
        );
        request
    }

    /// The spans of one invocation, as a collector decodes them.
    fn spans_of(f: &FinishedSpans) -> Vec<Span> {
        let mut request = decoded(std::slice::from_ref(f));
        request.resource_spans.remove(0).scope_spans.remove(0).spans
    }

    fn finished(dispatched: Option<u64>, running: Option<u64>) -> FinishedSpans {
        let trace = TraceContext::parse_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap()
        .child();
        FinishedSpans {
            trace,
            meta: InvocationMeta {
                id: InvocationId::new(),
                app: "shop".into(),
                function: "api".into(),
                revision: 3,
                trigger: "http",
            },
            started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(50),
            dispatched_after: dispatched.map(Duration::from_millis),
            running_after: running.map(Duration::from_millis),
            outcome: Outcome::Ok,
            status: Some(200),
            cold: true,
            outbound: vec![ChildSpan {
                span_id: [7; 8],
                method: "GET".into(),
                target: "http://127.0.0.1:9000".into(),
                start: Duration::from_millis(20),
                end: Duration::from_millis(30),
                status: Some(204),
            }],
        }
    }

    fn attr_of<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn children_nest_inside_the_invocation_and_follow_each_other() {
        let f = finished(Some(5), Some(12));
        let spans = spans_of(&f);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop api", "queue", "cold start", "execute", "GET"]);
        let root = &spans[0];
        assert_eq!(root.span_id, f.trace.span_id.to_vec());
        assert_eq!(
            root.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(
            root.end_time_unix_nano - root.start_time_unix_nano,
            50_000_000
        );
        for child in &spans[1..] {
            assert_eq!(child.trace_id, root.trace_id);
            assert_eq!(child.parent_span_id, root.span_id);
            assert_ne!(child.span_id, root.span_id);
            assert!(child.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= root.end_time_unix_nano);
            assert!(child.start_time_unix_nano <= child.end_time_unix_nano);
        }
        let ms = |s: &Span| {
            (
                (s.start_time_unix_nano - root.start_time_unix_nano) / 1_000_000,
                (s.end_time_unix_nano - root.start_time_unix_nano) / 1_000_000,
            )
        };
        assert_eq!(ms(&spans[1]), (0, 5));
        assert_eq!(ms(&spans[2]), (5, 12));
        assert_eq!(ms(&spans[3]), (12, 50));
        assert_eq!(ms(&spans[4]), (20, 30));
        assert_eq!(spans[4].span_id, vec![7; 8], "the id its traceparent named");
        assert_eq!(spans[4].kind, span::SpanKind::Client as i32);
        assert_eq!(
            attr_of(root, "faas.trigger"),
            Some(&any_value::Value::StringValue("http".into()))
        );
        assert_eq!(
            attr_of(root, "http.response.status_code"),
            Some(&any_value::Value::IntValue(200))
        );
        assert_eq!(
            attr_of(root, "faas.coldstart"),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            root.status.as_ref().unwrap().code,
            status::StatusCode::Unset as i32
        );
    }

    #[test]
    fn unmarked_phases_are_left_out_and_failures_marked() {
        let mut f = finished(None, None);
        f.outcome = Outcome::Trap;
        f.status = Some(500);
        f.outbound.clear();
        let spans = spans_of(&f);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop api", "execute"]);
        assert_eq!(spans[1].start_time_unix_nano, spans[0].start_time_unix_nano);
        assert_eq!(
            spans[0].status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn the_request_decodes_with_the_service_name_and_every_span() {
        let mut traced = finished(Some(1), Some(2));
        traced.trace.tracestate = Some("vendor=abc".into());
        let plain = finished(None, Some(2));
        let request = decoded(&[traced.clone(), plain]);
        let rs = &request.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        assert_eq!(
            service.value.as_ref().and_then(|v| v.value.as_ref()),
            Some(&any_value::Value::StringValue("nubo".into()))
        );
        let scope = &rs.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "nubo");
        // The first: itself, queue, cold start, execute, one call; the second has no queue.
        assert_eq!(scope.spans.len(), 9);
        let first = &scope.spans[..5];
        assert!(
            first
                .iter()
                .all(|s| s.trace_state == "vendor=abc" && s.flags == 1)
        );
        assert_eq!(
            attr_of(&first[0], "faas.invocation_id"),
            Some(&any_value::Value::StringValue(traced.meta.id.to_string()))
        );
        assert_eq!(
            attr_of(&first[0], "nubo.revision"),
            Some(&any_value::Value::IntValue(3))
        );
        assert_eq!(
            attr_of(&first[4], "url.full"),
            Some(&any_value::Value::StringValue(
                "http://127.0.0.1:9000".into()
            ))
        );
        assert!(first[4].status.is_none(), "a 204 answer is no failure");
        assert_eq!(scope.spans[5].trace_id, traced.trace.trace_id.to_vec());
        assert_eq!(scope.spans[5].name, "shop api");
    }

    #[test]
    fn a_failed_call_and_a_warm_start_are_said_so() {
        let mut f = finished(None, Some(2));
        f.cold = false;
        f.outbound[0].status = None;
        let spans = spans_of(&f);
        assert_eq!(spans[1].name, "instantiate");
        assert_eq!(
            attr_of(&spans[1], "faas.coldstart"),
            Some(&any_value::Value::BoolValue(false))
        );
        let call = spans.last().unwrap();
        assert_eq!(
            call.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!(attr_of(call, "http.response.status_code"), None);
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        for (given, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "http://127.0.0.1:4318/v1/traces",
                "http://127.0.0.1:4318/v1/traces",
            ),
            ("http://collector/otel", "http://collector/otel/v1/traces"),
        ] {
            assert_eq!(traces_url(given).unwrap().to_string(), url, "{given}");
        }
        assert!(
            traces_url("https://collector:4318")
                .unwrap_err()
                .contains("https")
        );
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("not a url").is_err());
    }
}
