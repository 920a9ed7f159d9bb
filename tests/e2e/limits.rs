//! Concurrency limits seen from outside: a burst against a function with a small limit and
//! queue gets only the function's answers and 429 `throttled` with Retry-After (never a 5xx or
//! a dropped connection), the admin metrics count it, and reservations past the server cap
//! fail the deploy.

use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The burst: clients sending back to back on keep-alive connections, each for at most
/// `BURST_FOR` and `BURST_REQUESTS_PER_CLIENT` requests (bounded in time and count).
const BURST_CLIENTS: usize = 32;
const BURST_FOR: Duration = Duration::from_secs(3);
const BURST_REQUESTS_PER_CLIENT: usize = 150;
/// The trickle before it: one client, a request every ~60 ms (the function sleeps 50 ms), so
/// the burst is about 100× its rate.
const TRICKLE_REQUESTS: usize = 20;

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    throttled: usize,
    throttled_ids: Vec<String>,
    other: Vec<String>,
    connection_errors: Vec<String>,
}

fn check(r: std::io::Result<Resp>, tally: &mut Tally) {
    let r = match r {
        Ok(r) => r,
        Err(e) => return tally.connection_errors.push(e.to_string()),
    };
    match r.status {
        200 if r.text() == "slept 50 ms" => tally.ok += 1,
        429 => {
            let v = r.json();
            let retry = r.header("retry-after").and_then(|v| v.parse::<u32>().ok());
            if v["error"]["code"] == "throttled" && retry.is_some_and(|s| s >= 1) {
                tally.throttled += 1;
                if let Some(id) = v["error"]["invocation_id"].as_str() {
                    tally.throttled_ids.push(id.to_string());
                }
            } else {
                tally
                    .other
                    .push(format!("429 without code or Retry-After: {}", r.text()));
            }
        }
        status => tally.other.push(format!("{status}: {}", r.text())),
    }
}

fn slow_fn(s: &Server) -> serde_json::Value {
    let m = s.api("/_nubo/api/v1/metrics");
    m["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .find(|f| f["app"] == "burst" && f["function"] == "slow")
        .cloned()
        .unwrap_or_else(|| panic!("no figures for burst/slow in {m}"))
}

#[test]
fn a_burst_gets_answers_or_429_with_retry_after_and_never_a_5xx() {
    let s = Server::start();
    let app = guest_app(
        "burst",
        "slow",
        &guest("echo"),
        "max_concurrency = 2\nqueue_depth = 4\nqueue_timeout = \"100ms\"",
        &["/slow/..."],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let path = "/slow/sleep?ms=50";

    // A steady trickle fits the limit: every request is answered by the function.
    let mut trickle = Tally::default();
    let mut conn = Conn::new(s.addr);
    for _ in 0..TRICKLE_REQUESTS {
        check(conn.request("GET", path, &[], b""), &mut trickle);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(trickle.ok, TRICKLE_REQUESTS, "{trickle:?}");

    // Then ~100× the rate for a few seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..BURST_CLIENTS)
        .map(|_| {
            let (addr, stop) = (s.addr, stop.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let mut conn = Conn::new(addr);
                for _ in 0..BURST_REQUESTS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > BURST_FOR {
                        break;
                    }
                    check(conn.request("GET", path, &[], b""), &mut tally);
                }
                tally
            })
        })
        .collect();
    let mut burst = Tally::default();
    for c in clients {
        let t = c.join().expect("client thread");
        burst.ok += t.ok;
        burst.throttled += t.throttled;
        burst.throttled_ids.extend(t.throttled_ids);
        burst.other.extend(t.other);
        burst.connection_errors.extend(t.connection_errors);
    }
    stop.store(true, Ordering::Relaxed);

    assert!(
        burst.other.is_empty(),
        "unexpected answers: {:?}",
        &burst.other[..burst.other.len().min(5)]
    );
    assert!(
        burst.connection_errors.is_empty(),
        "connection errors: {:?}",
        &burst.connection_errors[..burst.connection_errors.len().min(5)]
    );
    assert!(burst.ok > 0, "the function kept answering during the burst");
    assert!(
        burst.throttled > 0,
        "a burst of {BURST_CLIENTS} clients against max_concurrency = 2 and queue_depth = 4 was never throttled"
    );

    // The figures saw it, and every slot came back.
    let f = eventually(Duration::from_secs(10), || {
        let f = slow_fn(&s);
        (f["in_flight"] == 0 && f["instances"] == 0).then_some(f)
    });
    assert_eq!(f["throttled"], burst.throttled as u64, "{f}");
    assert_eq!(f["queued"], 0);
    assert_eq!(f["max_concurrency"], 2);
    assert_eq!(f["queue_depth"], 4);
    assert_eq!(f["queue_timeout_ms"], 100);
    let server = &s.api("/_nubo/api/v1/metrics")["server"];
    assert_eq!(server["in_use"], 0);
    assert_eq!(server["throttled"], burst.throttled as u64);

    // A throttled request is recorded as such.
    let id = &burst.throttled_ids[0];
    let rec = s.invocation(id);
    assert_eq!(rec["record"]["outcome"], "throttled", "{rec}");
    assert_eq!(rec["record"]["status"], 429, "{rec}");

    // After the burst the function answers again.
    let r = http(s.addr, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    println!(
        "burst: {} answered, {} throttled in {:?}",
        burst.ok,
        burst.throttled,
        started.elapsed()
    );
}

#[test]
fn reservations_past_the_server_cap_fail_the_deploy() {
    let s = Server::start();
    let app = guest_app(
        "greedy",
        "big",
        &guest("echo"),
        "max_concurrency = 1001\nreserve = true",
        &["/greedy"],
    );
    let out = s.nubo(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a reservation of 1001 of 1000 deployed"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would reserve 1001"), "{err}");
    assert!(err.contains("NUBO_MAX_CONCURRENCY"), "{err}");
    // Nothing changed: no app, no reservation.
    let r = http(s.addr, "GET", "/_nubo/api/v1/apps/greedy", &[], b"");
    r.assert_error(404, "app_not_found");
    let m = s.api("/_nubo/api/v1/metrics");
    assert_eq!(m["server"]["reserved"], 0, "{m}");
    assert_eq!(m["server"]["cap"], 1000, "{m}");

    // A reservation that fits is taken out of the shared capacity.
    let app = guest_app(
        "greedy",
        "big",
        &guest("echo"),
        "max_concurrency = 600\nreserve = true",
        &["/greedy"],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let m = s.api("/_nubo/api/v1/metrics");
    assert_eq!(m["server"]["reserved"], 600, "{m}");
    assert_eq!(m["server"]["shared_cap"], 400, "{m}");
}

#[test]
fn the_server_cap_comes_from_nubo_max_concurrency() {
    let s = Server::start_env(&[("NUBO_MAX_CONCURRENCY", "3")]);
    let m = s.api("/_nubo/api/v1/metrics");
    assert_eq!(m["server"]["cap"], 3, "{m}");
    assert_eq!(m["server"]["shared_cap"], 3, "{m}");
    let app = guest_app(
        "small",
        "f",
        &guest("echo"),
        "max_concurrency = 4\nreserve = true",
        &["/small"],
    );
    let out = s.nubo(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert!(!out.status.success(), "4 reserved of 3 deployed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would reserve 4 of the server's 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A value that is not a cap stops the server before it listens, saying why.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(nubo_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("NUBO_MAX_CONCURRENCY", "0")
        .output()
        .expect("running nubo server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-concurrency") && err.contains("at least 1"),
        "{err}"
    );
}
