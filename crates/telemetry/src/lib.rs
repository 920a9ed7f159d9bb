//! Telemetry: tracing setup for the server and CLI, and the per-invocation handle that collects
//! an invocation's record and log lines and hands them, once, to a bounded sink.
//!
//! Invariant: nothing here blocks or does IO on the request path. A finished invocation is
//! offered to a bounded channel with `try_send`; when the writer falls behind, the record is
//! counted as dropped instead of slowing requests down.

mod invocation;
mod mask;

pub use invocation::{
    FinishedInvocation, Invocation, InvocationMeta, LogEntry, RecordSink, RecordSinkStats, Stream,
    record_channel,
};
pub use mask::{LogMask, MIN_MASKED_BYTES};

/// Installs the global tracing subscriber: human-readable lines on stderr, filtered by
/// `NUBO_LOG` (e.g. `NUBO_LOG=debug`), defaulting to `default_level`.
pub fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NUBO_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("{default_level},wasmtime=warn,cranelift=warn"))
    });
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
