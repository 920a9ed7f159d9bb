//! The per-request host state a guest runs against: WASI and wasi:http contexts built from
//! policy (no files, no sockets, outbound HTTP only to the function's `allowed_hosts`), the
//! function's key-value, bucket and queue bindings, the invocation's trigger hop count, the
//! memory limiter and the log capture.

use crate::keyvalue::{KvBindings, KvCtx, KvView};
use crate::objects_host::{ObjBindings, ObjCtx};
use crate::outbound::{Egress, OutboundCtx, SendRequestFuture};
use crate::queues_host::{QueueBindings, QueueCtx};
use bytes::Bytes;
use nubo_telemetry::{Invocation, Stream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Most host resources (streams, headers, pollables…) one instance may hold at once. Bounds the
/// host memory a guest can pin outside its linear memory, which its `memory` limit does not
/// cover; real handlers hold a few dozen.
const MAX_RESOURCES_PER_INSTANCE: usize = 50_000;

/// Bytes a guest may hand to stdout/stderr in one write. The invocation's log buffer has its
/// own caps; this only keeps a single call from copying an unbounded slice.
const LOG_WRITE_BUDGET: usize = 64 * 1024;

/// The request header carrying an invocation's trigger hop count: how many trigger deliveries
/// led to it. Only Nubo sets it (the gateway strips it from clients' requests).
pub(crate) const HOP_HEADER: &str = "nubo-hop";

/// The trigger hop count of an invocation started by a request with `headers`: its
/// [`HOP_HEADER`] as a decimal number, 0 when absent or not a number (an invocation no trigger
/// started).
pub(crate) fn hop_of(headers: &http::HeaderMap) -> u32 {
    headers
        .get(HOP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

/// The bindings a loaded function's invocations reach, shared by them all.
#[derive(Clone, Default)]
pub(crate) struct Bindings {
    /// The key-value stores it binds; `None` when it binds none.
    pub(crate) kv: Option<Arc<KvBindings>>,
    /// The buckets it binds; `None` when it binds none.
    pub(crate) objects: Option<Arc<ObjBindings>>,
    /// The queues it may publish to; `None` when it binds none.
    pub(crate) queues: Option<Arc<QueueBindings>>,
    /// Its outbound HTTP client and `allowed_hosts`; `None` when it may reach no host.
    pub(crate) egress: Option<Arc<Egress>>,
}

/// The `T` of every `Store<T>`: one per request, dropped with the instance.
pub(crate) struct Host {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    /// The key-value stores the function binds (`wasi:keyvalue`).
    pub(crate) kv: KvCtx,
    /// The buckets the function binds (`nubo:objects`).
    pub(crate) objects: ObjCtx,
    /// The queues the function publishes to (`nubo:queues`).
    pub(crate) queues: QueueCtx,
    pub(crate) hooks: Hooks,
    pub(crate) limiter: MemoryLimiter,
    /// Epoch ticks the guest may still run before it is interrupted.
    pub(crate) ticks_left: u64,
    /// What `wasi:config/store` serves: the function's `env`, secrets included.
    pub(crate) config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl Host {
    /// Host state for one invocation at trigger hop `hop` of a function with `env`,
    /// `memory_limit` bytes of linear memory and `ticks` epoch ticks of time (`timeout` of wall
    /// time), reaching what `bindings` binds: key-value stores, buckets, queues and the hosts
    /// its egress allows. Its object writes and queue publishes carry `hop`. Output goes to
    /// `invocation`'s logs. The instance's linear memory is counted in `held` while it lives.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, each argument named there"
    )]
    pub(crate) fn new(
        invocation: Option<&Invocation>,
        env: &[(String, String)],
        memory_limit: u64,
        held: &Arc<AtomicU64>,
        ticks: u64,
        timeout: Duration,
        bindings: &Bindings,
        hop: u32,
    ) -> Host {
        let mut wasi = WasiCtx::builder();
        wasi.envs(env)
            .stdout(LogOutput {
                invocation: invocation.cloned(),
                stream: Stream::Stdout,
            })
            .stderr(LogOutput {
                invocation: invocation.cloned(),
                stream: Stream::Stderr,
            })
            // Policy, not missing imports, keeps functions off the network: the socket
            // interfaces link, every use is refused.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES_PER_INSTANCE);
        Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table,
            kv: KvCtx::new(bindings.kv.clone(), invocation),
            objects: ObjCtx::new(bindings.objects.clone(), hop, invocation),
            queues: QueueCtx::new(bindings.queues.clone(), hop, invocation),
            hooks: Hooks {
                outbound: OutboundCtx::new(bindings.egress.clone(), invocation, timeout),
            },
            limiter: MemoryLimiter::new(memory_limit, Arc::clone(held)),
            ticks_left: ticks,
            config: Arc::default(),
        }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host {
    /// The `wasi:config/store` view of this state.
    pub(crate) fn config(&mut self) -> wasmtime_wasi_config::WasiConfig<'_> {
        wasmtime_wasi_config::WasiConfig::new(&self.config)
    }

    /// The `wasi:keyvalue` view of this state.
    pub(crate) fn keyvalue(&mut self) -> KvView<'_> {
        KvView::new(&self.kv, &mut self.table)
    }

    /// The `nubo:objects` view of this state.
    pub(crate) fn objects(&mut self) -> &mut ObjCtx {
        &mut self.objects
    }

    /// The `nubo:queues` view of this state.
    pub(crate) fn queues(&mut self) -> &mut QueueCtx {
        &mut self.queues
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Enforces a function's `memory` on the sum of its linear memories, and remembers that it
/// refused to grow one so the trap that usually follows is reported as a memory limit.
///
/// Wasmtime asks it for every memory an instance creates (from 0 to the initial size) and for
/// every growth after, so `used` is the instance's whole linear memory. Wasm memories never
/// shrink: `used` at the end of an invocation is also its peak.
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    pub(crate) hit: bool,
    /// The runtime's count of linear memory held by live instances, this one's `used`
    /// included until it is dropped (with its store).
    held: Arc<AtomicU64>,
}

impl MemoryLimiter {
    fn new(limit: u64, held: Arc<AtomicU64>) -> MemoryLimiter {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            hit: false,
            held,
        }
    }

    /// Bytes of linear memory the instance holds: its peak so far.
    pub(crate) fn used(&self) -> u64 {
        self.used as u64
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.held.fetch_sub(self.used as u64, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self.used.saturating_sub(current).saturating_add(desired);
        if used > self.limit {
            // Refusing (rather than trapping) keeps wasm semantics: `memory.grow` returns -1
            // and a guest that handles allocation failure may still answer.
            self.hit = true;
            return Ok(false);
        }
        // Memories only grow, so `used` does too.
        self.held
            .fetch_add(used.saturating_sub(self.used) as u64, Ordering::Relaxed);
        self.used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table size is capped by the pool's `table_elements`.
        Ok(true)
    }
}

/// wasi:http policy hooks: outbound requests go through the function's egress policy
/// (`outbound`); refusals are logged to the function's own output, where its author will look.
pub(crate) struct Hooks {
    outbound: OutboundCtx,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendRequestFuture {
        self.outbound.send(request, options)
    }
}

/// A guest's stdout or stderr, appended to its invocation's log lines.
#[derive(Clone)]
struct LogOutput {
    invocation: Option<Invocation>,
    stream: Stream,
}

impl LogOutput {
    fn write_bytes(&self, bytes: &[u8]) {
        if let Some(invocation) = &self.invocation {
            invocation.write_log(self.stream, bytes);
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        // Direct implementation: the default adapter would spawn a task per stream.
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {
        // Always writable: writes land in memory.
    }
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOG_WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(LOG_WRITE_BUDGET);
        self.write_bytes(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = value {
            h.insert(HOP_HEADER, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_hop_header_is_a_decimal_count_else_zero() {
        assert_eq!(hop_of(&headers(None)), 0);
        assert_eq!(hop_of(&headers(Some("0"))), 0);
        assert_eq!(hop_of(&headers(Some("1"))), 1);
        assert_eq!(hop_of(&headers(Some(" 16 "))), 16);
        assert_eq!(hop_of(&headers(Some("4294967295"))), u32::MAX);
        for bad in ["", "-1", "two", "1.5", "4294967296", "0x10"] {
            assert_eq!(hop_of(&headers(Some(bad))), 0, "{bad:?}");
        }
        let mut upper = http::HeaderMap::new();
        upper.insert("Nubo-Hop", http::HeaderValue::from_static("7"));
        assert_eq!(hop_of(&upper), 7);
    }
}
