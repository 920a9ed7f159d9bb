//! Nubo's wasm executor: checks and compiles wasi:http components (optionally in a bounded
//! worker process), loads them as pre-instantiated functions, and runs each request in a fresh
//! instance on one shared wasmtime engine. Implements `nubo_core::engine::Engine` for the
//! control plane and `nubo_core::Dispatch` for the gateway.
//!
//! Invariants:
//! - One engine, one epoch ticker thread, one pooling allocator per process.
//! - No state is shared between requests: every invocation gets a new `Store` and instance.
//! - Functions reach no files or sockets, and outbound HTTP only to their `allowed_hosts` (with
//!   SSRF checks on every resolved address); they link against all of WASI 0.2 and policy
//!   refuses each other use. Through `wasi:keyvalue` they reach only the stores they bind,
//!   through `nubo:objects` (and process functions through `/nubo/v1/obj`) only the buckets,
//!   through `nubo:queues` (and `/nubo/v1/queues`) only the queues they publish to.
//! - The request path takes no lock (functions are published with `ArcSwap`) and never
//!   compiles; admission (`limits`) is atomics unless the request has to wait.
//! - An invocation holds its concurrency slot until its instance ended and its response body
//!   was sent or dropped.

mod bound;
mod check;
mod config;
mod host;
mod invoke;
mod keyvalue;
mod limits;
mod objects_host;
mod outbound;
mod process;
mod queues_host;
mod runtime;
pub mod sandbox;
mod secrets;
mod worker;

pub use config::{
    CompileWorker, DEFAULT_COMPILE_MEMORY_LIMIT, DEFAULT_COMPILE_TIMEOUT, DEFAULT_EPOCH_TICK,
    DEFAULT_MAX_INSTANCES, DEFAULT_REGION, RuntimeConfig,
};
pub use runtime::{RuntimeError, WasmRuntime};
pub use worker::{EXIT_REFUSED, compile_worker_main};
