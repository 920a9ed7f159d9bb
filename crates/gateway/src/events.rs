//! Async invocations: accepting them (202 once durably stored), delivering them at least once
//! with retries and backoff, and the dead-letter queue.
//!
//! A request with `nubo-invocation-type: event` (or Lambda's `x-amz-invocation-type: Event`) to
//! a route or to the invoke endpoint is resolved to its function as usual, then stored by the
//! store's group-commit writer and answered 202 with its id. The deliverer task claims due
//! events (bounded overall and per function by the function's `max_concurrency`), runs each
//! through the same path as a request (so the function's concurrency limit applies), and
//! records the attempt: success (a status below 500), a retry after exponential backoff with
//! jitter, or the dead-letter queue once `retry.max_attempts` or `retry.max_age` is spent.
//!
//! The function sees the stored request (method, path, headers, body) plus
//! `nubo-invocation-type: event`, `nubo-async-id` (the event's id) and `nubo-async-attempt`
//! (1-based, within the current round: a redrive starts again at 1; the attempt records keep
//! counting over the event's life).
//!
//! Trigger deliveries (cron ticks, queue batches, object events, MQTT and NATS messages) come
//! in through [`Gateway::submit_stored`] already shaped, marked by a `nubo-trigger` header.
//! They succeed only with a 2xx answer, their invocation records carry the trigger's kind, and
//! a queue batch answered with `batchItemFailures` by a process function is narrowed to the
//! failed records and tried again. Destinations may be functions or queues (`queue:NAME`).

use crate::rescue::{INVOCATION_ID_HEADER, error_response};
use crate::server::Gateway;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use nubo_control::{
    Accepted, AttemptResult, Event, EventState, EventWriter, NewEvent, NewMessage, Next,
    SubmitError,
};
use nubo_core::api::v1::{AsyncAccepted, AsyncAttempt, AsyncInvocation, ErrorBody};
use nubo_core::manifest::{QUEUE_DESTINATION, RetrySpec, Runtime};
use nubo_core::{Body, BoxError, ErrorCode, FunctionTarget, InvocationId, rfc3339};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// The request header that makes an invocation async (value `event`, any case).
pub const INVOCATION_TYPE_HEADER: &str = "nubo-invocation-type";
/// Lambda's spelling of it (value `Event`), so Lambda clients work unchanged.
pub const AWS_INVOCATION_TYPE_HEADER: &str = "x-amz-invocation-type";
/// The request header naming an async invocation for deduplication.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header telling a function which async invocation it runs.
pub const ASYNC_ID_HEADER: &str = "nubo-async-id";
/// Header telling a function which attempt this is (1-based, within the current round).
pub const ASYNC_ATTEMPT_HEADER: &str = "nubo-async-attempt";
/// Stored with an async invocation submitted through the invoke endpoint, so its attempts reach
/// a process function as the raw payload, like a synchronous `nubo invoke`. Never taken from
/// clients: the gateway removes it from every request it receives.
pub(crate) const ENTRY_HEADER: &str = "nubo-entry";
/// Header on a trigger delivery naming its kind (`cron`, `queue`, `object`, `mqtt`, `nats`).
/// Only Nubo sets it: the gateway removes it from every request it receives.
pub const TRIGGER_HEADER: &str = "nubo-trigger";
/// Header on a trigger delivery naming the trigger. Only Nubo sets it.
pub const TRIGGER_NAME_HEADER: &str = "nubo-trigger-name";
/// Header carrying an invocation's place in a chain of trigger deliveries (absent: 0), so a
/// loop of functions feeding each other stops. Only Nubo sets it.
pub const HOP_HEADER: &str = "nubo-hop";
/// Headers only Nubo sets on the requests functions see; removed from every client request.
pub(crate) const INTERNAL_HEADERS: [&str; 4] = [
    ENTRY_HEADER,
    HOP_HEADER,
    TRIGGER_HEADER,
    TRIGGER_NAME_HEADER,
];
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Default bound on async invocations waiting or running, server-wide (`--max-async-queue`).
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
/// How long an idempotency key names its invocation.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Attempts running at once over all functions.
const MAX_IN_FLIGHT: usize = 256;
/// Longest wait between looks at the queue when nothing wakes the deliverer.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Most response bytes of an attempt kept, for its error text and a destination's record (the
/// rest is read and dropped).
const MAX_KEPT_BODY: usize = 64 * 1024;
/// Finished attempts between two prunes of old finished invocations.
const PRUNE_EVERY: u64 = 1_000;

/// Whether a request asks to be run asynchronously.
pub(crate) fn is_async(headers: &HeaderMap) -> bool {
    let is = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("event"))
    };
    is(INVOCATION_TYPE_HEADER) || is(AWS_INVOCATION_TYPE_HEADER)
}

/// The async machinery of one gateway.
pub(crate) struct Events {
    writer: EventWriter,
    /// Events queued or running (an estimate kept in step with the store's count).
    pending: AtomicU64,
    max_pending: u64,
    wake: Notify,
    /// Attempts running, per (app, function).
    running: Mutex<HashMap<(String, String), u32>>,
    finished: AtomicU64,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("pending", &self.pending)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The async machinery over `writer`, with `pending` events already stored.
    pub(crate) fn new(writer: EventWriter, pending: u64, max_pending: u64) -> Events {
        Events {
            writer,
            pending: AtomicU64::new(pending),
            max_pending,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            finished: AtomicU64::new(0),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) {
        // Never below zero: a cancel and a finish of the same event are exclusive in the
        // store, but the estimate may have started low.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Counts events put back in the queue (a redrive) and wakes the deliverer.
    pub(crate) fn requeued(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// The wire form of a stored event; with `detail`, the payload too.
pub(crate) fn to_wire(e: &Event, detail: bool) -> AsyncInvocation {
    let (body, body_base64) = if detail {
        match std::str::from_utf8(&e.body) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => {
                use base64::Engine as _;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&e.body)),
                )
            }
        }
    } else {
        (None, None)
    };
    AsyncInvocation {
        id: e.id.clone(),
        app: e.app.clone(),
        function: e.function.clone(),
        state: e.state.as_str().to_string(),
        attempts: e.attempts,
        max_attempts: e.max_attempts,
        enqueued_at: rfc3339(e.enqueued_at),
        due_at: (e.state == EventState::Queued).then(|| rfc3339(e.due_at)),
        expires_at: rfc3339(e.expires_at),
        finished_at: e.finished_at.map(rfc3339),
        last_error: e.last_error.clone(),
        idempotency_key: e.idempotency_key.clone(),
        method: e.method.clone(),
        path: e.path.clone(),
        body_bytes: e.body.len() as u64,
        body,
        body_base64,
        attempt_list: Vec::new(),
    }
}

/// The wire form of an attempt (logs filled in by the caller).
pub(crate) fn attempt_to_wire(stored: &nubo_control::Attempt) -> AsyncAttempt {
    let a = &stored.result;
    AsyncAttempt {
        attempt: stored.attempt,
        invocation_id: a.invocation_id.clone(),
        revision: a.revision,
        started_at: rfc3339(a.started_at),
        duration_ms: a.duration_ms,
        outcome: a.outcome.clone(),
        status: a.status,
        error: a.error.clone(),
        logs: Vec::new(),
    }
}

/// The delay before attempt `next` (2 for the first retry): `base × 2^(next−2)`, capped, with
/// jitter drawn from the upper half so retries of a burst spread out.
pub(crate) fn backoff(base: Duration, next: u32) -> Duration {
    let exp = next.saturating_sub(2).min(20);
    let full = base.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
    let half = full / 2;
    half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
}

impl Gateway {
    /// Accepts an async invocation of `target`'s function: reads the body (at most
    /// `max_body`), stores it durably and answers 202 with its id.
    pub(crate) async fn submit_event<B>(
        &self,
        target: &FunctionTarget,
        retry: RetrySpec,
        max_body: u64,
        mut parts: http::request::Parts,
        body: B,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(events) = &self.events else {
            return error_response(
                ErrorCode::BadRequest,
                "this server does not take async invocations; send the request without nubo-invocation-type",
                None,
            );
        };
        if self.is_draining() {
            return error_response(
                ErrorCode::ShuttingDown,
                "the server is shutting down; retry on another node or later",
                None,
            );
        }
        // Take a place in the bound first (atomically), give it back unless a new event is
        // stored, so concurrent submitters cannot pass the bound together.
        let place = Place::take(events);
        if place.over {
            return throttled(format!(
                "{} async invocations are waiting, the most this server holds (--max-async-queue); retry later",
                events.max_pending
            ));
        }
        let key = match parts.headers.get(IDEMPOTENCY_KEY_HEADER) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(k) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(k.to_string()),
                _ => {
                    return error_response(
                        ErrorCode::BadRequest,
                        format!(
                            "the idempotency-key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                        ),
                        None,
                    );
                }
            },
        };
        let bytes = match read_limited(body, max_body).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                return error_response(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the request body is larger than this function's limit of {max_body} bytes (max_request_body)"
                    ),
                    None,
                );
            }
            Err(ReadError::Failed(e)) => {
                return error_response(
                    ErrorCode::BadRequest,
                    format!("reading the request body failed: {e}"),
                    None,
                );
            }
        };
        for h in [
            INVOCATION_TYPE_HEADER,
            AWS_INVOCATION_TYPE_HEADER,
            header::CONTENT_LENGTH.as_str(),
            header::TRANSFER_ENCODING.as_str(),
            header::CONNECTION.as_str(),
            header::EXPECT.as_str(),
        ] {
            parts.headers.remove(h);
        }
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let id = InvocationId::new().to_string();
        let event = NewEvent {
            id: id.clone(),
            app: target.app.to_string(),
            function: target.function.to_string(),
            method: parts.method.as_str().to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
            headers,
            body: bytes.to_vec(),
            max_attempts: retry.max_attempts,
            max_age: Duration::from_millis(retry.max_age_ms),
            idempotency_key: key,
            dedup_window: DEDUP_WINDOW,
        };
        let accepted = match events.writer.submit(event).await {
            Ok(a) => a,
            Err(SubmitError::Busy) => {
                return throttled(
                    "too many async invocations are waiting to be stored; retry in a moment".into(),
                );
            }
            Err(SubmitError::Stopped) => {
                return error_response(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down; retry on another node or later",
                    None,
                );
            }
            Err(SubmitError::Store(e)) => {
                tracing::error!(error = %e, app = %target.app, function = %target.function, "cannot store an async invocation");
                return error_response(
                    ErrorCode::Internal,
                    "Nubo could not store the async invocation; the server log has details",
                    None,
                );
            }
        };
        let state = if accepted.replay {
            // The original's state now, so a client retrying its submission learns how it went.
            let store = self.control.store().clone();
            let id = accepted.id.clone();
            tokio::task::spawn_blocking(move || store.event(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .map_or(EventState::Queued, |(e, _)| e.state)
        } else {
            place.keep();
            events.wake.notify_one();
            EventState::Queued
        };
        let body = AsyncAccepted {
            invocation_id: accepted.id.clone(),
            state: state.as_str().to_string(),
            replay: accepted.replay,
        };
        let mut resp = Response::new(nubo_core::full_body(
            serde_json::to_vec(&body).unwrap_or_default(),
        ));
        *resp.status_mut() = StatusCode::ACCEPTED;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&accepted.id) {
            resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
        }
        resp
    }

    /// Cancels a queued async invocation; the answer is its state after the call.
    pub(crate) async fn cancel_event(&self, id: &str) -> Result<Option<EventState>, String> {
        let store = self.control.store().clone();
        let owned = id.to_string();
        let state = tokio::task::spawn_blocking(move || store.cancel_event(&owned))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let (Some((_, true)), Some(events)) = (state, &self.events) {
            events.ended();
        }
        Ok(state.map(|(s, _)| s))
    }
}

impl Gateway {
    /// Stores an already shaped async invocation (a trigger delivery) under the same bound as
    /// client submissions, and wakes the deliverer. Answers once the event is durable.
    ///
    /// Errors: [`SubmitError::Busy`] when `--max-async-queue` invocations are waiting (or the
    /// writer's queue is full), [`SubmitError::Stopped`] when the server takes no async
    /// invocations or is shutting down, [`SubmitError::Store`] when storing failed.
    pub async fn submit_stored(&self, event: NewEvent) -> Result<Accepted, SubmitError> {
        let Some(events) = &self.events else {
            return Err(SubmitError::Stopped);
        };
        if self.is_draining() {
            return Err(SubmitError::Stopped);
        }
        let place = Place::take(events);
        if place.over {
            return Err(SubmitError::Busy);
        }
        let accepted = events.writer.submit(event).await?;
        if !accepted.replay {
            place.keep();
            events.wake.notify_one();
        }
        Ok(accepted)
    }
}

/// The invocation record's trigger kind of a stored event: its `nubo-trigger` header, or
/// `async` for plain async invocations.
fn trigger_kind(headers: &[(String, Vec<u8>)]) -> Option<&'static str> {
    let value = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TRIGGER_HEADER))
        .map(|(_, v)| v.as_slice())?;
    Some(match value {
        b"cron" => "cron",
        b"queue" => "queue",
        b"object" => "object",
        b"mqtt" => "mqtt",
        b"nats" => "nats",
        _ => "trigger",
    })
}

/// How a process function's answer to a queue batch went, by its `batchItemFailures`.
#[derive(Debug, PartialEq, Eq)]
enum BatchAnswer {
    /// Every record was handled (no list, an empty list, or an answer that is not JSON).
    Done,
    /// Some records failed: the batch narrowed to them, and how many failed of how many.
    Partial {
        body: Vec<u8>,
        failed: usize,
        total: usize,
    },
    /// The answer names a record the batch does not hold: the whole batch counts as failed,
    /// as Lambda does.
    All { total: usize },
}

/// Reads `answer` (a process function's result) for `batchItemFailures` against the SQS event
/// `batch` it was given.
fn batch_answer(batch: &[u8], answer: &[u8]) -> BatchAnswer {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default, rename = "batchItemFailures")]
        failures: Vec<Failure>,
    }
    #[derive(serde::Deserialize)]
    struct Failure {
        #[serde(default, rename = "itemIdentifier")]
        item: serde_json::Value,
    }
    let failures = match serde_json::from_slice::<Answer>(answer) {
        Ok(a) if !a.failures.is_empty() => a.failures,
        _ => return BatchAnswer::Done,
    };
    let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(batch) else {
        return BatchAnswer::All { total: 0 };
    };
    let Some(records) = event
        .get_mut("Records")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return BatchAnswer::All { total: 0 };
    };
    let total = records.len();
    let mut failed = std::collections::HashSet::new();
    for f in &failures {
        let id = f.item.as_str().unwrap_or_default();
        if !records.iter().any(|r| r["messageId"].as_str() == Some(id)) {
            return BatchAnswer::All { total };
        }
        failed.insert(id.to_string());
    }
    records.retain(|r| {
        r["messageId"]
            .as_str()
            .is_some_and(|id| failed.contains(id))
    });
    BatchAnswer::Partial {
        failed: records.len(),
        total,
        body: serde_json::to_vec(&event).unwrap_or_default(),
    }
}

/// A place in the bound on pending async invocations, given back on drop unless kept.
struct Place<'a> {
    events: &'a Events,
    over: bool,
    kept: bool,
}

impl<'a> Place<'a> {
    fn take(events: &'a Events) -> Place<'a> {
        let before = events.pending.fetch_add(1, Ordering::Relaxed);
        Place {
            events,
            over: before >= events.max_pending,
            kept: false,
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.events.ended();
        }
    }
}

fn throttled(message: String) -> Response<Body> {
    let mut r = error_response(ErrorCode::Throttled, message, None);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

enum ReadError {
    TooLarge,
    Failed(BoxError),
}

async fn read_limited<B>(mut body: B, max: u64) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > max {
                return Err(ReadError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Starts the deliverer: it runs until the gateway is dropped or starts draining.
pub(crate) fn spawn_deliverer(gw: Weak<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let in_flight = Arc::new(AtomicU64::new(0));
        loop {
            let Some(g) = gw.upgrade() else { return };
            if g.is_draining() {
                return;
            }
            let Some(events) = &g.events else { return };
            let free = MAX_IN_FLIGHT.saturating_sub(in_flight.load(Ordering::Relaxed) as usize);
            let mut claimed = 0;
            if free > 0 {
                // Attempts running per function now; the claim adds to a copy as it takes
                // events, so one batch never exceeds a function's max_concurrency.
                let mut counts = events.running().clone();
                let g2 = g.clone();
                let room = move |app: &str, function: &str| {
                    let key = (app.to_string(), function.to_string());
                    let cap = function_cap(&g2, app, function);
                    let n = counts.entry(key).or_default();
                    if *n >= cap {
                        return false;
                    }
                    *n += 1;
                    true
                };
                let store = g.control.store().clone();
                match tokio::task::spawn_blocking(move || store.claim_events(free, room)).await {
                    Ok(Ok(batch)) => {
                        claimed = batch.len();
                        for e in batch {
                            let key = (e.app.clone(), e.function.clone());
                            *events.running().entry(key).or_default() += 1;
                            in_flight.fetch_add(1, Ordering::Relaxed);
                            let (g2, in_flight) = (g.clone(), in_flight.clone());
                            tokio::spawn(async move {
                                let key = (e.app.clone(), e.function.clone());
                                attempt(&g2, e).await;
                                if let Some(events) = &g2.events {
                                    let mut running = events.running();
                                    if let Some(n) = running.get_mut(&key) {
                                        *n = n.saturating_sub(1);
                                        if *n == 0 {
                                            running.remove(&key);
                                        }
                                    }
                                    events.wake.notify_one();
                                }
                                in_flight.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot claim async invocations"),
                    Err(e) => tracing::error!(error = %e, "claim task failed"),
                }
            }
            // Sleep until woken (a submission or a finished attempt) or the next retry is due.
            let wait = if claimed == free && free > 0 {
                Duration::ZERO
            } else {
                let store = g.control.store().clone();
                let next = tokio::task::spawn_blocking(move || store.next_event_due())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                next.map_or(IDLE_POLL, |t| match t.duration_since(SystemTime::now()) {
                    Ok(until) => until.clamp(Duration::from_millis(5), IDLE_POLL),
                    // Due already but not claimed: every due event belongs to a function at
                    // its cap, so wait for an attempt to finish (it wakes this loop).
                    Err(_) if claimed == 0 => IDLE_POLL,
                    Err(_) => Duration::ZERO,
                })
            };
            let events_wake = async {
                if let Some(e) = &g.events {
                    e.wake.notified().await;
                }
            };
            tokio::select! {
                () = events_wake => {}
                () = tokio::time::sleep(wait) => {}
            }
            drop(g);
        }
    })
}

/// How many attempts of a function may run at once: its `max_concurrency` in the app's
/// highest-weight revision.
fn function_cap(g: &Gateway, app: &str, function: &str) -> u32 {
    g.control
        .app(app)
        .and_then(|a| {
            a.state().primary().and_then(|r| {
                r.manifest
                    .functions
                    .get(function)
                    .map(|f| f.concurrency.max_concurrency)
            })
        })
        .unwrap_or(nubo_core::limits::DEFAULT_MAX_CONCURRENCY)
        .max(1)
}

/// The retry settings of `function` in the app's highest-weight revision (defaults when the
/// app or function is gone).
fn retry_of(g: &Gateway, app: &str, function: &str) -> RetrySpec {
    g.control
        .app(app)
        .and_then(|a| {
            a.state()
                .primary()
                .and_then(|r| r.manifest.functions.get(function).map(|f| f.retry))
        })
        .unwrap_or_default()
}

/// Runs one attempt of a claimed event and records how it went.
async fn attempt(g: &Arc<Gateway>, e: Event) {
    let number = e.attempts + 1;
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let retry = retry_of(g, &e.app, &e.function);
    let Ran {
        status,
        revision,
        invocation_id,
        error,
        body,
        narrowed,
    } = match run(g, &e, number).await {
        Ok(r) => r,
        Err(why) => Ran {
            status: None,
            revision: 0,
            invocation_id: String::new(),
            error: Some(why),
            body: Vec::new(),
            narrowed: None,
        },
    };
    let store = g.control.store().clone();
    let id = e.id.clone();
    // Throttled by the function's limit, or the server is going down: not the function's
    // fault, so the attempt does not count; it is tried again later.
    if matches!(status, Some(429 | 503)) && error.as_deref().is_some_and(is_nubo_not_run) {
        let due = SystemTime::now() + Duration::from_millis(200 + fastrand::u64(0..300));
        if due < e.expires_at {
            if let Err(err) = tokio::task::spawn_blocking(move || store.requeue_event(&id, due))
                .await
                .map_err(|x| x.to_string())
                .and_then(|r| r.map_err(|x| x.to_string()))
            {
                tracing::error!(event = %e.id, error = %err, "cannot requeue an async invocation");
            }
            return;
        }
    }
    let ok = error.is_none() && status.is_some_and(|s| s < 500);
    let partial = narrowed.is_some();
    if let Some(narrowed) = narrowed {
        // The retry (and in the end the dead-letter queue) holds only the failed records.
        let store = store.clone();
        let id = id.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || store.set_event_body(&id, &narrowed))
            .await
            .map_err(|x| x.to_string())
            .and_then(|r| r.map_err(|x| x.to_string()))
        {
            tracing::error!(event = %e.id, error = %err, "cannot narrow a queue batch to its failed messages; the whole batch is tried again");
        }
    }
    let outcome = if ok {
        "ok".to_string()
    } else if partial {
        "partial_batch_failure".to_string()
    } else {
        error
            .as_deref()
            .and_then(error_code_of)
            .unwrap_or_else(|| "function_error".to_string())
    };
    let next = if ok {
        Next::Succeeded
    } else {
        let at =
            SystemTime::now() + backoff(Duration::from_millis(retry.backoff_ms), e.attempts + 2);
        if e.attempts + 1 < e.max_attempts && at < e.expires_at {
            Next::RetryAt(at)
        } else {
            Next::DeadLetter
        }
    };
    let result = AttemptResult {
        invocation_id,
        revision,
        started_at,
        duration_ms: clock.elapsed().as_millis() as u64,
        outcome,
        status,
        error: error.map(|e| error_message_of(&e)),
    };
    let next2 = next.clone();
    let stored = tokio::task::spawn_blocking(move || store.finish_attempt(&id, &result, &next2))
        .await
        .map_err(|x| x.to_string())
        .and_then(|r| r.map_err(|x| x.to_string()));
    match stored {
        Ok(ev) => {
            if ev.state != EventState::Queued
                && let Some(events) = &g.events
            {
                events.ended();
                if events.finished.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1
                {
                    let store = g.control.store().clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(err) =
                            store.prune_finished_events(nubo_control::MAX_FINISHED_EVENTS)
                        {
                            tracing::warn!(error = %err, "cannot prune finished async invocations");
                        }
                    });
                }
            }
            if next == Next::DeadLetter {
                tracing::warn!(event = %ev.id, app = %ev.app, function = %ev.function, attempts = ev.attempts, "async invocation failed every attempt; it is in the dead-letter queue");
            }
            if matches!(ev.state, EventState::Succeeded | EventState::Failed) {
                send_to_destination(g, &e, &ev, status, revision, &body).await;
            }
        }
        // The event stays `running` in the store; the next start queues it again.
        Err(err) => tracing::error!(event = %e.id, error = %err, "cannot record an async attempt"),
    }
}

/// Header on an invocation sent to a destination, naming the invocation it reports on. Such
/// invocations do not trigger destinations themselves, so destinations cannot loop.
pub const DESTINATION_OF_HEADER: &str = "nubo-destination-of";

/// JSON of a payload: the value when it is JSON, else the text (lossy).
fn payload_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Queues the record of finished event `ev` for its function's `on_success` or `on_failure`
/// destination, if it has one (and `e` is not itself a destination delivery): an async
/// invocation of the destination function, or a message published to the destination queue.
async fn send_to_destination(
    g: &Arc<Gateway>,
    e: &Event,
    ev: &Event,
    status: Option<u16>,
    revision: u64,
    body: &[u8],
) {
    if e.headers.iter().any(|(k, _)| k == DESTINATION_OF_HEADER) {
        return;
    }
    let success = ev.state == EventState::Succeeded;
    let (dest, retry) = {
        let Some(app) = g.control.app(&e.app) else {
            return;
        };
        let state = app.state();
        let Some(r) = state.primary() else { return };
        let Some(spec) = r.manifest.functions.get(&e.function) else {
            return;
        };
        let dest = if success {
            spec.destinations.on_success.clone()
        } else {
            spec.destinations.on_failure.clone()
        };
        let Some(dest) = dest else { return };
        let retry = r
            .manifest
            .functions
            .get(&dest)
            .map(|f| f.retry)
            .unwrap_or_default();
        (dest, retry)
    };
    let condition = if success {
        "Success"
    } else if ev.attempts >= ev.max_attempts {
        "RetriesExhausted"
    } else {
        "EventAgeExceeded"
    };
    let response = if success {
        payload_json(body)
    } else {
        serde_json::json!({ "errorMessage": ev.last_error })
    };
    let record = serde_json::json!({
        "version": "1.0",
        "timestamp": rfc3339(SystemTime::now()),
        "requestContext": {
            "requestId": ev.id,
            "app": ev.app,
            "function": ev.function,
            "condition": condition,
            "approximateInvokeCount": ev.attempts,
        },
        "requestPayload": payload_json(&e.body),
        "responseContext": {
            "statusCode": status,
            "executedRevision": revision,
        },
        "responsePayload": response,
    });
    let body = serde_json::to_vec(&record).unwrap_or_default();
    if let Some(queue) = dest.strip_prefix(QUEUE_DESTINATION) {
        let queues = g.control.store().queues();
        let name = queue.to_string();
        let message = NewMessage {
            body,
            content_type: Some("application/json".into()),
            hop: 0,
        };
        let published = tokio::task::spawn_blocking(move || queues.publish(&name, vec![message]))
            .await
            .map_err(|x| x.to_string())
            .and_then(|r| r.map_err(|x| x.to_string()));
        if let Err(err) = published {
            tracing::error!(event = %ev.id, destination = %dest, error = %err, "cannot publish the record to the destination queue");
        }
        return;
    }
    let Some(events) = &g.events else { return };
    let event = NewEvent {
        id: InvocationId::new().to_string(),
        app: e.app.clone(),
        function: dest.clone(),
        method: "POST".into(),
        path: "/".into(),
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            (DESTINATION_OF_HEADER.into(), ev.id.clone().into_bytes()),
        ],
        body,
        max_attempts: retry.max_attempts,
        max_age: Duration::from_millis(retry.max_age_ms),
        idempotency_key: None,
        dedup_window: DEDUP_WINDOW,
    };
    match events.writer.submit(event).await {
        Ok(_) => {
            events.pending.fetch_add(1, Ordering::Relaxed);
            events.wake.notify_one();
        }
        Err(err) => {
            tracing::error!(event = %ev.id, destination = %dest, error = %err, "cannot queue the record for the destination");
        }
    }
}

/// Whether an error text (a JSON error body) says Nubo did not run the function because of
/// load or shutdown.
fn is_nubo_not_run(body: &str) -> bool {
    matches!(
        error_code_of(body).as_deref(),
        Some("throttled" | "shutting_down")
    )
}

fn error_code_of(body: &str) -> Option<String> {
    serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error.code)
}

fn error_message_of(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| body.to_string())
}

/// How one run of an event went.
struct Ran {
    status: Option<u16>,
    revision: u64,
    invocation_id: String,
    /// Set when the answer was 5xx or 429 (the body, or what went wrong).
    error: Option<String>,
    /// The first [`MAX_KEPT_BODY`] bytes of the response body.
    body: Vec<u8>,
    /// A queue batch some of whose messages failed: the batch narrowed to them.
    narrowed: Option<Vec<u8>>,
}

/// Runs the event once.
async fn run(g: &Arc<Gateway>, e: &Event, attempt: u32) -> Result<Ran, String> {
    let app = g
        .control
        .app(&e.app)
        .ok_or_else(|| format!("app {:?} is not deployed", e.app))?;
    let revision = {
        let state = app.state();
        let chosen = if state.is_split() {
            state.pick(fastrand::u8(0..100))
        } else {
            state.primary()
        };
        chosen
            .cloned()
            .ok_or_else(|| format!("app {:?} has no revision taking traffic", e.app))?
    };
    let target = revision.target(&e.function).ok_or_else(|| {
        format!(
            "revision {} of app {:?} has no function {:?}",
            revision.revision, e.app, e.function
        )
    })?;
    let spec = revision.manifest.functions.get(&e.function);
    let max_body = spec.map_or(nubo_core::limits::DEFAULT_MAX_REQUEST_BODY, |f| {
        f.max_request_body
    });
    let process = spec.is_some_and(|f| f.runtime == Runtime::Process);
    let trigger = trigger_kind(&e.headers);
    let mut req = http::Request::builder()
        .method(e.method.as_str())
        .uri(e.path.as_str());
    for (name, value) in &e.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            req = req.header(n, v);
        }
    }
    let req = req
        .header(INVOCATION_TYPE_HEADER, "event")
        .header(ASYNC_ID_HEADER, e.id.as_str())
        .header(ASYNC_ATTEMPT_HEADER, attempt)
        .header(header::CONTENT_LENGTH, e.body.len())
        .body(())
        .map_err(|x| format!("the stored request is invalid: {x}"))?;
    let (parts, ()) = req.into_parts();
    let body = http_body_util::Full::new(Bytes::from(e.body.clone()));
    let resp = g
        .invoke(&target, max_body, parts, body, trigger.unwrap_or("async"))
        .await;
    let status = resp.status().as_u16();
    let invocation_id = resp
        .headers()
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // Reading the body to its end finishes the invocation (its record and logs).
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data()
                    && kept.len() < MAX_KEPT_BODY
                {
                    kept.extend_from_slice(&d[..d.len().min(MAX_KEPT_BODY - kept.len())]);
                }
            }
            Err(x) => {
                failed = Some(format!("the response failed while streaming: {x}"));
                break;
            }
        }
    }
    // Trigger deliveries need a 2xx; plain async invocations fail only with 5xx and 429.
    let failed_status =
        status >= 500 || status == 429 || (trigger.is_some() && !(200..300).contains(&status));
    let mut narrowed = None;
    let error = if let Some(f) = failed {
        Some(f)
    } else if failed_status {
        let text = String::from_utf8_lossy(&kept).into_owned();
        Some(if text.is_empty() {
            format!("the function answered {status}")
        } else {
            text
        })
    } else if trigger == Some("queue") && process {
        match batch_answer(&e.body, &kept) {
            BatchAnswer::Done => None,
            BatchAnswer::Partial {
                body,
                failed,
                total,
            } => {
                narrowed = Some(body);
                Some(format!(
                    "{failed} of {total} messages of the batch failed (batchItemFailures); those are tried again"
                ))
            }
            BatchAnswer::All { total } => Some(format!(
                "batchItemFailures names a message that is not in the batch, so all {total} messages are tried again; answer with the messageId of each failed record"
            )),
        }
    } else {
        None
    };
    Ok(Ran {
        status: Some(status),
        revision: revision.revision,
        invocation_id,
        error,
        body: kept,
        narrowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(base, 2);
            assert!(
                first >= Duration::from_millis(50) && first <= base,
                "{first:?}"
            );
            let third = backoff(base, 4);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(base, 40) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn the_invocation_type_header_is_read_in_either_spelling() {
        let mut h = HeaderMap::new();
        assert!(!is_async(&h));
        h.insert(INVOCATION_TYPE_HEADER, HeaderValue::from_static("event"));
        assert!(is_async(&h));
        let mut h = HeaderMap::new();
        h.insert(
            AWS_INVOCATION_TYPE_HEADER,
            HeaderValue::from_static("Event"),
        );
        assert!(is_async(&h));
        h.insert(
            AWS_INVOCATION_TYPE_HEADER,
            HeaderValue::from_static("RequestResponse"),
        );
        assert!(!is_async(&h));
    }

    fn sqs_batch(ids: &[&str]) -> Vec<u8> {
        let records: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| serde_json::json!({ "messageId": id, "body": format!("body of {id}") }))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
    }

    #[test]
    fn a_batch_answer_narrows_the_batch_to_the_failed_messages() {
        let batch = sqs_batch(&["m1", "m2", "m3"]);
        let answer = br#"{"batchItemFailures":[{"itemIdentifier":"m3"},{"itemIdentifier":"m1"}]}"#;
        let BatchAnswer::Partial {
            body,
            failed,
            total,
        } = batch_answer(&batch, answer)
        else {
            panic!("expected a partial failure");
        };
        assert_eq!((failed, total), (2, 3));
        let narrowed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> = narrowed["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m1", "m3"], "kept in batch order");
        assert_eq!(narrowed["Records"][0]["body"], "body of m1");
    }

    #[test]
    fn a_batch_answer_without_failures_is_a_success() {
        let batch = sqs_batch(&["m1"]);
        for answer in [
            &b""[..],
            b"null",
            b"not json",
            br#"{"batchItemFailures":[]}"#,
            br#"{"statusCode":200}"#,
        ] {
            assert_eq!(
                batch_answer(&batch, answer),
                BatchAnswer::Done,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn a_failure_naming_an_unknown_message_fails_the_whole_batch() {
        let batch = sqs_batch(&["m1", "m2"]);
        for answer in [
            &br#"{"batchItemFailures":[{"itemIdentifier":"m9"}]}"#[..],
            br#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            br#"{"batchItemFailures":[{}]}"#,
        ] {
            assert_eq!(
                batch_answer(&batch, answer),
                BatchAnswer::All { total: 2 },
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn the_trigger_header_names_the_record_kind() {
        let h = |v: &str| vec![(TRIGGER_HEADER.to_string(), v.as_bytes().to_vec())];
        assert_eq!(trigger_kind(&h("cron")), Some("cron"));
        assert_eq!(trigger_kind(&h("queue")), Some("queue"));
        assert_eq!(trigger_kind(&h("object")), Some("object"));
        assert_eq!(trigger_kind(&h("mqtt")), Some("mqtt"));
        assert_eq!(trigger_kind(&h("nats")), Some("nats"));
        assert_eq!(trigger_kind(&h("other")), Some("trigger"));
        assert_eq!(
            trigger_kind(&[("content-type".into(), b"text/plain".to_vec())]),
            None
        );
    }

    #[test]
    fn nubo_errors_are_told_from_function_errors() {
        let throttled = r#"{"error":{"code":"throttled","message":"busy"}}"#;
        assert!(is_nubo_not_run(throttled));
        assert!(!is_nubo_not_run(
            r#"{"error":{"code":"function_trap","message":"boom"}}"#
        ));
        assert!(!is_nubo_not_run("plain text"));
        assert_eq!(error_message_of(throttled), "busy");
        assert_eq!(error_message_of("plain"), "plain");
    }
}
