//! `Engine::compile` and `Engine::load` on good and bad code: every refusal must say what is
//! wrong and how to fix it, with the right public error code.

#[path = "support/guest.rs"]
mod guest;

use nubo_core::ErrorCode;
use nubo_core::engine::{Artifact, CodeError, Engine, LoadFunction};
use nubo_core::manifest::Runtime;
use nubo_core::{FunctionTarget, InvokeError};
use nubo_runtime::{RuntimeConfig, WasmRuntime};
use std::sync::Arc;

fn runtime() -> WasmRuntime {
    WasmRuntime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .expect("create the runtime")
}

fn refused(code: &[u8]) -> CodeError {
    match runtime().compile("api", Runtime::Wasm, code) {
        Ok(_) => panic!("compile accepted bad code"),
        Err(e) => e,
    }
}

fn component(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

#[test]
fn rejects_a_file_that_is_not_wasm() {
    let e = refused(b"#!/bin/sh\necho hello\n");
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert_eq!(e.function, "api");
    assert!(
        e.message
            .contains("is not a WebAssembly file (bad magic number)"),
        "{e}"
    );
    assert!(e.message.contains("wasm32-wasip2"), "{e}");
}

#[test]
fn rejects_an_empty_file() {
    let e = refused(b"");
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(e.message.contains("bad magic number"), "{e}");
}

#[test]
fn rejects_a_core_module_with_the_fix() {
    let e = refused(&wat::parse_str("(module)").expect("valid WAT"));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message
            .contains("is a core WebAssembly module, not a component"),
        "{e}"
    );
    assert!(e.message.contains("wasm-tools component new"), "{e}");
}

#[test]
fn rejects_a_truncated_component() {
    let full = guest::wasm();
    let e = refused(&full[..full.len() / 2]);
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(e.message.starts_with("is not a valid component: "), "{e}");
}

#[test]
fn rejects_a_component_that_exports_nothing() {
    let e = refused(&component("(component)"));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message
            .contains("does not export wasi:http/incoming-handler@0.2.x"),
        "{e}"
    );
    assert!(e.message.contains("wasi:http/proxy world"), "{e}");
}

#[test]
fn rejects_a_component_of_another_world() {
    let e = refused(&component(
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 1))
             (core instance $i (instantiate $m))
             (func (export "hello") (result u32) (canon lift (core func $i "f"))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message
            .contains("does not export wasi:http/incoming-handler"),
        "{e}"
    );
}

#[test]
fn names_an_import_nubo_does_not_provide() {
    let e = refused(&component(
        r#"(component
             (import "wasi:blobstore/blobstore@0.2.0-draft" (instance (export "open" (func)))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message.contains(
            r#"imports "wasi:blobstore/blobstore@0.2.0-draft", which Nubo does not provide"#
        ),
        "{e}"
    );
}

#[test]
fn names_a_missing_member_of_a_wasi_interface() {
    let e = refused(&component(
        r#"(component
             (import "wasi:cli/environment@0.2.0"
               (instance (export "get-everything" (func)))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message
            .contains(r#"imports "wasi:cli/environment@0.2.0""#),
        "{e}"
    );
    assert!(e.message.contains(r#""get-everything""#), "{e}");
}

#[test]
fn reports_a_mismatched_import_type() {
    // `get-environment` exists but returns a list of pairs, not a u32.
    let e = refused(&component(
        r#"(component
             (import "wasi:cli/environment@0.2.0"
               (instance (export "get-environment" (func (result u32))))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message
            .contains(r#"imports "wasi:cli/environment@0.2.0""#),
        "{e}"
    );
}

#[test]
fn compiles_and_loads_a_real_component() {
    let rt = runtime();
    let artifact = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect("compile the guest");
    let target = FunctionTarget {
        app: "shop".into(),
        function: "api".into(),
        revision: 1,
    };
    rt.load(vec![LoadFunction {
        target: target.clone(),
        spec: guest::spec(64 << 20, 1_000, &[]),
        artifact: Artifact::Bytes(Arc::new(artifact)),
    }])
    .expect("load");
    assert!(rt.is_loaded(&target));
}

#[test]
fn artifacts_load_in_another_runtime_and_from_files() {
    let artifact = runtime()
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect("compile");
    let dir = std::env::temp_dir().join(format!("nubo-runtime-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("api.cwasm");
    std::fs::write(&path, &artifact).expect("write artifact");
    let other = runtime();
    let target = FunctionTarget {
        app: "shop".into(),
        function: "api".into(),
        revision: 3,
    };
    other
        .load(vec![LoadFunction {
            target: target.clone(),
            spec: guest::spec(64 << 20, 1_000, &[]),
            artifact: Artifact::File(path),
        }])
        .expect("load from file");
    assert!(other.is_loaded(&target));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_is_all_or_nothing() {
    let rt = runtime();
    let artifact = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect("compile");
    let good = FunctionTarget {
        app: "shop".into(),
        function: "api".into(),
        revision: 1,
    };
    let bad = FunctionTarget {
        app: "shop".into(),
        function: "broken".into(),
        revision: 1,
    };
    let e = rt
        .load(vec![
            LoadFunction {
                target: good.clone(),
                spec: guest::spec(64 << 20, 1_000, &[]),
                artifact: Artifact::Bytes(Arc::new(artifact)),
            },
            LoadFunction {
                target: bad,
                spec: guest::spec(64 << 20, 1_000, &[]),
                artifact: Artifact::Bytes(Arc::new(b"not an artifact".to_vec())),
            },
        ])
        .expect_err("a broken artifact fails the load");
    assert_eq!(e.function, "broken");
    assert!(e.message.contains("redeploy"), "{e}");
    assert!(
        !rt.is_loaded(&good),
        "a failed load published part of the revision"
    );
}

#[test]
fn unknown_targets_are_unavailable() {
    use nubo_core::Dispatch;
    let rt = runtime();
    let target = FunctionTarget {
        app: "shop".into(),
        function: "api".into(),
        revision: 9,
    };
    let request = http::Request::new(nubo_core::empty_body());
    let result = block_on(rt.invoke(&target, request));
    match result {
        Err(InvokeError::Unavailable {
            app,
            function,
            revision,
        }) => {
            assert_eq!(
                (app.as_str(), function.as_str(), revision),
                ("shop", "api", 9)
            );
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|r| r.status())),
    }
}

#[test]
fn artifact_key_names_the_engine_and_is_stable() {
    let a = runtime();
    let b = WasmRuntime::new(RuntimeConfig {
        max_instances: 2,
        ..RuntimeConfig::default()
    })
    .expect("create the runtime");
    assert!(
        a.artifact_key().starts_with("wasmtime-48.0.8-"),
        "{}",
        a.artifact_key()
    );
    assert_eq!(a.artifact_key().len(), "wasmtime-48.0.8-".len() + 16);
    // Pool size is a runtime setting, not a code-compatibility one.
    assert_eq!(a.artifact_key(), b.artifact_key());
}

/// Drives a future that completes without waiting on IO.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

#[test]
fn a_small_pool_fits_in_any_address_space() {
    // 4 instances reserve about 32 GiB of address space: pooling must not fall back here.
    assert!(runtime().is_pooling());
}

#[test]
fn names_the_keyvalue_version_nubo_provides() {
    let e = refused(&component(
        r#"(component
             (import "wasi:keyvalue/store@0.2.0-draft3" (instance (export "open" (func)))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message.contains(
            r#"imports "wasi:keyvalue/store@0.2.0-draft3", which Nubo does not provide (Nubo implements wasi:keyvalue@0.2.0-draft and @0.2.0-draft2"#
        ),
        "{e}"
    );
}

#[test]
fn names_the_objects_version_nubo_provides() {
    let e = refused(&component(
        r#"(component
             (import "nubo:objects/objects@0.2.0" (instance (export "get" (func)))))"#,
    ));
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(
        e.message.contains(
            r#"imports "nubo:objects/objects@0.2.0", which Nubo does not provide (Nubo implements nubo:objects@0.1.0"#
        ),
        "{e}"
    );
}
