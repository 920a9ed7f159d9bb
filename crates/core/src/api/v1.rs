//! Version 1 of the admin API's request and response bodies.

use serde::{Deserialize, Serialize};

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Details of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code from the registry (`route_not_found`, …).
    pub code: String,
    /// Human-readable explanation, naming the problem and the fix.
    pub message: String,
    /// The invocation the error belongs to, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
}

/// Result of a successful deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The app.
    pub app: String,
    /// The new revision number.
    pub revision: u64,
    /// Per-function results.
    pub functions: Vec<DeployedFunction>,
    /// Routes now live.
    pub routes: Vec<RouteInfo>,
    /// The app's traffic split after the deploy (the new revision may take all, some or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficState>,
    /// The revision's triggers (in force while it is the revision with the largest share).
    /// Servers that predate triggers omit it.
    #[serde(default)]
    pub triggers: Vec<DeployedTrigger>,
}

/// One trigger of a deployed revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployedTrigger {
    /// Its name, unique in the app.
    pub name: String,
    /// `cron`, `queue`, `object`, `mqtt` or `nats`.
    pub kind: String,
    /// The function it delivers to.
    pub function: String,
}

/// One function of a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployedFunction {
    /// Function name.
    pub name: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Component size in bytes.
    pub size: u64,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
    /// Compile time in milliseconds (0 when cached); for a process function, the time its
    /// archive took to check.
    pub compile_ms: u64,
    /// How it runs: `wasm` or `process`. Servers that predate process functions omit it.
    #[serde(default = "wasm_runtime")]
    pub runtime: String,
}

fn wasm_runtime() -> String {
    "wasm".to_string()
}

/// One live route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Methods (empty = any).
    pub methods: Vec<String>,
    /// Path pattern.
    pub path: String,
    /// Target function.
    pub function: String,
}

/// An app in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppSummary {
    /// Name.
    pub name: String,
    /// Live revision.
    pub revision: u64,
    /// When the live revision was deployed (RFC 3339).
    pub deployed_at: String,
    /// Function names.
    pub functions: Vec<String>,
    /// Routes.
    pub routes: Vec<RouteInfo>,
}

/// One invocation record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// ULID.
    pub id: String,
    /// App.
    pub app: String,
    /// Function.
    pub function: String,
    /// Revision.
    pub revision: u64,
    /// What triggered it (`http`, `invoke`).
    pub trigger: String,
    /// Start time, RFC 3339 with milliseconds.
    pub started_at: String,
    /// Wall time in microseconds.
    pub duration_us: u64,
    /// Outcome name (`ok`, `timeout`, …).
    pub outcome: String,
    /// HTTP status answered, if any.
    pub status: Option<u16>,
    /// Whether it was cold: the first instantiation of a wasm function on this server, or
    /// served by a process worker started for it.
    pub cold: bool,
    /// A cold process invocation's worker start-up time (spawn to its first request for
    /// work), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_ms: Option<u64>,
    /// Outbound requests the function made (wasm `wasi:http`, or through the egress proxy).
    #[serde(default)]
    pub outbound_requests: u64,
    /// Body bytes the function sent in outbound requests.
    #[serde(default)]
    pub outbound_bytes_out: u64,
    /// Body bytes the function received from outbound requests.
    #[serde(default)]
    pub outbound_bytes_in: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Whether log lines were cut.
    pub logs_truncated: bool,
    /// What the invocation is billed for (absent on records written before metering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<InvocationUsage>,
}

/// One captured log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Invocation it belongs to.
    pub invocation_id: String,
    /// App.
    pub app: String,
    /// Function.
    pub function: String,
    /// Time the line was written, RFC 3339 with milliseconds.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
    /// `trace`, `debug`, `info`, `warn` or `error` when the line is a JSON object with a
    /// `level` (or `severity`, `lvl`) field naming one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Its position in the server's log: pass the last one seen as `after` to continue
    /// without gaps or repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
}

/// Which log lines `GET /_nubo/api/v1/apps/{app}/logs` answers, besides `since`, `after` and
/// `limit`: every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFilter {
    /// Only this function's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Only this invocation's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<String>,
    /// Only lines containing this text (case-sensitive substring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// Only lines with at least this level (`trace`, `debug`, `info`, `warn`, `error`); lines
    /// without a level are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// The body of a 409 `conflict` answer: the error and the state the caller should have expected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictBody {
    /// The error (`code` is `conflict`).
    pub error: ErrorDetail,
    /// The app's traffic state now; retry with its `generation` as `expected_generation`.
    pub current: TrafficState,
}

/// One revision in `nubo revisions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionSummary {
    /// Its number.
    pub revision: u64,
    /// When it was committed (RFC 3339).
    pub created_at: String,
    /// Who deployed it (an API key name once keys exist; `null` for the local admin).
    pub deployed_by: Option<String>,
    /// Its functions with their code digests.
    pub functions: Vec<DeployedFunction>,
    /// Its routes.
    pub routes: Vec<RouteInfo>,
    /// One line: what changed against the revision before it (`first revision`,
    /// `+fn a, ~fn b, -fn c, routes changed`, `no changes`).
    pub changes: String,
    /// Its share of traffic now, in percent (0 when it takes none).
    pub weight: u8,
}

/// `GET /_nubo/api/v1/apps/{app}/revisions`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionList {
    /// The app.
    pub app: String,
    /// Retained revisions, newest first.
    pub revisions: Vec<RevisionSummary>,
}

/// One revision's share of an app's traffic, with its recent figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficEntry {
    /// The revision.
    pub revision: u64,
    /// Percent of requests it gets (the entries of a split sum to 100).
    pub weight: u8,
    /// Requests it served in the last 5 minutes (on this server).
    #[serde(default)]
    pub requests_5m: u64,
    /// Of those, answers that were 5xx or function errors.
    #[serde(default)]
    pub errors_5m: u64,
}

/// An app's live traffic split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficState {
    /// The app.
    pub app: String,
    /// Bumped by every deploy and traffic change of the app; updates may name the one they
    /// expect and get 409 when it moved.
    pub generation: u64,
    /// Weighted revisions, highest weight first; weights sum to 100.
    pub split: Vec<TrafficEntry>,
    /// The rollout in progress or the last one that ended, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// One revision and its weight in a traffic update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedRevision {
    /// The revision (must be retained and not failed).
    pub revision: u64,
    /// Percent, 0..=100.
    pub weight: u8,
}

/// `PUT /_nubo/api/v1/apps/{app}/traffic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficUpdate {
    /// The new split; weights must sum to 100 and name each revision once.
    pub split: Vec<WeightedRevision>,
    /// When given, the update applies only if the app is still at this generation (else 409).
    #[serde(default)]
    pub expected_generation: Option<u64>,
}

/// `POST /_nubo/api/v1/apps/{app}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The revision to move all traffic to; default the one that served before the last
    /// traffic change.
    #[serde(default)]
    pub to: Option<u64>,
    /// As in [`TrafficUpdate::expected_generation`].
    #[serde(default)]
    pub expected_generation: Option<u64>,
}

/// `POST /_nubo/api/v1/apps/{app}/rollout`: shift traffic to `to` in timed steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// The revision to roll out.
    pub to: u64,
    /// Its share at each step, increasing, the last one 100 (e.g. `[10, 50, 100]`).
    pub steps: Vec<u8>,
    /// Time each step lasts before the next, in milliseconds.
    pub interval_ms: u64,
    /// Roll back when the new revision's error rate over a step exceeds this many times the
    /// old revision's (default 2.0) …
    #[serde(default)]
    pub error_ratio: Option<f64>,
    /// … and at least this rate, in percent (default 5.0).
    #[serde(default)]
    pub min_error_rate: Option<f64>,
    /// As in [`TrafficUpdate::expected_generation`].
    #[serde(default)]
    pub expected_generation: Option<u64>,
}

/// A rollout's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The revision being rolled out.
    pub to: u64,
    /// The revision that had all traffic when it started (the rollback target).
    pub from: u64,
    /// Its steps, in percent.
    pub steps: Vec<u8>,
    /// Index into `steps` of the step in force.
    pub step: usize,
    /// Step length in milliseconds.
    pub interval_ms: u64,
    /// `running`, `completed`, `rolled_back` or `aborted`.
    pub state: String,
    /// When the current step started (RFC 3339).
    pub step_started_at: String,
    /// Why it ended, when it did (for `rolled_back`: the error rates that tripped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The threshold's ratio to the old revision's error rate.
    #[serde(default)]
    pub error_ratio: f64,
    /// The threshold's floor, in percent.
    #[serde(default)]
    pub min_error_rate: f64,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub started_at: String,
    /// When it ended (RFC 3339), once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The new revision's requests and errors in the current step so far (on this server).
    #[serde(default)]
    pub step_requests: u64,
    /// Of those, errors.
    #[serde(default)]
    pub step_errors: u64,
}

/// `GET /_nubo/api/v1/metrics`: how loaded the server is right now, per function and in
/// total. Counts are of this server only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadMetrics {
    /// Server-wide figures.
    pub server: ServerLoad,
    /// One entry per function with a loaded revision, by app then function name.
    pub functions: Vec<FunctionLoad>,
}

/// Server-wide concurrency figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerLoad {
    /// Invocations running (or streaming their response) now, all functions together.
    pub in_use: u32,
    /// The server-wide cap (`NUBO_MAX_CONCURRENCY` for `nubo server`).
    pub cap: u32,
    /// Capacity reserved by functions with `reserve = true` (sum of their `max_concurrency`).
    pub reserved: u32,
    /// Of `in_use`, slots taken from the capacity unreserved functions share.
    pub shared_in_use: u32,
    /// The capacity unreserved functions share: `cap - reserved`.
    pub shared_cap: u32,
    /// Requests answered 429 `throttled` since the server started.
    pub throttled: u64,
}

/// One function's concurrency figures (all its loaded revisions together).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionLoad {
    /// App name.
    pub app: String,
    /// Function name.
    pub function: String,
    /// The revision whose settings are in force (the most recently loaded one).
    pub revision: u64,
    /// Its `max_concurrency`.
    pub max_concurrency: u32,
    /// Its `reserve`.
    pub reserve: bool,
    /// Its `queue_depth`.
    pub queue_depth: u32,
    /// Its `queue_timeout`, in milliseconds.
    pub queue_timeout_ms: u64,
    /// Invocations holding a slot now (running, or streaming their response body).
    pub in_flight: u32,
    /// Requests waiting for a slot now.
    pub queued: u32,
    /// Requests answered 429 `throttled` since the server started.
    pub throttled: u64,
    /// Live instances (for wasm: instances running an invocation now).
    pub instances: u32,
}

/// `202 Accepted` answer to an async invocation (`nubo-invocation-type: event`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncAccepted {
    /// The async invocation's id (`nubo invocation ID` shows it).
    pub invocation_id: String,
    /// `queued`; for a replay, the original invocation's state now.
    pub state: String,
    /// True when the request's `idempotency-key` was seen within the dedup window: the id is
    /// the original invocation's and nothing new was queued.
    #[serde(default)]
    pub replay: bool,
}

/// An async invocation, its state and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncInvocation {
    /// Its id.
    pub id: String,
    /// App.
    pub app: String,
    /// Function.
    pub function: String,
    /// `queued`, `running`, `succeeded`, `failed` (in the dead-letter queue) or `cancelled`.
    pub state: String,
    /// Attempts in the current round (a redrive starts a new round).
    pub attempts: u32,
    /// Most attempts per round.
    pub max_attempts: u32,
    /// When it was accepted (RFC 3339).
    pub enqueued_at: String,
    /// When its next attempt is due, while queued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    /// After this it is not attempted again (RFC 3339).
    pub expires_at: String,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The submitter's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The request as it is delivered: method and path.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Payload size in bytes.
    pub body_bytes: u64,
    /// The payload as text when it is UTF-8 (only in single-invocation answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The payload in base64 when it is not UTF-8 (only in single-invocation answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Every attempt over its life, oldest first (only in single-invocation answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_list: Vec<AsyncAttempt>,
}

/// One attempt at an async invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncAttempt {
    /// 1-based over the invocation's life.
    pub attempt: u32,
    /// The invocation record of this attempt; its logs are under this id.
    pub invocation_id: String,
    /// The revision that ran it.
    pub revision: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// `ok`, or the error code it failed with.
    pub outcome: String,
    /// HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its log lines.
    #[serde(default)]
    pub logs: Vec<LogLine>,
}

/// `GET /_nubo/api/v1/invocations/{id}`: a recorded invocation with its logs, or an async
/// invocation with its attempts (and each attempt's logs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationDetail {
    /// The invocation record (absent for an async invocation: its attempts have records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<InvocationRecord>,
    /// Log lines of the record.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// The async invocation, when the id is one.
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub async_invocation: Option<AsyncInvocation>,
}

/// `GET /_nubo/api/v1/apps/{app}/async` and `GET …/dlq`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncList {
    /// The app.
    pub app: String,
    /// Invocations, newest first (without payloads and attempts).
    pub invocations: Vec<AsyncInvocation>,
}

/// `POST /_nubo/api/v1/apps/{app}/dlq/redrive`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedriveRequest {
    /// The failed invocations to queue again; absent means all of the app's.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

/// Answer of a redrive or purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqChange {
    /// The app.
    pub app: String,
    /// Ids queued again (redrive).
    #[serde(default)]
    pub redriven: Vec<String>,
    /// How many were deleted (purge).
    #[serde(default)]
    pub purged: u64,
}

/// One key-value store in `GET /_nubo/api/v1/kv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvStoreInfo {
    /// The store's name.
    pub name: String,
    /// Keys held (expired keys count until they are purged, within a minute).
    pub keys: u64,
    /// Bytes of the keys and values held, counted like `keys`.
    pub bytes: u64,
    /// When the store was created (RFC 3339).
    pub created_at: String,
}

/// `GET /_nubo/api/v1/kv`: every key-value store, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvStoreList {
    /// The stores.
    pub stores: Vec<KvStoreInfo>,
}

/// `GET /_nubo/api/v1/kv/{store}/keys`: one page of keys in byte order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvKeyPage {
    /// The store.
    pub store: String,
    /// Keys of this page.
    pub keys: Vec<String>,
    /// Present when more keys may follow: pass it as `cursor` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One object storage bucket, as listed by `GET /_nubo/api/v1/buckets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketInfo {
    /// The bucket's name.
    pub name: String,
    /// Objects held.
    pub objects: u64,
    /// Bytes of the objects held.
    pub bytes: u64,
    /// When the bucket was created (RFC 3339).
    pub created_at: String,
}

/// `GET /_nubo/api/v1/buckets`: every bucket, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketList {
    /// The buckets.
    pub buckets: Vec<BucketInfo>,
}

/// One object's metadata, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The entity tag, without quotes (hex MD5, or `<hex>-<parts>` for multipart uploads).
    pub etag: String,
    /// When it was written (RFC 3339).
    pub last_modified: String,
    /// Its content type, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// `GET /_nubo/api/v1/buckets/{bucket}/objects`: one page of objects in key order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectList {
    /// The bucket.
    pub bucket: String,
    /// Objects of this page.
    pub objects: Vec<ObjectInfo>,
    /// Key prefixes rolled up by the delimiter.
    #[serde(default)]
    pub common_prefixes: Vec<String>,
    /// Present when more may follow: pass it as `after` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One secret of an app: its name and when it was last set. The value is never part of any
/// answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretSummary {
    /// The secret's name.
    pub name: String,
    /// When it was last set (RFC 3339).
    pub updated_at: String,
}

/// `GET /_nubo/api/v1/apps/{app}/secrets`: the app's secrets by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    /// The app.
    pub app: String,
    /// Its secrets, in name order.
    pub secrets: Vec<SecretSummary>,
}

/// One durable queue with its figures, as listed by `GET /_nubo/api/v1/queues`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueSummary {
    /// The queue's name.
    pub name: String,
    /// Messages it holds, visible or not.
    pub messages: u64,
    /// Messages not visible now: leased by a consumer, or released with a delay.
    pub in_flight: u64,
    /// Messages ever published to it.
    pub published: u64,
    /// When the oldest message it holds was published (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_enqueued_at: Option<String>,
    /// When the queue was created (RFC 3339).
    pub created_at: String,
}

/// `GET /_nubo/api/v1/queues`: every queue, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueList {
    /// The queues.
    pub queues: Vec<QueueSummary>,
}

/// `POST /_nubo/api/v1/queues/{queue}/messages`: the message is stored durably.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuePublished {
    /// The message's id (a ULID).
    pub id: String,
    /// The queue.
    pub queue: String,
}

/// `POST /_nubo/api/v1/queues/{queue}/purge` and `DELETE /_nubo/api/v1/queues/{queue}`: how
/// many messages went with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuePurged {
    /// The queue.
    pub queue: String,
    /// Messages deleted.
    pub purged: u64,
}

/// One trigger of an app and how it is doing, as listed by
/// `GET /_nubo/api/v1/apps/{app}/triggers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// The trigger's name (unique in the app).
    pub name: String,
    /// `cron`, `queue`, `object`, `mqtt` or `nats`.
    pub kind: String,
    /// The function it invokes.
    pub function: String,
    /// The app revision whose manifest put it in force.
    pub revision: u64,
    /// Where its events come from: the schedule, queue, bucket, broker topic or subject.
    pub source: String,
    /// What it is doing: `running`, `connecting`, `failed`, … (`last_error` says why).
    pub state: String,
    /// When it last delivered an event (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<String>,
    /// When it fires next, for schedules (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<String>,
    /// Events waiting at the source (queue messages, object events), where it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// How far behind the source it runs, in milliseconds, where it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Deliveries stored since it was put in force (over restarts).
    pub fires: u64,
    /// Deliveries that could not be stored, or source failures.
    pub errors: u64,
    /// The latest error, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Deliveries sent to the dead-letter queue because their chain passed the hop limit.
    pub loops_stopped: u64,
    /// Ticks or events skipped (missed cron ticks, events older than the catch-up bound).
    pub skipped: u64,
}

/// `GET /_nubo/api/v1/apps/{app}/triggers`: the app's triggers in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerList {
    /// The app.
    pub app: String,
    /// Its triggers, in manifest order.
    pub triggers: Vec<TriggerInfo>,
}

/// What one invocation is billed for. A figure the runtime could not measure is absent, never 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationUsage {
    /// Wall time rounded up to the server's billing granularity, in milliseconds; 0 for an
    /// invocation that never ran (throttled).
    pub billed_ms: u64,
    /// The memory the function was given, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// The most memory the invocation used, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Billed seconds × the memory limit in GB (1 GB = 1024 MiB); absent without a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_seconds: Option<f64>,
    /// CPU time, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_us: Option<u64>,
}

/// The tenant every app belongs to until tenants land. Usage is keyed by tenant already, so
/// reports and exports keep their shape when apps can belong to other tenants.
pub const DEFAULT_TENANT: &str = "default";

/// The filters of `GET /_nubo/api/v1/usage` and `GET /_nubo/api/v1/usage/export`, as query
/// parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageQuery {
    /// Start: a span back from now (`30m`, `12h`, `7d`, `2w`) or an RFC 3339 time or date;
    /// default 7 days back (a report) or the oldest record (an export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// End, in the same forms as `since`; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only this tenant's apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Only this function (of `app`, or of every app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// How a report groups rows: `function` (the default), `tenant`, `revision`, `day` or
    /// `hour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The server's price table; cost is computed from it when a report is made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsagePrices {
    /// Price of one million requests.
    pub per_million_requests: f64,
    /// Price of one GB-second (1 GB = 1024 MiB).
    pub per_gb_second: f64,
    /// Price of one GB (2^30 bytes) sent out: response bodies and outbound request bodies.
    pub per_gb_out: f64,
}

/// Cost of a row under the server's prices, in the prices' currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageCost {
    /// Requests × the request price.
    pub requests: f64,
    /// GB-seconds × the GB-second price.
    pub compute: f64,
    /// GB out × the transfer price.
    pub transfer: f64,
    /// The sum.
    pub total: f64,
}

/// One row of a usage report: the figures of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Start of the day or hour (`by=day`, `by=hour`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The tenant (`by=tenant`, `by=function`, `by=revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The app (`by=function`, `by=revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The function (`by=function`, `by=revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The revision (`by=revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Invocations that ran.
    pub requests: u64,
    /// Invocations that ran and failed (an outcome other than `ok`, or a 5xx answer).
    pub errors: u64,
    /// Invocations refused at a concurrency limit (never ran, not billed).
    pub throttles: u64,
    /// Cold starts.
    pub cold_starts: u64,
    /// Total wall time, in milliseconds.
    pub duration_ms: f64,
    /// Total billed time, in milliseconds.
    pub billed_ms: u64,
    /// Billed GB-seconds.
    pub gb_seconds: f64,
    /// Invocations that ran without a memory figure, so without GB-seconds.
    pub unmetered_requests: u64,
    /// Total CPU time where measured, in milliseconds.
    pub cpu_ms: f64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Outbound requests the functions made.
    pub outbound_requests: u64,
    /// Body bytes the functions sent in outbound requests.
    pub outbound_bytes_out: u64,
    /// The highest peak memory of one invocation, in bytes, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Cost under the server's prices.
    pub cost: UsageCost,
    /// Cost of 1,000 invocations at this row's average (absent without requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_1k: Option<f64>,
}

/// A stretch of time whose usage may be undercounted, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageGap {
    /// `unclean_stop` (the server stopped without shutting down), `dropped` (records the
    /// writer could not keep up with) or `pruned` (aggregates no longer kept: the report's
    /// start reaches back past the retention of even the per-day rows).
    pub kind: String,
    /// Start, RFC 3339.
    pub from: String,
    /// End, RFC 3339.
    pub until: String,
    /// Records known to be lost (`dropped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// What it means, in words.
    pub message: String,
}

/// `GET /_nubo/api/v1/usage`: usage between two times, grouped, with its cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Start of the time covered (aligned to `resolution`), RFC 3339.
    pub from: String,
    /// End of the time covered, RFC 3339.
    pub until: String,
    /// The stored aggregates read: `minute`, `hour` or `day` (the finest still kept for
    /// `from`).
    pub resolution: String,
    /// The grouping: `function`, `tenant`, `revision`, `day` or `hour`.
    pub by: String,
    /// The billing granularity in milliseconds.
    pub billing_granularity_ms: u64,
    /// The prices cost was computed with.
    pub prices: UsagePrices,
    /// One row per group.
    pub rows: Vec<UsageRow>,
    /// Every row together.
    pub total: UsageRow,
    /// Stretches within the report whose usage may be undercounted.
    #[serde(default)]
    pub gaps: Vec<UsageGap>,
    /// When `from` reaches back past what is still kept: the start of the oldest usage the
    /// report could read (earlier usage was pruned by age or by row count; a `pruned` gap says
    /// which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_before: Option<String>,
}

/// One line of `GET /_nubo/api/v1/usage/export` (JSON lines): the usage of one invocation.
/// `id` is the invocation's id, unique per record (each async attempt and each trigger
/// delivery is an invocation of its own), so a consumer deduplicates by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageExportRecord {
    /// The invocation id (ULID).
    pub id: String,
    /// The tenant of the app.
    pub tenant: String,
    /// App.
    pub app: String,
    /// Function.
    pub function: String,
    /// Revision.
    pub revision: u64,
    /// What triggered it (`http`, `invoke`, `async`, `cron`, `queue`, …).
    pub trigger: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Outcome name.
    pub outcome: String,
    /// HTTP status answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Whether it was a cold start.
    pub cold: bool,
    /// Wall time in microseconds.
    pub duration_us: u64,
    /// The billed figures (absent on records written before metering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<InvocationUsage>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Outbound requests made.
    pub outbound_requests: u64,
    /// Body bytes sent in outbound requests.
    pub outbound_bytes_out: u64,
    /// Body bytes received from outbound requests.
    pub outbound_bytes_in: u64,
}
