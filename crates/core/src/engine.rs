//! The boundary between the control plane and whatever compiles and runs code. The control
//! plane decides *what* is deployed; an [`Engine`] (the wasm runtime) checks, compiles and loads
//! it. Kept here so `nubo-control` never depends on the runtime.

use crate::FunctionTarget;
use crate::manifest::{FunctionSpec, Runtime};
use std::path::PathBuf;

/// Why a function's code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("function {function:?}: {message}")]
pub struct CodeError {
    /// The function whose code was refused.
    pub function: String,
    /// [`ErrorCode::InvalidComponent`](crate::ErrorCode::InvalidComponent) for code that is
    /// not an acceptable component, [`ErrorCode::CompileFailed`](crate::ErrorCode::CompileFailed)
    /// when compilation failed or ran out of time or memory,
    /// [`ErrorCode::Internal`](crate::ErrorCode::Internal) for Nubo's own failures.
    pub code: crate::ErrorCode,
    /// What is wrong and how to fix it, e.g. `imports "wasi:sockets/tcp@0.2.0", which Nubo
    /// does not provide`.
    pub message: String,
}

/// Compiled code handed to [`Engine::load`].
#[derive(Debug, Clone)]
pub enum Artifact {
    /// In memory (just compiled).
    Bytes(std::sync::Arc<Vec<u8>>),
    /// On disk in the artifact cache (mapped, not read, when loading).
    File(PathBuf),
}

/// One function of a revision to load.
#[derive(Debug, Clone)]
pub struct LoadFunction {
    /// Which app/function/revision.
    pub target: FunctionTarget,
    /// Its configuration (memory, timeout, env…).
    pub spec: FunctionSpec,
    /// Its compiled code, from [`Engine::compile`] (now or in an earlier run).
    pub artifact: Artifact,
}

/// Checks, compiles and loads function code.
pub trait Engine: Send + Sync + 'static {
    /// A key that changes whenever artifacts compiled by another build or configuration might
    /// be incompatible (engine version plus configuration). Artifacts are cached under
    /// (code digest, this key).
    fn artifact_key(&self) -> &str;

    /// Checks that `code` is acceptable for `runtime` and turns it into the artifact to cache:
    /// a `wasm` component is compiled, bounded in time and memory; a `process` archive is
    /// checked (paths, links, sizes) and kept as it is. Blocking: call it off the async runtime.
    fn compile(&self, function: &str, runtime: Runtime, code: &[u8]) -> Result<Vec<u8>, CodeError>;

    /// Makes the functions runnable (pre-instantiates them, checking every import is provided
    /// and the handler is exported). Either every function is loaded or none is. Nothing routes
    /// to them until the caller publishes a route table naming them. Blocking.
    fn load(&self, functions: Vec<LoadFunction>) -> Result<(), CodeError>;

    /// Forgets the functions of `app` whose revision is not in `keep`. In-flight invocations
    /// finish on the code they started with.
    fn retain(&self, app: &str, keep: &[u64]);
}
