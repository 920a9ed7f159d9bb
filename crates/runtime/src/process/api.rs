//! The AWS Lambda Runtime API served to one worker: a small HTTP/1 server on the worker's own
//! listener that hands it one invocation at a time (`/next`) and takes back its result
//! (`/response`, `/error`) or its failure to start (`/init/error`). Paths under
//! `/nubo/v1/kv` go to the key-value API of the stores the function binds (`kv`), paths under
//! `/nubo/v1/obj` to the object storage API of the buckets it binds (`objects`), paths under
//! `/nubo/v1/queues` to the publish API of the queues it binds (`queues`). Object writes and
//! publishes carry the trigger hop count and the trace of the invocation in flight.
//!
//! State machine per worker: no invocation is current until `/next` hands one out; only the
//! current request id may answer, once. A second `/next` while one is current drops it
//! unanswered (the runtime moved on), which its caller sees as "no response".

use super::kv::{self, KvScope};
use super::objects::{self, ObjBody, ObjScope};
use super::queues::{self, QueueScope};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// Largest buffered result (`/response`, `/error`, `/init/error` body), as Lambda's 6 MB
/// synchronous payload limit: bounds what one worker makes the server hold in memory.
/// Streamed responses are not buffered and not limited.
pub(crate) const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// Chunks of a streamed response buffered between the worker and the client. Small, so a slow
/// client slows the worker down instead of growing memory.
const STREAM_BUFFER_CHUNKS: usize = 8;

const PREFIX: &str = "/2018-06-01/runtime/";

/// Response mode header of a streamed `/response`.
const RESPONSE_MODE: &str = "lambda-runtime-function-response-mode";
/// Trailer naming the error that ended a streamed response.
const ERROR_TYPE_TRAILER: &str = "lambda-runtime-function-error-type";
/// Trailer carrying the (base64) error document that ended a streamed response.
const ERROR_BODY_TRAILER: &str = "lambda-runtime-function-error-body";

/// One invocation handed to a worker.
pub(crate) struct Job {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub(crate) request_id: String,
    /// `Lambda-Runtime-Deadline-Ms`: epoch milliseconds.
    pub(crate) deadline_ms: u64,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub(crate) arn: Arc<str>,
    /// `Lambda-Runtime-Trace-Id`.
    pub(crate) trace_id: String,
    /// The event.
    pub(crate) payload: Bytes,
    /// The invocation's trigger hop count (its request's `nubo-hop`), carried by the object
    /// writes and queue publishes the worker makes while it runs.
    pub(crate) hop: u32,
    /// Where the worker's answer goes.
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// A worker's answer to one invocation.
pub(crate) enum Reply {
    /// A buffered `/response`.
    Response(Bytes),
    /// A streamed `/response`: chunks as they arrive; an `Err` ends the stream with an error.
    Stream {
        /// The runtime's content-type (`application/vnd.awslambda.http-integration-response`
        /// for HTTP streaming with a prelude).
        content_type: Option<HeaderValue>,
        /// The chunks, then [`Chunk::End`] or [`Chunk::Failed`]; a channel that closes without
        /// either means the worker stopped mid-stream.
        body: mpsc::Receiver<Chunk>,
    },
    /// `/error`: the runtime's error document, opaque.
    Error(Bytes),
    /// A `/response` over [`MAX_RESPONSE_BYTES`].
    TooLarge,
}

/// A piece of a streamed response.
pub(crate) enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The runtime reported an error partway (trailers) or the upload broke.
    Failed(String),
    /// The runtime finished the response.
    End,
}

/// What is known about a worker's life, published to whoever waits on it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Time from spawn to its first `/next`.
    pub(crate) ready: Option<Duration>,
    /// The runtime's `/init/error` message.
    pub(crate) init_error: Option<String>,
    /// How the program ended.
    pub(crate) exit: Option<String>,
    /// `; last output: …` with its last lines when it ended, else empty.
    pub(crate) last_output: String,
    /// Whether the memory cap killed it.
    pub(crate) oom_killed: bool,
}

/// The state one worker's Runtime API shares with its pool.
pub(crate) struct Channel {
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    current: Mutex<Option<Current>>,
    pub(crate) status: watch::Sender<Status>,
    spawned: Instant,
    /// The key-value stores this worker may reach under `/nubo/v1/kv/`.
    kv: Arc<KvScope>,
    /// The buckets this worker may reach under `/nubo/v1/obj/`.
    objects: Arc<ObjScope>,
    /// The queues this worker may publish to under `/nubo/v1/queues/`.
    queues: Arc<QueueScope>,
    /// The hop count of the invocation last handed out (0 before the first).
    hop: AtomicU32,
    /// The `traceparent` of the invocation last handed out, when it runs in a sampled trace.
    traceparent: Mutex<Option<String>>,
}

struct Current {
    id: String,
    reply: oneshot::Sender<Reply>,
}

impl Channel {
    /// A channel fed by `jobs`; the worker was spawned at `spawned`.
    pub(crate) fn new(jobs: mpsc::Receiver<Job>, spawned: Instant) -> Channel {
        Channel {
            jobs: tokio::sync::Mutex::new(jobs),
            current: Mutex::new(None),
            status: watch::Sender::new(Status::default()),
            spawned,
            kv: Arc::new(KvScope::none()),
            objects: Arc::new(ObjScope::none()),
            queues: Arc::new(QueueScope::none()),
            hop: AtomicU32::new(0),
            traceparent: Mutex::new(None),
        }
    }

    /// Lets the worker reach the key-value stores of `scope` (none by default).
    pub(crate) fn with_kv(mut self, scope: Arc<KvScope>) -> Channel {
        self.kv = scope;
        self
    }

    /// Lets the worker reach the buckets of `scope` (none by default).
    pub(crate) fn with_objects(mut self, scope: Arc<ObjScope>) -> Channel {
        self.objects = scope;
        self
    }

    /// Lets the worker publish to the queues of `scope` (none by default).
    pub(crate) fn with_queues(mut self, scope: Arc<QueueScope>) -> Channel {
        self.queues = scope;
        self
    }

    /// The trigger hop count of the invocation in flight (of the last one handed out).
    fn hop(&self) -> u32 {
        self.hop.load(Ordering::Relaxed)
    }

    /// The trace of the invocation in flight, as a `traceparent` naming its span.
    fn traceparent(&self) -> Option<String> {
        self.traceparent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn take_current(&self, id: &str) -> Option<oneshot::Sender<Reply>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(c) if c.id == id => current.take().map(|c| c.reply),
            _ => None,
        }
    }
}

/// Serves the Runtime API on `listener` until the task is aborted (when the worker ends).
/// Connections live in a `JoinSet`, so aborting this task closes them too.
pub(crate) async fn serve(listener: TcpListener, channel: Arc<Channel>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let channel = Arc::clone(&channel);
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let channel = Arc::clone(&channel);
                            async move { Ok::<_, std::convert::Infallible>(route(&channel, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::debug!(error = %e, "runtime api accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type ApiResponse = Response<Full<Bytes>>;

/// Sends object storage requests to their API, whose answers may stream; the rest is buffered.
async fn route(channel: &Channel, req: Request<Incoming>) -> Response<ObjBody> {
    if req.uri().path().starts_with(objects::PREFIX) {
        return objects::handle(&channel.objects, channel.hop(), channel.traceparent(), req).await;
    }
    handle(channel, req).await.map(Either::Left)
}

async fn handle(channel: &Channel, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_owned();
    if path.starts_with(kv::PREFIX) {
        return kv::handle(&channel.kv, req).await;
    }
    if path.starts_with(queues::PREFIX) {
        return queues::handle(&channel.queues, channel.hop(), channel.traceparent(), req).await;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return not_found(&path);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["invocation", "next"]) => next(channel).await,
        (Method::POST, ["invocation", id, "response"]) => response(channel, id, req).await,
        (Method::POST, ["invocation", id, "error"]) => error(channel, id, req).await,
        (Method::POST, ["init", "error"]) => init_error(channel, req).await,
        (Method::GET, ["restore", "next"]) => plain(StatusCode::OK, Bytes::new()),
        (Method::POST, ["restore", "error"]) => accepted(),
        _ => not_found(&path),
    }
}

async fn next(channel: &Channel) -> ApiResponse {
    // One `/next` at a time takes jobs; a second one waits behind it.
    let mut jobs = channel.jobs.lock().await;
    channel.status.send_if_modified(|s| {
        if s.ready.is_none() {
            s.ready = Some(channel.spawned.elapsed());
            true
        } else {
            false
        }
    });
    // The runtime asks for more while one is current: it gave that one up.
    drop(
        channel
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    let Some(job) = jobs.recv().await else {
        // The worker is being retired; a 500 makes Lambda runtimes exit.
        return api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.Stopping",
            "the worker is stopping",
        );
    };
    let mut response = plain(StatusCode::OK, job.payload);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert(headers, "lambda-runtime-aws-request-id", &job.request_id);
    insert(
        headers,
        "lambda-runtime-deadline-ms",
        &job.deadline_ms.to_string(),
    );
    insert(headers, "lambda-runtime-invoked-function-arn", &job.arn);
    insert(headers, "lambda-runtime-trace-id", &job.trace_id);
    channel.hop.store(job.hop, Ordering::Relaxed);
    // The trace id handed to the runtime is the invocation's trace in X-Ray form. Only a
    // sampled one is passed on: an unsampled id may be a stand-in made for the runtime alone.
    *channel
        .traceparent
        .lock()
        .unwrap_or_else(|e| e.into_inner()) =
        nubo_telemetry::TraceContext::from_xray(&job.trace_id)
            .filter(|t| t.sampled)
            .map(|t| t.traceparent());
    *channel.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Current {
        id: job.request_id,
        reply: job.reply,
    });
    response
}

async fn response(channel: &Channel, id: &str, req: Request<Incoming>) -> ApiResponse {
    let Some(reply) = channel.take_current(id) else {
        return not_current(id);
    };
    let streaming = req
        .headers()
        .get(RESPONSE_MODE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streaming {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let _ = reply.send(Reply::Stream {
            content_type,
            body: rx,
        });
        pump(req.into_body(), tx).await;
        return accepted();
    }
    match read_limited(req.into_body()).await {
        Ok(body) => {
            let _ = reply.send(Reply::Response(body));
            accepted()
        }
        Err(Unread::TooLarge) => {
            let _ = reply.send(Reply::TooLarge);
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!(
                    "the response is larger than {MAX_RESPONSE_BYTES} bytes; stream it \
                     (Lambda-Runtime-Function-Response-Mode: streaming) or make it smaller"
                ),
            )
        }
        Err(Unread::Broken) => {
            // The reply sender drops: the caller sees no response.
            api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "the response body could not be read",
            )
        }
    }
}

/// Forwards a streamed response's chunks, then how it ended.
async fn pump(mut body: Incoming, tx: mpsc::Sender<Chunk>) {
    let mut client_gone = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    // Keep reading after the client left so the runtime can finish its post.
                    if !client_gone && !data.is_empty() && tx.send(Chunk::Data(data)).await.is_err()
                    {
                        client_gone = true;
                    }
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref()
                        && let Some(error) = trailer_error(trailers)
                    {
                        let _ = tx.send(Chunk::Failed(error)).await;
                        return;
                    }
                }
            },
            Err(e) => {
                let _ = tx
                    .send(Chunk::Failed(format!(
                        "the function's response stream broke: {e}"
                    )))
                    .await;
                return;
            }
        }
    }
    let _ = tx.send(Chunk::End).await;
}

/// The error a streamed response's trailers report, if any.
fn trailer_error(trailers: &HeaderMap) -> Option<String> {
    let kind = trailers.get(ERROR_TYPE_TRAILER)?;
    let kind = String::from_utf8_lossy(kind.as_bytes()).into_owned();
    let detail = trailers
        .get(ERROR_BODY_TRAILER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Some(match detail {
        Some(detail) => {
            format!("the function failed while streaming its response: {kind}: {detail}")
        }
        None => format!("the function failed while streaming its response: {kind}"),
    })
}

async fn error(channel: &Channel, id: &str, req: Request<Incoming>) -> ApiResponse {
    let Some(reply) = channel.take_current(id) else {
        return not_current(id);
    };
    match read_limited(req.into_body()).await {
        Ok(body) => {
            let _ = reply.send(Reply::Error(body));
            accepted()
        }
        Err(_) => {
            let _ = reply.send(Reply::Error(Bytes::from_static(
                br#"{"errorType":"Runtime.TooLarge","errorMessage":"the error document was too large or unreadable"}"#,
            )));
            accepted()
        }
    }
}

async fn init_error(channel: &Channel, req: Request<Incoming>) -> ApiResponse {
    let header_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_limited(req.into_body()).await.unwrap_or_default();
    let message = init_error_message(&body, header_type.as_deref());
    channel.status.send_modify(|s| {
        s.init_error.get_or_insert(message);
    });
    accepted()
}

/// `errorType: errorMessage` from the runtime's error document, else its text.
pub(crate) fn init_error_message(body: &[u8], header_type: Option<&str>) -> String {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
        #[serde(rename = "errorMessage")]
        error_message: Option<String>,
    }
    let doc = serde_json::from_slice::<Doc>(body).ok();
    let kind = doc
        .as_ref()
        .and_then(|d| d.error_type.clone())
        .or_else(|| header_type.map(str::to_owned));
    let text = match doc.and_then(|d| d.error_message) {
        Some(m) => m,
        None => String::from_utf8_lossy(&body[..body.len().min(1024)])
            .trim()
            .to_owned(),
    };
    match (kind, text.is_empty()) {
        (Some(k), false) => format!("{k}: {text}"),
        (Some(k), true) => k,
        (None, false) => text,
        (None, true) => "the runtime reported an init error without details".to_owned(),
    }
}

enum Unread {
    TooLarge,
    Broken,
}

async fn read_limited(body: Incoming) -> Result<Bytes, Unread> {
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Unread::TooLarge),
        Err(_) => Err(Unread::Broken),
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn plain(status: StatusCode, body: Bytes) -> ApiResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

fn accepted() -> ApiResponse {
    let mut response = plain(
        StatusCode::ACCEPTED,
        Bytes::from_static(br#"{"status":"OK"}"#),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> ApiResponse {
    let body = serde_json::json!({ "errorType": kind, "errorMessage": message });
    let mut response = plain(status, Bytes::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn not_current(id: &str) -> ApiResponse {
    api_error(
        StatusCode::FORBIDDEN,
        "InvalidStateTransition",
        &format!(
            "invocation {id} is not the current invocation of this worker (already answered or never handed out)"
        ),
    )
}

fn not_found(path: &str) -> ApiResponse {
    api_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{path} is not a Runtime API path"),
    )
}
