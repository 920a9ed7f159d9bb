//! The Runtime API state machine driven over loopback HTTP by the test acting as the runtime
//! client, and real workers (shell-script bootstraps speaking the API with curl, sandbox off)
//! run through `Dispatch::invoke`: reuse, crash, timeout, init error, reaping, prewarming.

use super::api::{self, Channel, Chunk, Job, Reply};
use crate::sandbox::SandboxPolicy;
use crate::{RuntimeConfig, WasmRuntime};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nubo_core::engine::{Artifact, Engine, LoadFunction};
use nubo_core::{Dispatch, FunctionTarget, InvokeError, empty_body, full_body};
use nubo_telemetry::{FinishedInvocation, Invocation, InvocationMeta, record_channel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Upper bound on any wait in these tests.
const PATIENCE: Duration = Duration::from_secs(15);

// ---- the Runtime API, with the test as the runtime client ----

struct Api {
    addr: std::net::SocketAddr,
    jobs: mpsc::Sender<Job>,
    channel: Arc<Channel>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn api() -> Api {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (jobs, receiver) = mpsc::channel(1);
    let channel = Arc::new(Channel::new(receiver, Instant::now()));
    let server = tokio::spawn(api::serve(listener, Arc::clone(&channel)));
    Api {
        addr,
        jobs,
        channel,
        server,
    }
}

/// One request over a fresh connection: status, headers, body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> (u16, http::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Full::new(body))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the Runtime API answers in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn job(id: &str, payload: &'static str) -> (Job, oneshot::Receiver<Reply>) {
    let (reply, replied) = oneshot::channel();
    let job = Job {
        request_id: id.into(),
        deadline_ms: 1_700_000_000_000,
        arn: "arn:aws:lambda:local:000000000000:function:a-f:1".into(),
        trace_id: "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"
            .into(),
        payload: Bytes::from_static(payload.as_bytes()),
        hop: 0,
        reply,
    };
    (job, replied)
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

#[tokio::test]
async fn next_hands_out_the_event_and_only_the_current_id_may_answer() {
    let api = api().await;
    let (job, replied) = job("req-1", r#"{"n":1}"#);
    api.jobs.send(job).await.unwrap();
    let (status, headers, body) = call(api.addr, "GET", NEXT, Bytes::new()).await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"n":1}"#);
    assert_eq!(headers["lambda-runtime-aws-request-id"], "req-1");
    assert_eq!(headers["lambda-runtime-deadline-ms"], "1700000000000");
    assert_eq!(
        headers["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:local:000000000000:function:a-f:1"
    );
    assert!(headers.contains_key("lambda-runtime-trace-id"));
    assert_eq!(headers["content-type"], "application/json");
    assert!(api.channel.status.borrow().ready.is_some());

    let path = |id: &str| format!("/2018-06-01/runtime/invocation/{id}/response");
    let (status, _, _) = call(api.addr, "POST", &path("other"), Bytes::from("x")).await;
    assert_eq!(status, 403, "an id that is not current is refused");
    let (status, _, body) = call(api.addr, "POST", &path("req-1"), Bytes::from("done")).await;
    assert_eq!(status, 202);
    assert_eq!(body, r#"{"status":"OK"}"#);
    match replied.await.unwrap() {
        Reply::Response(result) => assert_eq!(result, "done"),
        _ => panic!("expected a buffered response"),
    }
    let (status, _, _) = call(api.addr, "POST", &path("req-1"), Bytes::from("again")).await;
    assert_eq!(status, 403, "an invocation is answered once");
}

#[tokio::test]
async fn error_is_forwarded_and_oversized_results_are_refused() {
    let api = api().await;
    let (first, replied) = job("a", "{}");
    api.jobs.send(first).await.unwrap();
    call(api.addr, "GET", NEXT, Bytes::new()).await;
    let doc = r#"{"errorType":"ValueError","errorMessage":"nope"}"#;
    let (status, _, _) = call(
        api.addr,
        "POST",
        "/2018-06-01/runtime/invocation/a/error",
        Bytes::from(doc),
    )
    .await;
    assert_eq!(status, 202);
    match replied.await.unwrap() {
        Reply::Error(body) => assert_eq!(body, doc),
        _ => panic!("expected the error document"),
    }

    let (second, replied) = job("b", "{}");
    api.jobs.send(second).await.unwrap();
    call(api.addr, "GET", NEXT, Bytes::new()).await;
    let big = Bytes::from(vec![b'x'; api::MAX_RESPONSE_BYTES + 1]);
    let (status, _, _) = call(
        api.addr,
        "POST",
        "/2018-06-01/runtime/invocation/b/response",
        big,
    )
    .await;
    assert_eq!(status, 413);
    assert!(matches!(replied.await.unwrap(), Reply::TooLarge));
}

#[tokio::test]
async fn init_error_fails_the_worker_with_the_runtimes_message() {
    let api = api().await;
    let (status, _, _) = call(
        api.addr,
        "POST",
        "/2018-06-01/runtime/init/error",
        Bytes::from(r#"{"errorType":"Runtime.ImportModuleError","errorMessage":"no module app"}"#),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        api.channel.status.borrow().init_error.as_deref(),
        Some("Runtime.ImportModuleError: no module app")
    );
    let (status, _, _) = call(
        api.addr,
        "GET",
        "/2018-06-01/runtime/restore/next",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(api.addr, "GET", "/2018-06-01/runtime/nope", Bytes::new()).await;
    assert_eq!(status, 404);
}

/// A request body of ready frames, data and trailers alike (sent chunked).
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Posts a streamed response of `chunks`, ended by an error trailer if `error` is given.
async fn post_stream(
    addr: std::net::SocketAddr,
    id: &str,
    chunks: &[&'static str],
    error: Option<&'static str>,
) -> u16 {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut frames: std::collections::VecDeque<_> = chunks
        .iter()
        .map(|c| http_body::Frame::data(Bytes::from_static(c.as_bytes())))
        .collect();
    if let Some(kind) = error {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("lambda-runtime-function-error-type", kind.parse().unwrap());
        frames.push_back(http_body::Frame::trailers(trailers));
    }
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/2018-06-01/runtime/invocation/{id}/response"
        ))
        .header("host", addr.to_string())
        .header("lambda-runtime-function-response-mode", "streaming")
        .header("transfer-encoding", "chunked")
        .header("trailer", "Lambda-Runtime-Function-Error-Type")
        .body(Frames(frames))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the Runtime API answers in time")
        .unwrap();
    response.status().as_u16()
}

/// Everything a streamed reply delivers, in order.
async fn drain(reply: Reply) -> Vec<String> {
    let Reply::Stream { mut body, .. } = reply else {
        panic!("expected a streamed reply");
    };
    let mut seen = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.recv()).await.unwrap() {
        seen.push(match chunk {
            Chunk::Data(data) => String::from_utf8_lossy(&data).into_owned(),
            Chunk::Failed(message) => format!("failed: {message}"),
            Chunk::End => "end".to_owned(),
        });
    }
    seen
}

#[tokio::test]
async fn streamed_responses_pass_chunks_and_trailer_errors_through() {
    let api = api().await;
    let (first, replied) = job("s1", "{}");
    api.jobs.send(first).await.unwrap();
    call(api.addr, "GET", NEXT, Bytes::new()).await;
    let reader = tokio::spawn(async move { drain(replied.await.unwrap()).await });
    assert_eq!(post_stream(api.addr, "s1", &["hel", "lo"], None).await, 202);
    assert_eq!(reader.await.unwrap().concat(), "helloend");

    let (second, replied) = job("s2", "{}");
    api.jobs.send(second).await.unwrap();
    call(api.addr, "GET", NEXT, Bytes::new()).await;
    let reader = tokio::spawn(async move { drain(replied.await.unwrap()).await });
    assert_eq!(
        post_stream(api.addr, "s2", &["part"], Some("Runtime.Boom")).await,
        202
    );
    let seen = reader.await.unwrap();
    assert_eq!(seen[0], "part");
    assert!(
        seen.last().unwrap().starts_with("failed:")
            && seen.last().unwrap().contains("Runtime.Boom"),
        "{seen:?}"
    );
}

// ---- real workers ----

/// Speaks the Runtime API with curl; the event decides what it does.
const BOOTSTRAP: &str = r#"#!/bin/sh
set -u
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
dir=$(mktemp -d)
echo "starting $$"
while true; do
  curl -sS -D "$dir/h" -o "$dir/e" "$api/invocation/next" || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$dir/h" | cut -d' ' -f2 | tr -d '\r')
  ev=$(cat "$dir/e")
  echo "handling $ev"
  case "$ev" in
    crash) echo "about to die" >&2; kill -9 $$ ;;
    sleep) sleep 30 ;;
    fail) curl -sS -X POST "$api/invocation/$id/error" \
            -d '{"errorType":"Boom","errorMessage":"it broke"}' >/dev/null; continue ;;
    stream) printf 'chunk-1 chunk-2' | curl -sS -X POST "$api/invocation/$id/response" \
            -H 'Lambda-Runtime-Function-Response-Mode: streaming' \
            -H 'Transfer-Encoding: chunked' --data-binary @- >/dev/null; continue ;;
    *'"rawPath":"/prelude"'*)
      printf '{"statusCode":201,"headers":{"x-kind":"prelude"}}\000\000\000\000\000\000\000\000streamed body' |
        curl -sS -X POST "$api/invocation/$id/response" \
            -H 'Lambda-Runtime-Function-Response-Mode: streaming' \
            -H 'Content-Type: application/vnd.awslambda.http-integration-response' \
            -H 'Transfer-Encoding: chunked' --data-binary @- >/dev/null; continue ;;
    *'"rawPath":"/json"'*)
      curl -sS -X POST "$api/invocation/$id/response" -d '{"statusCode":202,"body":"routed"}' >/dev/null; continue ;;
  esac
  curl -sS -X POST "$api/invocation/$id/response" -d "pid=$$ event=$ev" >/dev/null
done
"#;

const INIT_ERROR: &str = r#"#!/bin/sh
curl -sS -X POST "http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/init/error" \
  -d '{"errorType":"Runtime.HandlerNotFound","errorMessage":"app.handler is undefined"}' >/dev/null
exit 1
"#;

fn zip_with_bootstrap(script: &str) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    zip.start_file("bootstrap", options).unwrap();
    zip.write_all(script.as_bytes()).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

struct Fixture {
    rt: WasmRuntime,
    target: FunctionTarget,
    _code: tempfile::TempDir,
}

fn fixture(script: &str, extra: &str) -> Fixture {
    fixture_with(script, extra, |_| {})
}

/// `tweak` sets what a manifest may not (idle timeouts under the 1 s minimum keep tests short).
fn fixture_with(
    script: &str,
    extra: &str,
    tweak: impl FnOnce(&mut nubo_core::manifest::FunctionSpec),
) -> Fixture {
    let code = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(RuntimeConfig {
        max_instances: 1,
        code_dir: code.path().join("code"),
        sandbox: SandboxPolicy {
            enabled: false,
            ..SandboxPolicy::new(code.path().join("scratch")).unwrap()
        },
        ..RuntimeConfig::default()
    })
    .unwrap();
    let manifest = format!(
        "[app]\nname = \"a\"\n[function.f]\nruntime = \"process\"\nsource = \"code\"\n{extra}\n"
    );
    let mut spec = nubo_core::manifest::parse(&manifest).unwrap().functions["f"].clone();
    tweak(&mut spec);
    let target = FunctionTarget {
        app: "a".into(),
        function: "f".into(),
        revision: 1,
    };
    let zip = zip_with_bootstrap(script);
    let artifact = rt
        .compile("f", nubo_core::manifest::Runtime::Process, &zip)
        .unwrap();
    rt.load(vec![LoadFunction {
        target: target.clone(),
        spec,
        artifact: Artifact::Bytes(Arc::new(artifact)),
    }])
    .unwrap();
    Fixture {
        rt,
        target,
        _code: code,
    }
}

impl Fixture {
    fn pool(&self) -> Arc<super::pool::Pool> {
        Arc::clone(&self.rt.process.get(&self.target).unwrap().pool)
    }

    /// Invokes with `event` as the raw payload; returns the result and the record.
    async fn invoke(
        &self,
        event: &str,
    ) -> (Result<(u16, String), InvokeError>, FinishedInvocation) {
        let request = http::Request::new(if event.is_empty() {
            empty_body()
        } else {
            full_body(event.to_owned())
        });
        let (result, record) = self.send("invoke", request).await;
        (result.map(|(status, _, body)| (status, body)), record)
    }

    /// Runs `request` as if `trigger` sent it; returns the response (body read to its end or
    /// its error) and the record.
    async fn send(
        &self,
        trigger: &'static str,
        mut request: http::Request<nubo_core::Body>,
    ) -> (
        Result<(u16, http::HeaderMap, String), InvokeError>,
        FinishedInvocation,
    ) {
        let (sink, records) = record_channel(4);
        let invocation = Invocation::start(
            InvocationMeta {
                id: nubo_core::InvocationId::new(),
                app: "a".into(),
                function: "f".into(),
                revision: 1,
                trigger,
            },
            &sink,
        );
        request.extensions_mut().insert(invocation);
        let result = match tokio::time::timeout(PATIENCE, self.rt.invoke(&self.target, request))
            .await
            .expect("the invocation ends in time")
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = match response.into_body().collect().await {
                    Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    Err(e) => format!("body error: {e}"),
                };
                Ok((status, headers, body))
            }
            Err(e) => Err(e),
        };
        let deadline = Instant::now() + PATIENCE;
        let record = loop {
            if let Ok(record) = records.try_recv() {
                break record;
            }
            assert!(Instant::now() < deadline, "no invocation record");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        (result, record)
    }
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid_of(body: &str) -> &str {
    body.split_whitespace().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_started_cold_then_reused_warm() {
    let f = fixture(BOOTSTRAP, "");
    let (first, record) = f.invoke("one").await;
    let (status, body) = first.unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with("event=one"), "{body}");
    assert!(record.cold);
    assert!(record.init_ms.is_some());
    let lines: Vec<&str> = record.logs.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("starting")),
        "init output: {lines:?}"
    );
    assert!(lines.contains(&"handling one"), "{lines:?}");

    let (second, record) = f.invoke("two").await;
    let (_, second) = second.unwrap();
    assert_eq!(
        pid_of(&second),
        pid_of(&body),
        "the same worker serves again"
    );
    assert!(!record.cold);
    assert_eq!(record.init_ms, None);
    assert_eq!(f.pool().live(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_only_its_invocation() {
    let f = fixture(BOOTSTRAP, "");
    let (first, _) = f.invoke("one").await;
    let (_, first) = first.unwrap();
    let (crashed, record) = f.invoke("crash").await;
    match crashed {
        Err(InvokeError::Crashed { message }) => {
            assert!(message.contains("signal 9"), "{message}");
            assert!(message.contains("about to die"), "{message}");
            assert!(
                !message.contains("handling one"),
                "an earlier invocation's output stays out of the message: {message}"
            );
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert_eq!(record.outcome, nubo_core::Outcome::Crashed);
    let (next, record) = f.invoke("three").await;
    let (_, next) = next.unwrap();
    assert_ne!(pid_of(&next), pid_of(&first), "a fresh worker replaced it");
    assert!(record.cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_its_worker() {
    let f = fixture(BOOTSTRAP, "timeout = \"500ms\"");
    let (result, record) = f.invoke("sleep").await;
    assert!(
        matches!(result, Err(InvokeError::Timeout { timeout_ms: 500 })),
        "{result:?}"
    );
    assert_eq!(record.outcome, nubo_core::Outcome::Timeout);
    // What it used until it was stopped is still measured.
    assert!(record.cpu_time.is_some() && record.peak_memory_bytes.is_some());
    let pool = f.pool();
    eventually("the timed-out worker is gone", || pool.live() == 0).await;
    let (after, _) = f.invoke("again").await;
    assert_eq!(after.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_error_reaches_the_caller() {
    let f = fixture(INIT_ERROR, "");
    let (result, record) = f.invoke("x").await;
    match result {
        Err(InvokeError::InitFailed { message }) => {
            assert_eq!(message, "Runtime.HandlerNotFound: app.handler is undefined");
        }
        other => panic!("expected an init failure, got {other:?}"),
    }
    assert_eq!(record.outcome, nubo_core::Outcome::InitFailed);
    let pool = f.pool();
    eventually("the failed worker is gone", || pool.live() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_are_reaped() {
    let f = fixture_with(BOOTSTRAP, "", |spec| spec.process.idle_timeout_ms = 100);
    let (result, _) = f.invoke("one").await;
    assert_eq!(result.unwrap().0, 200);
    let pool = f.pool();
    eventually("the idle worker is reaped", || pool.live() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_prewarmed_and_kept() {
    let f = fixture_with(BOOTSTRAP, "min_instances = 1", |spec| {
        spec.process.idle_timeout_ms = 100;
    });
    let pool = f.pool();
    eventually("a prewarmed worker is idle", || pool.idle_count() == 1).await;
    let (result, record) = f.invoke("one").await;
    assert_eq!(result.unwrap().0, 200);
    assert!(!record.cold, "a prewarmed worker is warm");
    // Past several idle timeouts the one kept instance is still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.live(), 1);
    // A kept worker that crashes is replaced.
    let (crashed, _) = f.invoke("crash").await;
    assert!(
        matches!(crashed, Err(InvokeError::Crashed { .. })),
        "{crashed:?}"
    );
    eventually("a replacement is prewarmed", || pool.idle_count() == 1).await;
    let (result, record) = f.invoke("two").await;
    assert_eq!(result.unwrap().0, 200);
    assert!(!record.cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_answers_502_with_the_runtimes_document() {
    let f = fixture(BOOTSTRAP, "");
    let (result, record) = f.invoke("fail").await;
    let (status, body) = result.unwrap();
    assert_eq!(status, 502);
    assert_eq!(body, r#"{"errorType":"Boom","errorMessage":"it broke"}"#);
    assert_eq!(record.outcome, nubo_core::Outcome::FunctionError);
    let (next, record) = f.invoke("ok").await;
    assert_eq!(next.unwrap().0, 200);
    assert!(!record.cold, "a handler error keeps the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_runtime_stops_its_workers() {
    let f = fixture(BOOTSTRAP, "");
    let (result, _) = f.invoke("one").await;
    let (_, body) = result.unwrap();
    let pid = pid_of(&body).trim_start_matches("pid=").to_owned();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists(), "the worker runs while the runtime does");
    drop(f);
    eventually("the worker process is gone", || !proc_dir.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_results_reach_the_caller() {
    let f = fixture(BOOTSTRAP, "");
    let (result, record) = f.invoke("stream").await;
    assert_eq!(result.unwrap(), (200, "chunk-1 chunk-2".to_owned()));
    assert_eq!(record.outcome, nubo_core::Outcome::Ok);

    let request = http::Request::get("http://example.test/prelude")
        .header("host", "example.test")
        .body(empty_body())
        .unwrap();
    let (result, record) = f.send("http", request).await;
    let (status, headers, body) = result.unwrap();
    assert_eq!(status, 201);
    assert_eq!(headers["x-kind"], "prelude");
    assert_eq!(body, "streamed body");
    assert_eq!(record.outcome, nubo_core::Outcome::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_requests_get_an_http_event_and_an_http_response() {
    let f = fixture(BOOTSTRAP, "");
    let request = http::Request::post("http://example.test/json?a=1")
        .header("host", "example.test")
        .body(full_body("hi"))
        .unwrap();
    let (result, _) = f.send("http", request).await;
    let (status, _, body) = result.unwrap();
    assert_eq!(status, 202);
    assert_eq!(body, "routed");
}

/// Does its work in the shell process itself (the process a worker without a cgroup is
/// measured by): `alloc` holds 8 MiB in a variable, `burn` counts in a loop, `sleep` waits on
/// a child.
const METERED: &str = r#"#!/bin/sh
set -u
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
dir=$(mktemp -d)
while true; do
  curl -sS -D "$dir/h" -o "$dir/e" "$api/invocation/next" || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$dir/h" | cut -d' ' -f2 | tr -d '\r')
  ev=$(cat "$dir/e")
  out="$ev"
  case "$ev" in
    alloc) held=$(head -c 8388608 /dev/zero | tr '\000' a); out="${#held}"; held="" ;;
    burn) i=0; while [ "$i" -lt 100000 ]; do i=$((i + 1)); done; out="$i" ;;
    sleep) sleep 0.3 ;;
  esac
  curl -sS -X POST "$api/invocation/$id/response" -d "$out" >/dev/null
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_report_their_peak_memory_and_cpu_time() {
    const MIB: u64 = 1 << 20;
    let f = fixture(METERED, "memory = \"256MiB\"");
    let (result, cold) = f.invoke("idle").await;
    assert_eq!(result.unwrap().1, "idle");
    assert_eq!(cold.memory_limit_bytes, Some(256 * MIB));

    let (_, idle) = f.invoke("idle").await;
    let (result, alloc) = f.invoke("alloc").await;
    assert_eq!(result.unwrap().1, "8388608");
    let base = idle.peak_memory_bytes.expect("the idle peak is measured");
    let peak = alloc.peak_memory_bytes.expect("the peak is measured");
    assert!(peak >= base + 8 * MIB, "8 MiB more: {peak} vs {base}");
    // The peak is reset for each invocation: the next one does not inherit the 8 MiB.
    let (_, after) = f.invoke("idle").await;
    let after = after.peak_memory_bytes.expect("measured");
    assert!(after + 8 * MIB <= peak, "{after} vs {peak}");

    let (result, burn) = f.invoke("burn").await;
    assert_eq!(result.unwrap().1, "100000");
    let cpu = burn.cpu_time.expect("CPU time is measured");
    // 100,000 rounds of a shell loop take more than a sliver of CPU, and one thread cannot
    // use more CPU than the wall time it ran.
    assert!(cpu > Duration::from_millis(5), "{cpu:?}");
    assert!(
        cpu <= burn.duration + Duration::from_millis(20),
        "{cpu:?} > {:?}",
        burn.duration
    );

    let (result, slept) = f.invoke("sleep").await;
    assert_eq!(result.unwrap().1, "sleep");
    let cpu = slept.cpu_time.expect("CPU time is measured");
    assert!(slept.duration >= Duration::from_millis(300));
    assert!(
        cpu * 4 < slept.duration,
        "waiting is not CPU time: {cpu:?} of {:?}",
        slept.duration
    );
}
