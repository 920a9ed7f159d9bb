//! Process functions reach the network only through their worker's egress proxy, which
//! enforces the function's `allowed_hosts`: a curl bootstrap and a Python (stdlib urllib)
//! bootstrap, both finding the proxy in `HTTP_PROXY`, reach a loopback test listener the
//! allowlist names by IP and port (plain HTTP and a CONNECT tunnel); an unlisted host gets 403
//! with the manifest fix; `localhost` (resolving to 127.0.0.1) is refused unless the address
//! is listed; a direct connection, bypassing the proxy, finds no route out of the sandbox; the
//! invocation record counts the outbound calls. Sandbox on, real binary.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What the test listener answers every request with.
const UPSTREAM_BODY: &str = "hello from upstream";

/// Connections the test listener serves before its thread ends (bounds the thread).
const UPSTREAM_CONNECTIONS: usize = 32;

/// A loopback HTTP listener on the host, standing in for an external service; its port.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(UPSTREAM_CONNECTIONS) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            // Reads the request head (these requests carry no body), then answers and closes.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{UPSTREAM_BODY}",
                UPSTREAM_BODY.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

/// A loopback listener that answers every request with a redirect to `location`; its port.
fn redirecting_upstream(location: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(UPSTREAM_CONNECTIONS) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

/// A curl bootstrap: for an event `{"url": …, "mode": …}` it fetches the URL and answers
/// `{"code": "<http status>", "exit": <curl's exit code>, "body": "<hex>"}`. Modes: `env` (the
/// proxy variables as set, so loopback bypasses the proxy), `proxy` (through the proxy even
/// for loopback), `tunnel` (through the proxy with CONNECT), `follow` (through the proxy,
/// following redirects), `direct` (no proxy at all).
const CURL_BOOTSTRAP: &str = r#"#!/bin/sh
set -u
api="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
headers="$(mktemp)"
event="$(mktemp)"
body="$(mktemp)"
while true; do
  curl -sS -D "$headers" -o "$event" "$api/invocation/next" || exit 1
  request_id="$(tr -d '\r' < "$headers" | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: *//p')"
  url="$(sed -n 's/.*"url" *: *"\([^"]*\)".*/\1/p' "$event")"
  mode="$(sed -n 's/.*"mode" *: *"\([^"]*\)".*/\1/p' "$event")"
  : > "$body"
  case "$mode" in
    proxy) set -- --noproxy '' ;;
    tunnel) set -- --noproxy '' --proxytunnel ;;
    follow) set -- --noproxy '' --location ;;
    direct) set -- --noproxy '*' ;;
    *) set -- ;;
  esac
  code="$(curl -s --max-time 5 "$@" -o "$body" -w '%{http_code}' "$url")"
  exit_code=$?
  hex="$(od -An -v -tx1 "$body" | tr -d ' \n')"
  printf '{"code":"%s","exit":%d,"body":"%s"}' "$code" "$exit_code" "$hex" > "$event"
  curl -sS -o /dev/null -X POST "$api/invocation/$request_id/response" --data-binary "@$event"
done
"#;

/// A Python bootstrap (standard library only): for an event `{"url": …}` it fetches the URL
/// with `urllib.request.urlopen`, which takes its proxy from `http_proxy`, and answers
/// `{"status": …, "body": …}`. It reaches the Runtime API without a proxy, then drops
/// `NO_PROXY` so its own calls to loopback go through the proxy too.
const PYTHON_BOOTSTRAP: &str = r#"#!/usr/bin/python3
import json, os, urllib.error, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
runtime = urllib.request.build_opener(urllib.request.ProxyHandler({}))
assert os.environ["NO_PROXY"] == "127.0.0.1,localhost", os.environ.get("NO_PROXY")
os.environ.pop("NO_PROXY")
os.environ.pop("no_proxy")
while True:
    with runtime.open(api + "next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    try:
        with urllib.request.urlopen(event["url"], timeout=5) as r:
            out = {"status": r.status, "body": r.read().decode()}
    except urllib.error.HTTPError as e:
        out = {"status": e.code, "body": e.read().decode()}
    except Exception as e:
        out = {"status": 0, "body": repr(e)}
    answer = urllib.request.Request(api + request_id + "/response",
                                    data=json.dumps(out).encode(), method="POST")
    runtime.open(answer).read()
"#;

/// A function folder holding `script` as its executable `bootstrap`.
fn bootstrap_dir(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A `[function.NAME]` table of a process function from `source` with `allowed_hosts`.
fn function(name: &str, source: &Path, allowed: &[String]) -> String {
    format!(
        "\n[function.{name}]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"128MiB\"\n\
         timeout = \"20s\"\nallowed_hosts = {}\n",
        source.display(),
        serde_json::to_string(allowed).unwrap()
    )
}

fn unhex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// What curl saw: (HTTP status, curl's exit code, body), and the invocation's id.
fn fetch(s: &Server, function: &str, url: &str, mode: &str) -> ((String, i64, String), String) {
    let event = json!({"url": url, "mode": mode});
    let r = invoke(s, "egress", function, event.to_string().as_bytes());
    assert_eq!(r.status, 200, "{function} {url} {mode}: {}", r.text());
    let id = r.header("nubo-invocation-id").unwrap().to_owned();
    let v = r.json();
    let seen = (
        v["code"].as_str().unwrap().to_owned(),
        v["exit"].as_i64().unwrap(),
        unhex(v["body"].as_str().unwrap()),
    );
    (seen, id)
}

#[test]
fn a_curl_function_reaches_only_allowed_hosts_through_the_proxy() {
    let s = Server::start();
    let port = upstream();
    let code = bootstrap_dir(CURL_BOOTSTRAP);
    let mut m = String::from("[app]\nname = \"egress\"\n");
    m += &function("open", code.path(), &[format!("127.0.0.1:{port}")]);
    m += &function("byname", code.path(), &[format!("http://localhost:{port}")]);
    m += &function(
        "both",
        code.path(),
        &[
            format!("http://localhost:{port}"),
            format!("127.0.0.1:{port}"),
        ],
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());
    let allowed = format!("http://127.0.0.1:{port}/x");

    // Allowed by IP and port: plain HTTP through the proxy, and a CONNECT tunnel.
    let ((status, exit, body), id) = fetch(&s, "open", &allowed, "proxy");
    assert_eq!(
        (status.as_str(), exit, body.as_str()),
        ("200", 0, UPSTREAM_BODY)
    );
    let rec = s.invocation(&id);
    assert_eq!(rec["record"]["outbound_requests"], 1, "{rec}");
    assert_eq!(rec["record"]["outbound_bytes_out"], 0, "{rec}");
    assert_eq!(
        rec["record"]["outbound_bytes_in"],
        UPSTREAM_BODY.len(),
        "{rec}"
    );
    let ((status, exit, body), id) = fetch(&s, "open", &allowed, "tunnel");
    assert_eq!(
        (status.as_str(), exit, body.as_str()),
        ("200", 0, UPSTREAM_BODY)
    );
    let rec = s.invocation(&id);
    assert_eq!(rec["record"]["outbound_requests"], 1, "{rec}");
    // Tunnelled bytes are counted raw: the request and response heads travel inside too.
    assert!(
        rec["record"]["outbound_bytes_in"].as_u64().unwrap() > UPSTREAM_BODY.len() as u64,
        "{rec}"
    );
    assert!(
        rec["record"]["outbound_bytes_out"].as_u64().unwrap() > 0,
        "{rec}"
    );

    // The worker's own network has no route to the host's listener: only the proxy gets out.
    let ((status, exit, _), _) = fetch(&s, "open", &allowed, "direct");
    assert_eq!(status, "000", "a direct connection must fail");
    assert_ne!(exit, 0);

    // A host the allowlist does not name: 403 from the proxy with the manifest fix. The
    // proxy variables are honoured as set (this name is not in NO_PROXY).
    let ((status, _, body), id) = fetch(&s, "open", "http://unlisted.invalid:8080/", "env");
    assert_eq!(status, "403", "{body}");
    assert!(
        body.contains(
            "function \"open\" may not connect to http://unlisted.invalid:8080; to allow it, \
             add the host to the function's table in nubo.toml: \
             allowed_hosts = [\"http://unlisted.invalid:8080\"]"
        ),
        "{body}"
    );
    let rec = s.invocation(&id);
    assert_eq!(rec["record"]["outbound_requests"], 1, "{rec}");
    // The refusal is in the invocation's log too, as a wasm guest's would be.
    assert!(
        rec["logs"]
            .to_string()
            .contains("[nubo] egress proxy: function \\\"open\\\" may not connect"),
        "{rec}"
    );
    let other = format!("http://127.0.0.1:{}/", port.wrapping_add(1).max(1));
    let ((status, _, body), _) = fetch(&s, "open", &other, "proxy");
    assert_eq!(status, "403", "{body}");

    // `localhost` resolves to 127.0.0.1: refused unless the address itself is listed.
    let by_name = format!("http://localhost:{port}/x");
    let ((status, _, body), _) = fetch(&s, "byname", &by_name, "proxy");
    assert_eq!(status, "403", "{body}");
    assert!(
        body.contains("localhost resolves to") && body.contains("a loopback address"),
        "{body}"
    );
    let ((status, exit, body), _) = fetch(&s, "both", &by_name, "proxy");
    assert_eq!(
        (status.as_str(), exit, body.as_str()),
        ("200", 0, UPSTREAM_BODY)
    );
}

#[test]
fn a_python_function_finds_the_proxy_in_its_environment() {
    let s = Server::start();
    let port = upstream();
    let code = bootstrap_dir(PYTHON_BOOTSTRAP);
    let mut m = String::from("[app]\nname = \"egress\"\n");
    m += &function("py", code.path(), &[format!("127.0.0.1:{port}")]);
    let dir = app_dir(&m);
    s.deploy(dir.path());
    let call = |url: &str| -> Value {
        let r = invoke(
            &s,
            "egress",
            "py",
            json!({ "url": url }).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        r.json()
    };
    let allowed = call(&format!("http://127.0.0.1:{port}/y"));
    assert_eq!(allowed, json!({"status": 200, "body": UPSTREAM_BODY}));
    let refused = call("http://unlisted.invalid/");
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(
        refused["body"]
            .as_str()
            .unwrap()
            .contains("allowed_hosts = [\"http://unlisted.invalid\"]"),
        "{refused}"
    );
}

#[test]
fn a_function_without_allowed_hosts_gets_no_proxy() {
    let s = Server::start();
    let port = upstream();
    let code = bootstrap_dir(CURL_BOOTSTRAP);
    let mut m = String::from("[app]\nname = \"egress\"\n");
    m += &format!(
        "\n[function.closed]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"128MiB\"\n\
         timeout = \"20s\"\n",
        code.path().display()
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());
    // No proxy variables: curl connects directly, and the sandbox has no route out.
    let ((status, exit, _), _) = fetch(&s, "closed", &format!("http://127.0.0.1:{port}/"), "env");
    assert_eq!(status, "000");
    assert_ne!(exit, 0);
    // Nothing listens on the proxy's address inside the sandbox either.
    let ((status, exit, _), _) = fetch(&s, "closed", "http://127.0.0.1:9002/", "direct");
    assert_eq!(status, "000");
    assert_ne!(exit, 0);
}

#[test]
fn with_the_host_network_or_no_sandbox_the_proxy_is_on_a_host_port() {
    let port = upstream();
    let code = bootstrap_dir(CURL_BOOTSTRAP);
    let allowed = format!("http://127.0.0.1:{port}/z");
    // `--sandbox off` as a flag does not parse yet (clap reads a bare bool); the variable does.
    for (flags, env, network) in [
        (
            &["--allow-host-network"][..],
            &[][..],
            "network = \"host\"\n",
        ),
        (&[][..], &[("NUBO_SANDBOX", "off")][..], ""),
    ] {
        let data = tempfile::tempdir().unwrap();
        let s = Server::start_in_env(&data.path().join("data"), flags, env);
        let mut m = String::from("[app]\nname = \"egress\"\n");
        m += &function("open", code.path(), &[format!("127.0.0.1:{port}")]);
        m += network;
        let dir = app_dir(&m);
        s.deploy(dir.path());
        let ((status, exit, body), id) = fetch(&s, "open", &allowed, "proxy");
        assert_eq!(
            (status.as_str(), exit, body.as_str()),
            ("200", 0, UPSTREAM_BODY),
            "{flags:?}"
        );
        assert_eq!(s.invocation(&id)["record"]["outbound_requests"], 1);
        let ((status, _, body), _) = fetch(&s, "open", "http://unlisted.invalid/", "env");
        assert_eq!(status, "403", "{flags:?}: {body}");
        assert!(
            body.contains("allowed_hosts = [\"http://unlisted.invalid\"]"),
            "{flags:?}: {body}"
        );
    }
}

/// A redirect from an allowed host to the cloud metadata address is a new request, checked
/// again at the proxy: it is refused, and the allowed host's answer does not open a way in.
#[test]
fn a_redirect_to_a_private_address_is_checked_again() {
    let s = Server::start();
    let port = redirecting_upstream("http://169.254.169.254/latest/meta-data/");
    let code = bootstrap_dir(CURL_BOOTSTRAP);
    let mut m = String::from("[app]\nname = \"egress\"\n");
    m += &function(
        "open",
        code.path(),
        &[format!("127.0.0.1:{port}"), "*:*".to_string()],
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());

    let ((status, _, body), id) = fetch(&s, "open", &format!("http://127.0.0.1:{port}/"), "follow");
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("169.254.169.254"), "{body}");
    let rec = s.invocation(&id);
    assert_eq!(rec["record"]["outbound_requests"], 2, "{rec}");
}
