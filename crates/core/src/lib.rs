//! Nubo's vocabulary: identifiers, the manifest, routes, invocation records, the public error
//! codes, the `Dispatch` boundary between gateway and runtime, and the admin API wire types.
//!
//! Invariant: this crate does no IO. Everything here is data in, data out, so the control plane,
//! the gateway and the CLI can share it and test it without a server.

pub mod api;
mod dispatch;
pub mod egress;
pub mod engine;
mod error;
mod ids;
pub mod limits;
pub mod manifest;
mod route;
mod time;
mod units;

pub use dispatch::{
    Body, BoxError, ClientAddr, Dispatch, Entry, FunctionTarget, InvokeError, InvokeFuture,
    empty_body, full_body,
};
pub use error::ErrorCode;
pub use ids::{BucketNameError, InvocationId, NameError, validate_bucket_name, validate_name};
pub use route::{
    MethodSet, RouteError, RouteMatch, RoutePattern, RouteTable, RouteTableBuilder, Segment,
};
pub use time::{from_millis, rfc3339, rfc3339_millis, to_millis};
pub use units::{ByteSize, HumanDuration, parse_byte_size, parse_duration};

/// What happened to one invocation, as stored in its record and shown by `nubo invocations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The function produced a response (whatever its status code).
    Ok,
    /// The function ran past its `timeout`.
    Timeout,
    /// The function tried to grow its memory past its `memory` limit.
    MemoryLimit,
    /// The function trapped (panic, unreachable, out-of-bounds access…).
    Trap,
    /// The function returned without producing a response.
    NoResponse,
    /// A process function's worker exited during the invocation.
    Crashed,
    /// A process function's runtime failed to start.
    InitFailed,
    /// A process function's handler raised an error (the runtime reported it through `/error`).
    FunctionError,
    /// A process function's result was not a valid HTTP response.
    BadResponse,
    /// The client went away before the function finished.
    Cancelled,
    /// Nubo itself failed while running the function.
    Internal,
    /// The function or server was at its concurrency limit and the request could not wait
    /// (queue full or `queue_timeout` ran out); it was answered 429 and the function never ran.
    Throttled,
}

impl Outcome {
    /// Stable lower-case name used in records, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::Trap => "trap",
            Outcome::NoResponse => "no_response",
            Outcome::Crashed => "crashed",
            Outcome::InitFailed => "init_failed",
            Outcome::FunctionError => "function_error",
            Outcome::BadResponse => "bad_response",
            Outcome::Cancelled => "cancelled",
            Outcome::Internal => "internal",
            Outcome::Throttled => "throttled",
        }
    }

    /// Parses the name written by [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "ok" => Outcome::Ok,
            "timeout" => Outcome::Timeout,
            "memory_limit" => Outcome::MemoryLimit,
            "trap" => Outcome::Trap,
            "no_response" => Outcome::NoResponse,
            "crashed" => Outcome::Crashed,
            "init_failed" => Outcome::InitFailed,
            "function_error" => Outcome::FunctionError,
            "bad_response" => Outcome::BadResponse,
            "cancelled" => Outcome::Cancelled,
            "internal" => Outcome::Internal,
            "throttled" => Outcome::Throttled,
            _ => return None,
        })
    }
}
