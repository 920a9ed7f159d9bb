//! Each error class answers with its stable code, a JSON body and the invocation id.

use crate::support::*;
use std::time::{Duration, Instant};

fn assert_has_invocation(r: &Resp, v: &serde_json::Value) {
    let id = v["error"]["invocation_id"]
        .as_str()
        .expect("invocation id in the body");
    assert_eq!(r.header("nubo-invocation-id"), Some(id));
}

#[test]
fn runaway_function_times_out() {
    let s = Server::start();
    let app = guest_app(
        "spin",
        "spin",
        &guest("loop"),
        "timeout = \"500ms\"",
        &["/spin"],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let t = Instant::now();
    let r = http(s.addr, "GET", "/spin", &[], b"");
    let v = r.assert_error(504, "function_timeout");
    assert_has_invocation(&r, &v);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the loop was stopped"
    );
    // The server is still healthy and the next request is handled the same way.
    http(s.addr, "GET", "/spin", &[], b"").assert_error(504, "function_timeout");
    let recs = eventually(Duration::from_secs(10), || {
        let v = s.api("/_nubo/api/v1/apps/spin/invocations");
        (v.as_array().unwrap().len() >= 2).then_some(v)
    });
    assert_eq!(recs[0]["outcome"], "timeout");
}

#[test]
fn memory_bomb_hits_the_limit() {
    let s = Server::start();
    let app = guest_app(
        "bomb",
        "bomb",
        &guest("membomb"),
        "memory = \"32MiB\"",
        &["/bomb"],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/bomb?mb=4", &[], b"");
    assert_eq!(r.status, 200, "a small allocation fits: {}", r.text());
    let r = http(s.addr, "GET", "/bomb", &[], b"");
    let v = r.assert_error(500, "memory_limit_exceeded");
    assert_has_invocation(&r, &v);
    let r = http(s.addr, "GET", "/bomb?mb=4", &[], b"");
    assert_eq!(
        r.status, 200,
        "a fresh instance per request: no state leaks"
    );
}

#[test]
fn trap_is_reported() {
    let s = Server::start();
    let app = guest_app("boom", "boom", &guest("trap"), "", &["/boom"]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    for q in ["/boom", "/boom?mode=unreachable"] {
        let r = http(s.addr, "GET", q, &[], b"");
        let v = r.assert_error(500, "function_trap");
        assert_has_invocation(&r, &v);
    }
}

#[test]
fn unknown_route_and_oversized_body() {
    let s = Server::start();
    let app = guest_app(
        "echo",
        "echo",
        &guest("echo"),
        "max_request_body = \"1KiB\"",
        &["/echo/..."],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let v = http(s.addr, "GET", "/nowhere", &[], b"").assert_error(404, "route_not_found");
    assert!(v["error"]["invocation_id"].is_null());
    http(s.addr, "POST", "/echo/x", &[], &[b'a'; 2048]).assert_error(413, "payload_too_large");
    let r = http(s.addr, "POST", "/echo/x", &[], &[b'a'; 1000]);
    assert_eq!(r.status, 200);
}

#[test]
fn outbound_requests_are_denied() {
    let s = Server::start();
    let app = guest_app("out", "out", &guest("outbound"), "", &["/out"]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/out", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("HttpRequestDenied"),
        "guest saw a denial: {}",
        r.text()
    );
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    let inv = s.invocation(&id);
    let logs = inv["logs"].to_string();
    assert!(
        logs.contains(
            r#"outbound request to http://example.com:80 refused: not in allowed_hosts; add allowed_hosts = [\"http://example.com\"] to [function.out] to allow it"#
        ),
        "{logs}"
    );
}
