//! End-to-end tests: each starts the real `nubo` binary on 127.0.0.1:0 with its own data dir and
//! talks to it over HTTP and through the CLI, as a user would.

#[path = "e2e/support.rs"]
mod support;

mod e2e {
    mod admin;
    mod asynchronous;
    mod bad_input;
    mod deploy;
    mod destinations;
    mod egress;
    mod egress_process;
    mod errors;
    mod examples_events;
    mod kv;
    mod kv_js;
    mod kv_process;
    mod kv_wasm;
    mod lifecycle;
    mod limits;
    mod logs;
    mod metrics;
    mod objects;
    mod objects_fn;
    mod process;
    mod s3;
    mod sandbox;
    mod secrets;
    mod traces;
    mod traffic;
    mod triggers;
    mod usage;
}
