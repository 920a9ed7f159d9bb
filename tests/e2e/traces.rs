//! OpenTelemetry traces over OTLP/HTTP, checked against a real receiver: a small Python server
//! built on the `opentelemetry-proto` package (tests/otlp/receiver.py) that decodes what Nubo
//! posts and writes each span as a JSON line. A caller's `traceparent` is continued, the
//! function sees its invocation's span as the parent, its outbound calls are child spans whose
//! `traceparent` the callee receives, async invocations continue the stored trace, without
//! `--otlp-endpoint` nothing is sent, and `/_nubo/metrics` counts spans exported and dropped.

use crate::support::{Server, eventually, guest, http};
use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long spans may take to reach the receiver (the exporter batches, the machine is shared).
const SPANS_WITHIN: Duration = Duration::from_secs(30);

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The receiver: a child process writing spans to `out`.
struct Receiver {
    child: Child,
    url: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let mut child = Command::new(python())
            .arg(crate::support::root().join("tests/otlp/receiver.py"))
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the OTLP receiver");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected receiver line {first:?}"))
            .to_string();
        Receiver {
            child,
            url,
            out,
            _dir: dir,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until a span matching `pred` has arrived; answers it.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(SPANS_WITHIN, || self.spans().into_iter().find(|s| pred(s)))
        }));
        found.unwrap_or_else(|_| panic!("no span {what} arrived; got {:#?}", self.spans()))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's Python (scripts/test.sh installs tests/otlp/requirements.txt into it).
fn python() -> PathBuf {
    let venv = std::env::var("NUBO_S3_VENV").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nubo/venv"),
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/test.sh once (it builds the venv with opentelemetry-proto)",
        py.display()
    );
    py
}

/// App `tr`: `caller` (the outbound guest, allowed to reach this server) on `/caller`, and
/// `callee` (the chain guest, whose `/echo` answers the request's headers) on `/callee/...`.
fn deploy(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[app]\nname = \"tr\"\n\n\
         [function.caller]\nsource = \"{}\"\nallowed_hosts = [\"http://127.0.0.1:{}\"]\n\n\
         [function.callee]\nsource = \"{}\"\n\n\
         [[route]]\npath = \"/caller\"\nfunction = \"caller\"\n\n\
         [[route]]\npath = \"/callee/...\"\nfunction = \"callee\"\n",
        guest("outbound").display(),
        s.addr.port(),
        guest("chain").display(),
    );
    std::fs::write(dir.path().join("nubo.toml"), manifest).unwrap();
    s.deploy(dir.path());
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn is_invocation_of(span: &Value, function: &str) -> bool {
    attr(span, "nubo.function") == function && span["parent_span_id"] != Value::Null
}

/// The `traceparent` the callee's `/echo` reported, from the outbound guest's answer.
fn seen_traceparent(text: &str) -> String {
    let json = text
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
    let echo: Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("the callee answer is not JSON ({e}): {text:?}"));
    echo["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the callee saw no traceparent: {echo}"))
        .to_string()
}

fn start_traced() -> (Receiver, Server) {
    let receiver = Receiver::start();
    let server = Server::start_with(&["--otlp-endpoint", &receiver.url]);
    deploy(&server);
    (receiver, server)
}

#[test]
fn a_request_and_its_outbound_call_are_one_trace() {
    let (receiver, s) = start_traced();
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let url = format!("http://127.0.0.1:{}/callee/echo", s.addr.port());
    let r = http(
        s.addr,
        "GET",
        &format!("/caller?url={url}"),
        &[("traceparent", &parent), ("tracestate", "vendor=abc")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.starts_with("outbound ok 200"), "{text}");
    let caller_id = r.header("nubo-invocation-id").unwrap().to_string();
    let seen = seen_traceparent(&text);
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CALLER_TRACE, "01"));

    // The caller's invocation span continues the caller's trace.
    let caller = receiver.wait_for("of the caller", |s| is_invocation_of(s, "caller"));
    assert_eq!(caller["trace_id"], CALLER_TRACE);
    assert_eq!(caller["parent_span_id"], CALLER_SPAN);
    assert_eq!(caller["trace_state"], "vendor=abc");
    assert_eq!(caller["resource"]["service.name"], "nubo");
    assert_eq!(attr(&caller, "faas.invocation_id"), caller_id.as_str());
    assert_eq!(attr(&caller, "faas.trigger"), "http");
    assert_eq!(attr(&caller, "nubo.app"), "tr");
    assert_eq!(attr(&caller, "nubo.revision"), 1);
    assert_eq!(attr(&caller, "http.response.status_code"), 200);
    assert!(attr(&caller, "faas.coldstart").is_boolean());
    let caller_span = caller["span_id"].as_str().unwrap().to_string();

    // Its outbound call is a child span.
    let call = receiver.wait_for("of the outbound call", |s| {
        s["parent_span_id"] == caller_span.as_str() && s["kind"] == 3
    });
    assert_eq!(attr(&call, "http.response.status_code"), 200);
    assert_eq!(attr(&call, "http.request.method"), "GET");

    // The call's request carried its span to the callee, whose invocation is the next link of
    // the same trace; the callee's function sees its own invocation span as the parent.
    let callee = receiver.wait_for("of the callee", |s| is_invocation_of(s, "callee"));
    assert_eq!(callee["trace_id"], CALLER_TRACE);
    assert_eq!(callee["parent_span_id"], call["span_id"]);
    assert_eq!(callee["span_id"], parts[2]);

    // The caller's phases are children inside its time: the wait for a concurrency slot, the
    // instantiation (the first request of a function is a cold start) and the execution.
    let children: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| s["parent_span_id"] == caller_span.as_str())
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"queue"), "{names:?}");
    assert!(
        names.contains(&"cold start") || names.contains(&"instantiate"),
        "{names:?}"
    );
    assert!(names.contains(&"execute"), "{names:?}");
    let (start, end) = (
        caller["start"].as_u64().unwrap(),
        caller["end"].as_u64().unwrap(),
    );
    assert!(start <= end);
    for child in &children {
        assert_eq!(child["trace_id"], CALLER_TRACE);
        let (cs, ce) = (
            child["start"].as_u64().unwrap(),
            child["end"].as_u64().unwrap(),
        );
        assert!(
            start <= cs && cs <= ce && ce <= end,
            "{child} outside {caller}"
        );
    }
}

#[test]
fn an_async_invocation_continues_the_stored_trace() {
    let (receiver, s) = start_traced();
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = http(
        s.addr,
        "POST",
        "/callee/echo",
        &[("nubo-invocation-type", "event"), ("traceparent", &parent)],
        b"later",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let attempt = receiver.wait_for("of the async attempt", |s| {
        is_invocation_of(s, "callee") && attr(s, "faas.trigger") == "other"
    });
    assert_eq!(attempt["trace_id"], CALLER_TRACE);
    assert_eq!(attempt["parent_span_id"], CALLER_SPAN);
    assert_eq!(attr(&attempt, "nubo.trigger"), "async");
}

#[test]
fn a_request_without_a_valid_traceparent_starts_a_trace() {
    let (receiver, s) = start_traced();
    // Uppercase hex is not a valid traceparent: a new trace starts instead of an error.
    let bad = format!("00-{}-{CALLER_SPAN}-01", CALLER_TRACE.to_uppercase());
    let r = http(s.addr, "GET", "/callee/echo", &[("traceparent", &bad)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    let seen = echo["headers"]["traceparent"].as_str().unwrap().to_string();
    let root = receiver.wait_for("of the new trace", |s| {
        attr(s, "nubo.function") == "callee" && s["parent_span_id"] == ""
    });
    assert_eq!(
        seen,
        format!(
            "00-{}-{}-01",
            root["trace_id"].as_str().unwrap(),
            root["span_id"].as_str().unwrap()
        ),
        "the function sees its invocation's span as the parent"
    );
}

#[test]
fn an_unsampled_trace_is_passed_on_but_not_sent() {
    let (receiver, s) = start_traced();
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let r = http(
        s.addr,
        "GET",
        "/callee/echo",
        &[("traceparent", &unsampled)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.starts_with(&format!("00-{CALLER_TRACE}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // A sampled request afterwards arrives; the unsampled one never does.
    let sampled = format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32));
    let r = http(
        s.addr,
        "GET",
        "/callee/echo",
        &[("traceparent", &sampled)],
        b"",
    );
    assert_eq!(r.status, 200);
    receiver.wait_for("of the sampled request", |s| {
        s["trace_id"] == "1".repeat(32)
    });
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s["trace_id"] != CALLER_TRACE),
        "an unsampled trace was exported"
    );
}

#[test]
fn without_an_endpoint_nothing_is_sent() {
    let receiver = Receiver::start();
    // The variable OpenTelemetry SDKs read does not turn export on: only the flag does.
    let s = Server::start_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)]);
    deploy(&s);
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = http(
        s.addr,
        "GET",
        "/callee/echo",
        &[("traceparent", &parent)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The caller's context still reaches the function, untouched.
    assert_eq!(r.json()["headers"]["traceparent"], parent.as_str());
    // Shutdown flushes any spans queued; with tracing off there are none to send.
    let (status, _) = s.terminate();
    assert!(status.success());
    assert!(!receiver.out.exists(), "{:?}", receiver.spans());
}

#[test]
fn work_a_function_hands_on_continues_its_trace() {
    let receiver = Receiver::start();
    let s = Server::start_with(&["--otlp-endpoint", &format!("{}/v1/traces", receiver.url)]);
    let chain = guest("chain");
    let function = |name: &str, route: &str, extra: &str| {
        format!(
            "\n[function.{name}]\nsource = \"{}\"\nenv = {{ CHAIN_ROUTE = \"{route}\" }}\n{extra}\n",
            chain.display()
        )
    };
    let manifest = [
        "[app]\nname = \"flow\"\n".to_string(),
        function("front", "/publish?queue=jobs", "queues = [\"jobs\"]"),
        function("back", "/dump", ""),
        function(
            "copier",
            "/copy?to=derived",
            "buckets = [\"uploads\", \"derived\"]",
        ),
        function("indexer", "/dump", ""),
        "\n[[trigger.queue]]\nfunction = \"back\"\nqueue = \"jobs\"\n\n\
         [[trigger.object]]\nfunction = \"copier\"\nbucket = \"uploads\"\n\n\
         [[trigger.object]]\nfunction = \"indexer\"\nbucket = \"derived\"\n\n\
         [[route]]\npath = \"/flow/...\"\nfunction = \"front\"\n"
            .to_string(),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nubo.toml"), manifest).unwrap();
    s.deploy(dir.path());

    // A queue publish: the consumer's invocation is a child of the publisher's.
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = http(
        s.addr,
        "POST",
        "/flow/publish?queue=jobs",
        &[("traceparent", &parent)],
        b"job",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let front = receiver.wait_for("of the publisher", |s| attr(s, "nubo.function") == "front");
    assert_eq!(front["trace_id"], CALLER_TRACE);
    let back = receiver.wait_for("of the consumer", |s| attr(s, "nubo.function") == "back");
    assert_eq!(back["trace_id"], CALLER_TRACE);
    assert_eq!(back["parent_span_id"], front["span_id"]);
    assert_eq!(attr(&back, "faas.trigger"), "pubsub");

    // An object written from outside starts a trace at the first function; the object it
    // writes carries that trace to the next one.
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/uploads/objects/img/cat.txt",
        &[("content-type", "text/plain")],
        b"meow",
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let copier = receiver.wait_for("of the copier", |s| attr(s, "nubo.function") == "copier");
    assert_eq!(
        copier["parent_span_id"], "",
        "a new trace starts at the first delivery"
    );
    assert_eq!(attr(&copier, "faas.trigger"), "datasource");
    let indexer = receiver.wait_for("of the indexer", |s| attr(s, "nubo.function") == "indexer");
    assert_eq!(indexer["trace_id"], copier["trace_id"]);
    assert_eq!(indexer["parent_span_id"], copier["span_id"]);
}

/// A `provided` runtime in shell (curl for the Runtime API) that answers each event with
/// `{"trace": <its Lambda-Runtime-Trace-Id>, "event": <the event>}`.
const TRACE_ECHO_BOOTSTRAP: &str = r#"#!/bin/sh
set -u
api="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
headers="$(mktemp)"
event="$(mktemp)"
answer="$(mktemp)"
while true; do
  curl -sS -D "$headers" -o "$event" "$api/invocation/next" || exit 1
  id="$(tr -d '\r' < "$headers" | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: *//p')"
  trace="$(tr -d '\r' < "$headers" | sed -n 's/^[Ll]ambda-[Rr]untime-[Tt]race-[Ii]d: *//p')"
  { printf '{"trace":"%s","event":' "$trace"; cat "$event"; printf '}'; } > "$answer"
  curl -sS -o /dev/null -X POST "$api/invocation/$id/response" --data-binary "@$answer"
done
"#;

#[test]
fn a_process_function_gets_the_trace_in_its_event() {
    use std::os::unix::fs::PermissionsExt as _;
    let receiver = Receiver::start();
    let s = Server::start_with(&["--otlp-endpoint", &receiver.url]);
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    let bootstrap = code.join("bootstrap");
    std::fs::write(&bootstrap, TRACE_ECHO_BOOTSTRAP).unwrap();
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = format!(
        "[app]\nname = \"ptr\"\n\n[function.sh]\nruntime = \"process\"\nsource = \"{}\"\n\n\
         [[route]]\npath = \"/ptr/...\"\nfunction = \"sh\"\n",
        code.display()
    );
    std::fs::write(dir.path().join("nubo.toml"), manifest).unwrap();
    s.deploy(dir.path());

    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = http(s.addr, "GET", "/ptr/x", &[("traceparent", &parent)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let span = receiver.wait_for("of the process function", |s| {
        attr(s, "nubo.function") == "sh"
    });
    assert_eq!(span["trace_id"], CALLER_TRACE);
    assert_eq!(span["parent_span_id"], CALLER_SPAN);
    // The API Gateway event's headers name the invocation's span as the parent.
    assert_eq!(
        answer["event"]["headers"]["traceparent"],
        format!("00-{CALLER_TRACE}-{}-01", span["span_id"].as_str().unwrap()).as_str(),
        "{answer}"
    );
    // The runtime's X-Ray header (`_X_AMZN_TRACE_ID`) carries the same trace and span.
    assert_eq!(
        answer["trace"],
        format!(
            "Root=1-{}-{};Parent={};Sampled=1",
            &CALLER_TRACE[..8],
            &CALLER_TRACE[8..],
            span["span_id"].as_str().unwrap()
        )
        .as_str(),
        "{answer}"
    );
}

/// The value of the unlabelled counter `name` at `/_nubo/metrics`, when it is there.
fn counter(s: &Server, name: &str) -> Option<f64> {
    let r = http(s.addr, "GET", "/_nubo/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_exporter_counts_what_it_sent_and_what_it_dropped() {
    let (_receiver, s) = start_traced();
    let r = http(s.addr, "GET", "/callee/echo", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(SPANS_WITHIN, || {
        (counter(&s, "nubo_trace_spans_exported_total")? > 0.0).then_some(())
    });
    assert_eq!(counter(&s, "nubo_trace_export_failures_total"), Some(0.0));

    // A collector that is not there: a port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start_with(&["--otlp-endpoint", &format!("http://127.0.0.1:{port}")]);
    deploy(&s);
    for _ in 0..3 {
        let r = http(s.addr, "GET", "/callee/echo", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Requests are answered all the same; their spans are counted as dropped.
    eventually(SPANS_WITHIN, || {
        let dropped = counter(&s, "nubo_trace_invocations_dropped_total")?;
        let failures = counter(&s, "nubo_trace_export_failures_total")?;
        (dropped >= 3.0 && failures >= 1.0).then_some(())
    });
    assert_eq!(counter(&s, "nubo_trace_spans_exported_total"), Some(0.0));
}
