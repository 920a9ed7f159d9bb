//! The boundary between the gateway and the runtime: the gateway resolves a request to a
//! [`FunctionTarget`] and hands it to a [`Dispatch`], without knowing how functions run.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An error travelling inside a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both sides of [`Dispatch`]: streamed, boxed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes`.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a request reached its function; travels in the request's extensions (set by the
/// gateway). Process functions get a route's requests as API Gateway events and direct
/// invocations as their raw payload; wasm functions see the HTTP request either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Through a route of the app.
    Route,
    /// Through the invoke endpoint (`nubo invoke`), synchronously or as a queued invocation.
    Invoke,
}

/// The address of the client that sent a routed request; travels in the request's
/// extensions (absent for queued invocations, which have no live client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Which code runs a request: one function of one revision of one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionTarget {
    /// The app's name.
    pub app: Arc<str>,
    /// The function's name within the app.
    pub function: Arc<str>,
    /// The app revision whose code runs.
    pub revision: u64,
}

/// Why a dispatch produced no response from the function. Each maps to one public error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The function ran past its timeout.
    #[error("function ran longer than its {timeout_ms} ms timeout")]
    Timeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The function hit its memory limit.
    #[error("function exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The function trapped.
    #[error("function trapped: {message}")]
    Trap {
        /// The trap's description (no host internals).
        message: String,
    },
    /// The function returned without setting a response.
    #[error("function returned without a response")]
    NoResponse,
    /// A process function's worker exited during the invocation.
    #[error("function crashed: {message}")]
    Crashed {
        /// How the worker ended and its last log lines.
        message: String,
    },
    /// A process function's runtime failed before it could take the invocation.
    #[error("function failed to initialize: {message}")]
    InitFailed {
        /// The runtime's own error message, or how the worker ended and its last log lines.
        message: String,
    },
    /// A process function's result is not a valid HTTP response.
    #[error("function returned an invalid response: {message}")]
    BadResponse {
        /// What is wrong with it.
        message: String,
    },
    /// The target is not loaded (e.g. its revision was removed meanwhile).
    #[error("function {app}/{function} revision {revision} is not loaded")]
    Unavailable {
        /// App name.
        app: String,
        /// Function name.
        function: String,
        /// Revision.
        revision: u64,
    },
    /// The function is at its concurrency limit.
    #[error("function is at its concurrency limit")]
    Throttled {
        /// Seconds after which a retry is likely to succeed.
        retry_after_secs: u32,
    },
    /// Nubo failed internally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// The public code this error is answered with.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode as C;
        match self {
            InvokeError::Timeout { .. } => C::FunctionTimeout,
            InvokeError::MemoryLimit { .. } => C::MemoryLimitExceeded,
            InvokeError::Trap { .. } => C::FunctionTrap,
            InvokeError::NoResponse => C::FunctionNoResponse,
            InvokeError::Crashed { .. } => C::FunctionCrashed,
            InvokeError::InitFailed { .. } => C::FunctionInitFailed,
            InvokeError::BadResponse { .. } => C::FunctionBadResponse,
            InvokeError::Unavailable { .. } => C::FunctionUnavailable,
            InvokeError::Throttled { .. } => C::Throttled,
            InvokeError::Internal(_) => C::Internal,
        }
    }

    /// The outcome recorded for an invocation that ended with this error.
    pub fn outcome(&self) -> crate::Outcome {
        use crate::Outcome as O;
        match self {
            InvokeError::Timeout { .. } => O::Timeout,
            InvokeError::MemoryLimit { .. } => O::MemoryLimit,
            InvokeError::Trap { .. } => O::Trap,
            InvokeError::NoResponse => O::NoResponse,
            InvokeError::Crashed { .. } => O::Crashed,
            InvokeError::InitFailed { .. } => O::InitFailed,
            InvokeError::BadResponse { .. } => O::BadResponse,
            InvokeError::Throttled { .. } => O::Throttled,
            InvokeError::Unavailable { .. } | InvokeError::Internal(_) => O::Internal,
        }
    }
}

/// The future returned by [`Dispatch::invoke`].
pub type InvokeFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, InvokeError>> + Send + 'static>>;

/// Runs functions. The gateway calls it for every routed request; the runtime implements it.
///
/// The per-invocation telemetry handle (`nubo_telemetry::Invocation`) travels in the request's
/// extensions, so this trait stays free of telemetry types.
pub trait Dispatch: Send + Sync + 'static {
    /// Runs `target` on `request`. The response body streams; errors after the response
    /// started are reported in the body stream.
    fn invoke(&self, target: &FunctionTarget, request: http::Request<Body>) -> InvokeFuture;

    /// Load figures: in-flight, queued and throttled invocations per function and the
    /// server-wide capacity in use. Served at `GET /_nubo/api/v1/metrics`. A dispatcher
    /// without limits reports none.
    fn load_metrics(&self) -> crate::api::v1::LoadMetrics {
        crate::api::v1::LoadMetrics::default()
    }
}
