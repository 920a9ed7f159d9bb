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
            .contains("log output cut")
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
