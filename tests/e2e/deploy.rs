//! Deploying the examples and reaching them through routes and the CLI.

use crate::support::*;
use std::time::Duration;

#[test]
fn hello_example_deploys_and_answers() {
    let s = Server::start();
    let out = s.deploy(&root().join("examples/hello"));
    assert!(out.contains("deployed hello revision 1"), "{out}");
    assert!(
        out.contains(&format!("{}/hello", s.url())),
        "route URLs printed: {out}"
    );

    let r = http(s.addr, "GET", "/hello/world", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello from Nubo! You sent GET /hello/world\n");
    let id = r
        .header("nubo-invocation-id")
        .expect("invocation id header");
    assert_eq!(id.len(), 26, "a ULID: {id}");
    assert_eq!(r.header("nubo-revision"), Some("1"));

    let r = http(s.addr, "POST", "/hello", &[], b"ignored");
    assert_eq!(r.text(), "Hello from Nubo! You sent POST /hello\n");

    // The CLI reaches the same function directly.
    let out = s.ok(&["invoke", "hello/hello", "--path", "/hello/cli"]);
    assert_eq!(out, "Hello from Nubo! You sent GET /hello/cli\n");

    let ls = s.ok(&["ls"]);
    assert!(ls.contains("hello") && ls.contains("/hello/..."), "{ls}");

    // Records are written off the hot path: they show up shortly after.
    let recs = eventually(Duration::from_secs(10), || {
        let v = s.api("/_nubo/api/v1/apps/hello/invocations");
        (v.as_array().unwrap().len() >= 3).then_some(v)
    });
    let first = recs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .expect("record of the first request");
    assert_eq!(first["function"], "hello");
    assert_eq!(first["revision"], 1);
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["status"], 200);
    assert_eq!(first["trigger"], "http");
    assert_eq!(first["bytes_out"], 43);
    let cold: Vec<bool> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cold"].as_bool().unwrap())
        .collect();
    assert_eq!(
        cold.iter().filter(|c| **c).count(),
        1,
        "exactly one cold start: {recs}"
    );

    let table = s.ok(&["invocations", "hello"]);
    assert!(table.contains(id) && table.contains("ok"), "{table}");
}

#[test]
fn users_example_params_and_json() {
    let s = Server::start();
    s.deploy(&root().join("examples/users"));
    let r = http(s.addr, "GET", "/users/42", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["id"], "42");

    let r = http(
        s.addr,
        "POST",
        "/users",
        &[("content-type", "application/json")],
        br#"{"name":"Ada"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "Ada");

    let r = http(
        s.addr,
        "POST",
        "/users",
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // GET /users/:id only: DELETE matches the path but no method.
    http(s.addr, "DELETE", "/users/42", &[], b"").assert_error(405, "method_not_allowed");
}

#[test]
fn javascript_component_runs_unchanged() {
    let wasm = root().join("tests/js-guest/dist/hello-js.wasm");
    assert!(
        wasm.exists(),
        "build it with tests/js-guest/build.sh (the test command does)"
    );
    let s = Server::start();
    let app = guest_app("js-hello", "js", &wasm, "", &["/js/..."]);
    let out = s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert!(out.contains("revision 1"), "{out}");
    let r = http(s.addr, "GET", "/js/abc", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("hello from js GET /js/abc"),
        "{}",
        r.text()
    );
}

#[test]
fn streaming_both_ways() {
    let s = Server::start();
    let app = guest_app(
        "echo",
        "echo",
        &guest("echo"),
        "env = { NUBO_TEST_VAR = \"from-manifest\" }",
        &["/echo/..."],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = http(s.addr, "POST", "/echo/x", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body, "request body echoed intact");
    assert_eq!(r.header("x-echo-method"), Some("POST"));
    assert_eq!(
        r.header("x-env"),
        Some("from-manifest"),
        "manifest env reaches the guest"
    );

    let r = http(s.addr, "GET", "/echo/chunks?n=5", &[], b"");
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "streamed, not buffered"
    );
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
}

#[test]
fn route_parameters_reach_the_function() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/p/:id/x/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(
        s.addr,
        "GET",
        "/p/7/x/a/b",
        &[("nubo-param-id", "forged")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-param-id"),
        Some("7"),
        "router's value, not the client's"
    );
    assert_eq!(r.header("x-path-info"), Some("/a/b"));
}
