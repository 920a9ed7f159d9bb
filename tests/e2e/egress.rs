//! Outbound `wasi:http` from wasm guests under the egress policy: hosts named in
//! `allowed_hosts` are reached (through a pooled keep-alive client), others refused with a log
//! line naming the manifest fix, names resolving to private addresses refused as SSRF unless the
//! address is listed, cloud metadata refused, and every call counted in the invocation record.
//! The "remote" host is a loopback listener each test opens.

use crate::support::{Server, guest, guest_app, http};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most connections one upstream accepts; its accept loop ends there.
const MAX_CONNECTIONS: usize = 64;
/// Most requests one upstream connection serves.
const MAX_REQUESTS_PER_CONNECTION: usize = 1_000;

/// A tiny HTTP/1.1 server on loopback that answers every request with
/// `upstream saw METHOD PATH body=N` and keeps connections alive, counting both.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        std::thread::spawn(move || {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || serve(stream, &r));
            }
        });
        Upstream {
            addr,
            connections,
            requests,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve(stream: TcpStream, requests: &AtomicUsize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
        let body_len = if chunked {
            read_chunked(&mut reader)
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            length
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let text = format!("upstream saw {method} {path} body={body_len}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a chunked body, returning its length.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> usize {
    let mut total = 0;
    for _ in 0..10_000 {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
    panic!("chunked body with too many chunks");
}

/// Deploys the outbound guest as app `net`, function `out`, with `allowed_hosts`.
fn deploy(s: &Server, allowed_hosts: &str) {
    let extra = if allowed_hosts.is_empty() {
        String::new()
    } else {
        format!("allowed_hosts = {allowed_hosts}")
    };
    let dir = guest_app("net", "out", &guest("outbound"), &extra, &["/out"]);
    s.deploy(dir.path());
}

/// Calls the guest to fetch `url` (with `more` query parameters), returning its text and the
/// invocation record.
fn fetch(s: &Server, url: &str, more: &str) -> (String, serde_json::Value) {
    let r = http(s.addr, "GET", &format!("/out?url={url}{more}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    (r.text(), s.invocation(&id))
}

fn logs(inv: &serde_json::Value) -> Vec<String> {
    inv["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn allowed_address_is_reached_and_counted() {
    let up = Upstream::start();
    let s = Server::start();
    deploy(&s, &format!("[\"http://127.0.0.1:{}\"]", up.port()));
    let url = format!("http://127.0.0.1:{}/hello", up.port());

    let (text, inv) = fetch(&s, &url, "");
    assert_eq!(text, "outbound ok 200\nupstream saw GET /hello body=0");
    assert_eq!(inv["record"]["outbound_requests"], 1, "{inv}");
    assert_eq!(inv["record"]["outbound_bytes_out"], 0, "{inv}");
    assert_eq!(
        inv["record"]["outbound_bytes_in"],
        "upstream saw GET /hello body=0".len(),
        "{inv}"
    );

    let (text, inv) = fetch(&s, &url, "&body=hello-upstream&n=2");
    let answer = "upstream saw POST /hello body=14";
    assert_eq!(text, format!("outbound ok 200\n{answer}").repeat(2));
    assert_eq!(inv["record"]["outbound_requests"], 2, "{inv}");
    assert_eq!(
        inv["record"]["outbound_bytes_out"],
        2 * "hello-upstream".len(),
        "{inv}"
    );
    assert_eq!(
        inv["record"]["outbound_bytes_in"],
        2 * answer.len(),
        "{inv}"
    );
    assert_eq!(up.requests(), 3);
}

#[test]
fn hosts_not_listed_are_refused_with_the_manifest_fix() {
    let up = Upstream::start();
    let s = Server::start();
    deploy(&s, &format!("[\"http://127.0.0.1:{}\"]", up.port()));

    let (text, inv) = fetch(&s, "https://evil.example/steal", "");
    assert_eq!(text, "outbound failed: ErrorCode::HttpRequestDenied\n");
    assert!(
        logs(&inv).contains(
            &"[nubo] outbound request to https://evil.example:443 refused: not in allowed_hosts; \
              add allowed_hosts = [\"https://evil.example\"] to [function.out] to allow it"
                .to_string()
        ),
        "{:?}",
        logs(&inv)
    );
    assert_eq!(
        inv["record"]["outbound_requests"], 1,
        "refused calls are counted too"
    );

    // The listed address on another scheme or port is not listed.
    let (text, _) = fetch(&s, &format!("https://127.0.0.1:{}/", up.port()), "");
    assert_eq!(text, "outbound failed: ErrorCode::HttpRequestDenied\n");
    let (text, inv) = fetch(&s, &format!("http://127.0.0.1:{}/", up.port() ^ 1), "");
    assert_eq!(text, "outbound failed: ErrorCode::HttpRequestDenied\n");
    assert!(
        logs(&inv)
            .iter()
            .any(|l| l.contains("not in allowed_hosts")),
        "{:?}",
        logs(&inv)
    );
    assert_eq!(up.connections(), 0, "a refused request never connects");

    // Without allowed_hosts nothing is reachable.
    deploy(&s, "");
    let (text, _) = fetch(&s, &format!("http://127.0.0.1:{}/", up.port()), "");
    assert_eq!(text, "outbound failed: ErrorCode::HttpRequestDenied\n");
    assert_eq!(up.connections(), 0);
}

#[test]
fn a_name_resolving_to_loopback_is_refused_unless_the_address_is_listed() {
    let up = Upstream::start();
    let s = Server::start();
    let port = up.port();
    deploy(&s, &format!("[\"http://localhost:{port}\"]"));
    let url = format!("http://localhost:{port}/private");

    let (text, inv) = fetch(&s, &url, "");
    assert_eq!(text, "outbound failed: ErrorCode::HttpRequestDenied\n");
    let logs = logs(&inv);
    let line = logs
        .iter()
        .find(|l| l.contains("SSRF"))
        .unwrap_or_else(|| panic!("no SSRF line in {logs:?}"));
    assert!(
        line.starts_with(&format!(
            "[nubo] outbound request to http://localhost:{port} refused (SSRF protection): \
             localhost resolved only to addresses that are not public:"
        )),
        "{line}"
    );
    assert!(line.contains("127.0.0.1 (loopback address)"), "{line}");
    assert!(
        line.contains(&format!(
            "add allowed_hosts = [\"http://127.0.0.1:{port}\"] to [function.out]"
        )) || line.contains("allowed_hosts = [\"http://[::1]"),
        "{line}"
    );
    assert_eq!(
        up.connections(),
        0,
        "the refused address was never connected to"
    );

    deploy(
        &s,
        &format!("[\"http://localhost:{port}\", \"http://127.0.0.1:{port}\"]"),
    );
    let (text, _) = fetch(&s, &url, "");
    assert_eq!(text, "outbound ok 200\nupstream saw GET /private body=0");
}

#[test]
fn metadata_and_private_addresses_are_refused_even_with_a_wildcard() {
    let s = Server::start();
    deploy(&s, "[\"*:*\"]");
    for (url, why) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 (cloud metadata address)",
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            "(cloud metadata address)",
        ),
        ("http://10.0.0.1/", "10.0.0.1 (private address)"),
        ("http://127.0.0.1:9/", "127.0.0.1 (loopback address)"),
        ("http://[::1]:9/", "::1 (loopback address)"),
    ] {
        let (text, inv) = fetch(&s, url, "");
        assert_eq!(
            text, "outbound failed: ErrorCode::HttpRequestDenied\n",
            "{url}"
        );
        let logs = logs(&inv);
        assert!(
            logs.iter()
                .any(|l| l.contains("refused (SSRF protection)") && l.contains(why)),
            "{url}: {logs:?}"
        );
    }
}

#[test]
fn connections_are_kept_alive_across_invocations() {
    let up = Upstream::start();
    let s = Server::start();
    deploy(&s, &format!("[\"http://127.0.0.1:{}\"]", up.port()));
    let url = format!("http://127.0.0.1:{}/again", up.port());
    for _ in 0..3 {
        let (text, _) = fetch(&s, &url, "");
        assert_eq!(text, "outbound ok 200\nupstream saw GET /again body=0");
    }
    let (text, _) = fetch(&s, &url, "&n=3");
    assert_eq!(text.matches("outbound ok 200").count(), 3, "{text}");
    assert_eq!(up.requests(), 6);
    assert_eq!(
        up.connections(),
        1,
        "six sequential requests from four invocations share one pooled connection"
    );
}

#[test]
fn an_invocation_makes_at_most_the_limit_of_requests() {
    let up = Upstream::start();
    let s = Server::start();
    deploy(&s, &format!("[\"http://127.0.0.1:{}\"]", up.port()));
    let url = format!("http://127.0.0.1:{}/many", up.port());
    let (text, inv) = fetch(&s, &url, "&n=102");
    assert_eq!(text.matches("outbound ok 200").count(), 100, "{text}");
    assert_eq!(
        text.matches("outbound failed: ErrorCode::HttpRequestDenied")
            .count(),
        2
    );
    assert_eq!(inv["record"]["outbound_requests"], 102, "{inv}");
    assert!(
        logs(&inv)
            .iter()
            .any(|l| l.contains("an invocation may make at most 100 outbound requests")),
        "{:?}",
        logs(&inv)
    );
    assert_eq!(up.requests(), 100);
}
