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
    /// Compile time in milliseconds (0 when cached).
    pub compile_ms: u64,
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
    /// Whether this was the first instantiation of the function on this server.
    pub cold: bool,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Whether log lines were cut.
    pub logs_truncated: bool,
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
