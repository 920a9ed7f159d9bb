//! The compile worker protocol end to end. This test binary is its own worker: run with
//! `compile-worker` as its first argument it becomes `compile_worker_main`, as `nubo`'s hidden
//! subcommand does; otherwise it runs the checks below (hence `harness = false`).

#[path = "support/guest.rs"]
mod guest;

use nubo_core::ErrorCode;
use nubo_core::engine::{Artifact, Engine, LoadFunction};
use nubo_core::manifest::Runtime;
use nubo_core::{Dispatch, FunctionTarget};
use nubo_runtime::{CompileWorker, RuntimeConfig, WasmRuntime};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("compile-worker") {
        return nubo_runtime::compile_worker_main();
    }
    macro_rules! tests {
        ($($test:ident),* $(,)?) => { &[$((stringify!($test), $test as fn())),*] };
    }
    let tests: &[(&str, fn())] = tests![
        worker_artifacts_load_and_run,
        worker_refusals_keep_their_code_and_message,
        bad_headers_are_refused_without_a_worker,
        slow_compiles_are_stopped,
        memory_hungry_compiles_are_stopped,
        a_missing_worker_is_an_internal_error,
        a_worker_answering_garbage_is_refused,
    ];
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = 0;
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn runtime(configure: impl FnOnce(&mut RuntimeConfig)) -> WasmRuntime {
    let program = std::env::current_exe().expect("current exe");
    let mut config = RuntimeConfig {
        max_instances: 4,
        compile_worker: Some(CompileWorker {
            program,
            args: vec!["compile-worker".into()],
        }),
        ..RuntimeConfig::default()
    };
    configure(&mut config);
    WasmRuntime::new(config).expect("runtime")
}

fn worker_artifacts_load_and_run() {
    let rt = runtime(|_| {});
    let artifact = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect("the worker compiles the guest");
    let target = FunctionTarget {
        app: "app".into(),
        function: "api".into(),
        revision: 1,
    };
    rt.load(vec![LoadFunction {
        target: target.clone(),
        spec: guest::spec(64 << 20, 5_000, &[]),
        artifact: Artifact::Bytes(Arc::new(artifact)),
    }])
    .expect("the parent loads the worker's artifact");
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(async {
            use http_body_util::BodyExt;
            let request = http::Request::get("/hello")
                .body(nubo_core::empty_body())
                .expect("request");
            let response = rt.invoke(&target, request).await.expect("response");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        });
    assert_eq!(&body[..], b"hello from nubo");
}

fn worker_refusals_keep_their_code_and_message() {
    let rt = runtime(|_| {});
    let code = wat::parse_str(
        r#"(component (import "wasi:blobstore/blobstore@0.2.0-draft" (instance (export "open" (func)))))"#,
    )
    .expect("WAT");
    let e = rt
        .compile("api", Runtime::Wasm, &code)
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert_eq!(e.function, "api");
    assert!(
        e.message
            .contains(r#"imports "wasi:blobstore/blobstore@0.2.0-draft""#),
        "{e}"
    );

    let full = guest::wasm();
    let e = rt
        .compile("api", Runtime::Wasm, &full[..full.len() / 3])
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(e.message.starts_with("is not a valid component"), "{e}");
}

fn bad_headers_are_refused_without_a_worker() {
    let rt = runtime(|c| {
        c.compile_worker = Some(CompileWorker {
            program: "/nonexistent/nubo".into(),
            args: Vec::new(),
        });
    });
    let e = rt
        .compile("api", Runtime::Wasm, b"plain text")
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidComponent);
    assert!(e.message.contains("bad magic number"), "{e}");
}

fn slow_compiles_are_stopped() {
    let rt = runtime(|c| c.compile_timeout = Duration::from_millis(1));
    let e = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect_err("stopped");
    assert_eq!(e.code, ErrorCode::CompileFailed);
    assert!(
        e.message.contains("compilation took longer than 0.001s"),
        "{e}"
    );
}

fn memory_hungry_compiles_are_stopped() {
    let rt = runtime(|c| c.compile_memory_limit = 8 * 1024 * 1024);
    let e = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect_err("stopped");
    assert_eq!(e.code, ErrorCode::CompileFailed);
    assert!(e.message.contains("compile memory limit of 8 MiB"), "{e}");
}

fn a_missing_worker_is_an_internal_error() {
    let rt = runtime(|c| {
        c.compile_worker = Some(CompileWorker {
            program: "/nonexistent/nubo".into(),
            args: Vec::new(),
        });
    });
    let e = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect_err("no worker");
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("cannot start the compile worker"), "{e}");
}

fn a_worker_answering_garbage_is_refused() {
    let rt = runtime(|c| {
        c.compile_worker = Some(CompileWorker {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "cat >/dev/null; echo garbage".into()],
        });
    });
    let e = rt
        .compile("api", Runtime::Wasm, guest::wasm())
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("not a compiled component"), "{e}");
}
