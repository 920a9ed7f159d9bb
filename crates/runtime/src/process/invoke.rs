//! One invocation of a process function: the event (API Gateway 2.0 for routed requests, the
//! raw body otherwise), a worker from the pool (cold: spawned for it), the worker's answer as
//! the HTTP response, and how it ended.
//!
//! The concurrency [`Permit`] and the worker's [`Lease`] travel with the response body, so the
//! slot is held and the worker busy until the body was sent or dropped.

use super::api::{Chunk, Job, Reply};
use super::event::{self, EventContext};
use super::pool::{INIT_TIMEOUT, Lease};
use super::{ProcessFunction, env};
use crate::limits::Permit;
use crate::sandbox::Reading;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use nubo_core::{Body, BoxError, ClientAddr, Entry, InvokeError, Outcome, full_body};
use nubo_telemetry::{Invocation, Stream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot, watch};

/// Content-type of a streamed HTTP response that starts with a JSON prelude.
const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";

/// Runs `request` on a worker of `function`.
pub(crate) async fn invoke(
    function: Arc<ProcessFunction>,
    mut request: http::Request<Body>,
    permit: Permit,
) -> Result<Response<Body>, InvokeError> {
    let invocation = request.extensions_mut().remove::<Invocation>();
    if let Some(invocation) = &invocation {
        invocation.set_memory_limit(function.memory);
    }
    let result = run(&function, request, invocation.as_ref(), permit).await;
    if let (Err(e), Some(invocation)) = (&result, &invocation) {
        // The worker's last lines are in the log already: note only what happened.
        let text = e.to_string();
        let summary = text.lines().next().unwrap_or_default();
        let summary = summary.strip_suffix("; last output:").unwrap_or(summary);
        invocation.write_log(Stream::Stderr, format!("[nubo] {summary}\n").as_bytes());
        invocation.finish(e.outcome(), None);
    }
    result
}

async fn run(
    function: &ProcessFunction,
    request: http::Request<Body>,
    invocation: Option<&Invocation>,
    permit: Permit,
) -> Result<Response<Body>, InvokeError> {
    // The gateway says how the request entered; without its mark (direct callers of the
    // runtime), only a plain HTTP trigger counts as routed.
    let routed = match request.extensions().get::<Entry>() {
        Some(entry) => *entry == Entry::Route,
        None => invocation.is_some_and(|i| i.meta().trigger == "http"),
    };
    let source_ip = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
    let hop = crate::host::hop_of(request.headers());
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| InvokeError::Internal(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let request_id =
        env::request_id(invocation.map_or_else(|| ulid::Ulid::new().0, |i| i.id().0.0));
    let now = SystemTime::now();
    let payload = if routed {
        let domain = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let ctx = EventContext {
            request_id: &request_id,
            route_key: "$default",
            source_ip,
            time: now,
            domain,
            stage: "$default",
        };
        Bytes::from(event::http_event(&parts, &body, &ctx))
    } else {
        body
    };

    let (worker, cold) = match function.pool.take_idle() {
        Some(worker) => (worker, false),
        None => (function.pool.spawn(false).await?, true),
    };
    // Init output belongs to the invocation that started the worker.
    worker.logs.attach(invocation.cloned());
    let mut lease = Lease::new(worker, &function.pool);
    if cold {
        match lease.worker().ready(INIT_TIMEOUT).await {
            Ok(init) => {
                function.pool.started_fine();
                if let Some(invocation) = invocation {
                    invocation.set_cold(true);
                    invocation.set_init_ms(u64::try_from(init.as_millis()).unwrap_or(u64::MAX));
                }
            }
            Err(e) => {
                lease.discard();
                return Err(e);
            }
        }
    }

    let (reply, replied) = oneshot::channel();
    let deadline = tokio::time::Instant::now() + function.timeout;
    let job = Job {
        request_id,
        deadline_ms: env::epoch_ms(SystemTime::now() + function.timeout),
        arn: Arc::clone(&function.arn),
        // The invocation's own span, so `_X_AMZN_TRACE_ID` continues the caller's trace.
        trace_id: invocation
            .and_then(Invocation::trace)
            .map_or_else(|| env::trace_id(now), nubo_telemetry::TraceContext::xray),
        payload,
        hop,
        reply,
    };
    let mut status = lease.worker().channel.status.subscribe();
    // From here to the answer (or the end of a streamed body) the worker works for this
    // invocation alone: a worker serves one at a time.
    if let Some(invocation) = invocation {
        invocation.mark_running();
    }
    let usage = lease.worker().meter.start();
    if lease.worker().jobs.send(job).await.is_err() {
        lease.discard();
        return Err(ended(function, &status.borrow()));
    }
    let reply = tokio::select! {
        biased;
        reply = replied => reply,
        () = stopped(&mut status) => {
            lease.discard();
            return Err(ended(function, &status.borrow()));
        }
        () = tokio::time::sleep_until(deadline) => {
            // A timed-out invocation used what it used until now; the worker then stops.
            measured(&lease, usage, invocation);
            lease.discard();
            return Err(timeout(function));
        }
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) => {
            // The answer channel closed unanswered: the worker died (its status says so),
            // or the runtime asked for the next event without answering this one.
            let status = status.borrow().clone();
            if status.exit.is_some() || status.init_error.is_some() {
                lease.discard();
                return Err(ended(function, &status));
            }
            return Err(InvokeError::NoResponse);
        }
    };

    match reply {
        Reply::Response(result) => {
            measured(&lease, usage, invocation);
            drop(lease);
            let response = if routed {
                event::http_response(&result)
                    .map_err(|message| InvokeError::BadResponse { message })?
                    .map(full_body)
            } else {
                json_response(StatusCode::OK, result)
            };
            if let Some(invocation) = invocation {
                invocation.finish(Outcome::Ok, None);
            }
            Ok(hold(response, permit))
        }
        Reply::Error(document) => {
            measured(&lease, usage, invocation);
            drop(lease);
            if let Some(invocation) = invocation {
                invocation.finish(Outcome::FunctionError, None);
            }
            let mut response = json_response(StatusCode::BAD_GATEWAY, document);
            response.headers_mut().insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            Ok(hold(response, permit))
        }
        Reply::TooLarge => {
            measured(&lease, usage, invocation);
            drop(lease);
            Err(InvokeError::BadResponse {
                message: format!(
                    "the result is larger than {} bytes; stream it or make it smaller",
                    super::api::MAX_RESPONSE_BYTES
                ),
            })
        }
        Reply::Stream { content_type, body } => {
            let mut stream = StreamBody {
                chunks: body,
                first: None,
                lease: Some(lease),
                usage: Some(usage),
                invocation: invocation.cloned(),
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                timeout_ms: timeout_ms(function),
                ended: false,
                _permit: permit,
            };
            let integration = content_type
                .as_ref()
                .is_some_and(|v| v.as_bytes().starts_with(HTTP_INTEGRATION.as_bytes()));
            if routed && integration {
                let head = stream.prelude(function).await?;
                let mut response = Response::new(stream.boxed_unsync());
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                return Ok(response);
            }
            let mut response = Response::new(stream.boxed_unsync());
            let content_type =
                content_type.unwrap_or_else(|| HeaderValue::from_static("application/json"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            Ok(response)
        }
    }
}

/// Reports what the worker of `lease` used since `usage` was read on `invocation`.
fn measured(lease: &Lease, usage: Reading, invocation: Option<&Invocation>) {
    let Some(invocation) = invocation else { return };
    let used = lease.worker().meter.finish(usage);
    if let Some(bytes) = used.peak_memory {
        invocation.observe_memory(bytes);
    }
    if let Some(cpu) = used.cpu_time {
        invocation.add_cpu_time(cpu);
    }
}

/// Resolves once the worker exited or reported an init error.
async fn stopped(status: &mut watch::Receiver<super::api::Status>) {
    loop {
        {
            let s = status.borrow_and_update();
            if s.exit.is_some() || s.init_error.is_some() {
                return;
            }
        }
        if status.changed().await.is_err() {
            // The worker's channel is gone: it was stopped.
            return;
        }
    }
}

/// Why an invocation failed because its worker stopped.
fn ended(function: &ProcessFunction, status: &super::api::Status) -> InvokeError {
    if status.oom_killed {
        return InvokeError::MemoryLimit {
            limit_bytes: function.memory,
        };
    }
    if let Some(message) = &status.init_error {
        return InvokeError::InitFailed {
            message: message.clone(),
        };
    }
    let exit = status.exit.as_deref().unwrap_or("the worker stopped");
    InvokeError::Crashed {
        message: format!("{exit} during the invocation{}", status.last_output),
    }
}

fn timeout_ms(function: &ProcessFunction) -> u64 {
    u64::try_from(function.timeout.as_millis()).unwrap_or(u64::MAX)
}

fn timeout(function: &ProcessFunction) -> InvokeError {
    InvokeError::Timeout {
        timeout_ms: timeout_ms(function),
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Keeps the concurrency slot until the body is sent or dropped.
fn hold(response: Response<Body>, permit: Permit) -> Response<Body> {
    response.map(|inner| {
        Held {
            inner,
            _permit: permit,
        }
        .boxed_unsync()
    })
}

struct Held {
    inner: Body,
    _permit: Permit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status line and headers of a streamed HTTP response, from its prelude.
struct Head {
    status: StatusCode,
    headers: http::HeaderMap,
}

/// A streamed response on its way to the client. Ends with an error when the function
/// reported one, its worker stopped mid-stream, or it ran past its timeout (which stops the
/// worker).
struct StreamBody {
    chunks: mpsc::Receiver<Chunk>,
    /// Body bytes that arrived with the prelude.
    first: Option<Bytes>,
    lease: Option<Lease>,
    /// The worker's usage at the start, measured again when the stream ends.
    usage: Option<Reading>,
    invocation: Option<Invocation>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout_ms: u64,
    ended: bool,
    _permit: Permit,
}

impl StreamBody {
    /// Reads up to the end of the JSON prelude of an http-integration stream.
    async fn prelude(&mut self, function: &ProcessFunction) -> Result<Head, InvokeError> {
        let mut parser = event::PreludeParser::new();
        loop {
            let chunk = tokio::select! {
                chunk = self.chunks.recv() => chunk,
                () = &mut self.deadline => {
                    self.stop_worker();
                    return Err(timeout(function));
                }
            };
            match chunk {
                Some(Chunk::Data(data)) => {
                    let parsed = parser
                        .push(data)
                        .map_err(|message| InvokeError::BadResponse { message })?;
                    if let Some((head, rest)) = parsed {
                        self.first = Some(rest);
                        return Ok(Head {
                            status: head.status,
                            headers: head.headers,
                        });
                    }
                }
                Some(Chunk::Failed(message)) => return Err(InvokeError::BadResponse { message }),
                Some(Chunk::End) => {
                    return Err(InvokeError::BadResponse {
                        message: "the streamed response ended before its prelude and the 8 NUL \
                                  bytes that close it"
                            .into(),
                    });
                }
                None => {
                    self.stop_worker();
                    return Err(InvokeError::Crashed {
                        message: "the worker stopped while streaming its response".into(),
                    });
                }
            }
        }
    }

    fn stop_worker(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            lease.discard();
        }
    }

    /// Reports the worker's usage, while it still serves this invocation.
    fn measure(&mut self) {
        if let (Some(lease), Some(usage)) = (&self.lease, self.usage.take()) {
            measured(lease, usage, self.invocation.as_ref());
        }
    }

    fn end(&mut self, outcome: Outcome, log: Option<&str>) {
        self.ended = true;
        if let Some(invocation) = &self.invocation {
            if let Some(line) = log {
                invocation.write_log(Stream::Stderr, format!("[nubo] {line}\n").as_bytes());
            }
            invocation.finish(outcome, None);
        }
        self.invocation = None;
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Chunk::End)) => {
                // Done: the worker goes back to the pool.
                self.measure();
                self.lease = None;
                self.end(Outcome::Ok, None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Chunk::Failed(message))) => {
                self.measure();
                self.lease = None;
                self.end(Outcome::FunctionError, Some(&message));
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(None) => {
                self.stop_worker();
                let message = "the worker stopped while streaming its response";
                self.end(Outcome::Crashed, Some(message));
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.measure();
                    self.stop_worker();
                    let message = format!(
                        "the function ran longer than its {} ms timeout while streaming",
                        self.timeout_ms
                    );
                    self.end(Outcome::Timeout, Some(&message));
                    return Poll::Ready(Some(Err(message.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
