//! Running real requests through `Dispatch::invoke` on the test guest: responses, limits,
//! policies and what lands in the invocation record.

#[path = "support/guest.rs"]
mod guest;

use bytes::Bytes;
use http_body_util::BodyExt;
use nubo_core::engine::{Artifact, Engine, LoadFunction};
use nubo_core::manifest::Runtime;
use nubo_core::manifest::{ConcurrencySpec, FunctionSpec};
use nubo_core::{Body, Dispatch, FunctionTarget, InvokeError, Outcome};
use nubo_runtime::{RuntimeConfig, WasmRuntime};
use nubo_telemetry::{FinishedInvocation, Invocation, InvocationMeta, Stream};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// The guest compiled once; every test loads it into its own runtime.
fn artifact() -> Arc<Vec<u8>> {
    static ARTIFACT: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    ARTIFACT
        .get_or_init(|| {
            let rt = WasmRuntime::new(RuntimeConfig {
                max_instances: 2,
                ..RuntimeConfig::default()
            })
            .expect("runtime");
            Arc::new(
                rt.compile("guest", Runtime::Wasm, guest::wasm())
                    .expect("compile the guest"),
            )
        })
        .clone()
}

struct Fixture {
    rt: WasmRuntime,
    target: FunctionTarget,
}

impl Fixture {
    fn new(memory: u64, timeout_ms: u64, env: &[(&str, &str)]) -> Fixture {
        let rt = WasmRuntime::new(RuntimeConfig {
            max_instances: 32,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let target = FunctionTarget {
            app: "app".into(),
            function: "guest".into(),
            revision: 1,
        };
        rt.load(vec![LoadFunction {
            target: target.clone(),
            spec: guest::spec(memory, timeout_ms, env),
            artifact: Artifact::Bytes(artifact()),
        }])
        .expect("load the guest");
        Fixture { rt, target }
    }

    fn default() -> Fixture {
        Fixture::new(64 * MIB, 5_000, &[])
    }

    /// Invokes `path` with a fresh invocation; returns the result and the record receiver.
    async fn call(
        &self,
        path: &str,
    ) -> (
        Result<http::Response<Body>, InvokeError>,
        Receiver<FinishedInvocation>,
    ) {
        self.call_with(
            http::Request::get(path)
                .header("host", "fn.test")
                .body(nubo_core::empty_body())
                .expect("request"),
        )
        .await
    }

    async fn call_with(
        &self,
        request: http::Request<Body>,
    ) -> (
        Result<http::Response<Body>, InvokeError>,
        Receiver<FinishedInvocation>,
    ) {
        guest::invoke_recorded(&self.rt, &self.target, request).await
    }
}

async fn text(response: http::Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

/// Waits for the invocation record (emitted once the guest's task and body are done).
async fn record(records: Receiver<FinishedInvocation>) -> FinishedInvocation {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(record) = records.try_recv() {
            return record;
        }
        assert!(Instant::now() < deadline, "no invocation record");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn log_lines(record: &FinishedInvocation, stream: Stream) -> Vec<&str> {
    record
        .logs
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_records_a_cold_then_warm_invocation() {
    let f = Fixture::default();
    let (result, records) = f.call("/hello").await;
    let response = result.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "hello from nubo");
    let first = record(records).await;
    assert_eq!(first.outcome, Outcome::Ok);
    assert_eq!(first.status, Some(200));
    assert!(first.cold, "the first invocation is cold");

    let (result, records) = f.call("/hello").await;
    assert_eq!(text(result.expect("response")).await, "hello from nubo");
    let second = record(records).await;
    assert!(!second.cold, "later invocations are warm");
}

#[tokio::test]
async fn works_without_an_invocation_handle() {
    let f = Fixture::default();
    let request = http::Request::get("/hello")
        .body(nubo_core::empty_body())
        .expect("request");
    let response = f.rt.invoke(&f.target, request).await.expect("response");
    assert_eq!(text(response).await, "hello from nubo");
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let f = Fixture::default();
    for _ in 0..3 {
        let (result, _) = f.call("/count").await;
        assert_eq!(text(result.expect("response")).await, "1");
    }
}

#[tokio::test]
async fn the_guest_sees_only_its_own_environment() {
    let f = Fixture::new(64 * MIB, 5_000, &[("GREETING", "hi there")]);
    let (result, _) = f.call("/env?GREETING").await;
    assert_eq!(text(result.expect("response")).await, "hi there");
    let (result, _) = f.call("/env?PATH").await;
    assert_eq!(text(result.expect("response")).await, "<unset>");
    let (result, _) = f.call("/args").await;
    assert_eq!(text(result.expect("response")).await, "0");
}

#[tokio::test]
async fn request_bodies_reach_the_guest() {
    let f = Fixture::default();
    let request = http::Request::post("/echo")
        .header("host", "fn.test")
        .body(nubo_core::full_body(Bytes::from_static(b"ping pong")))
        .expect("request");
    let (result, _) = f.call_with(request).await;
    assert_eq!(text(result.expect("response")).await, "ping pong");
}

#[tokio::test]
async fn the_guest_sees_the_authority() {
    let f = Fixture::default();
    let (result, _) = f.call("/authority").await;
    assert_eq!(text(result.expect("response")).await, "http fn.test");
    // No Host header at all: still a valid wasi:http request.
    let request = http::Request::get("/authority")
        .body(nubo_core::empty_body())
        .expect("request");
    let (result, _) = f.call_with(request).await;
    assert_eq!(text(result.expect("response")).await, "http localhost");
}

#[tokio::test]
async fn stdout_and_stderr_become_log_lines() {
    let f = Fixture::default();
    let (result, records) = f.call("/print").await;
    assert_eq!(text(result.expect("response")).await, "printed");
    let rec = record(records).await;
    assert_eq!(log_lines(&rec, Stream::Stdout), ["to stdout"]);
    assert_eq!(log_lines(&rec, Stream::Stderr), ["to stderr"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_times_out() {
    let f = Fixture::new(64 * MIB, 300, &[]);
    let start = Instant::now();
    let (result, records) = f.call("/loop").await;
    match result {
        Err(InvokeError::Timeout { timeout_ms }) => assert_eq!(timeout_ms, 300),
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.status())),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let rec = record(records).await;
    assert_eq!(rec.outcome, Outcome::Timeout);
    assert!(
        log_lines(&rec, Stream::Stderr)
            .iter()
            .any(|l| l.contains("300 ms timeout")),
        "{:?}",
        rec.logs
    );
}

#[tokio::test]
async fn a_busy_loop_on_a_single_thread_runtime_still_times_out() {
    // The guest yields every tick, so even a current-thread runtime gets to stop it.
    let f = Fixture::new(64 * MIB, 200, &[]);
    let (result, _) = f.call("/loop").await;
    assert!(matches!(result, Err(InvokeError::Timeout { .. })));
}

#[tokio::test]
async fn waiting_on_a_host_timer_times_out() {
    let f = Fixture::new(64 * MIB, 200, &[]);
    let start = Instant::now();
    let (result, records) = f.call("/sleep").await;
    assert!(matches!(
        result,
        Err(InvokeError::Timeout { timeout_ms: 200 })
    ));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(record(records).await.outcome, Outcome::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_after_the_headers_ends_the_body_with_an_error() {
    let f = Fixture::new(64 * MIB, 300, &[]);
    let (result, records) = f.call("/loop-after-headers").await;
    let response = result.expect("headers arrive before the timeout");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => seen.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly after a timeout"),
        }
    };
    assert_eq!(seen, b"partial");
    assert!(
        error.to_string().contains("ran past its timeout"),
        "{error}"
    );
    let rec = record(records).await;
    assert_eq!(rec.outcome, Outcome::Timeout);
    assert_eq!(rec.status, Some(200));
}

#[tokio::test]
async fn growing_past_the_memory_limit_is_reported_as_such() {
    let f = Fixture::new(16 * MIB, 10_000, &[]);
    let (result, records) = f.call("/memory").await;
    match result {
        Err(InvokeError::MemoryLimit { limit_bytes }) => assert_eq!(limit_bytes, 16 * MIB),
        other => panic!(
            "expected a memory limit, got {:?}",
            other.map(|r| r.status())
        ),
    }
    assert_eq!(record(records).await.outcome, Outcome::MemoryLimit);
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_message_in_the_logs() {
    let f = Fixture::default();
    let (result, records) = f.call("/trap").await;
    match result {
        Err(InvokeError::Trap { message }) => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(!message.contains('/'), "host paths leak: {message}");
        }
        other => panic!("expected a trap, got {:?}", other.map(|r| r.status())),
    }
    let rec = record(records).await;
    assert_eq!(rec.outcome, Outcome::Trap);
    assert!(
        log_lines(&rec, Stream::Stderr)
            .iter()
            .any(|l| l.contains("boom")),
        "{:?}",
        rec.logs
    );
}

#[tokio::test]
async fn exiting_with_a_status_is_a_trap() {
    let f = Fixture::default();
    let (result, _) = f.call("/exit").await;
    match result {
        // WASI 0.2's `exit` carries only success or failure: status 3 arrives as 1.
        Err(InvokeError::Trap { message }) => {
            assert!(message.contains("exited with status 1"), "{message}");
        }
        other => panic!("expected a trap, got {:?}", other.map(|r| r.status())),
    }
}

#[tokio::test]
async fn returning_without_a_response_is_reported() {
    let f = Fixture::default();
    let (result, records) = f.call("/no-response").await;
    assert!(matches!(result, Err(InvokeError::NoResponse)));
    assert_eq!(record(records).await.outcome, Outcome::NoResponse);
}

#[tokio::test]
async fn outbound_requests_are_denied_and_logged() {
    let f = Fixture::default();
    let (result, records) = f.call("/outbound").await;
    let body = text(result.expect("response")).await;
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let rec = record(records).await;
    assert_eq!(rec.outbound_requests, 1, "a refused request is counted");
    assert!(
        log_lines(&rec, Stream::Stderr)
            .iter()
            .any(|l| l.starts_with(
                "[nubo] outbound request to https://example.com:443 refused: not in allowed_hosts; \
             add allowed_hosts = [\"https://example.com\"] to [function."
            )),
        "{:?}",
        rec.logs
    );
}

#[tokio::test]
async fn the_filesystem_is_empty() {
    let f = Fixture::default();
    let (result, _) = f.call("/file").await;
    let body = text(result.expect("response")).await;
    assert!(body.starts_with("error:"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_cancels_the_guest() {
    let f = Fixture::new(64 * MIB, 60_000, &[]);
    let (sink, records) = nubo_telemetry::record_channel(4);
    let meta = InvocationMeta {
        id: nubo_core::InvocationId::new(),
        app: f.target.app.clone(),
        function: f.target.function.clone(),
        revision: 1,
        trigger: "http",
    };
    let mut request = http::Request::get("/loop")
        .body(nubo_core::empty_body())
        .expect("request");
    request
        .extensions_mut()
        .insert(Invocation::start(meta, &sink));
    let pending = tokio::time::timeout(Duration::from_millis(100), f.rt.invoke(&f.target, request));
    assert!(pending.await.is_err(), "the loop answered");
    // Dropping the future aborted the guest long before its 60 s timeout.
    assert_eq!(record(records).await.outcome, Outcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_the_body_is_not_the_functions_fault() {
    let f = Fixture::new(64 * MIB, 300, &[]);
    let (result, records) = f.call("/loop-after-headers").await;
    drop(result.expect("headers"));
    assert_eq!(record(records).await.outcome, Outcome::Cancelled);
}

#[tokio::test]
async fn retain_drops_old_revisions() {
    let f = Fixture::default();
    let newer = FunctionTarget {
        revision: 2,
        ..f.target.clone()
    };
    f.rt.load(vec![LoadFunction {
        target: newer.clone(),
        spec: guest::spec(64 * MIB, 5_000, &[]),
        artifact: Artifact::Bytes(artifact()),
    }])
    .expect("load revision 2");
    f.rt.retain("app", &[2]);
    let old =
        f.rt.invoke(&f.target, http::Request::new(nubo_core::empty_body()))
            .await;
    assert!(matches!(
        old,
        Err(InvokeError::Unavailable { revision: 1, .. })
    ));
    let request = http::Request::get("/hello")
        .body(nubo_core::empty_body())
        .expect("request");
    let response =
        f.rt.invoke(&newer, request)
            .await
            .expect("revision 2 still runs");
    assert_eq!(text(response).await, "hello from nubo");
    // Other apps are untouched by retain.
    f.rt.retain("other-app", &[]);
    assert!(f.rt.is_loaded(&newer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_isolated() {
    let f = Arc::new(Fixture::default());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let (result, _) = f.call("/count").await;
            text(result.expect("response")).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), "1");
    }
}

/// A runtime with the guest loaded under `concurrency`, on a server capped at `cap`.
fn limited(cap: u32, concurrency: ConcurrencySpec) -> Fixture {
    let rt = WasmRuntime::new(RuntimeConfig {
        max_instances: 8,
        max_concurrency: cap,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let target = FunctionTarget {
        app: "app".into(),
        function: "guest".into(),
        revision: 1,
    };
    rt.load(vec![LoadFunction {
        target: target.clone(),
        spec: FunctionSpec {
            concurrency,
            ..guest::spec(64 * MIB, 5_000, &[])
        },
        artifact: Artifact::Bytes(artifact()),
    }])
    .expect("load the guest");
    Fixture { rt, target }
}

fn in_flight(f: &Fixture) -> u32 {
    f.rt.load_metrics().functions[0].in_flight
}

async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_held_until_the_body_is_sent_or_dropped() {
    let f = limited(
        10,
        ConcurrencySpec {
            max_concurrency: 1,
            queue_depth: 0,
            ..ConcurrencySpec::default()
        },
    );
    let (first, _) = f.call("/hello").await;
    let first = first.expect("response");
    // The headers are out, the body is not: the slot is still taken.
    assert_eq!(in_flight(&f), 1);
    let (second, _) = f.call("/hello").await;
    assert!(
        matches!(
            second,
            Err(InvokeError::Throttled {
                retry_after_secs: 1
            })
        ),
        "{second:?}"
    );
    assert_eq!(f.rt.load_metrics().functions[0].throttled, 1);
    // Dropping the body (the client went away) gives the slot back.
    drop(first);
    until(|| in_flight(&f) == 0).await;
    // So does sending the body to the end.
    let (third, _) = f.call("/hello").await;
    assert_eq!(text(third.expect("response")).await, "hello from nubo");
    until(|| in_flight(&f) == 0 && f.rt.load_metrics().functions[0].instances == 0).await;
    let (fourth, _) = f.call("/hello").await;
    assert_eq!(
        text(fourth.expect("slot free again")).await,
        "hello from nubo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_runs_when_the_slot_frees() {
    let f = Arc::new(limited(
        10,
        ConcurrencySpec {
            max_concurrency: 1,
            queue_depth: 4,
            queue_timeout_ms: 20_000,
            ..ConcurrencySpec::default()
        },
    ));
    let (first, _) = f.call("/hello").await;
    let first = first.expect("response");
    let waiting = {
        let f = Arc::clone(&f);
        tokio::spawn(
            async move { text(f.call("/hello").await.0.expect("ran after waiting")).await },
        )
    };
    until(|| f.rt.load_metrics().functions[0].queued == 1).await;
    assert_eq!(text(first).await, "hello from nubo");
    assert_eq!(waiting.await.expect("task"), "hello from nubo");
}

#[test]
fn reservations_past_the_server_cap_fail_the_load() {
    let rt = WasmRuntime::new(RuntimeConfig {
        max_instances: 2,
        max_concurrency: 10,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let target = FunctionTarget {
        app: "app".into(),
        function: "guest".into(),
        revision: 1,
    };
    let err = rt
        .load(vec![LoadFunction {
            target: target.clone(),
            spec: FunctionSpec {
                concurrency: ConcurrencySpec {
                    max_concurrency: 11,
                    reserve: true,
                    ..ConcurrencySpec::default()
                },
                ..guest::spec(64 * MIB, 5_000, &[])
            },
            artifact: Artifact::Bytes(artifact()),
        }])
        .expect_err("11 reserved of 10");
    assert_eq!(err.code, nubo_core::ErrorCode::InvalidManifest);
    assert!(
        err.message.contains("NUBO_MAX_CONCURRENCY"),
        "{}",
        err.message
    );
    assert!(!rt.is_loaded(&target));
    assert!(rt.load_metrics().functions.is_empty());
}
