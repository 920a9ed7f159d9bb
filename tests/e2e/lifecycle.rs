//! Restarts, shutdown, concurrent deploys and removal.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn restart_after_kill_serves_from_the_compiled_cache() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert_eq!(http(s.addr, "GET", "/echo/x", &[], b"").status, 200);
    let dir = s.kill9();

    let s = Server::start_in(&dir, &[]);
    let r = http(s.addr, "GET", "/echo/after-restart", &[], b"");
    assert_eq!(r.status, 200, "served again after kill -9: {}", r.text());
    assert_eq!(r.header("nubo-revision"), Some("1"));
    let log = s.stderr();
    assert!(
        log.contains("loaded 1 apps"),
        "startup reports what it loaded: {log}"
    );
    assert!(log.contains("recompiled=0"), "no recompilation: {log}");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let addr = s.addr;
    let slow = std::thread::spawn(move || http(addr, "GET", "/echo/sleep?ms=1500", &[], b""));
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = s.terminate();
    assert!(status.success(), "exit status {status:?}; log: {log}");
    let r = slow.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request was answered: {}",
        r.text()
    );
    assert_eq!(r.text(), "slept 1500 ms");
}

#[test]
fn concurrent_deploys_of_one_app_never_interleave() {
    let s = Server::start();
    let a = guest_app(
        "race",
        "f",
        &guest("echo"),
        "env = { V = \"a\" }",
        &["/race/..."],
    );
    let b = guest_app(
        "race",
        "f",
        &guest("echo"),
        "env = { V = \"b\" }",
        &["/race/..."],
    );
    let url = s.url();
    let spawn = |dir: &std::path::Path| {
        Command::new(nubo_bin())
            .args(["deploy", "--no-build", dir.to_str().unwrap()])
            .env("NUBO_URL", &url)
            .output()
            .unwrap()
    };
    let (oa, ob) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| spawn(a.path()));
        let hb = sc.spawn(|| spawn(b.path()));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert!(oa.status.success() && ob.status.success(), "{oa:?}\n{ob:?}");
    let mut revs: Vec<String> = [&oa, &ob]
        .iter()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            out.split("revision ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    revs.sort();
    assert_eq!(revs, ["1", "2"]);
    let v = s.api("/_nubo/api/v1/apps/race");
    assert_eq!(v["revision"], 2);
}

#[test]
fn removed_app_stops_serving() {
    let s = Server::start();
    let app = guest_app("gone", "echo", &guest("echo"), "", &["/gone/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert_eq!(http(s.addr, "GET", "/gone/x", &[], b"").status, 200);
    let out = s.ok(&["rm", "gone"]);
    assert!(out.contains("removed app gone"), "{out}");
    http(s.addr, "GET", "/gone/x", &[], b"").assert_error(404, "route_not_found");
    let out = s.nubo(&["rm", "gone"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app_not_found"));
    // A new deploy continues the numbering.
    let out = s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    assert!(out.contains("revision 2"), "{out}");
}

#[test]
fn refuses_a_network_listener_without_an_admin_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(nubo_bin())
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path())
        .env_remove("NUBO_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NUBO_ADMIN_KEY"), "{err}");
}
