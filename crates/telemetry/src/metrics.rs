//! Prometheus metrics of one server, served as text at `/_nubo/metrics`.
//!
//! Two kinds of figures live here. Counters and histograms that events move (invocations,
//! their durations, cold starts, deploys, store operations) sit in a [`Metrics`] registry and
//! are updated through pre-built families when an invocation's record is emitted. Gauges whose
//! truth lives elsewhere (in-flight, queued, instances, the async backlog, the dead-letter
//! queue, trigger lag, memory) are not kept here at all: the scraper gathers a [`Gauges`]
//! snapshot and [`Metrics::render`] writes both, so nothing costs the server anything
//! between scrapes. Two counts live in atomics their owners share with the registry, read at
//! render: wasm linear memory ([`Metrics::track_wasm_memory`]) and the trace exporter's
//! counters ([`Metrics::track_traces`]).
//!
//! Label cardinality is bounded: `app`, `function` and `revision` appear only as far as
//! [`MetricsLabels`] allows, and the other labels (`outcome`, `trigger`, `runtime`, `op`) take
//! values from small fixed sets. Invocation ids and paths are never labels.

use crate::invocation::FinishedInvocation;
use crate::otlp::TraceStats;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The two exposition formats `/_nubo/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 text, for scrapers that ask for it (Prometheus does by default).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4 (`promtool check metrics`, curl, older
    /// scrapers).
    Text,
}

impl Exposition {
    /// OpenMetrics when `accept` (an `Accept` header value) names it, else the classic text.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Exposition::OpenMetrics,
            _ => Exposition::Text,
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text as the classic Prometheus text format: a counter's `HELP` and
/// `TYPE` name its `_total` samples, and `UNIT` and `EOF` lines go (that format has neither).
fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str(&format!("# HELP {name}_total{text}\n"));
            }
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Bucket bounds of the invocation duration histogram, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// Bucket bounds of the cold-start duration histogram, in seconds: 1 ms to 30 s.
const COLD_START_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Bucket bounds of the store operation histogram, in seconds: 0.1 ms to 5 s.
const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 5.0,
];

/// A store operation timed in `nubo_store_operation_duration_seconds`; its `op` label.
///
/// Each is timed once per transaction or read, never per invocation, so timing costs one
/// pair of clock reads per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// The record writer's batch transaction (invocation records, their log lines and usage
    /// aggregates), from its begin to its commit.
    RecordsCommit,
    /// The group commit of async invocations submitted together, from its begin to its
    /// commit (the fsync that makes them durable included).
    EventsCommit,
    /// One of the reads behind the async-queue and dead-letter gauges, made at each scrape.
    ScrapeRead,
}

impl StoreOp {
    /// The value of the `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::RecordsCommit => "records_commit",
            StoreOp::EventsCommit => "events_commit",
            StoreOp::ScrapeRead => "scrape_read",
        }
    }
}

/// How far metrics break figures down by app, function and revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsLabels {
    /// No `app`, `function` or `revision` label: server-wide figures only.
    None,
    /// An `app` label.
    App,
    /// `app` and `function` labels.
    #[default]
    Function,
    /// `app`, `function` and `revision` labels (one series per deployed revision).
    Revision,
}

impl std::str::FromStr for MetricsLabels {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(MetricsLabels::None),
            "app" => Ok(MetricsLabels::App),
            "function" => Ok(MetricsLabels::Function),
            "revision" => Ok(MetricsLabels::Revision),
            other => Err(format!(
                "unknown metrics labels \"{other}\"; use \"none\", \"app\", \"function\" or \"revision\""
            )),
        }
    }
}

/// The `app`, `function` and `revision` labels of one series, each present only when the
/// configured [`MetricsLabels`] allows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    app: Option<Arc<str>>,
    function: Option<Arc<str>>,
    revision: Option<u64>,
}

impl EncodeLabelSet for Scope {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(app) = &self.app {
            ("app", &**app).encode(encoder.encode_label())?;
        }
        if let Some(function) = &self.function {
            ("function", &**function).encode(encoder.encode_label())?;
        }
        if let Some(revision) = self.revision {
            ("revision", revision).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A scope plus one label from a fixed set of `&'static str` values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tagged<const N: usize> {
    scope: Scope,
    tags: [(&'static str, &'static str); N],
}

impl<const N: usize> EncodeLabelSet for Tagged<N> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.scope.encode(encoder)?;
        for tag in &self.tags {
            tag.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A scope plus one label whose value is owned (a trigger kind or a runtime, read at scrape
/// time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Named {
    scope: Scope,
    key: &'static str,
    value: String,
}

impl EncodeLabelSet for Named {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.scope.encode(encoder)?;
        (self.key, self.value.as_str()).encode(encoder.encode_label())
    }
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn cold_start_histogram() -> Histogram {
    Histogram::new(COLD_START_BUCKETS)
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

/// The server's event-driven metrics and how it labels them. Shared (`Arc`) by the record
/// sink, the deploy follower and the scrape endpoint.
pub struct Metrics {
    labels: MetricsLabels,
    registry: Registry,
    invocations: Family<Tagged<2>, Counter>,
    duration: HistogramFamily<Tagged<1>>,
    cold_starts: Family<Scope, Counter>,
    cold_start_duration: HistogramFamily<Scope>,
    deploys: Family<Scope, Counter>,
    store_operations: HistogramFamily<Tagged<1>>,
    /// The wasm runtime's count of linear memory held by live instances, read at scrape time.
    wasm_memory: OnceLock<Arc<AtomicU64>>,
    /// The trace exporter's counters, read at scrape time (set only with an OTLP endpoint).
    traces: OnceLock<Arc<TraceStats>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the registry, labelling series as `labels` says.
    pub fn new(labels: MetricsLabels) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let invocations = Family::<Tagged<2>, Counter>::default();
        registry.register(
            "nubo_invocations",
            "Invocations finished, by how they ended (outcome) and what started them (trigger)",
            invocations.clone(),
        );
        let duration: HistogramFamily<Tagged<1>> = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "nubo_invocation_duration",
            "Wall time of invocations, from the request to the end of the response",
            Unit::Seconds,
            duration.clone(),
        );
        let cold_starts = Family::<Scope, Counter>::default();
        registry.register(
            "nubo_cold_starts",
            "Invocations that were cold starts (first instantiation, or a new worker)",
            cold_starts.clone(),
        );
        let cold_start_duration: HistogramFamily<Scope> =
            Family::new_with_constructor(cold_start_histogram);
        registry.register_with_unit(
            "nubo_cold_start_duration",
            "Start-up time of process function workers, spawn to first request for work",
            Unit::Seconds,
            cold_start_duration.clone(),
        );
        let deploys = Family::<Scope, Counter>::default();
        registry.register(
            "nubo_deploys",
            "Revisions deployed while this server ran",
            deploys.clone(),
        );
        let store_operations: HistogramFamily<Tagged<1>> =
            Family::new_with_constructor(store_histogram);
        registry.register_with_unit(
            "nubo_store_operation_duration",
            "Latency of store operations by op: record and async-invocation commits, scrape-time reads",
            Unit::Seconds,
            store_operations.clone(),
        );
        Arc::new(Metrics {
            labels,
            registry,
            invocations,
            duration,
            cold_starts,
            cold_start_duration,
            deploys,
            store_operations,
            wasm_memory: OnceLock::new(),
            traces: OnceLock::new(),
        })
    }

    /// Exports `bytes`, the wasm runtime's count of linear memory held by live instances, as
    /// a gauge read at each scrape. The first call counts.
    pub fn track_wasm_memory(&self, bytes: Arc<AtomicU64>) {
        let _ = self.wasm_memory.set(bytes);
    }

    /// Exports the trace exporter's counters (`stats`) as counters read at each scrape. Called
    /// only when traces are exported, so the `nubo_trace_*` counters appear only then. The
    /// first call counts.
    pub fn track_traces(&self, stats: Arc<TraceStats>) {
        let _ = self.traces.set(stats);
    }

    /// How series are labelled.
    pub fn labels(&self) -> MetricsLabels {
        self.labels
    }

    /// The labels of a series for `app`, `function` and `revision`, cut down to what the
    /// configured [`MetricsLabels`] keeps.
    pub fn scope(&self, app: &Arc<str>, function: &Arc<str>, revision: u64) -> Scope {
        let (a, f, r) = match self.labels {
            MetricsLabels::None => (false, false, false),
            MetricsLabels::App => (true, false, false),
            MetricsLabels::Function => (true, true, false),
            MetricsLabels::Revision => (true, true, true),
        };
        Scope {
            app: a.then(|| app.clone()),
            function: f.then(|| function.clone()),
            revision: r.then_some(revision),
        }
    }

    /// The labels of an app-wide series (`app` unless labels are `None`).
    pub fn app_scope(&self, app: &str) -> Scope {
        Scope {
            app: (self.labels != MetricsLabels::None).then(|| Arc::from(app)),
            function: None,
            revision: None,
        }
    }

    /// Counts one finished invocation. Called once per invocation, when its record is
    /// emitted; takes a family's read lock for a lookup and allocates nothing once the series
    /// exists.
    pub fn observe(&self, rec: &FinishedInvocation) {
        let scope = self.scope(&rec.meta.app, &rec.meta.function, rec.meta.revision);
        let trigger = rec.meta.trigger;
        self.invocations
            .get_or_create(&Tagged {
                scope: scope.clone(),
                tags: [("outcome", rec.outcome.as_str()), ("trigger", trigger)],
            })
            .inc();
        self.duration
            .get_or_create(&Tagged {
                scope: scope.clone(),
                tags: [("trigger", trigger)],
            })
            .observe(rec.duration.as_secs_f64());
        if rec.cold {
            self.cold_starts.get_or_create(&scope).inc();
            if let Some(ms) = rec.init_ms {
                self.cold_start_duration
                    .get_or_create(&scope)
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Counts `n` revisions of `app` deployed.
    pub fn deployed(&self, app: &str, n: u64) {
        self.deploys.get_or_create(&self.app_scope(app)).inc_by(n);
    }

    /// Records how long one store operation of kind `op` took.
    pub fn observe_store_operation(&self, op: StoreOp, took: Duration) {
        self.store_operations
            .get_or_create(&Tagged {
                scope: Scope::default(),
                tags: [("op", op.as_str())],
            })
            .observe(took.as_secs_f64());
    }

    /// Writes every metric in `format`: the registry's counters and histograms, then the
    /// scrape-time `gauges`.
    pub fn render(&self, gauges: &Gauges, format: Exposition) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(16 * 1024);
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &self.gauge_registry(gauges))?;
        encode_eof(&mut out)?;
        Ok(match format {
            Exposition::OpenMetrics => out,
            Exposition::Text => to_classic_text(&out),
        })
    }

    /// A registry holding this scrape's gauges, labelled like the rest.
    fn gauge_registry(&self, g: &Gauges) -> Registry {
        let mut reg = Registry::default();
        let mut in_flight = BTreeMap::<Scope, i64>::new();
        let mut queued = BTreeMap::<Scope, i64>::new();
        let mut throttled = BTreeMap::<Scope, u64>::new();
        let mut instances = BTreeMap::<Named, i64>::new();
        for f in &g.functions {
            let scope = self.scope(&f.app, &f.function, f.revision);
            *in_flight.entry(scope.clone()).or_default() += i64::from(f.in_flight);
            *queued.entry(scope.clone()).or_default() += i64::from(f.queued);
            *throttled.entry(scope.clone()).or_default() += f.throttled;
            *instances
                .entry(Named {
                    scope,
                    key: "runtime",
                    value: f.runtime.to_string(),
                })
                .or_default() += i64::from(f.instances);
        }
        gauge_family(
            &mut reg,
            "nubo_in_flight_invocations",
            "Invocations holding a concurrency slot now (running or streaming their response)",
            None,
            in_flight,
        );
        gauge_family(
            &mut reg,
            "nubo_queued_invocations",
            "Requests waiting for a concurrency slot now",
            None,
            queued,
        );
        let throttled_family = Family::<Scope, Counter>::default();
        for (scope, n) in throttled {
            throttled_family.get_or_create(&scope).inc_by(n);
        }
        reg.register(
            "nubo_throttled",
            "Requests answered 429 throttled since the server started",
            throttled_family,
        );
        gauge_family(
            &mut reg,
            "nubo_instances",
            "Live function instances (wasm: instances running an invocation; process: workers)",
            None,
            instances,
        );
        let dropped = Counter::<u64, AtomicU64>::default();
        dropped.inc_by(g.records_dropped);
        reg.register(
            "nubo_records_dropped",
            "Invocation records dropped because the record writer was behind",
            dropped,
        );
        let backlog = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        backlog.set(clamp(g.async_backlog));
        reg.register(
            "nubo_async_backlog",
            "Async invocations queued or running",
            backlog,
        );
        let age = Gauge::<f64, AtomicU64>::default();
        age.set(g.async_oldest_age.map_or(0.0, |d| d.as_secs_f64()));
        reg.register_with_unit(
            "nubo_async_oldest_age",
            "Age of the oldest queued async invocation (0 when none is queued)",
            Unit::Seconds,
            age,
        );
        let mut dlq = BTreeMap::<Scope, i64>::new();
        for (app, n) in &g.dead_letters {
            *dlq.entry(self.app_scope(app)).or_default() += clamp(*n);
        }
        gauge_family(
            &mut reg,
            "nubo_dlq_size",
            "Async invocations in the dead-letter queue",
            None,
            dlq,
        );
        let mut trigger_backlog = BTreeMap::<Named, i64>::new();
        let mut trigger_lag = BTreeMap::<Named, f64>::new();
        for t in &g.triggers {
            let key = Named {
                scope: self.app_scope(&t.app),
                key: "trigger",
                value: t.kind.clone(),
            };
            if let Some(b) = t.backlog {
                *trigger_backlog.entry(key.clone()).or_default() += clamp(b);
            }
            if let Some(lag) = t.lag {
                let worst = trigger_lag.entry(key).or_default();
                *worst = worst.max(lag.as_secs_f64());
            }
        }
        gauge_family(
            &mut reg,
            "nubo_trigger_backlog",
            "Events waiting at triggers' sources (queue messages, outbox rows, consumer pending)",
            None,
            trigger_backlog,
        );
        let lag_family = Family::<Named, Gauge<f64, AtomicU64>>::default();
        for (key, secs) in trigger_lag {
            lag_family.get_or_create(&key).set(secs);
        }
        reg.register_with_unit(
            "nubo_trigger_lag",
            "Age of the oldest event waiting at a trigger's source (worst trigger of each kind)",
            Unit::Seconds,
            lag_family,
        );
        if let Some(stats) = self.traces.get() {
            for (name, help, count) in [
                (
                    "nubo_trace_spans_exported",
                    "Spans the OTLP collector accepted",
                    &stats.exported,
                ),
                (
                    "nubo_trace_invocations_dropped",
                    "Invocations whose spans were dropped: the trace queue was full or their export failed",
                    &stats.dropped,
                ),
                (
                    "nubo_trace_export_failures",
                    "OTLP export requests that failed: the collector refused them, did not answer in time or could not be reached",
                    &stats.failed_exports,
                ),
            ] {
                let counter = Counter::<u64, AtomicU64>::default();
                counter.inc_by(count.load(Ordering::Relaxed));
                reg.register(name, help, counter);
            }
        }
        if let Some(held) = self.wasm_memory.get() {
            let gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            gauge.set(clamp(held.load(Ordering::Relaxed)));
            reg.register_with_unit(
                "nubo_wasm_linear_memory",
                "Linear memory held by live wasm instances",
                Unit::Bytes,
                gauge,
            );
        }
        if let Some(rss) = g.resident_memory_bytes {
            let gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            gauge.set(clamp(rss));
            reg.register_with_unit(
                "nubo_process_resident_memory",
                "Resident memory of the nubo server process (not its process function workers)",
                Unit::Bytes,
                gauge,
            );
        }
        reg
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn gauge_family<S>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    values: BTreeMap<S, i64>,
) where
    S: EncodeLabelSet + Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<S, Gauge>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    match unit {
        Some(unit) => reg.register_with_unit(name, help, unit, family),
        None => reg.register(name, help, family),
    }
}

/// One function's figures at scrape time.
#[derive(Debug, Clone)]
pub struct FunctionGauges {
    /// App name.
    pub app: Arc<str>,
    /// Function name.
    pub function: Arc<str>,
    /// The revision whose settings are in force.
    pub revision: u64,
    /// `wasm` or `process`.
    pub runtime: &'static str,
    /// Invocations holding a slot.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// Requests answered 429 since the server started.
    pub throttled: u64,
    /// Live instances or workers.
    pub instances: u32,
}

/// One trigger's figures at scrape time.
#[derive(Debug, Clone)]
pub struct TriggerGauges {
    /// App name.
    pub app: String,
    /// Trigger kind (`cron`, `queue`, `object`, `mqtt`, `nats`).
    pub kind: String,
    /// Events waiting at its source, when the source can tell.
    pub backlog: Option<u64>,
    /// Age of the oldest waiting event, when the source can tell.
    pub lag: Option<Duration>,
}

/// The gauges of one scrape, gathered from where they live.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Per function: concurrency and instances.
    pub functions: Vec<FunctionGauges>,
    /// Async invocations queued or running.
    pub async_backlog: u64,
    /// Age of the oldest queued async invocation.
    pub async_oldest_age: Option<Duration>,
    /// Dead-letter queue size per app.
    pub dead_letters: Vec<(String, u64)>,
    /// Per trigger: backlog and lag.
    pub triggers: Vec<TriggerGauges>,
    /// Records the sink dropped since start.
    pub records_dropped: u64,
    /// Resident memory of this process, when readable.
    pub resident_memory_bytes: Option<u64>,
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (its second field, in
/// pages); `None` where that file does not exist.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

/// The page size, from the `KernelPageSize` of this process's first mapping; 4 KiB when it
/// cannot be read.
fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("KernelPageSize:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(4096, |kb| kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::InvocationMeta;
    use nubo_core::{InvocationId, Outcome};
    use std::time::SystemTime;

    fn finished(outcome: Outcome, cold: bool) -> FinishedInvocation {
        FinishedInvocation {
            meta: InvocationMeta {
                id: InvocationId::new(),
                app: "shop".into(),
                function: "cart".into(),
                revision: 3,
                trigger: "http",
            },
            started_at: SystemTime::now(),
            duration: Duration::from_millis(12),
            outcome,
            status: Some(200),
            cold,
            init_ms: cold.then_some(80),
            bytes_in: 0,
            bytes_out: 0,
            outbound_requests: 0,
            outbound_bytes_out: 0,
            outbound_bytes_in: 0,
            memory_limit_bytes: None,
            peak_memory_bytes: None,
            cpu_time: None,
            dispatched_after: None,
            running_after: None,
            logs: Vec::new(),
            logs_truncated: false,
        }
    }

    fn gauges() -> Gauges {
        Gauges {
            functions: vec![FunctionGauges {
                app: "shop".into(),
                function: "cart".into(),
                revision: 3,
                runtime: "wasm",
                in_flight: 2,
                queued: 1,
                throttled: 4,
                instances: 2,
            }],
            async_backlog: 5,
            async_oldest_age: Some(Duration::from_secs(7)),
            dead_letters: vec![("shop".into(), 9)],
            triggers: vec![TriggerGauges {
                app: "shop".into(),
                kind: "queue".into(),
                backlog: Some(11),
                lag: Some(Duration::from_millis(1500)),
            }],
            records_dropped: 0,
            resident_memory_bytes: Some(1 << 20),
        }
    }

    /// Sample lines as (name, labels, value).
    fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, value.parse().expect("a number"))
            })
            .collect()
    }

    fn value(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
        samples(text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    #[test]
    fn render_parses_back_with_every_name() {
        let m = Metrics::new(MetricsLabels::Function);
        m.observe(&finished(Outcome::Ok, true));
        m.observe(&finished(Outcome::Ok, false));
        m.observe(&finished(Outcome::Trap, false));
        m.deployed("shop", 2);
        m.observe_store_operation(StoreOp::RecordsCommit, Duration::from_micros(300));
        m.observe_store_operation(StoreOp::RecordsCommit, Duration::from_millis(2));
        m.observe_store_operation(StoreOp::EventsCommit, Duration::from_millis(4));
        m.observe_store_operation(StoreOp::ScrapeRead, Duration::from_micros(80));
        let traces = Arc::new(TraceStats::default());
        traces.exported.store(40, Ordering::Relaxed);
        traces.dropped.store(3, Ordering::Relaxed);
        traces.failed_exports.store(2, Ordering::Relaxed);
        m.track_traces(Arc::clone(&traces));
        let wasm_memory = Arc::new(AtomicU64::new(3 << 20));
        m.track_wasm_memory(Arc::clone(&wasm_memory));
        let text = m.render(&gauges(), Exposition::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = m.render(&gauges(), Exposition::Text).unwrap();
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP nubo_invocations_total Invocations finished")
                && classic.contains("# TYPE nubo_invocations_total counter\n"),
            "{classic}"
        );
        assert_eq!(samples(&classic), samples(&text));
        if let Ok(path) = std::env::var("NUBO_METRICS_SAMPLE") {
            std::fs::write(path, &classic).unwrap();
        }
        assert_eq!(
            value(&text, "nubo_invocations_total", Some(("outcome", "ok"))),
            2.0
        );
        assert_eq!(
            value(&text, "nubo_invocations_total", Some(("outcome", "trap"))),
            1.0
        );
        assert_eq!(
            value(&text, "nubo_invocation_duration_seconds_count", None),
            3.0
        );
        assert_eq!(value(&text, "nubo_cold_starts_total", None), 1.0);
        assert_eq!(
            value(&text, "nubo_cold_start_duration_seconds_sum", None),
            0.08
        );
        assert_eq!(
            value(&text, "nubo_deploys_total", Some(("app", "shop"))),
            2.0
        );
        let op_count = |op: StoreOp| {
            value(
                &text,
                "nubo_store_operation_duration_seconds_count",
                Some(("op", op.as_str())),
            )
        };
        assert_eq!(op_count(StoreOp::RecordsCommit), 2.0);
        assert_eq!(op_count(StoreOp::EventsCommit), 1.0);
        assert_eq!(op_count(StoreOp::ScrapeRead), 1.0);
        assert_eq!(
            value(&text, "nubo_store_operation_duration_seconds_count", None),
            4.0
        );
        // Every op series carries its own buckets: 2 ms falls in the 2.5 ms bucket, 0.3 ms
        // does not.
        assert_eq!(
            samples(&text)
                .iter()
                .filter(
                    |(n, l, _)| n == "nubo_store_operation_duration_seconds_bucket"
                        && l.get("op").map(String::as_str) == Some("records_commit")
                        && l.get("le").map(String::as_str) == Some("0.0025")
                )
                .map(|(_, _, v)| *v)
                .collect::<Vec<_>>(),
            [2.0]
        );
        assert_eq!(value(&text, "nubo_trace_spans_exported_total", None), 40.0);
        assert_eq!(
            value(&text, "nubo_trace_invocations_dropped_total", None),
            3.0
        );
        assert_eq!(value(&text, "nubo_trace_export_failures_total", None), 2.0);
        assert_eq!(value(&text, "nubo_in_flight_invocations", None), 2.0);
        assert_eq!(value(&text, "nubo_queued_invocations", None), 1.0);
        assert_eq!(value(&text, "nubo_throttled_total", None), 4.0);
        assert_eq!(
            value(&text, "nubo_instances", Some(("runtime", "wasm"))),
            2.0
        );
        assert_eq!(value(&text, "nubo_async_backlog", None), 5.0);
        assert_eq!(value(&text, "nubo_async_oldest_age_seconds", None), 7.0);
        assert_eq!(value(&text, "nubo_dlq_size", Some(("app", "shop"))), 9.0);
        assert_eq!(
            value(&text, "nubo_trigger_backlog", Some(("trigger", "queue"))),
            11.0
        );
        assert_eq!(value(&text, "nubo_trigger_lag_seconds", None), 1.5);
        assert_eq!(
            value(&text, "nubo_process_resident_memory_bytes", None),
            1048576.0
        );
        assert_eq!(
            value(&text, "nubo_wasm_linear_memory_bytes", None),
            3_145_728.0
        );
        // Read at each scrape, not when tracking began.
        wasm_memory.store(1 << 20, Ordering::Relaxed);
        traces.exported.fetch_add(5, Ordering::Relaxed);
        let again = m.render(&gauges(), Exposition::Text).unwrap();
        assert_eq!(
            value(&again, "nubo_wasm_linear_memory_bytes", None),
            1_048_576.0
        );
        assert_eq!(value(&again, "nubo_trace_spans_exported_total", None), 45.0);
        // Only the documented labels, and never a per-invocation one.
        let allowed = [
            "app", "function", "outcome", "trigger", "runtime", "op", "le",
        ];
        for (name, labels, _) in samples(&text) {
            for key in labels.keys() {
                assert!(allowed.contains(&key.as_str()), "{name} has label {key}");
            }
        }
        assert!(!text.contains("revision="), "{text}");
    }

    #[test]
    fn label_modes_bound_the_series() {
        let none = Metrics::new(MetricsLabels::None);
        none.observe(&finished(Outcome::Ok, false));
        let text = none.render(&gauges(), Exposition::Text).unwrap();
        assert!(
            !text.contains("app=") && !text.contains("function="),
            "{text}"
        );
        assert_eq!(value(&text, "nubo_invocations_total", None), 1.0);

        let app = Metrics::new(MetricsLabels::App);
        app.observe(&finished(Outcome::Ok, false));
        let text = app.render(&gauges(), Exposition::Text).unwrap();
        assert!(
            text.contains("app=\"shop\"") && !text.contains("function="),
            "{text}"
        );

        let rev = Metrics::new(MetricsLabels::Revision);
        rev.observe(&finished(Outcome::Ok, false));
        let text = rev.render(&gauges(), Exposition::Text).unwrap();
        assert_eq!(
            value(&text, "nubo_invocations_total", Some(("revision", "3"))),
            1.0
        );
    }

    #[test]
    fn trace_counters_appear_only_when_traces_are_exported() {
        let m = Metrics::new(MetricsLabels::Function);
        let text = m.render(&gauges(), Exposition::Text).unwrap();
        assert!(!text.contains("nubo_trace_"), "{text}");
        // No store operation timed yet: the family has no series.
        assert!(
            !text.contains("nubo_store_operation_duration_seconds_count"),
            "{text}"
        );
        m.track_traces(Arc::new(TraceStats::default()));
        let text = m.render(&gauges(), Exposition::Text).unwrap();
        for name in [
            "nubo_trace_spans_exported_total",
            "nubo_trace_invocations_dropped_total",
            "nubo_trace_export_failures_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter\n{name} 0\n")),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn label_modes_parse() {
        assert_eq!("Revision".parse(), Ok(MetricsLabels::Revision));
        assert_eq!("none".parse(), Ok(MetricsLabels::None));
        assert!(
            "path"
                .parse::<MetricsLabels>()
                .unwrap_err()
                .contains("\"function\"")
        );
    }

    #[test]
    fn resident_memory_is_read() {
        let rss = resident_memory_bytes().expect("/proc/self/statm on Linux");
        assert!(rss > 0);
    }
}
