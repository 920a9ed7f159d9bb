//! Function output is captured per invocation, bounded, and readable through the CLI.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn logs_are_captured_per_invocation() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/echo/logs?n=3", &[], b"");
    assert_eq!(r.text(), "logged 3\n");
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    let inv = s.invocation(&id);
    let lines: Vec<(String, String)> = inv["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_string(),
                l["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(stdout, ["line 0", "line 1", "line 2"]);
    assert_eq!(lines.iter().filter(|(s, _)| s == "stderr").count(), 1);

    let out = s.ok(&["logs", "echo"]);
    assert!(
        out.contains("line 2") && out.contains(&id[id.len() - 8..]),
        "{out}"
    );
}

#[test]
fn chatty_functions_are_cut_with_a_marker() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/echo/logs?n=5000", &[], b"");
    assert_eq!(r.status, 200);
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    let inv = s.invocation(&id);
    assert_eq!(inv["record"]["logs_truncated"], true);
    let logs = inv["logs"].as_array().unwrap();
    assert!(logs.len() <= 1001, "bounded: {}", logs.len());
    assert!(
        logs.last().unwrap()["line"]
            .as_str()
            .unwrap()
            .contains("were dropped (the 1,000 lines / 64 KiB cap)")
    );
}

#[test]
fn logs_follow_streams_new_lines() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let mut child = Command::new(nubo_bin())
        .args(["logs", "echo", "-f"])
        .env("NUBO_URL", s.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    http(s.addr, "GET", "/echo/logs?n=2", &[], b"");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|l: &String| l.contains("line 1")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "follower saw only {seen:?}");
        if let Ok(l) = rx.recv_timeout(left) {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An echo app with two functions, `a` on `/a/...` and `b` on `/b/...`.
fn two_function_app() -> tempfile::TempDir {
    let wasm = guest("echo");
    app_dir(&format!(
        "[app]\nname = \"echo\"\n\n[function.a]\nsource = \"{0}\"\n\n[function.b]\nsource = \"{0}\"\n\n\
         [[route]]\npath = \"/a/...\"\nfunction = \"a\"\n\n[[route]]\npath = \"/b/...\"\nfunction = \"b\"\n",
        wasm.display()
    ))
}

/// The JSON objects `nubo logs ARGS --json` prints.
fn json_logs(s: &Server, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    all.push("--json");
    s.ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn texts(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn logs_are_filtered_on_the_server() {
    let s = Server::start();
    let app = two_function_app();
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let a = http(s.addr, "GET", "/a/logs?n=2", &[], b"");
    let a_id = a.header("nubo-invocation-id").unwrap().to_string();
    let err = http(s.addr, "GET", "/b/jsonlog?level=ERROR", &[], b"");
    let err_id = err.header("nubo-invocation-id").unwrap().to_string();
    let warn = http(s.addr, "GET", "/b/jsonlog?level=warning", &[], b"");
    assert_eq!(warn.text(), "ok\n");
    let debug = http(s.addr, "GET", "/a/jsonlog?level=debug", &[], b"");
    let debug_id = debug.header("nubo-invocation-id").unwrap().to_string();
    s.invocation(&debug_id); // the writer has committed everything before it

    // --json prints the API's objects, with cursors in order and levels where a line names one.
    let all = json_logs(&s, &["echo"]);
    assert_eq!(all.len(), 3 + 2 + 2 + 2, "{all:?}");
    let cursors: Vec<i64> = all.iter().map(|l| l["cursor"].as_i64().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let levels: Vec<Option<&str>> = all.iter().map(|l| l["level"].as_str()).collect();
    assert_eq!(
        levels,
        [
            None,
            None,
            None,
            Some("error"),
            None,
            Some("warn"),
            None,
            Some("debug"),
            None
        ]
    );

    let grep = json_logs(&s, &["echo", "--grep", "line 1"]);
    assert_eq!(texts(&grep), ["line 1"]);
    // Case-sensitive: the text is "line", not "LINE".
    assert!(json_logs(&s, &["echo", "--grep", "LINE"]).is_empty());

    let warn_up = json_logs(&s, &["echo", "--level", "warn"]);
    assert_eq!(warn_up.len(), 2, "{warn_up:?}");
    assert_eq!(warn_up[0]["invocation_id"], err_id.as_str());
    let errors = json_logs(&s, &["echo", "--level", "error"]);
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["line"].as_str().unwrap().contains("json line"));

    let one = json_logs(&s, &["echo", "--invocation", &a_id]);
    assert_eq!(texts(&one), ["line 0", "line 1", "stderr line"]);

    let b_only = json_logs(&s, &["echo", "--function", "b"]);
    assert_eq!(b_only.len(), 4);
    assert!(b_only.iter().all(|l| l["function"] == "b"));
    assert_eq!(json_logs(&s, &["echo/b", "--level", "error"]).len(), 1);
    let combined = json_logs(&s, &["echo/a", "--grep", "plain", "--since", "1h"]);
    assert_eq!(texts(&combined), ["plain line"]);
    assert_eq!(combined[0]["invocation_id"], debug_id.as_str());

    // Text output shows the level; an unknown level is refused before asking the server.
    let text = s.ok(&["logs", "echo", "--level", "error"]);
    assert!(
        text.contains("[error] ") && text.contains("json line"),
        "{text}"
    );
    assert!(
        !s.nubo(&["logs", "echo", "--level", "loud"])
            .status
            .success()
    );
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/apps/echo/logs?level=loud",
        &[],
        b"",
    );
    r.assert_error(400, "bad_request");
}

#[test]
fn a_cut_invocation_says_how_many_lines_were_dropped() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/echo/logs?n=1500", &[], b"");
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    s.invocation(&id);
    let marker = json_logs(&s, &["echo", "--grep", "were dropped"]);
    assert_eq!(marker.len(), 1, "{marker:?}");
    // 1,000 lines kept; the other 500 stdout lines and the stderr line were dropped.
    assert_eq!(
        marker[0]["line"],
        format!("[nubo] 501 lines of invocation {id} were dropped (the 1,000 lines / 64 KiB cap)")
    );
    assert_eq!(marker[0]["level"], "warn");
}

/// Reads a child's stdout lines into a channel on a thread.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines from `rx` until `done` holds for them, failing after a bounded wait.
fn collect_until(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "follower printed only {seen:?}");
        if let Ok(l) = rx.recv_timeout(left) {
            seen.push(l);
        }
    }
}

/// A `nubo server` started on a given address and data dir; killed when dropped.
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_follow_resumes_after_a_server_restart_without_repeats_or_gaps() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let addr = s.addr;
    let before = http(addr, "GET", "/echo/logs?n=2", &[], b"");
    let before_id = before.header("nubo-invocation-id").unwrap().to_string();
    s.invocation(&before_id);

    let mut follower = Command::new(nubo_bin())
        .args(["logs", "echo", "-f", "--json", "--grep", "line "])
        .env("NUBO_URL", s.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follower);
    let mut seen = Vec::new();
    collect_until(&rx, &mut seen, |s| s.len() >= 2);

    let data_dir = s.kill9();
    let mut server = Restarted(
        Command::new(nubo_bin())
            .args(["server", "--listen", &addr.to_string(), "--data-dir"])
            .arg(&data_dir)
            .env("NUBO_S3_LISTEN", "127.0.0.1:0")
            .env("NUBO_LOG", "warn")
            .env_remove("NUBO_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(server.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // Keep reading: the server's later stdout lines must not hit a closed pipe.
    std::thread::spawn(move || for _ in out.lines().map_while(Result::ok) {});
    assert_eq!(first.trim(), format!("nubo listening on http://{addr}"));

    let after = http(addr, "GET", "/echo/logs?n=3", &[], b"");
    let after_id = after.header("nubo-invocation-id").unwrap().to_string();
    collect_until(&rx, &mut seen, |s| s.len() >= 5);
    let _ = follower.kill();
    let _ = follower.wait();

    let got: Vec<(String, String)> = seen
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["invocation_id"].as_str().unwrap().to_string(),
                v["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        (&before_id, "line 0"),
        (&before_id, "line 1"),
        (&after_id, "line 0"),
        (&after_id, "line 1"),
        (&after_id, "line 2"),
    ]
    .iter()
    .map(|(id, l)| (id.to_string(), l.to_string()))
    .collect();
    assert_eq!(got, want);
    // Nothing more arrives (no repeat of earlier lines after the reconnection).
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
}

#[test]
fn server_logs_can_be_json_lines() {
    let s = Server::start_with(&["--log-format", "json"]);
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let stderr = eventually(Duration::from_secs(10), || {
        let e = s.stderr();
        (!e.trim().is_empty()).then_some(e)
    });
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
    // The environment variable does the same.
    let s = Server::start_env(&[("NUBO_LOG_FORMAT", "json")]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let stderr = eventually(Duration::from_secs(10), || {
        let e = s.stderr();
        (!e.trim().is_empty()).then_some(e)
    });
    let first = stderr.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{first:?}"
    );
}

#[test]
fn records_and_logs_are_pruned_by_count_and_by_age() {
    // By count: the newest 3 records are kept.
    let s = Server::start_with(&["--keep-records", "3"]);
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    for _ in 0..8 {
        assert_eq!(http(s.addr, "GET", "/echo/logs?n=1", &[], b"").status, 200);
    }
    eventually(Duration::from_secs(15), || {
        let records = s.api("/_nubo/api/v1/apps/echo/invocations?limit=100");
        (records.as_array().unwrap().len() == 3).then_some(())
    });
    drop(s);

    // By age: with --keep-for 2s, an idle server drops them on its own.
    let s = Server::start_with(&["--keep-for", "2s"]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/echo/logs?n=2", &[], b"");
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    s.invocation(&id);
    eventually(Duration::from_secs(20), || {
        let records = s.api("/_nubo/api/v1/apps/echo/invocations?limit=100");
        let logs = http(s.addr, "GET", "/_nubo/api/v1/apps/echo/logs", &[], b"");
        (records.as_array().unwrap().is_empty() && logs.text().trim().is_empty()).then_some(())
    });
}
