//! Async invocations seen from outside: a 202 with an id once stored, delivery with retries and
//! backoff, the dead-letter queue (list, redrive after a fix, purge), idempotency keys,
//! cancelling a queued invocation, the bound on waiting invocations, and no accepted invocation
//! lost across `kill -9` restarts.

use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for an async invocation to reach a state.
const SETTLE: Duration = Duration::from_secs(60);

const ASYNC: (&str, &str) = ("nubo-invocation-type", "event");

/// Submits an async request through a route, asserting 202; returns the invocation id.
fn submit(s: &Server, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> String {
    let mut headers = vec![ASYNC];
    headers.extend_from_slice(extra);
    let r = http(s.addr, method, path, &headers, body);
    assert_eq!(r.status, 202, "{method} {path}: {}", r.text());
    let v = r.json();
    let id = v["invocation_id"]
        .as_str()
        .expect("an invocation id")
        .to_string();
    assert_eq!(r.header("nubo-invocation-id"), Some(id.as_str()));
    id
}

/// The async invocation `id` (with attempts and payload).
fn detail(s: &Server, id: &str) -> serde_json::Value {
    let v = s.api(&format!("/_nubo/api/v1/invocations/{id}"));
    assert!(v["async"].is_object(), "{id} is not async: {v}");
    v["async"].clone()
}

/// Waits (bounded) until invocation `id` is in `state`; returns it.
fn wait_state(s: &Server, id: &str, state: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let a = detail(s, id);
        if a["state"] == state {
            return a;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{id} not {state} within {SETTLE:?}: {a:#}\nserver: {}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attempts(a: &serde_json::Value) -> Vec<serde_json::Value> {
    a["attempt_list"].as_array().cloned().unwrap_or_default()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids `nubo dlq APP --json` lists.
fn dlq_ids(s: &Server, app: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["dlq", app, "--json"])).unwrap();
    v["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn async_invocation_is_accepted_then_delivered_with_its_logs() {
    let s = Server::start();
    let dir = guest_app("bg", "echo", &guest("echo"), "", &["/bg/..."]);
    s.deploy(dir.path());

    // Through the CLI: the id on stdout, delivered later with its log lines.
    let out = s.nubo(&["invoke", "bg/echo", "--async", "--path", "/bg/logs?n=2"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let id = stdout.trim().to_string();
    assert_eq!(id.len(), 26, "{stdout}");
    assert!(
        stderr.contains(&format!("nubo invocation {id}")),
        "{stderr}"
    );

    let a = wait_state(&s, &id, "succeeded");
    assert_eq!(a["app"], "bg");
    assert_eq!(a["function"], "echo");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/bg/logs?n=2");
    let list = attempts(&a);
    assert_eq!(list.len(), 1, "{a:#}");
    assert_eq!(list[0]["outcome"], "ok");
    assert_eq!(list[0]["status"], 200);
    // The attempt is an invocation record of its own, triggered by `async`.
    let attempt_id = list[0]["invocation_id"].as_str().unwrap();
    let rec = s.invocation(attempt_id);
    assert_eq!(rec["record"]["trigger"], "async", "{rec:#}");

    // Its logs may land a moment after the state changes (batched writer).
    let shown = eventually(Duration::from_secs(10), || {
        let shown = s.ok(&["invocation", &id]);
        shown.contains("line 1").then_some(shown)
    });
    assert!(
        shown.contains(&format!("async invocation {id} of bg/echo: succeeded")),
        "{shown}"
    );
    assert!(shown.contains("attempt 1"), "{shown}");
    assert!(shown.contains("[stdout] line 0"), "{shown}");
    assert!(shown.contains("[stderr] stderr line"), "{shown}");

    // Through a route, with a payload, in Lambda's spelling; the payload is stored and shown.
    let r = http(
        s.addr,
        "POST",
        "/bg/hello",
        &[("x-amz-invocation-type", "Event")],
        b"payload one",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["state"], "queued");
    assert_eq!(r.json()["replay"], false);
    let id2 = r.json()["invocation_id"].as_str().unwrap().to_string();
    let a = wait_state(&s, &id2, "succeeded");
    assert_eq!(a["body"], "payload one");
    assert_eq!(a["method"], "POST");
    let shown = s.ok(&["invocation", &id2]);
    assert!(shown.contains("payload:\npayload one"), "{shown}");

    // Listed by state; the plain listing still shows invocation records.
    let listed = s.ok(&["invocations", "bg", "--status", "succeeded"]);
    assert!(listed.contains(&id) && listed.contains(&id2), "{listed}");
    assert!(listed.contains("ATTEMPTS"), "{listed}");
    let none = s.ok(&["invocations", "bg", "--status", "failed"]);
    assert!(
        none.contains("bg has no failed async invocations"),
        "{none}"
    );
    let records = s.ok(&["invocations", "bg"]);
    assert!(records.contains(attempt_id), "{records}");

    // A synchronous record shows through `nubo invocation` too.
    let r = http(s.addr, "GET", "/bg/logs?n=1", &[], b"");
    assert_eq!(r.status, 200);
    let sync_id = r.header("nubo-invocation-id").unwrap().to_string();
    s.invocation(&sync_id);
    let shown = s.ok(&["invocation", &sync_id]);
    assert!(shown.contains("trigger http"), "{shown}");
    // Its usage: billed time, the memory given, the measured peak and CPU time.
    let billed = shown
        .lines()
        .find(|l| l.trim_start().starts_with("billed:"))
        .unwrap_or_else(|| panic!("no billed line: {shown}"));
    for part in [" ms, ", " MiB given, ", " MiB peak, ", " GB-s, ", "cpu "] {
        assert!(billed.contains(part), "{billed}");
    }

    // An unknown id names the problem.
    let out = s.nubo(&["invocation", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("invocation_not_found"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn failed_attempts_are_retried_and_exhausted_ones_go_to_the_dlq() {
    let s = Server::start();
    let retry = "retry = { max_attempts = 3, backoff = \"50ms\" }";
    let dir = guest_app("flaky", "f", &guest("echo"), retry, &["/flaky/..."]);
    s.deploy(dir.path());

    // Fails twice, succeeds on the third attempt.
    let id = submit(&s, "POST", "/flaky/x/flaky?fail=2", &[], b"data");
    let a = wait_state(&s, &id, "succeeded");
    let list = attempts(&a);
    assert_eq!(list.len(), 3, "{a:#}");
    for (i, t) in list.iter().enumerate() {
        assert_eq!(t["attempt"], i as u64 + 1);
    }
    assert_ne!(list[0]["outcome"], "ok");
    assert_eq!(list[0]["status"], 500);
    assert_ne!(list[1]["outcome"], "ok");
    assert_eq!(list[1]["status"], 500);
    assert_eq!(list[2]["outcome"], "ok");
    assert_eq!(list[2]["status"], 200);
    let shown = eventually(Duration::from_secs(10), || {
        let shown = s.ok(&["invocation", &id]);
        shown.contains("flaky attempt 3").then_some(shown)
    });
    assert!(shown.contains("flaky attempt 1"), "{shown}");
    assert!(shown.contains("attempt 3"), "{shown}");

    // An always-failing function ends in the dead-letter queue with every attempt recorded.
    let dir = guest_app("dead", "f", &guest("trap"), retry, &["/dead/..."]);
    s.deploy(dir.path());
    let id = submit(&s, "POST", "/dead/job", &[], b"work");
    let a = wait_state(&s, &id, "failed");
    let list = attempts(&a);
    assert_eq!(list.len(), 3, "{a:#}");
    assert!(list.iter().all(|t| t["outcome"] != "ok"), "{a:#}");
    assert!(a["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(dlq_ids(&s, "dead"), vec![id.clone()]);
    let table = s.ok(&["dlq", "dead"]);
    assert!(table.contains(&id) && table.contains("3/3"), "{table}");
    let failed = s.ok(&["invocations", "dead", "--status", "failed"]);
    assert!(failed.contains(&id), "{failed}");

    // Redriving an id not in the queue changes nothing and names it.
    let out = s.nubo(&["dlq", "dead", "--redrive", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        "{:?}",
        text(&out)
    );
    assert_eq!(dlq_ids(&s, "dead"), vec![id.clone()]);

    // Fixed by a new deploy (the echo guest under the same names), a redrive succeeds.
    let fixed = guest_app("dead", "f", &guest("echo"), retry, &["/dead/..."]);
    s.deploy(fixed.path());
    let out = s.ok(&["dlq", "dead", "--redrive"]);
    assert!(out.contains(&id), "{out}");
    let a = wait_state(&s, &id, "succeeded");
    let list = attempts(&a);
    assert_eq!(list.last().unwrap()["outcome"], "ok", "{a:#}");
    assert_eq!(list.len(), 4, "{a:#}");
    assert!(dlq_ids(&s, "dead").is_empty());

    // Purge empties it.
    let doomed = submit(&s, "POST", "/dead/x/flaky?fail=99", &[], b"");
    wait_state(&s, &doomed, "failed");
    assert_eq!(dlq_ids(&s, "dead"), vec![doomed.clone()]);
    let out = s.ok(&["dlq", "dead", "--purge"]);
    assert!(out.contains("purged 1"), "{out}");
    assert!(dlq_ids(&s, "dead").is_empty());
    assert!(s.ok(&["dlq", "dead"]).contains("is empty"));
    let r = http(
        s.addr,
        "GET",
        &format!("/_nubo/api/v1/invocations/{doomed}"),
        &[],
        b"",
    );
    r.assert_error(404, "invocation_not_found");
}

#[test]
fn an_idempotency_key_names_one_invocation_that_runs_once() {
    let s = Server::start();
    let dir = guest_app("idem", "echo", &guest("echo"), "", &["/idem/..."]);
    s.deploy(dir.path());
    let args = [
        "invoke",
        "idem/echo",
        "--async",
        "--idempotency-key",
        "order-42",
        "-d",
        "once",
    ];
    let first = s.nubo(&args);
    let (id, stderr) = text(&first);
    assert!(first.status.success(), "{id}\n{stderr}");
    let id = id.trim().to_string();
    wait_state(&s, &id, "succeeded");

    let again = s.nubo(&args);
    let (id2, stderr) = text(&again);
    assert!(again.status.success(), "{id2}\n{stderr}");
    assert_eq!(id2.trim(), id);
    assert!(stderr.contains("seen before"), "{stderr}");

    // Over HTTP too: same id, marked a replay.
    let r = http(
        s.addr,
        "POST",
        "/idem/x",
        &[ASYNC, ("idempotency-key", "order-42")],
        b"once",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["invocation_id"], id.as_str());
    assert_eq!(r.json()["replay"], true);
    assert_eq!(r.json()["state"], "succeeded");

    // Executed once: one attempt, and one async invocation record of the function.
    std::thread::sleep(Duration::from_millis(500));
    let a = detail(&s, &id);
    assert_eq!(attempts(&a).len(), 1, "{a:#}");
    let records = s.api("/_nubo/api/v1/apps/idem/invocations?limit=100");
    let ran = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "async")
        .count();
    assert_eq!(ran, 1, "{records:#}");

    // Another key is another invocation.
    let other = submit(
        &s,
        "POST",
        "/idem/x",
        &[("idempotency-key", "order-43")],
        b"",
    );
    assert_ne!(other, id);
}

#[test]
fn a_queued_invocation_can_be_cancelled_and_never_runs() {
    let s = Server::start();
    let dir = guest_app(
        "slow",
        "echo",
        &guest("echo"),
        "max_concurrency = 1",
        &["/slow/..."],
    );
    s.deploy(dir.path());
    // One long invocation takes the function's only slot …
    let busy = submit(&s, "GET", "/slow/sleep?ms=3000", &[], b"");
    wait_state(&s, &busy, "running");
    // … so the next one waits in the queue, where it can be cancelled.
    let waiting = submit(&s, "GET", "/slow/logs?n=1", &[], b"");
    let a = detail(&s, &waiting);
    assert_eq!(a["state"], "queued", "{a:#}");
    let out = s.ok(&["invocation", &waiting, "--cancel"]);
    assert!(out.contains("cancelled"), "{out}");

    // A running one cannot be.
    let out = s.nubo(&["invocation", &busy, "--cancel"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("invocation_not_queued"), "{stderr}");

    wait_state(&s, &busy, "succeeded");
    // The slot is free again; the cancelled one still never ran.
    let after = submit(&s, "GET", "/slow/sleep?ms=1", &[], b"");
    wait_state(&s, &after, "succeeded");
    let a = detail(&s, &waiting);
    assert_eq!(a["state"], "cancelled", "{a:#}");
    assert_eq!(a["attempts"], 0);
    assert!(attempts(&a).is_empty(), "{a:#}");

    // Finished ones and unknown ids are refused over HTTP with their codes.
    let r = http(
        s.addr,
        "DELETE",
        &format!("/_nubo/api/v1/invocations/{busy}"),
        &[],
        b"",
    );
    r.assert_error(409, "invocation_not_queued");
    let r = http(
        s.addr,
        "DELETE",
        "/_nubo/api/v1/invocations/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &[],
        b"",
    );
    r.assert_error(404, "invocation_not_found");
}

#[test]
fn submissions_past_the_queue_bound_get_429_and_the_accepted_ones_finish() {
    let s = Server::start_with(&["--max-async-queue", "5"]);
    let dir = guest_app("bp", "echo", &guest("echo"), "", &["/bp/..."]);
    s.deploy(dir.path());
    // Each accepted one stays waiting or running for 3 s, far longer than the submissions take.
    let mut accepted = Vec::new();
    let mut throttled = 0;
    for _ in 0..10 {
        let r = http(s.addr, "GET", "/bp/sleep?ms=3000", &[ASYNC], b"");
        match r.status {
            202 => accepted.push(r.json()["invocation_id"].as_str().unwrap().to_string()),
            429 => {
                r.assert_error(429, "throttled");
                assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
                throttled += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(accepted.len(), 5, "accepted {accepted:?}");
    assert_eq!(throttled, 5);
    // The CLI says when to retry.
    let out = s.nubo(&["invoke", "bp/echo", "--async", "--path", "/bp/sleep?ms=1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("throttled") && stderr.contains("retry in 1s"),
        "{stderr}"
    );

    for id in &accepted {
        let a = wait_state(&s, id, "succeeded");
        assert_eq!(attempts(&a).last().unwrap()["outcome"], "ok");
    }
    // Room again once they are done.
    submit(&s, "GET", "/bp/sleep?ms=1", &[], b"");
}

#[test]
fn no_accepted_invocation_is_lost_across_kill9_restarts() {
    /// Restarts with a `kill -9` while submitting.
    const CRASHES: usize = 3;
    /// Most submissions per round (the kill normally lands long before).
    const PER_ROUND: usize = 5_000;
    /// Submissions answered 202 before the kill is sent.
    const BEFORE_KILL: usize = 20;
    let mut s = Server::start();
    let dir = guest_app("crash", "echo", &guest("echo"), "", &["/crash/..."]);
    s.deploy(dir.path());

    let mut accepted: Vec<String> = Vec::new();
    for round in 0..CRASHES {
        let sent = Arc::new(AtomicUsize::new(0));
        let addr = s.addr;
        let counter = sent.clone();
        let submitter = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut conn = Conn::new(addr);
            for i in 0..PER_ROUND {
                let path = format!("/crash/sleep?ms=20&round={round}&i={i}");
                match conn.request("GET", &path, &[ASYNC], b"") {
                    Ok(r) if r.status == 202 => {
                        ids.push(r.json()["invocation_id"].as_str().unwrap().to_string());
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => assert!(
                        r.status == 429 || r.status == 503,
                        "unexpected {}: {}",
                        r.status,
                        r.text()
                    ),
                    // The server was killed: whatever was not answered 202 was never accepted.
                    Err(_) => break,
                }
            }
            ids
        });
        // Kill it while it is accepting and delivering.
        eventually(Duration::from_secs(30), || {
            (sent.load(Ordering::Relaxed) >= BEFORE_KILL).then_some(())
        });
        std::thread::sleep(Duration::from_millis(100 * (round as u64 + 1)));
        let data = s.kill9();
        let ids = submitter.join().expect("the submitter panicked");
        eprintln!(
            "crash test: round {round}: {} accepted before kill -9",
            ids.len()
        );
        accepted.extend(ids);
        s = Server::start_in(&data, &[]);
    }

    // Every accepted invocation runs to success (bounded wait), some maybe more than once.
    let start = Instant::now();
    let mut duplicates = 0;
    for id in &accepted {
        let a = loop {
            let a = detail(&s, id);
            if a["state"] == "succeeded" {
                break a;
            }
            assert_ne!(a["state"], "failed", "{a:#}");
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{id} not delivered after restarts: {a:#}\nserver: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let ok = attempts(&a).iter().filter(|t| t["outcome"] == "ok").count();
        assert!(ok >= 1, "{a:#}");
        duplicates += ok - 1;
    }
    eprintln!(
        "crash test: {} invocations accepted over {CRASHES} kill -9 restarts, none lost, {duplicates} delivered more than once",
        accepted.len()
    );
}
