//! Lambda function built on `lambda_runtime`: returns the event it was given.
//!
//! The event can ask for the failure modes the Nubo end-to-end tests check:
//! `{"fail": true}` returns an error (reported on `/error`), `{"crash": true}` aborts the
//! process mid-invocation, `{"sleep_ms": N}` sleeps before answering (timeouts), and
//! `{"print": "text"}` writes a line to stdout (log capture). With `ECHO_FAIL_INIT` set in
//! its environment it exits before asking for its first event (an init error).

use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::{json, Value};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    if let Some(text) = payload.get("print").and_then(Value::as_str) {
        println!("{text}");
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if payload.get("crash") == Some(&Value::Bool(true)) {
        eprintln!("echo: crashing on request");
        // Abort rather than panic: the runtime turns a panic into an ordinary error
        // response, and the test wants the process itself to die.
        std::process::abort();
    }
    if payload.get("fail") == Some(&Value::Bool(true)) {
        // An explicit error type: the default one is a Rust type name.
        return Err(Diagnostic {
            error_type: "EchoFailed".into(),
            error_message: "failing on request".into(),
        });
    }
    Ok(json!({
        "event": payload,
        "request_id": context.request_id,
        "function_arn": context.invoked_function_arn,
        "function_name": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // A runtime that fails before its first `/next`, as one does when its configuration is
    // missing: the platform must report an init error carrying this message.
    if std::env::var_os("ECHO_FAIL_INIT").is_some() {
        eprintln!("init failed on purpose: missing configuration");
        return Err("init failed on purpose: missing configuration".into());
    }
    lambda_runtime::run(service_fn(handle)).await
}
