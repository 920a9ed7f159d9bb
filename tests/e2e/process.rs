//! Process functions: real AWS Lambda runtime clients (awslambdaric, aws-lambda-ric, the
//! lambda_runtime and lambda_http crates, a curl shell script) deployed from folders, invoked
//! directly and through routes, failing in every way a runtime can, and sandboxed workers that
//! try to escape (fork bomb, memory bomb, /tmp filler, reading another function's code).
//! The functions live in `tests/process/` and are built by `tests/process/build.sh`.

use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// How one runtime client is deployed and how it shows each behaviour.
struct Client {
    /// App name; routes live under `/{app}/`.
    app: &'static str,
    /// `[function.*]` tables and routes of the app.
    manifest: String,
    /// The function and payload for a successful call (the result echoes the event).
    echo: (&'static str, &'static str),
    /// The function and payload that make the handler fail, and the errorType it reports.
    fail: (&'static str, &'static str, &'static str),
    /// The function and payload that run past the function's timeout.
    slow: (&'static str, &'static str),
    /// The function and payload that kill the worker mid-invocation, and a line it logs first.
    crash: (&'static str, &'static str, &'static str),
    /// The function whose runtime fails to start.
    init: &'static str,
    /// Whether the echo function wraps the event (`{"event": …}`) or returns it as is.
    wraps: bool,
}

impl Client {
    /// The event the echo function got, from its result.
    fn echoed(&self, result: &Value) -> Value {
        if self.wraps {
            result["event"].clone()
        } else {
            result.clone()
        }
    }
}

/// A `[function.NAME]` table of a process function with 256MiB of memory and a 10s timeout
/// (generous: the whole suite may run at once on 2 cores).
fn function(name: &str, source: &Path, extra: &str) -> String {
    function_with(name, source, "256MiB", "10s", extra)
}

/// A function that times out: 3s, well past a cold start and well before its 30s sleep.
fn slow_function(name: &str, source: &Path, extra: &str) -> String {
    function_with(name, source, "256MiB", "3s", extra)
}

/// A `[function.NAME]` table of a process function.
fn function_with(name: &str, source: &Path, memory: &str, timeout: &str, extra: &str) -> String {
    format!(
        "\n[function.{name}]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"{memory}\"\ntimeout = \"{timeout}\"\n{extra}\n",
        source.display()
    )
}

/// The command line of a Python function run by awslambdaric.
fn python(handler: &str) -> String {
    format!("command = [\"python3\", \"-m\", \"awslambdaric\", \"{handler}\"]")
}

/// The command line of a Node function run by aws-lambda-ric.
fn node(handler: &str) -> String {
    format!(
        "command = [\"node\", \"node_modules/aws-lambda-ric/bin/index.mjs\", \"{handler}\"]\nhandler = \"{handler}\""
    )
}

fn python_client() -> Client {
    let code = process_fn("python/app", "awslambdaric/__init__.py");
    let broken = process_fn("python/init_error", "awslambdaric/__init__.py");
    let mut m = String::from("[app]\nname = \"py\"\n");
    m += &function("echo", &code, &python("app.handler"));
    m += &function("fail", &code, &python("app.fail"));
    m += &slow_function("slow", &code, &python("app.slow"));
    m += &function("crash", &code, &python("app.crash"));
    m += &function("http", &code, &python("app.http"));
    m += &function("init", &broken, &python("app.handler"));
    m += "\n[[route]]\npath = \"/py/http/...\"\nfunction = \"http\"\n";
    Client {
        app: "py",
        manifest: m,
        echo: ("echo", r#"{"x":1}"#),
        fail: ("fail", r#"{"x":1}"#, "HandlerFailed"),
        slow: ("slow", r#"{"sleep_s":30}"#),
        crash: ("crash", r#"{"crash":true}"#, "python: crashing on request"),
        init: "init",
        wraps: true,
    }
}

fn node_client() -> Client {
    let code = process_fn(
        "node/dist",
        "node_modules/aws-lambda-ric/dist/rapid-client.node",
    );
    let mut m = String::from("[app]\nname = \"js\"\n");
    m += &function("echo", &code, &node("index.handler"));
    m += &function("fail", &code, &node("index.fail"));
    m += &slow_function("slow", &code, &node("index.slow"));
    m += &function("crash", &code, &node("index.crash"));
    m += &function("http", &code, &node("index.http"));
    m += &function("init", &code, &node("init_error/index.handler"));
    m += "\n[[route]]\npath = \"/js/http/...\"\nfunction = \"http\"\n";
    Client {
        app: "js",
        manifest: m,
        echo: ("echo", r#"{"x":1}"#),
        fail: ("fail", r#"{"x":1}"#, "HandlerFailed"),
        slow: ("slow", r#"{"sleep_s":30}"#),
        crash: ("crash", r#"{"crash":true}"#, "node: crashing on request"),
        init: "init",
        wraps: true,
    }
}

fn rust_client() -> Client {
    let echo = process_fn("rust/dist/echo", "bootstrap");
    let http = process_fn("rust/dist/http", "bootstrap");
    let mut m = String::from("[app]\nname = \"rs\"\n");
    m += &function("echo", &echo, "");
    m += &slow_function("slow", &echo, "");
    m += &function("http", &http, "");
    m += &function("init", &echo, "env = { ECHO_FAIL_INIT = \"1\" }");
    m += "\n[[route]]\npath = \"/rs/http/...\"\nfunction = \"http\"\n";
    Client {
        app: "rs",
        manifest: m,
        echo: ("echo", r#"{"x":1}"#),
        fail: ("echo", r#"{"fail":true}"#, "EchoFailed"),
        slow: ("slow", r#"{"sleep_ms":30000}"#),
        crash: ("echo", r#"{"crash":true}"#, "echo: crashing on request"),
        init: "init",
        wraps: true,
    }
}

fn shell_client() -> Client {
    let echo = process_fn("shell/echo", "bootstrap");
    let broken = process_fn("shell/init_error", "bootstrap");
    let mut m = String::from("[app]\nname = \"sh\"\n");
    m += &function("echo", &echo, "");
    m += &slow_function("slow", &echo, "");
    m += &function("init", &broken, "");
    m += "\n[[route]]\npath = \"/sh/http/...\"\nfunction = \"echo\"\n";
    Client {
        app: "sh",
        manifest: m,
        echo: ("echo", r#"{"x":1}"#),
        fail: ("echo", r#"{"fail":1}"#, "ShellFailure"),
        slow: ("slow", r#"{"sleep":1}"#),
        crash: ("echo", r#"{"crash":1}"#, "shell: crashing on request"),
        init: "init",
        wraps: false,
    }
}

/// Deploys the client's app on a fresh server.
fn deploy(client: &Client) -> (Server, tempfile::TempDir) {
    let s = Server::start();
    let dir = app_dir(&client.manifest);
    s.deploy(dir.path());
    (s, dir)
}

/// The record of the invocation that answered `r`.
fn record(s: &Server, r: &Resp) -> Value {
    let id = r
        .header("nubo-invocation-id")
        .unwrap_or_else(|| panic!("no nubo-invocation-id on {r:?}"));
    s.invocation(id)
}

/// A call returns the handler's result as is, the first one on a cold worker and the next
/// on the same, warm, worker; the CLI passes the raw payload too.
fn check_invoke(s: &Server, c: &Client) {
    let (f, payload) = c.echo;
    let first = invoke(s, c.app, f, payload.as_bytes());
    assert_eq!(first.status, 200, "{}: {}", c.app, first.text());
    let v = first.json();
    assert_eq!(c.echoed(&v), json!({"x": 1}), "{}: {v}", c.app);
    let second = invoke(s, c.app, f, br#"{"x":2}"#);
    assert_eq!(second.status, 200, "{}: {}", c.app, second.text());
    assert_eq!(c.echoed(&second.json()), json!({"x": 2}), "{}", c.app);

    let cold = record(s, &first);
    let warm = record(s, &second);
    assert_eq!(cold["record"]["cold"], true, "{}: {cold}", c.app);
    assert_eq!(warm["record"]["cold"], false, "{}: {warm}", c.app);
    // A cold start records how long the worker took to ask for its first event.
    assert!(
        cold["record"]["init_ms"].is_u64(),
        "{}: no init_ms on the cold record: {cold}",
        c.app
    );
    assert!(
        warm["record"].get("init_ms").is_none_or(Value::is_null),
        "{}: {warm}",
        c.app
    );

    let out = s.ok(&[
        "invoke",
        &format!("{}/{f}", c.app),
        "-d",
        r#"{"via":"cli"}"#,
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(c.echoed(&v), json!({"via": "cli"}), "{}: {out}", c.app);
}

/// A handler error is a 502 carrying the runtime's own error document, marked as unhandled.
fn check_error(s: &Server, c: &Client) {
    let (f, payload, error_type) = c.fail;
    let r = invoke(s, c.app, f, payload.as_bytes());
    assert_eq!(r.status, 502, "{}: {}", c.app, r.text());
    assert_eq!(
        r.header("x-amz-function-error"),
        Some("Unhandled"),
        "{}: {r:?}",
        c.app
    );
    let v = r.json();
    assert_eq!(v["errorType"], error_type, "{}: {v}", c.app);
    assert!(
        v["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("failing on request")),
        "{}: {v}",
        c.app
    );
    // The worker survives a handler error.
    let again = invoke(s, c.app, c.echo.0, c.echo.1.as_bytes());
    assert_eq!(again.status, 200, "{}: {}", c.app, again.text());
}

/// A runtime that cannot start fails the call with its own message.
fn check_init_error(s: &Server, c: &Client) {
    let r = invoke(s, c.app, c.init, b"{}");
    let v = r.assert_error(502, "function_init_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("init failed on purpose"),
        "{}: the runtime's message is missing: {v}",
        c.app
    );
}

/// A call past the timeout is a 504 and kills its worker; the next call gets a new one.
fn check_timeout(s: &Server, c: &Client) {
    let (f, payload) = c.slow;
    let r = invoke(s, c.app, f, payload.as_bytes());
    r.assert_error(504, "function_timeout");
    let next = invoke(s, c.app, f, br#"{"after":"the previous call"}"#);
    assert_eq!(next.status, 200, "{}: {}", c.app, next.text());
    // The old worker is gone: a new one was started for this call.
    assert_eq!(record(s, &next)["record"]["cold"], true, "{}", c.app);
}

/// A worker that dies mid-call fails only that call, with its last log lines.
fn check_crash(s: &Server, c: &Client) {
    let (f, payload, last_line) = c.crash;
    let r = invoke(s, c.app, f, payload.as_bytes());
    let v = r.assert_error(500, "function_crashed");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(last_line),
        "{}: the worker's last log lines are missing: {v}",
        c.app
    );
    // Nothing in this payload triggers a failure mode of any of the functions.
    let next = invoke(s, c.app, f, br#"{"after":"the previous call"}"#);
    assert_eq!(next.status, 200, "{}: {}", c.app, next.text());
    // The old worker is gone: a new one was started for this call.
    assert_eq!(record(s, &next)["record"]["cold"], true, "{}", c.app);
}

/// Worker output is attributed to the invocation and shown by `nubo logs`.
fn check_logs(s: &Server, c: &Client) {
    let marker = format!("marker-{}-7f3a", c.app);
    let payload = format!(r#"{{"print":"{marker}"}}"#);
    let r = invoke(s, c.app, c.echo.0, payload.as_bytes());
    assert_eq!(r.status, 200, "{}: {}", c.app, r.text());
    let inv = record(s, &r);
    assert!(
        inv["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"].as_str().is_some_and(|l| l.contains(&marker))),
        "{}: {inv}",
        c.app
    );
    let out = s.ok(&["logs", c.app]);
    assert!(out.contains(&marker), "{}: {out}", c.app);
}

/// The bytes sent as a binary body: every byte value, so no text decoding survives.
fn binary_body() -> Vec<u8> {
    (0..=255u8).rev().collect()
}

/// Through a route, an HTTP handler sees an API Gateway 2.0 event (method, raw path and
/// query, cookies split out, lower-case headers, the body) and its result becomes the HTTP
/// response (status, headers, one set-cookie per cookie, a binary body).
fn check_http(s: &Server, app: &str, handler: &str, cookies: &[&str]) {
    let path = format!("/{app}/http/a/b?x=1&y=two");
    let r = http(
        s.addr,
        "POST",
        &path,
        &[
            ("Cookie", "a=1; b=2"),
            ("X-Test", "Hello"),
            ("Content-Type", "text/plain"),
        ],
        b"hello body",
    );
    assert_eq!(r.status, 201, "{app}: {}", r.text());
    assert_eq!(r.header("x-handler"), Some(handler), "{app}: {r:?}");
    assert_eq!(header_values(&r, "set-cookie"), cookies, "{app}: {r:?}");
    let v = r.json();
    assert_eq!(v["method"], "POST", "{app}: {v}");
    assert_eq!(v["cookies"], json!(["a=1", "b=2"]), "{app}: {v}");
    assert_eq!(v["headers"]["x-test"], "Hello", "{app}: {v}");
    assert_eq!(v["body"], "hello body", "{app}: {v}");
    if app == "rs" {
        // lambda_http rebuilds an http::Request from the event.
        assert_eq!(v["path"], format!("/{app}/http/a/b"), "{app}: {v}");
        assert_eq!(v["query"], "x=1&y=two", "{app}: {v}");
    } else {
        assert_eq!(v["version"], "2.0", "{app}: {v}");
        assert_eq!(v["rawPath"], format!("/{app}/http/a/b"), "{app}: {v}");
        assert_eq!(v["rawQueryString"], "x=1&y=two", "{app}: {v}");
        assert_eq!(v["query"], json!({"x": "1", "y": "two"}), "{app}: {v}");
        assert_eq!(v["header_names_lower"], true, "{app}: {v}");
        assert!(v["headers"].get("cookie").is_none(), "{app}: {v}");
        assert_eq!(v["isBase64Encoded"], false, "{app}: {v}");
    }

    let bytes = binary_body();
    let r = http(
        s.addr,
        "POST",
        &format!("/{app}/http/bin?binary=1"),
        &[("Content-Type", "application/octet-stream")],
        &bytes,
    );
    assert_eq!(r.status, 200, "{app}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/octet-stream"),
        "{app}"
    );
    assert_eq!(r.body, bytes, "{app}: the binary body did not survive");
}

fn conformance(c: &Client) {
    let (s, _dir) = deploy(c);
    check_invoke(&s, c);
    check_error(&s, c);
    check_init_error(&s, c);
    check_timeout(&s, c);
    check_crash(&s, c);
    check_logs(&s, c);
}

#[test]
fn python_awslambdaric() {
    let c = python_client();
    conformance(&c);
}

#[test]
fn python_http_route() {
    let c = python_client();
    let (s, _dir) = deploy(&c);
    check_http(
        &s,
        "py",
        "python-http",
        &["session=python; Path=/", "theme=dark"],
    );
}

#[test]
fn node_aws_lambda_ric() {
    let c = node_client();
    conformance(&c);
}

#[test]
fn node_http_route() {
    let c = node_client();
    let (s, _dir) = deploy(&c);
    check_http(
        &s,
        "js",
        "node-http",
        &["session=node; Path=/", "theme=dark"],
    );
}

#[test]
fn rust_lambda_runtime() {
    let c = rust_client();
    conformance(&c);
}

#[test]
fn rust_lambda_http_route() {
    let c = rust_client();
    let (s, _dir) = deploy(&c);
    check_http(&s, "rs", "rust-http", &["session=rust; Path=/"]);
}

#[test]
fn shell_bootstrap() {
    let c = shell_client();
    conformance(&c);
}

/// A streamed HTTP response (lambda_http's streaming mode: a prelude with status and
/// headers, then the body in chunks) reaches the caller whole, with the prelude's status.
#[test]
fn rust_lambda_http_streaming_route() {
    let s = Server::start();
    let code = process_fn("rust/dist/stream", "bootstrap");
    let mut m = String::from("[app]\nname = \"st\"\n");
    m += &function("stream", &code, "");
    m += "\n[[route]]\npath = \"/st/...\"\nfunction = \"stream\"\n";
    let dir = app_dir(&m);
    s.deploy(dir.path());
    let r = http(s.addr, "GET", "/st/stream", &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-handler"), Some("rust-stream"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain"), "{r:?}");
    assert_eq!(
        r.text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
        "{r:?}"
    );
}

/// The shell function echoes the event it got, so a route shows the event itself: its
/// result has no statusCode, so it is a 200 JSON body (Lambda's inference rule).
#[test]
fn shell_bootstrap_sees_api_gateway_events() {
    let c = shell_client();
    let (s, _dir) = deploy(&c);
    let r = http(
        s.addr,
        "PUT",
        "/sh/http/some/where?q=1&q=2&z",
        &[
            ("Cookie", "a=1; b=2"),
            ("X-Test", "Hello"),
            ("Content-Type", "text/plain"),
        ],
        b"plain text",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{r:?}"
    );
    let e = r.json();
    assert_eq!(e["version"], "2.0", "{e}");
    assert_eq!(e["rawPath"], "/sh/http/some/where", "{e}");
    assert_eq!(e["rawQueryString"], "q=1&q=2&z", "{e}");
    assert_eq!(e["queryStringParameters"]["q"], "1,2", "{e}");
    assert_eq!(e["cookies"], json!(["a=1", "b=2"]), "{e}");
    assert_eq!(e["headers"]["x-test"], "Hello", "{e}");
    assert!(e["headers"].get("cookie").is_none(), "{e}");
    assert!(
        e["headers"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| *k == k.to_lowercase()),
        "{e}"
    );
    assert_eq!(e["requestContext"]["http"]["method"], "PUT", "{e}");
    assert_eq!(
        e["requestContext"]["http"]["path"], "/sh/http/some/where",
        "{e}"
    );
    assert_eq!(e["body"], "plain text", "{e}");
    assert_eq!(e["isBase64Encoded"], false, "{e}");

    // Binary in: base64 in the event. The bytes are 0xff down to 0x00.
    let r = http(
        s.addr,
        "POST",
        "/sh/http/bin",
        &[("Content-Type", "application/octet-stream")],
        &binary_body(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["isBase64Encoded"], true, "{e}");
    assert_eq!(e["body"], BINARY_BODY_BASE64, "{e}");
}

/// `binary_body()` in standard base64.
const BINARY_BODY_BASE64: &str = "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eDf3t3c29rZ2NfW1dTT0tHQz87NzMvKycjHxsXEw8LBwL++vby7urm4t7a1tLOysbCvrq2sq6qpqKempaSjoqGgn56dnJuamZiXlpWUk5KRkI+OjYyLiomIh4aFhIOCgYB/fn18e3p5eHd2dXRzcnFwb25tbGtqaWhnZmVkY2JhYF9eXVxbWllYV1ZVVFNSUVBPTk1MS0pJSEdGRURDQkFAPz49PDs6OTg3NjU0MzIxMC8uLSwrKikoJyYlJCMiISAfHh0cGxoZGBcWFRQTEhEQDw4NDAsKCQgHBgUEAwIBAA==";

/// A server with one app of sandbox test functions and a healthy echo next to them.
fn sandbox_app(
    s: &Server,
    app: &str,
    bomb: &str,
    memory: &str,
    timeout: &str,
    extra: &str,
) -> tempfile::TempDir {
    let mut m = format!("[app]\nname = \"{app}\"\n");
    let code = process_fn(&format!("shell/{bomb}"), "bootstrap");
    m += &function_with("bomb", &code, memory, timeout, extra);
    m += &function("echo", &process_fn("shell/echo", "bootstrap"), "");
    let dir = app_dir(&m);
    s.deploy(dir.path());
    dir
}

/// The server and other functions still answer.
fn assert_healthy(s: &Server, app: &str) {
    let r = invoke(s, app, "echo", br#"{"still":"here"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"still": "here"}));
    s.ok(&["ls"]);
}

#[test]
fn fork_bomb_is_contained() {
    let s = Server::start();
    let _dir = sandbox_app(&s, "forks", "forkbomb", "256MiB", "3s", "");
    let r = invoke(&s, "forks", "bomb", b"{}");
    r.assert_error(504, "function_timeout");
    // The bomb ran into the process cap (dash says so for each refused fork).
    let inv = record(&s, &r);
    assert!(
        inv["logs"].as_array().unwrap().iter().any(|l| l["line"]
            .as_str()
            .is_some_and(|l| l.contains("Cannot fork"))),
        "no fork was refused: {inv}"
    );
    assert_healthy(&s, "forks");
    // The timed-out worker is killed with everything it spawned.
    eventually(Duration::from_secs(10), || {
        pids_running("/var/task/forkbomb.sh")
            .is_empty()
            .then_some(())
    });
}

#[test]
fn memory_bomb_is_stopped_at_the_memory_cap() {
    let s = Server::start();
    let _dir = sandbox_app(&s, "mem", "membomb", "64MiB", "20s", "");
    let r = invoke(&s, "mem", "bomb", b"{}");
    r.assert_error(500, "memory_limit_exceeded");
    assert_healthy(&s, "mem");
}

#[test]
fn tmp_filler_gets_enospc() {
    let s = Server::start();
    let _dir = sandbox_app(&s, "fill", "tmpfill", "128MiB", "10s", "tmp = \"8MiB\"");
    let r = invoke(&s, "fill", "bomb", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left on device")),
        "{v}"
    );
    assert!(v["written_mib"].as_u64().is_some_and(|n| n < 8), "{v}");
    assert_healthy(&s, "fill");
}

#[test]
fn another_functions_code_is_not_readable() {
    let s = Server::start();
    // The victim: an app whose code holds a secret file.
    let victim = tempfile::tempdir().unwrap();
    let code = victim.path().join("code");
    std::fs::create_dir(&code).unwrap();
    let reader = process_fn("shell/reader", "bootstrap");
    std::fs::copy(reader.join("bootstrap"), code.join("bootstrap")).unwrap();
    std::fs::write(code.join("own.txt"), "victim's own file\n").unwrap();
    let token = format!("secret-{}", std::process::id());
    std::fs::write(code.join("secret-token.txt"), &token).unwrap();
    std::fs::write(
        victim.path().join("nubo.toml"),
        format!("[app]\nname = \"victim\"\n{}", function("f", &code, "")),
    )
    .unwrap();
    s.deploy(victim.path());
    // The victim runs once, so its code is unpacked on the host.
    let r = invoke(&s, "victim", "f", br#"{"paths":""}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["own"], "victim's own file");

    let mut m = String::from("[app]\nname = \"thief\"\n");
    m += &function("f", &reader, "");
    let thief = app_dir(&m);
    s.deploy(thief.path());

    let secret_on_host = find_file(&s.data_dir, "secret-token.txt", 8).unwrap_or_else(|| {
        panic!(
            "the victim's code is not unpacked under {}",
            s.data_dir.display()
        )
    });
    let paths = [
        secret_on_host.display().to_string(),
        format!("/proc/1/root{}", secret_on_host.display()),
        format!("/proc/{}/root{}", s.child.id(), secret_on_host.display()),
        s.data_dir.display().to_string(),
        code.join("secret-token.txt").display().to_string(),
        "/root".to_string(),
    ];
    let payload = json!({ "paths": paths.join(" ") }).to_string();
    let r = invoke(&s, "thief", "f", payload.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The reader can read its own code, so an empty result means the others were hidden.
    assert_eq!(v["own"], "reader's own file", "{v}");
    assert_eq!(v["readable"], "", "a worker could read host paths: {v}");
}

/// The first file called `name` under `dir`, at most `depth` levels down.
fn find_file(dir: &Path, name: &str, depth: u32) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        if depth > 0
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && let Some(found) = find_file(&path, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

/// An archive entry: name, unix mode, contents.
type Entry<'a> = (&'a str, u32, &'a [u8]);

/// Writes a zip holding `entries` to `path`.
fn write_zip(path: &Path, entries: &[Entry<'_>]) {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, mode, data) in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// Bad code archives and settings are refused at deploy with a message naming the problem,
/// and the revision already serving keeps serving.
#[test]
fn bad_process_code_is_refused_and_the_serving_revision_stays() {
    let echo = process_fn("shell/echo", "bootstrap");
    let s = Server::start();
    let good = app_dir(&format!(
        "[app]\nname = \"zips\"\n{}[[route]]\npath = \"/zips/...\"\nfunction = \"f\"\n",
        function("f", &echo, "")
    ));
    s.deploy(good.path());
    assert_eq!(http(s.addr, "GET", "/zips/x", &[], b"").status, 200);

    let boot: &[u8] = b"#!/bin/sh\nexit 0\n";
    // (what, archive entries, extra manifest keys, expected in the error)
    type Case<'a> = (&'a str, Vec<Entry<'a>>, &'a str, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            "zip-slip",
            vec![("bootstrap", 0o755, boot), ("../../escape.sh", 0o644, b"x")],
            "",
            "../../escape.sh",
        ),
        (
            "no bootstrap",
            vec![("app.py", 0o644, b"print(1)")],
            "",
            "executable `bootstrap`",
        ),
        (
            "bootstrap not executable",
            vec![("bootstrap", 0o644, boot)],
            "",
            "bootstrap",
        ),
        (
            "host network not allowed",
            vec![("bootstrap", 0o755, boot)],
            "network = \"host\"",
            "--allow-host-network",
        ),
    ];
    for (what, entries, extra, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("code.zip");
        write_zip(&zip_path, &entries);
        std::fs::write(
            dir.path().join("nubo.toml"),
            format!(
                "[app]\nname = \"zips\"\n{}[[route]]\npath = \"/zips/...\"\nfunction = \"f\"\n",
                function("f", &zip_path, extra)
            ),
        )
        .unwrap();
        let out = s.nubo(&["deploy", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the deploy was accepted");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        let r = http(s.addr, "GET", "/zips/x", &[], b"");
        assert_eq!(r.status, 200, "{what}: the serving revision stopped: {r:?}");
        assert_eq!(r.header("nubo-revision"), Some("1"), "{what}");
    }
}

/// The Python example deploys as its README says (its build installs awslambdaric) and
/// answers through its route and directly.
#[test]
fn the_python_lambda_example_deploys_and_answers() {
    let s = Server::start();
    let out = s.deploy(&root().join("examples/lambda-python"));
    assert!(out.contains("archive checked in"), "{out}");
    let r = http(s.addr, "GET", "/greet/Ada?x=1", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(
        body["greeting"], "Hello from a Lambda handler on Nubo, Ada!",
        "{body}"
    );
    assert_eq!(body["function"], "lambda-python-greet", "{body}");
    assert_eq!(body["query"]["x"], "1", "{body}");
    let out = s.ok(&["invoke", "lambda-python/greet", "-d", r#"{"name": "Bo"}"#]);
    assert!(
        out.contains("Hello from a Lambda handler on Nubo, Bo!"),
        "{out}"
    );
}
