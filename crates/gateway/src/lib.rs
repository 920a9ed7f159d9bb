//! The gateway: the listener every request enters through. It routes app traffic to functions
//! through [`nubo_core::Dispatch`] (never the runtime directly), serves the admin API and ops
//! endpoints under `/_nubo/`, and turns every failure into a JSON error with a stable code.
//!
//! Invariants:
//! - The request path takes no global lock and does no disk IO: the route table and each app's
//!   traffic split are lock-free snapshots, the weighted pick is one random number, and the
//!   invocation record is handed to a bounded channel when the response ends. (A pinned request
//!   for a retained revision that is not loaded loads it first, off the async threads.)
//! - Every accepted request is answered: the function's response, or a JSON error carrying a
//!   code from the registry and the invocation id.
//! - The admin API answers only loopback clients unless an admin key is configured.

mod admin;
mod admin_async;
mod admin_kv;
mod admin_objects;
mod admin_queues;
mod admin_secrets;
mod admin_triggers;
mod admin_usage;
mod affinity;
mod body;
mod data;
mod events;
pub mod prometheus;
mod rescue;
pub mod s3;
mod server;

pub use admin_triggers::TriggerStatuses;
pub use affinity::{AFFINITY_COOKIE, REV_PREFIX};
pub use events::{
    ASYNC_ATTEMPT_HEADER, ASYNC_ID_HEADER, DEDUP_WINDOW, DEFAULT_MAX_PENDING, HOP_HEADER,
    IDEMPOTENCY_KEY_HEADER, INVOCATION_TYPE_HEADER, TRIGGER_HEADER, TRIGGER_NAME_HEADER,
};
pub use rescue::error_response;
pub use server::{AdminAuth, Gateway, GatewayConfig, ServeError};
