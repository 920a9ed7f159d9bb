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
