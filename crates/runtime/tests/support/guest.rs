//! Builds the test guest component (`tests/guest`, a wasi:http component for wasm32-wasip2)
//! once per test binary, and hands out specs for loading it.

use nubo_core::manifest::{FunctionSpec, Runtime};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The guest component's bytes. Needs `rustup target add wasm32-wasip2` and the guest's
/// dependencies (the `wasi` crate) in the cargo cache or reachable.
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
    }
}
