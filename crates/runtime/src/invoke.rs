//! The request path: one fresh instance per request, run on its own task under the function's
//! time and memory limits, its response streamed back as soon as the guest sets it.
//!
//! Hot path: a lock-free lookup of the pre-instantiated function, admission by its concurrency
//! limit (atomics; a lock only when the request has to wait), a new `Store`, one task. No
//! locks are taken here except the invocation's own log buffer when the guest prints.
//!
//! The concurrency slot ([`Permit`]) lives in [`Shared`], which the guest's task, its store
//! and the response body all hold: it is released when the instance has ended *and* the body
//! was fully sent or dropped, not when the headers go out.

use crate::host::Host;
use crate::limits::Permit;
use crate::runtime::{Loaded, WasmRuntime};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use nubo_core::{Body, BoxError, Dispatch, FunctionTarget, InvokeError, InvokeFuture, Outcome};
use nubo_telemetry::{Invocation, Stream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode as HttpErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Longest trap description handed to clients and records; the full error goes to the logs.
const MAX_TRAP_MESSAGE: usize = 200;

/// Seconds a client is asked to wait when every pool slot is busy (answered 429, like the
/// concurrency limits: load alone never causes a 5xx).
const POOL_FULL_RETRY_AFTER_SECS: u32 = 1;

/// Ends the invocation's wait for a concurrency slot (its `queue` span).
fn mark_dispatched(request: &http::Request<Body>) {
    if let Some(invocation) = request.extensions().get::<Invocation>() {
        invocation.mark_dispatched();
    }
}

impl Dispatch for WasmRuntime {
    fn invoke(&self, target: &FunctionTarget, request: http::Request<Body>) -> InvokeFuture {
        match self.functions.load().get(target) {
            Some(loaded) => {
                let loaded = Arc::clone(loaded);
                Box::pin(async move {
                    let permit = loaded.limit.acquire().await?;
                    mark_dispatched(&request);
                    invoke(loaded, request, permit).await
                })
            }
            None => match self.process.get(target) {
                Some(function) => Box::pin(async move {
                    let permit = function.limit.acquire().await?;
                    mark_dispatched(&request);
                    crate::process::invoke(function, request, permit).await
                }),
                None => Box::pin(std::future::ready(Err(InvokeError::Unavailable {
                    app: target.app.to_string(),
                    function: target.function.to_string(),
                    revision: target.revision,
                }))),
            },
        }
    }

    fn load_metrics(&self) -> nubo_core::api::v1::LoadMetrics {
        self.limits.metrics()
    }
}

async fn invoke(
    loaded: Arc<Loaded>,
    mut request: http::Request<Body>,
    permit: Permit,
) -> Result<http::Response<Body>, InvokeError> {
    let invocation = request.extensions_mut().remove::<Invocation>();
    // Only the first invocation of a loaded function is cold; the load is cheap to test first
    // so warm requests never write the shared flag.
    let cold = !loaded.warm.load(Ordering::Relaxed) && !loaded.warm.swap(true, Ordering::Relaxed);
    if let (true, Some(invocation)) = (cold, &invocation) {
        invocation.set_cold(true);
    }
    if let Some(invocation) = &invocation {
        invocation.set_memory_limit(loaded.memory_limit);
    }

    // The env and wasi:config variables, with the app's secrets as they are now.
    let (env, config) = crate::secrets::for_invocation(
        &loaded.env,
        &loaded.config,
        loaded.secret_env.as_deref(),
        invocation.as_ref(),
    );
    let mut host = Host::new(
        invocation.as_ref(),
        &env,
        loaded.memory_limit,
        &loaded.linear_memory,
        loaded.ticks,
        loaded.timeout,
        &loaded.bindings,
        crate::host::hop_of(request.headers()),
    );
    host.config = config;
    let mut store = Store::new(loaded.pre.engine(), host);
    store.limiter(|host| &mut host.limiter);
    // Every tick past the first the guest yields to other requests; when its ticks run out it
    // traps. A guest blocked in host I/O is not interrupted by epochs: the task's timer is.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let host = cx.data_mut();
        if host.ticks_left == 0 {
            return Err(Trap::Interrupt.into());
        }
        host.ticks_left -= 1;
        Ok(UpdateDeadline::Yield(1))
    });

    let scheme = match request.uri().scheme() {
        Some(s) if *s == http::uri::Scheme::HTTPS => Scheme::Https,
        _ => Scheme::Http,
    };
    // wasi:http requires an authority: the URI's, else the Host header's.
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    let request = request.map(|body| body.map_err(|e| request_body_error(&e)));
    let shared = Arc::new(Shared::new(permit));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (req, out) = {
        let mut http = store.data_mut().http();
        let req = http
            .new_incoming_request(scheme, request)
            .map_err(|e| host_error(&e))?;
        let flag = Arc::clone(&shared);
        let answered = invocation.clone();
        let out = http
            .new_response_outparam_from_callback(move |response| {
                flag.responded(response.is_ok());
                // Recorded here, not by the waiting caller, so it is known whenever the guest
                // task records the outcome.
                if let (Ok(response), Some(invocation)) = (&response, &answered) {
                    invocation.set_status(response.status().as_u16());
                }
                let _ = sender.send(response);
            })
            .map_err(|e| host_error(&e))?;
        (req, out)
    };

    let mut task = GuestTask(Some(tokio::spawn(run_guest(
        store,
        Arc::clone(&loaded),
        req,
        out,
        invocation.clone(),
        Arc::clone(&shared),
    ))));

    match receiver.await {
        Ok(Ok(response)) => {
            // The guest keeps running on its task to stream the body.
            task.detach();
            Ok(response.map(|inner| {
                GuestBody {
                    inner,
                    shared,
                    ended: false,
                }
                .boxed_unsync()
            }))
        }
        Ok(Err(code)) => {
            // Its task records the outcome when it ends.
            task.detach();
            Err(InvokeError::Trap {
                message: format!("the function answered with an error: {}", describe(&code)),
            })
        }
        // The response outparam was dropped unset: the guest ended (or threw it away).
        Err(_) => match task.join().await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(InvokeError::NoResponse),
            Err(e) => Err(InvokeError::Internal(format!(
                "the function's task failed: {e}"
            ))),
        },
    }
}

/// Instantiates and runs the guest to completion (or its limits), then records how it ended.
async fn run_guest(
    mut store: Store<Host>,
    loaded: Arc<Loaded>,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    invocation: Option<Invocation>,
    shared: Arc<Shared>,
) -> Result<(), InvokeError> {
    let _instance = loaded.limit.instance();
    let (ran, cpu) = {
        let guest = std::pin::pin!(async {
            let proxy = loaded.pre.instantiate_async(&mut store).await?;
            if let Some(invocation) = &invocation {
                invocation.mark_running();
            }
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        if loaded.measure_cpu {
            let mut timed = CpuTimed {
                inner: guest,
                spent: Duration::ZERO,
            };
            let ran = tokio::time::timeout(loaded.timeout, &mut timed).await;
            (ran, Some(timed.spent))
        } else {
            (tokio::time::timeout(loaded.timeout, guest).await, None)
        }
    };
    let result = match ran {
        Err(_elapsed) => Err(timeout_error(&loaded)),
        Ok(Ok(())) => shared.returned(),
        Ok(Err(error)) => classify(&error, store.data().limiter.hit, &loaded, &shared),
    };
    // Publish the end before dropping the store: dropping it closes the response body, whose
    // reader then learns from `shared` whether the body is complete.
    shared.end(&result);
    if let Some(invocation) = &invocation {
        if let Some(cpu) = cpu {
            invocation.add_cpu_time(cpu);
        }
        invocation.observe_memory(store.data().limiter.used());
        match &result {
            Ok(()) => invocation.finish(Outcome::Ok, None),
            // The guest failed writing to a client that had gone: not the function's fault.
            Err(_) if shared.client_gone() => invocation.finish(Outcome::Cancelled, None),
            Err(e) => {
                let line = format!("[nubo] {e}\n");
                invocation.write_log(Stream::Stderr, line.as_bytes());
                invocation.finish(e.outcome(), None);
            }
        }
    }
    drop(store);
    result
}

/// A guest's future that adds up the time spent polling it: the monotonic clock is read
/// before and after each poll, so time the guest spends waiting (sleeps, outbound calls, host
/// calls sent to blocking threads, a slow client) is not counted, and its own work on any
/// worker thread is. Instantiation is part of the future, so it is counted too.
///
/// A poll runs the guest without blocking, so its wall time is the CPU time it used, except
/// when the operating system preempts the thread in the middle of a poll (then the preemption
/// counts too; polls take microseconds, scheduler slices milliseconds). The monotonic clock
/// is read through the vDSO in tens of nanoseconds; the thread CPU clock
/// (`CLOCK_THREAD_CPUTIME_ID`) has no such fast path and cost over a microsecond per read on
/// the development machine, a few percent of a small function's request.
struct CpuTimed<F> {
    inner: F,
    spent: Duration,
}

impl<F: Future + Unpin> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = Instant::now();
        let polled = Pin::new(&mut self.inner).poll(cx);
        self.spent += before.elapsed();
        polled
    }
}

/// Maps an error out of the guest to what the caller is told.
fn classify(
    error: &wasmtime::Error,
    memory_limit_hit: bool,
    loaded: &Loaded,
    shared: &Shared,
) -> Result<(), InvokeError> {
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return Err(timeout_error(loaded));
    }
    if memory_limit_hit {
        return Err(InvokeError::MemoryLimit {
            limit_bytes: loaded.memory_limit,
        });
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        // `exit(0)` is a normal end; whether it answered decides the outcome.
        if exit.0 == 0 {
            return shared.returned();
        }
        return Err(InvokeError::Trap {
            message: format!("the function exited with status {}", exit.0),
        });
    }
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        loaded.limit.count_throttled();
        return Err(InvokeError::Throttled {
            retry_after_secs: POOL_FULL_RETRY_AFTER_SECS,
        });
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    Err(InvokeError::Trap {
        message: shorten(message),
    })
}

fn timeout_error(loaded: &Loaded) -> InvokeError {
    InvokeError::Timeout {
        timeout_ms: u64::try_from(loaded.timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn shorten(mut message: String) -> String {
    if let Some(end) = message.find('\n') {
        message.truncate(end);
    }
    if message.len() > MAX_TRAP_MESSAGE {
        let mut cut = MAX_TRAP_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

fn describe(code: &HttpErrorCode) -> String {
    shorten(format!("{code:?}"))
}

/// A failure of Nubo itself while preparing the request.
fn host_error(error: &wasmtime::Error) -> InvokeError {
    InvokeError::Internal(format!(
        "cannot prepare the request for the function: {error:#}"
    ))
}

fn request_body_error(error: &BoxError) -> wasmtime_wasi_http::Error {
    wasmtime_wasi_http::Error::InternalError(Some(error.to_string()))
}

/// The guest's task; aborted if the caller stops waiting before the response starts (the
/// client went away), detached once the response is handed over.
struct GuestTask(Option<JoinHandle<Result<(), InvokeError>>>);

impl GuestTask {
    fn detach(&mut self) {
        self.0 = None;
    }

    async fn join(&mut self) -> Result<Result<(), InvokeError>, tokio::task::JoinError> {
        match &mut self.0 {
            Some(handle) => {
                let result = handle.await;
                self.0 = None;
                result
            }
            None => Ok(Ok(())),
        }
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// What the request path and the response body learn from the guest's task, and the
/// invocation's concurrency slot, released when the last of them drops this.
struct Shared {
    response: AtomicU8,
    end: AtomicU8,
    /// The response body was dropped before it ended: the client went away.
    client_gone: AtomicBool,
    _permit: Permit,
}

const RESPONSE_NONE: u8 = 0;
const RESPONSE_OK: u8 = 1;
const RESPONSE_ERROR: u8 = 2;

const END_RUNNING: u8 = 0;
const END_OK: u8 = 1;
const END_TIMEOUT: u8 = 2;
const END_MEMORY: u8 = 3;
const END_TRAP: u8 = 4;
const END_OTHER: u8 = 5;

impl Shared {
    fn new(permit: Permit) -> Shared {
        Shared {
            response: AtomicU8::new(RESPONSE_NONE),
            end: AtomicU8::new(END_RUNNING),
            client_gone: AtomicBool::new(false),
            _permit: permit,
        }
    }

    fn responded(&self, ok: bool) {
        let value = if ok { RESPONSE_OK } else { RESPONSE_ERROR };
        self.response.store(value, Ordering::Release);
    }

    /// The outcome of a guest that returned normally.
    fn returned(&self) -> Result<(), InvokeError> {
        match self.response.load(Ordering::Acquire) {
            RESPONSE_OK => Ok(()),
            RESPONSE_ERROR => Err(InvokeError::Trap {
                message: "the function answered with an error instead of a response".into(),
            }),
            RESPONSE_NONE => Err(InvokeError::NoResponse),
            _ => Err(InvokeError::Internal("unknown response state".into())),
        }
    }

    fn end(&self, result: &Result<(), InvokeError>) {
        let value = match result {
            Ok(()) => END_OK,
            Err(InvokeError::Timeout { .. }) => END_TIMEOUT,
            Err(InvokeError::MemoryLimit { .. }) => END_MEMORY,
            Err(InvokeError::Trap { .. }) => END_TRAP,
            Err(_) => END_OTHER,
        };
        self.end.store(value, Ordering::Release);
    }

    fn client_gone(&self) -> bool {
        self.client_gone.load(Ordering::Acquire)
    }

    /// Why the guest failed, if it did.
    fn failure(&self) -> Option<&'static str> {
        match self.end.load(Ordering::Acquire) {
            END_RUNNING | END_OK => None,
            END_TIMEOUT => Some("ran past its timeout"),
            END_MEMORY => Some("exceeded its memory limit"),
            END_TRAP => Some("trapped"),
            _ => Some("failed"),
        }
    }
}

/// Error ending a response body whose function failed after the response started.
#[derive(Debug, thiserror::Error)]
#[error("the function {0} after it started its response")]
struct FailedAfterResponse(&'static str);

/// The guest's response body; ends with an error instead of looking complete when the guest
/// trapped or timed out mid-body.
struct GuestBody {
    inner: HyperOutgoingBody,
    shared: Arc<Shared>,
    ended: bool,
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                self.ended = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                self.ended = true;
                match self.shared.failure() {
                    Some(why) => Poll::Ready(Some(Err(Box::new(FailedAfterResponse(why))))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.inner.is_end_stream() && self.shared.failure().is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if !self.ended && !http_body::Body::is_end_stream(&self.inner) {
            self.shared.client_gone.store(true, Ordering::Release);
        }
    }
}
