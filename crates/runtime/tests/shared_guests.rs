//! The repository's shared test guests (`tests/guests`, built by `tests/guests/build.sh`) run
//! through `WasmRuntime`: the same components the end-to-end tests use, checked here at the
//! runtime boundary. Real-toolchain components (componentize-js, componentize-py) are behind
//! `--ignored` because compiling them takes seconds.

#[path = "support/guest.rs"]
mod guest;

use guest::spec;
use http_body_util::BodyExt;
use nubo_core::engine::{Artifact, Engine, LoadFunction};
use nubo_core::manifest::FunctionSpec;
use nubo_core::manifest::Runtime;
use nubo_core::{Body, FunctionTarget, InvokeError, Outcome};
use nubo_runtime::{RuntimeConfig, WasmRuntime};
use nubo_telemetry::{FinishedInvocation, Stream};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Builds every shared guest once (cargo inside `build.sh`), returning name → component path.
fn guests() -> &'static HashMap<String, PathBuf> {
    static GUESTS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let script = repo().join("tests/guests/build.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let path = PathBuf::from(line.trim());
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                (stem.trim_end_matches("_guest").to_owned(), path)
            })
            .collect()
    })
}

struct Loaded {
    rt: WasmRuntime,
    target: FunctionTarget,
}

/// A runtime with the component at `path` loaded under `spec`.
fn load(path: &Path, spec: FunctionSpec) -> Loaded {
    let rt = WasmRuntime::new(RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let code = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let artifact = rt.compile("guest", Runtime::Wasm, &code).expect("compile");
    let target = FunctionTarget {
        app: "app".into(),
        function: "guest".into(),
        revision: 1,
    };
    rt.load(vec![LoadFunction {
        target: target.clone(),
        spec,
        artifact: Artifact::Bytes(Arc::new(artifact)),
    }])
    .expect("load");
    Loaded { rt, target }
}

fn guest(name: &str, spec: FunctionSpec) -> Loaded {
    let path = guests()
        .get(name)
        .unwrap_or_else(|| panic!("build.sh built no {name} guest"));
    load(path, spec)
}

impl Loaded {
    async fn call(
        &self,
        request: http::Request<Body>,
    ) -> (
        Result<http::Response<Body>, InvokeError>,
        Receiver<FinishedInvocation>,
    ) {
        guest::invoke_recorded(&self.rt, &self.target, request).await
    }

    async fn get(
        &self,
        path: &str,
    ) -> (
        Result<http::Response<Body>, InvokeError>,
        Receiver<FinishedInvocation>,
    ) {
        let request = http::Request::get(path)
            .header("host", "fn.test")
            .body(nubo_core::empty_body())
            .expect("request");
        self.call(request).await
    }
}

async fn text(response: http::Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_guest_is_stopped_at_its_timeout_and_runs_under_it() {
    let g = guest("loop", spec(64 * MIB, 500, &[]));
    let (result, records) = g.get("/").await;
    assert!(matches!(
        result,
        Err(InvokeError::Timeout { timeout_ms: 500 })
    ));
    let rec = record(records).await;
    assert_eq!(rec.outcome, Outcome::Timeout);
    // Spinning until stopped is CPU time, measured although the guest never returned.
    assert!(
        rec.cpu_time.is_some_and(|cpu| cpu > Duration::ZERO),
        "{rec:?}"
    );
    let (result, _) = g.get("/?ms=50").await;
    assert_eq!(text(result.expect("response")).await, "done 50\n");
}

#[tokio::test]
async fn membomb_guest_hits_its_memory_limit() {
    let g = guest("membomb", spec(32 * MIB, 10_000, &[]));
    let (result, _) = g.get("/?mb=4").await;
    assert_eq!(text(result.expect("response")).await, "ok 4\n");
    let (result, records) = g.get("/").await;
    assert!(
        matches!(result, Err(InvokeError::MemoryLimit { limit_bytes }) if limit_bytes == 32 * MIB)
    );
    assert_eq!(record(records).await.outcome, Outcome::MemoryLimit);
}

#[tokio::test]
async fn trap_guest_traps_both_ways() {
    let g = guest("trap", spec(64 * MIB, 5_000, &[]));
    for path in ["/", "/?mode=unreachable"] {
        let (result, records) = g.get(path).await;
        assert!(matches!(result, Err(InvokeError::Trap { .. })), "{path}");
        assert_eq!(record(records).await.outcome, Outcome::Trap);
    }
}

#[tokio::test]
async fn outbound_guest_is_denied_with_a_log_line() {
    let g = guest("outbound", spec(64 * MIB, 5_000, &[]));
    let (result, records) = g.get("/").await;
    let body = text(result.expect("response")).await;
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let rec = record(records).await;
    assert!(
        rec.logs.iter().any(|l| l.stream == Stream::Stderr
            && l.line.starts_with(
                "[nubo] outbound request to http://example.com:80 refused: not in allowed_hosts"
            )),
        "{:?}",
        rec.logs
    );
}

#[tokio::test]
async fn echo_guest_streams_bodies_and_sees_its_env() {
    let g = guest(
        "echo",
        spec(64 * MIB, 5_000, &[("NUBO_TEST_VAR", "from the manifest")]),
    );
    let request = http::Request::post("/anything?x=1")
        .header("host", "fn.test")
        .header("content-type", "text/plain")
        .body(nubo_core::full_body("round trip"))
        .expect("request");
    let (result, _) = g.call(request).await;
    let response = result.expect("response");
    assert_eq!(response.headers()["x-echo-method"], "POST");
    assert_eq!(response.headers()["x-echo-path"], "/anything?x=1");
    assert_eq!(response.headers()["x-env"], "from the manifest");
    assert_eq!(text(response).await, "round trip");

    let (result, _) = g.get("/chunks?n=3").await;
    assert_eq!(
        text(result.expect("response")).await,
        "chunk 0\nchunk 1\nchunk 2\n"
    );

    let (result, records) = g.get("/logs?n=2").await;
    text(result.expect("response")).await;
    let rec = record(records).await;
    let lines: Vec<_> = rec
        .logs
        .iter()
        .map(|l| (l.stream, l.line.as_str()))
        .collect();
    assert!(lines.contains(&(Stream::Stdout, "line 0")), "{lines:?}");
    assert!(lines.contains(&(Stream::Stdout, "line 1")), "{lines:?}");
    assert!(
        lines.contains(&(Stream::Stderr, "stderr line")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn records_carry_the_memory_limit_and_the_linear_memory_peak() {
    let g = guest("membomb", spec(64 * MIB, 10_000, &[]));
    let (result, records) = g.get("/?mb=0").await;
    assert_eq!(text(result.expect("response")).await, "ok 0\n");
    let baseline = record(records).await;
    let (result, records) = g.get("/?mb=8").await;
    assert_eq!(text(result.expect("response")).await, "ok 8\n");
    let grown = record(records).await;
    for rec in [&baseline, &grown] {
        assert_eq!(rec.memory_limit_bytes, Some(64 * MIB));
    }
    let (base, peak) = (
        baseline
            .peak_memory_bytes
            .expect("the baseline peak is measured"),
        grown.peak_memory_bytes.expect("the peak is measured"),
    );
    // The initial memory counts too: even an instance that allocates nothing holds some.
    assert!(base > 0, "{base}");
    assert!(peak >= base + 8 * MIB, "8 MiB more: {peak} vs {base}");
    assert!(peak <= 64 * MIB, "{peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_the_cpu_time_spent_running_not_waiting() {
    let busy = guest("loop", spec(64 * MIB, 10_000, &[]));
    let (result, records) = busy.get("/?ms=200").await;
    assert_eq!(text(result.expect("response")).await, "done 200\n");
    let spun = record(records).await;
    let cpu = spun.cpu_time.expect("CPU time is measured");
    // A guest that spun 200 ms of wall time got more than a sliver of a CPU (even on a busy
    // machine), and one thread cannot use more CPU than the wall time it ran.
    assert!(cpu > Duration::from_millis(5), "{cpu:?}");
    assert!(
        cpu <= spun.duration + Duration::from_millis(20),
        "{cpu:?} > {:?}",
        spun.duration
    );

    let sleeper = guest("echo", spec(64 * MIB, 10_000, &[]));
    let (result, records) = sleeper.get("/sleep?ms=300").await;
    assert_eq!(text(result.expect("response")).await, "slept 300 ms");
    let slept = record(records).await;
    let cpu = slept.cpu_time.expect("CPU time is measured");
    assert!(slept.duration >= Duration::from_millis(300));
    assert!(
        cpu * 4 < slept.duration,
        "sleeping is not CPU time: {cpu:?} of {:?}",
        slept.duration
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_linear_memory_is_counted_until_they_end() {
    let g = Arc::new(guest("echo", spec(64 * MIB, 10_000, &[])));
    assert_eq!(g.rt.linear_memory_bytes(), 0);
    let running = {
        let g = Arc::clone(&g);
        tokio::spawn(async move {
            let (result, records) = g.get("/sleep?ms=500").await;
            text(result.expect("response")).await;
            record(records).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.rt.linear_memory_bytes() == 0 {
        assert!(
            Instant::now() < deadline,
            "the sleeping instance's memory is never counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = g.rt.linear_memory_bytes();
    let rec = running.await.expect("the invocation task");
    // One instance ran: the count was its memory, which can only have grown since.
    let peak = rec.peak_memory_bytes.expect("the peak is measured");
    assert!(peak >= held, "{peak} < {held}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.rt.linear_memory_bytes() != 0 {
        assert!(
            Instant::now() < deadline,
            "an ended instance's memory is still counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Components from real toolchains import far more than the proxy world; they must link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "compiles ~30 MB of componentize-js/py output (seconds); run with --ignored"]
async fn real_toolchain_components_link_and_answer() {
    for (dist, expected) in [
        (
            "tests/js-guest/dist/hello-js.wasm",
            "hello from js GET /x?y=1",
        ),
        (
            "tests/py-guest/dist/hello-py.wasm",
            "hello from python GET /x?y=1",
        ),
    ] {
        let g = load(&repo().join(dist), spec(256 * MIB, 10_000, &[]));
        let (result, _) = g.get("/x?y=1").await;
        assert_eq!(
            text(result.expect("response")).await.trim_end(),
            expected,
            "{dist}"
        );
    }
}
