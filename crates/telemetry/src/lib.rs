//! Telemetry: tracing setup for the server and CLI, and the per-invocation handle that collects
//! an invocation's record and log lines and hands them, once, to a bounded sink; W3C trace
//! context and the OTLP/HTTP export of invocation spans.
//!
//! Invariant: nothing here blocks or does IO on the request path. A finished invocation is
//! offered to a bounded channel with `try_send`; when the writer falls behind, the record is
//! counted as dropped instead of slowing requests down.

mod invocation;
mod mask;
mod metrics;
mod otlp;
mod trace;

pub use invocation::{
    FinishedInvocation, Invocation, InvocationMeta, LOG_LEVELS, LogEntry, OutboundSpan, RecordSink,
    RecordSinkStats, Stream, normalize_level, record_channel,
};
pub use mask::{LogMask, MIN_MASKED_BYTES};
pub use metrics::{
    Exposition, FunctionGauges, Gauges, Metrics, MetricsLabels, Scope, StoreOp, TriggerGauges,
    resident_memory_bytes,
};
pub use otlp::{
    MAX_OUTBOUND_SPANS, TRACE_QUEUE, TraceExporter, TraceStats, Tracer, trace_exporter, traces_url,
};
pub use trace::{
    MAX_TRACESTATE_BYTES, SpanId, TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceContext, TraceId,
};

/// How the server writes its own log (tracing) lines to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `spans`), for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format \"{other}\"; use \"text\" or \"json\""
            )),
        }
    }
}

/// Installs the global tracing subscriber: lines on stderr in `format`, filtered by
/// `NUBO_LOG` (e.g. `NUBO_LOG=debug`), defaulting to `default_level`. A second call does
/// nothing.
pub fn init_tracing(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NUBO_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("{default_level},wasmtime=warn,cranelift=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .try_init(),
    };
}
