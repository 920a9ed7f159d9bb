//! Builds the test guest component (`tests/guest`, a wasi:http component for wasm32-wasip2)
//! once per test binary, and hands out specs for loading it and a way to invoke with a
//! recorded invocation.

use nubo_core::manifest::{FunctionSpec, Runtime};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The guest component's bytes. Needs `rustup target add wasm32-wasip2` and the guest's
/// dependencies (the `wasi` crate) in the cargo cache or reachable.
#[allow(dead_code, reason = "not every test binary uses the built-in guest")]
pub fn wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/Cargo.toml");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo to build the test guest");
        assert!(
            status.success(),
            "building the test guest failed; is the target installed? \
             (`rustup target add wasm32-wasip2`)"
        );
        let wasm = target.join("wasm32-wasip2/release/nubo_runtime_test_guest.wasm");
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("read {}: {e}", wasm.display()))
    })
}

/// A function spec with the given limits and environment.
#[allow(dead_code, reason = "not every test binary loads functions")]
pub fn spec(memory: u64, timeout_ms: u64, env: &[(&str, &str)]) -> FunctionSpec {
    FunctionSpec {
        runtime: Runtime::Wasm,
        source: "guest.wasm".into(),
        build: None,
        workdir: None,
        memory,
        timeout_ms,
        max_request_body: nubo_core::limits::DEFAULT_MAX_REQUEST_BODY,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        concurrency: Default::default(),
        retry: Default::default(),
        destinations: Default::default(),
        process: Default::default(),
        kv: Vec::new(),
        buckets: Vec::new(),
        queues: Vec::new(),
        secret_env: Default::default(),
        allowed_hosts: Vec::new(),
    }
}

/// Invokes `target` with an `Invocation` attached, as the gateway does, and returns the result
/// with the channel its record arrives on (when the last handle drops).
#[allow(dead_code, reason = "not every test binary invokes")]
pub async fn invoke_recorded(
    rt: &nubo_runtime::WasmRuntime,
    target: &nubo_core::FunctionTarget,
    mut request: http::Request<nubo_core::Body>,
) -> (
    Result<http::Response<nubo_core::Body>, nubo_core::InvokeError>,
    std::sync::mpsc::Receiver<nubo_telemetry::FinishedInvocation>,
) {
    use nubo_core::Dispatch as _;
    let (sink, records) = nubo_telemetry::record_channel(4);
    let meta = nubo_telemetry::InvocationMeta {
        id: nubo_core::InvocationId::new(),
        app: target.app.clone(),
        function: target.function.clone(),
        revision: target.revision,
        trigger: "http",
    };
    request
        .extensions_mut()
        .insert(nubo_telemetry::Invocation::start(meta, &sink));
    (rt.invoke(target, request).await, records)
}
