//! Trace export over OTLP/HTTP: spans built from finished invocations, batched by a background
//! task and posted as protobuf `ExportTraceServiceRequest`s to `{endpoint}/v1/traces`.
//!
//! Spans are not built while an invocation runs. The invocation keeps a few ids and offsets
//! (and a bounded list of its outbound calls); when its record is emitted, those are offered to
//! a bounded channel with `try_send`, and the exporter task turns them into spans. A full
//! channel or a failed export drops spans and counts them; requests never wait on the exporter.
//!
//! The messages come from `opentelemetry-proto` and are encoded with `prost`, and the request
//! goes out through the hyper client already in the tree. The OpenTelemetry SDK and its OTLP
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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
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
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
        }
        // Gather what arrives shortly after, up to a full batch.
        let gather = tokio::time::sleep(BATCH_WAIT);
        tokio::pin!(gather);
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                biased;
                () = &mut gather => break,
                n = rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        break;
                    }
                }
            }
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
    let spans: Vec<Span> = batch.drain(..).flat_map(|f| spans_of(&f)).collect();
    let count = spans.len() as u64;
    let body = export_request(spans).encode_to_vec();
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

/// The protobuf request carrying `spans` for the `nubo` service.
pub(crate) fn export_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "nubo")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The spans of one invocation: the invocation itself, then its phases (queueing,
/// instantiation or cold start, execution) and its outbound calls as children.
pub(crate) fn spans_of(f: &FinishedSpans) -> Vec<Span> {
    let ctx = &f.trace;
    let start = unix_nanos(f.started_at);
    let at = |d: Duration| start.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let end = at(f.duration);
    let trace_id = ctx.trace_id.to_vec();
    let tracestate = ctx.tracestate.as_deref().unwrap_or_default().to_string();
    let flags = u32::from(ctx.sampled);
    let failed = f.outcome != Outcome::Ok || f.status.is_some_and(|s| s >= 500);
    let kind = match f.meta.trigger {
        "http" | "invoke" => span::SpanKind::Server,
        _ => span::SpanKind::Consumer,
    };
    let mut attributes = vec![
        text("faas.invocation_id", &f.meta.id.to_string()),
        text("faas.trigger", faas_trigger(f.meta.trigger)),
        text("nubo.trigger", f.meta.trigger),
        text("nubo.app", &f.meta.app),
        text("nubo.function", &f.meta.function),
        int(
            "nubo.revision",
            i64::try_from(f.meta.revision).unwrap_or(i64::MAX),
        ),
        boolean("faas.coldstart", f.cold),
        text("nubo.outcome", f.outcome.as_str()),
    ];
    if let Some(status) = f.status {
        attributes.push(int("http.response.status_code", i64::from(status)));
    }
    let mut spans = Vec::with_capacity(4 + f.outbound.len());
    spans.push(Span {
        trace_id: trace_id.clone(),
        span_id: ctx.span_id.to_vec(),
        trace_state: tracestate.clone(),
        parent_span_id: ctx.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: format!("{} {}", f.meta.app, f.meta.function),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(if failed {
            Status {
                message: f.outcome.as_str().to_string(),
                code: status::StatusCode::Error as i32,
            }
        } else {
            Status::default()
        }),
        ..Default::default()
    });
    let child = |name: &str, from: Duration, to: Duration, attributes: Vec<KeyValue>| Span {
        trace_id: trace_id.clone(),
        span_id: crate::trace::new_span_id().to_vec(),
        trace_state: tracestate.clone(),
        parent_span_id: ctx.span_id.to_vec(),
        flags,
        name: name.to_string(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: at(from),
        end_time_unix_nano: at(to.max(from)),
        attributes,
        ..Default::default()
    };
    // The phases follow each other; a mark that was not made leaves its phase out.
    let queued_until = f.dispatched_after.map(|d| d.min(f.duration));
    if let Some(d) = queued_until {
        spans.push(child("queue", Duration::ZERO, d, Vec::new()));
    }
    let ready_at = f.running_after.map(|r| r.min(f.duration));
    if let Some(r) = ready_at {
        let from = queued_until.unwrap_or_default().min(r);
        let name = if f.cold { "cold start" } else { "instantiate" };
        spans.push(child(
            name,
            from,
            r,
            vec![boolean("faas.coldstart", f.cold)],
        ));
    }
    let run_from = ready_at.or(queued_until).unwrap_or_default();
    spans.push(child("execute", run_from, f.duration, Vec::new()));
    for call in &f.outbound {
        let mut attributes = vec![
            text("http.request.method", &call.method),
            text("url.full", &call.target),
        ];
        if let Some(status) = call.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        let failed = call.status.is_none_or(|s| s >= 500);
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: call.span_id.to_vec(),
            trace_state: tracestate.clone(),
            parent_span_id: ctx.span_id.to_vec(),
            flags,
            name: call.method.clone(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: at(call.start),
            end_time_unix_nano: at(call.end.max(call.start)),
            attributes,
            status: failed.then(|| Status {
                message: String::new(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        });
    }
    spans
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

fn text(key: &str, value: &str) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attr(key, any_value::Value::IntValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    attr(key, any_value::Value::BoolValue(value))
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_core::InvocationId;

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
    fn the_request_decodes_with_the_service_name() {
        let bytes = export_request(spans_of(&finished(Some(1), Some(2)))).encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &back.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0],
            text("service.name", "nubo")
        );
        assert_eq!(rs.scope_spans[0].spans.len(), 5);
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
