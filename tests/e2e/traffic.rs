//! Revisions and traffic: canary deploys, weighted splits, the affinity cookie, pinning,
//! no-traffic deploys, validation and stale-generation conflicts, rollback, restart, retention,
//! and changing the split under load.
//!
//! Revisions of one app differ by the `NUBO_TEST_VAR` env var of the `echo` guest, which answers
//! it as `x-env`; so every test can check that the revision named by `nubo-revision` is the code
//! that actually ran.

use crate::support::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The `x-env` value revision `n` of a test app answers with.
fn tag(n: u64) -> String {
    format!("v{n}")
}

/// An app folder for `app` whose `echo` function answers `x-env: v{n}` on `/{app}/...`.
fn echo_app(app: &str, n: u64) -> tempfile::TempDir {
    guest_app(
        app,
        "echo",
        &guest("echo"),
        &format!("env = {{ NUBO_TEST_VAR = \"{}\" }}", tag(n)),
        &[&format!("/{app}/...")],
    )
}

/// Runs `nubo deploy --no-build DIR EXTRA…`, returning the output.
fn deploy(s: &Server, dir: &tempfile::TempDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["deploy", "--no-build", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    s.nubo(&args)
}

/// Deploys revision `n` of `app` (the manifest's tag is `v{n}`), asserting success and that the
/// server numbered it `n`; returns stdout.
fn deploy_rev(s: &Server, app: &str, n: u64, extra: &[&str]) -> String {
    let dir = echo_app(app, n);
    let out = deploy(s, &dir, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "deploy of {app} v{n} {extra:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("deployed {app} revision {n}\n")),
        "{stdout}"
    );
    stdout
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The revision that answered, checked against the code that ran.
fn served(r: &Resp) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    let rev: u64 = r
        .header("nubo-revision")
        .expect("every response names its revision")
        .parse()
        .expect("a revision number");
    assert_eq!(
        r.header("x-env"),
        Some(tag(rev).as_str()),
        "the nubo-revision header names the code that ran"
    );
    rev
}

/// Sends `n` unpinned requests without cookies over one connection; counts per revision.
fn count(addr: std::net::SocketAddr, path: &str, n: usize) -> BTreeMap<u64, usize> {
    let mut conn = Conn::new(addr);
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = conn.request("GET", path, &[], b"").expect("request");
        *seen.entry(served(&r)).or_insert(0) += 1;
    }
    seen
}

/// Asserts that `rev` got `percent` ± `tolerance` points of `counts`.
fn assert_share(counts: &BTreeMap<u64, usize>, rev: u64, percent: f64, tolerance: f64) {
    let total: usize = counts.values().sum();
    let got = *counts.get(&rev).unwrap_or(&0) as f64 * 100.0 / total as f64;
    assert!(
        (got - percent).abs() <= tolerance,
        "revision {rev} got {got:.2}% of {total} requests, expected {percent}% ± {tolerance}: {counts:?}"
    );
}

fn traffic(s: &Server, app: &str) -> serde_json::Value {
    s.api(&format!("/_nubo/api/v1/apps/{app}/traffic"))
}

/// The split as `[(revision, weight)]`, in the server's order.
fn split(state: &serde_json::Value) -> Vec<(u64, u64)> {
    state["split"]
        .as_array()
        .expect("a split")
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap(),
                e["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn generation(state: &serde_json::Value) -> u64 {
    state["generation"].as_u64().expect("a generation")
}

/// Sets the split through the admin API, as JSON.
fn put_traffic(s: &Server, app: &str, body: &serde_json::Value) -> Resp {
    http(
        s.addr,
        "PUT",
        &format!("/_nubo/api/v1/apps/{app}/traffic"),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn revision_numbers(s: &Server, app: &str) -> Vec<u64> {
    s.api(&format!("/_nubo/api/v1/apps/{app}/revisions"))["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect()
}

/// The `nubo-affinity` cookie a response sets, with its attributes.
fn affinity_cookie(r: &Resp) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .find(|v| v.starts_with("nubo-affinity="))
}

/// The cookie's value (`app.rev&app.rev`).
fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("nubo-affinity=")
        .to_string()
}

#[test]
fn canary_deploy_splits_traffic_in_proportion() {
    let s = Server::start();
    let first = deploy_rev(&s, "shop", 1, &[]);
    assert!(first.contains("revision 1 takes all traffic"), "{first}");
    let out = deploy_rev(&s, "shop", 2, &["--canary", "10"]);
    assert!(out.contains("revision 2 takes 10% of traffic"), "{out}");
    assert!(out.contains("traffic  1=90% 2=10%"), "{out}");
    assert_eq!(split(&traffic(&s, "shop")), vec![(1, 90), (2, 10)]);

    let counts = count(s.addr, "/shop/x", 2_000);
    assert_eq!(counts.values().sum::<usize>(), 2_000);
    assert_share(&counts, 2, 10.0, 3.0);
    assert_share(&counts, 1, 90.0, 3.0);

    // The gateway's per-revision figures match what the client saw.
    let state = eventually(Duration::from_secs(10), || {
        let t = traffic(&s, "shop");
        let seen: BTreeMap<u64, usize> = t["split"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["revision"].as_u64().unwrap(),
                    e["requests_5m"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        (seen == counts).then_some(t)
    });
    assert!(
        state["split"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["errors_5m"] == 0),
        "{state}"
    );
    let table = s.ok(&["traffic", "shop"]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("2"))
        .unwrap_or_else(|| panic!("a row for revision 2: {table}"));
    assert!(
        row.contains("10%") && row.contains(&counts[&2].to_string()),
        "{table}"
    );
    assert!(table.contains("ERROR RATE"), "{table}");

    // The revision list names both, newest first, with their weights and what changed.
    let list = s.api("/_nubo/api/v1/apps/shop/revisions");
    let revs = list["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2, "{list}");
    assert_eq!(revs[0]["revision"], 2);
    assert_eq!(revs[0]["weight"], 10);
    assert_eq!(revs[1]["revision"], 1);
    assert_eq!(revs[1]["weight"], 90);
    assert_eq!(revs[1]["changes"], "first revision", "{list}");
    assert_ne!(revs[0]["changes"], "no changes", "the env changed: {list}");
    let table = s.ok(&["revisions", "shop"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.trim_start().starts_with("2 ")),
        "newest first: {table}"
    );
    let digest = revs[0]["functions"][0]["digest"].as_str().unwrap();
    assert!(
        table.contains(&format!("echo:{}", &digest[..12])),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["revisions", "shop", "--json"])).unwrap();
    assert_eq!(json["revisions"][0]["revision"], 2);

    // A canary next to a split scales the revisions serving now in proportion.
    s.ok(&["traffic", "shop", "1=80", "2=20"]);
    let out = deploy_rev(&s, "shop", 3, &["--canary", "10"]);
    assert!(out.contains("traffic  1=72% 2=18% 3=10%"), "{out}");
    assert_eq!(split(&traffic(&s, "shop")), vec![(1, 72), (2, 18), (3, 10)]);
}

#[test]
fn affinity_cookie_keeps_a_client_on_its_revision() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    let r = http(s.addr, "GET", "/shop/x", &[], b"");
    assert_eq!(served(&r), 1);
    assert_eq!(
        affinity_cookie(&r),
        None,
        "no cookie while one revision takes all traffic"
    );
    deploy_rev(&s, "shop", 2, &["--canary", "50"]);

    let mut firsts = BTreeMap::new();
    let mut conn = Conn::new(s.addr);
    for client in 0..20 {
        let r = conn.request("GET", "/shop/x", &[], b"").unwrap();
        let first = served(&r);
        *firsts.entry(first).or_insert(0) += 1;
        let set = affinity_cookie(&r).expect("a split sets the affinity cookie");
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(set.contains(attr), "{attr} in {set}");
        }
        let value = cookie_value(&set);
        assert_eq!(value, format!("shop.{first}"));
        let cookie = format!("nubo-affinity={value}");
        for i in 0..50 {
            let r = conn
                .request("GET", "/shop/x", &[("cookie", &cookie)], b"")
                .unwrap();
            assert_eq!(
                served(&r),
                first,
                "client {client} request {i} with cookie {cookie} moved"
            );
        }
    }
    assert!(
        firsts.len() == 2,
        "20 new clients on a 50/50 split all got one revision: {firsts:?}"
    );

    // Entries of other apps are kept; an entry for a revision that lost its weight is replaced.
    let r = http(
        s.addr,
        "GET",
        "/shop/x",
        &[("cookie", "nubo-affinity=blog.3&shop.1")],
        b"",
    );
    assert_eq!(served(&r), 1);
    s.ok(&["traffic", "shop", "2=100"]);
    let r = http(
        s.addr,
        "GET",
        "/shop/x",
        &[("cookie", "nubo-affinity=blog.3&shop.1")],
        b"",
    );
    assert_eq!(
        served(&r),
        2,
        "revision 1 has no weight now: the cookie no longer holds"
    );
    if let Some(set) = affinity_cookie(&r) {
        let value = cookie_value(&set);
        assert!(
            value.split('&').any(|e| e == "blog.3") && !value.contains("shop.1"),
            "{set}"
        );
    }
}

#[test]
fn pinning_by_header_and_path_prefix() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &[]);
    assert_eq!(split(&traffic(&s, "shop")), vec![(2, 100)]);
    assert_eq!(served(&http(s.addr, "GET", "/shop/x", &[], b"")), 2);

    let r = http(s.addr, "GET", "/shop/x", &[("nubo-revision", "1")], b"");
    assert_eq!(served(&r), 1, "pinned by header");
    let r = http(s.addr, "GET", "/_rev/1/shop/deep/path?q=1", &[], b"");
    assert_eq!(served(&r), 1, "pinned by path prefix");
    assert_eq!(
        r.header("x-echo-path"),
        Some("/shop/deep/path?q=1"),
        "the prefix is stripped before routing"
    );
    let r = http(s.addr, "GET", "/_rev/2/shop/x", &[], b"");
    assert_eq!(served(&r), 2);

    http(s.addr, "GET", "/shop/x", &[("nubo-revision", "99")], b"")
        .assert_error(404, "revision_not_found");
    http(s.addr, "GET", "/_rev/99/shop/x", &[], b"").assert_error(404, "revision_not_found");

    // The CLI pins too, and says which revision ran.
    let out = s.nubo(&["invoke", "shop/echo", "--revision", "1", "-i"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let head = stderr_of(&out);
    assert!(head.contains("x-env: v1"), "{head}");
    let out = s.nubo(&["invoke", "shop/echo", "--revision", "99"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revision_not_found")
            || stderr_of(&out).contains("revision_not_found"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn no_traffic_deploy_is_reachable_only_by_pinning() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    let out = deploy_rev(&s, "shop", 2, &["--no-traffic"]);
    assert!(out.contains("revision 2 takes no traffic"), "{out}");
    assert!(
        out.contains("nubo-revision: 2"),
        "says how to reach it: {out}"
    );
    assert!(out.contains("traffic  1=100%"), "{out}");
    assert!(
        out.contains(&format!("{}/_rev/2/shop/...", s.url())),
        "its route URLs are pinned: {out}"
    );

    let counts = count(s.addr, "/shop/x", 300);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{counts:?}"
    );
    let r = http(s.addr, "GET", "/shop/x", &[("nubo-revision", "2")], b"");
    assert_eq!(served(&r), 2);
    assert_eq!(served(&http(s.addr, "GET", "/_rev/2/shop/x", &[], b"")), 2);

    let table = s.ok(&["traffic", "shop"]);
    assert!(
        !table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("2")),
        "revision 2 carries no traffic: {table}"
    );
    let list = s.api("/_nubo/api/v1/apps/shop/revisions");
    assert_eq!(list["revisions"][0]["revision"], 2);
    assert_eq!(list["revisions"][0]["weight"], 0);
    assert_eq!(list["revisions"][1]["weight"], 100);

    // Then it takes traffic with one command.
    s.ok(&["traffic", "shop", "2=100"]);
    assert_eq!(served(&http(s.addr, "GET", "/shop/x", &[], b"")), 2);
}

#[test]
fn bad_splits_are_refused_with_the_fix() {
    let s = Server::start();
    // The first deploy of an app always takes all traffic.
    for flag in [&["--canary", "10"][..], &["--no-traffic"][..]] {
        let out = deploy(&s, &echo_app("shop", 1), flag);
        assert!(!out.status.success(), "{flag:?}");
        assert!(
            stderr_of(&out).contains("invalid_traffic"),
            "{}",
            stderr_of(&out)
        );
    }
    let out = s.nubo(&["deploy", "--canary", "100", "."]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("1..=99") || stderr_of(&out).contains("99"));
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &["--canary", "20"]);
    let before = traffic(&s, "shop");

    // Checked by the CLI before anything is sent.
    for (args, says) in [
        (&["1=90", "2=20"][..], "add up to 110"),
        (&["1=90", "2=20"][..], "nubo traffic shop 1=90 2=10"),
        (&["1:100"][..], "REVISION=PERCENT"),
        (&["1=50", "1=50"][..], "named more than once"),
        (&["1=101"][..], "from 0 to 100"),
        (&["x=100"][..], "not a revision number"),
    ] {
        let mut a = vec!["traffic", "shop"];
        a.extend_from_slice(args);
        let out = s.nubo(&a);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr_of(&out).contains(says),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }

    // Checked by the server, for any client.
    use serde_json::json;
    for body in [
        json!({"split": [{"revision": 1, "weight": 90}, {"revision": 2, "weight": 20}]}),
        json!({"split": [{"revision": 1, "weight": 50}, {"revision": 1, "weight": 50}]}),
        json!({"split": [{"revision": 1, "weight": 101}]}),
        json!({"split": []}),
    ] {
        put_traffic(&s, "shop", &body).assert_error(400, "invalid_traffic");
    }
    let r = put_traffic(
        &s,
        "shop",
        &json!({"split": [{"revision": 1, "weight": 50}, {"revision": 99, "weight": 50}]}),
    );
    assert!(
        r.status == 404 || r.status == 400,
        "unknown revision: {}",
        r.text()
    );
    let code = r.json()["error"]["code"].as_str().unwrap().to_string();
    assert!(
        code == "revision_not_found" || code == "invalid_traffic",
        "{code}"
    );
    let out = s.nubo(&["traffic", "shop", "1=50", "99=50"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&code), "{}", stderr_of(&out));
    assert_eq!(
        traffic(&s, "shop")["split"],
        before["split"],
        "nothing changed"
    );
    assert_eq!(generation(&traffic(&s, "shop")), generation(&before));
}

#[test]
fn stale_generation_gets_409_with_the_current_state() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    let g1 = generation(&traffic(&s, "shop"));
    deploy_rev(&s, "shop", 2, &["--canary", "10"]);
    let g2 = generation(&traffic(&s, "shop"));
    assert!(g2 > g1, "a deploy bumps the generation");

    let g = g2.to_string();
    let out = s.ok(&["traffic", "shop", "1=50", "2=50", "--expect", &g]);
    assert!(
        out.contains("1=50% 2=50%") || out.contains("2=50% 1=50%"),
        "{out}"
    );
    let g3 = generation(&traffic(&s, "shop"));
    assert!(g3 > g2, "a traffic change bumps the generation");

    // A second writer that read generation g2 is refused, and told what is there now.
    let out = s.nubo(&["traffic", "shop", "2=100", "--expect", &g]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "changed since generation {g2}; it is now at generation {g3}"
        )),
        "{err}"
    );
    assert!(err.contains("50%"), "the current split is shown: {err}");
    assert!(err.contains(&format!("--expect {g3}")), "{err}");

    let r = put_traffic(
        &s,
        "shop",
        &serde_json::json!({"split": [{"revision": 2, "weight": 100}], "expected_generation": g2}),
    );
    let v = r.assert_error(409, "conflict");
    assert_eq!(v["current"]["generation"], g3, "{v}");
    assert_eq!(v["current"]["app"], "shop");
    let mut now = split(&serde_json::json!({"split": v["current"]["split"]}));
    now.sort_unstable();
    assert_eq!(now, vec![(1, 50), (2, 50)]);

    // Stale rollbacks and deploys are refused too, and change nothing.
    let out = s.nubo(&["rollback", "shop", "--to", "1", "--expect", &g]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("changed since generation"),
        "{}",
        stderr_of(&out)
    );
    let out = deploy(&s, &echo_app("shop", 3), &["--expect", &g]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("changed since generation"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        revision_numbers(&s, "shop"),
        vec![2, 1],
        "no revision was made"
    );
    assert_eq!(generation(&traffic(&s, "shop")), g3);

    // The current generation applies.
    let g = g3.to_string();
    s.ok(&["rollback", "shop", "--to", "1", "--expect", &g]);
    let state = traffic(&s, "shop");
    assert_eq!(split(&state), vec![(1, 100)]);
    assert!(generation(&state) > g3, "a rollback bumps the generation");
}

#[test]
fn rollback_moves_all_traffic_without_recompiling() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &[]);
    // Revision 3 runs other code, compiled at deploy.
    let other = guest_app("shop", "echo", &guest("outbound"), "", &["/shop/..."]);
    let out = deploy(&s, &other, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    assert!(stdout.contains("compiled in"), "{stdout}");
    deploy_rev(&s, "shop", 4, &[]);
    assert_eq!(split(&traffic(&s, "shop")), vec![(4, 100)]);

    let log_before = s.stderr().len();
    assert!(
        s.stderr().to_lowercase().contains("compiled function"),
        "the server logs the compiles of deploys: {}",
        s.stderr()
    );
    // Default: the revision that had the traffic before the last change (the deploy of 4).
    let out = s.ok(&["rollback", "shop"]);
    assert!(out.contains("revision 3 takes all traffic"), "{out}");
    let r = http(s.addr, "GET", "/shop/x", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("nubo-revision"), Some("3"));
    assert!(
        r.text().starts_with("outbound"),
        "revision 3's code ran: {}",
        r.text()
    );

    let out = s.ok(&["rollback", "shop", "--to", "1"]);
    assert!(out.contains("revision 1 takes all traffic"), "{out}");
    assert_eq!(split(&traffic(&s, "shop")), vec![(1, 100)]);
    let counts = count(s.addr, "/shop/x", 50);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![1]);
    // Rolling back again returns to where the last change came from.
    let out = s.ok(&["rollback", "shop"]);
    assert!(out.contains("revision 3 takes all traffic"), "{out}");

    let log = s.stderr()[log_before..].to_lowercase();
    assert!(
        !log.contains("compil"),
        "no compilation during rollback: {log}"
    );

    let out = s.nubo(&["rollback", "shop", "--to", "99"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("revision_not_found"),
        "{}",
        stderr_of(&out)
    );
    let out = s.nubo(&["rollback", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("app_not_found"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn restart_keeps_the_split_and_generation() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &["--canary", "30"]);
    deploy_rev(&s, "shop", 3, &["--no-traffic"]);
    let before = traffic(&s, "shop");
    assert_eq!(split(&before), vec![(1, 70), (2, 30)]);
    let dir = s.kill9();

    let s = Server::start_in(&dir, &[]);
    let after = traffic(&s, "shop");
    assert_eq!(split(&after), split(&before));
    assert_eq!(generation(&after), generation(&before));
    let counts = count(s.addr, "/shop/x", 2_000);
    assert_share(&counts, 2, 30.0, 5.0);
    assert_eq!(served(&http(s.addr, "GET", "/_rev/3/shop/x", &[], b"")), 3);
    // The rollback target survives the restart too: before the last change, 1 had all traffic.
    let out = s.ok(&["rollback", "shop"]);
    assert!(out.contains("revision 1 takes all traffic"), "{out}");
    drop(s);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn retention_prunes_old_revisions_but_never_one_with_traffic() {
    let s = Server::start_with(&["--keep-revisions", "3"]);
    deploy_rev(&s, "shop", 1, &[]);
    for n in 2..=5 {
        deploy_rev(&s, "shop", n, &["--no-traffic"]);
    }
    // The newest three, and 1 because it serves.
    let revs = eventually(Duration::from_secs(10), || {
        let r = revision_numbers(&s, "shop");
        (r.len() <= 4).then_some(r)
    });
    assert_eq!(revs, vec![5, 4, 3, 1]);
    assert_eq!(served(&http(s.addr, "GET", "/shop/x", &[], b"")), 1);
    http(s.addr, "GET", "/_rev/2/shop/x", &[], b"").assert_error(404, "revision_not_found");
    let r = put_traffic(
        &s,
        "shop",
        &serde_json::json!({"split": [{"revision": 2, "weight": 100}]}),
    );
    assert!(
        r.status == 404 || r.status == 400,
        "a pruned revision: {}",
        r.text()
    );
    assert_eq!(served(&http(s.addr, "GET", "/_rev/3/shop/x", &[], b"")), 3);

    s.ok(&["traffic", "shop", "1=50", "3=50"]);
    deploy_rev(&s, "shop", 6, &["--no-traffic"]);
    let revs = eventually(Duration::from_secs(10), || {
        let r = revision_numbers(&s, "shop");
        (r.len() <= 5).then_some(r)
    });
    assert_eq!(revs, vec![6, 5, 4, 3, 1], "both serving revisions are kept");
    let counts = count(s.addr, "/shop/x", 200);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn changing_the_split_under_load_fails_no_request() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &["--no-traffic"]);

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let addr = s.addr;
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let (mut ok, mut bad, mut conn_errors) = (BTreeMap::new(), Vec::new(), 0usize);
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match conn.request("GET", "/shop/x", &[], b"") {
                        Ok(r) if r.status == 200 => {
                            let rev: u64 = r.header("nubo-revision").unwrap().parse().unwrap();
                            assert_eq!(r.header("x-env"), Some(tag(rev).as_str()));
                            *ok.entry(rev).or_insert(0usize) += 1;
                        }
                        Ok(r) => bad.push(format!("{} {}", r.status, r.text())),
                        Err(_) => conn_errors += 1,
                    }
                }
                (ok, bad, conn_errors)
            })
        })
        .collect();

    let splits = [
        [(1, 100), (2, 0)],
        [(1, 70), (2, 30)],
        [(1, 0), (2, 100)],
        [(1, 30), (2, 70)],
    ];
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..100 {
        let entries: Vec<serde_json::Value> = splits[i % 4]
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(r, w)| serde_json::json!({"revision": r, "weight": w}))
            .collect();
        let r = put_traffic(&s, "shop", &serde_json::json!({ "split": entries }));
        assert_eq!(r.status, 200, "flip {i}: {}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = BTreeMap::new();
    let (mut bad, mut conn_errors) = (Vec::new(), 0);
    for t in load {
        let (ok, b, c) = t.join().expect("load thread");
        for (rev, n) in ok {
            *total.entry(rev).or_insert(0) += n;
        }
        bad.extend(b);
        conn_errors += c;
    }
    eprintln!("served during the flips: {total:?}");
    assert!(bad.is_empty(), "failed requests during the flips: {bad:?}");
    assert_eq!(conn_errors, 0, "connection errors during the flips");
    let served_total: usize = total.values().sum();
    assert!(
        served_total >= 400 && total.len() == 2,
        "the load ran through the flips and reached both revisions: {total:?}"
    );

    // The last split is 30/70; it holds over 10,000 requests from 4 clients.
    assert_eq!(split(&traffic(&s, "shop")), vec![(2, 70), (1, 30)]);
    let counts: Vec<_> = (0..4)
        .map(|_| {
            let addr = s.addr;
            std::thread::spawn(move || count(addr, "/shop/x", 2_500))
        })
        .collect();
    let mut all = BTreeMap::new();
    for c in counts {
        for (rev, n) in c.join().expect("count thread") {
            *all.entry(rev).or_insert(0) += n;
        }
    }
    assert_eq!(all.values().sum::<usize>(), 10_000);
    assert_share(&all, 2, 70.0, 2.0);
    assert_share(&all, 1, 30.0, 2.0);
}

fn rollout(s: &Server, app: &str) -> serde_json::Value {
    s.api(&format!("/_nubo/api/v1/apps/{app}/rollout"))
}

#[test]
fn a_rollout_of_a_failing_revision_rolls_back_by_itself() {
    let s = Server::start();
    let good = guest_app("roll", "api", &guest("echo"), "", &["/roll/..."]);
    let bad = guest_app("roll", "api", &guest("trap"), "", &["/roll/..."]);
    assert!(s.deploy(good.path()).contains("deployed roll revision 1"));
    assert!(deploy(&s, &bad, &["--no-traffic"]).status.success());

    // Steps of an hour: only the error rate can end this rollout within the test.
    let out = s.ok(&[
        "rollout",
        "roll",
        "--to",
        "2",
        "--steps",
        "10,50,100",
        "--interval",
        "1h",
    ]);
    assert!(
        out.contains("rolling out revision 2 of roll from revision 1"),
        "{out}"
    );
    assert_eq!(split(&traffic(&s, "roll")), vec![(1, 90), (2, 10)]);
    let r = rollout(&s, "roll");
    assert_eq!(r["state"], "running");
    assert_eq!(r["step"], 0);

    // About 10% of requests reach the trapping revision; it trips the threshold once it has
    // answered 20 of them, well before 2,000 requests.
    let mut conn = Conn::new(s.addr);
    let mut failed = 0;
    let mut rolled_back = false;
    for i in 0..2_000 {
        let resp = conn.request("GET", "/roll/x", &[], b"").expect("request");
        if resp.status == 500 {
            failed += 1;
        } else {
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        if i % 50 == 49 && rollout(&s, "roll")["state"] == "rolled_back" {
            rolled_back = true;
            break;
        }
    }
    assert!(
        rolled_back,
        "still {} after 2,000 requests",
        rollout(&s, "roll")
    );
    assert!(failed >= 20, "{failed} requests failed");
    let r = rollout(&s, "roll");
    let why = r["reason"].as_str().unwrap();
    assert!(why.contains("revision 2 failed"), "{why}");
    assert!(r["ended_at"].is_string());
    assert_eq!(split(&traffic(&s, "roll")), vec![(1, 100)]);
    // From now on every request is answered by the good revision.
    for _ in 0..200 {
        let resp = conn.request("GET", "/roll/x", &[], b"").expect("request");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("nubo-revision"), Some("1"));
    }
    // The CLI tells how it ended, and `--wait` on an ended rollout exits non-zero.
    let out = s.ok(&["rollout", "roll"]);
    assert!(out.contains("rolled back at 10%"), "{out}");
    let out = s.nubo(&["rollout", "roll", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let out = s.ok(&["traffic", "roll"]);
    assert!(out.contains("rollout 1 -> 2: rolled_back"), "{out}");
    assert!(s.stderr().contains("rollout rolled back"), "{}", s.stderr());
}

#[test]
fn a_rollout_resumes_after_a_restart_and_completes() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &["--no-traffic"]);
    s.ok(&[
        "rollout",
        "shop",
        "--to",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "2s",
    ]);
    assert_eq!(split(&traffic(&s, "shop")), vec![(2, 50), (1, 50)]);
    let dir = s.kill9();

    let s = Server::start_in(&dir, &[]);
    let r = rollout(&s, "shop");
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("running"), Some(0))
    );
    assert_eq!(split(&traffic(&s, "shop")), vec![(2, 50), (1, 50)]);
    assert!(s.stderr().contains("rollout resumed"), "{}", s.stderr());
    // `--wait` follows it to the end and exits 0 when it completes.
    let mut child = std::process::Command::new(nubo_bin())
        .args(["rollout", "shop", "--wait"])
        .env("NUBO_URL", s.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let r = rollout(&s, "shop");
    assert_eq!(r["state"], "completed");
    assert_eq!(split(&traffic(&s, "shop")), vec![(2, 100)]);
    let counts = count(s.addr, "/shop/x", 100);
    assert_eq!(counts.get(&2), Some(&100), "{counts:?}");
    // The log shows no compile: the revisions came from the compiled-artifact cache.
    assert!(!s.stderr().contains("compiled again"), "{}", s.stderr());
    drop(s);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn rollout_requests_are_checked_and_a_change_by_hand_aborts_one() {
    let s = Server::start();
    deploy_rev(&s, "shop", 1, &[]);
    deploy_rev(&s, "shop", 2, &["--no-traffic"]);
    let url = "/_nubo/api/v1/apps/shop/rollout";
    let post = |body: serde_json::Value| {
        http(
            s.addr,
            "POST",
            url,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    http(s.addr, "GET", url, &[], b"").assert_error(404, "rollout_not_found");
    let e = post(serde_json::json!({"to": 2, "steps": [50, 10, 100], "interval_ms": 60000}))
        .assert_error(400, "invalid_traffic");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("increasing order"),
        "{e}"
    );
    post(serde_json::json!({"to": 2, "steps": [10, 50], "interval_ms": 60000}))
        .assert_error(400, "invalid_traffic");
    post(serde_json::json!({"to": 9, "steps": [10, 100], "interval_ms": 60000}))
        .assert_error(404, "revision_not_found");
    post(serde_json::json!({"to": 2, "steps": [10, 100], "interval_ms": 60000, "expected_generation": 1}))
        .assert_error(409, "conflict");
    let out = s.nubo(&["rollout", "shop", "--to", "2", "--steps", "10,fifty"]);
    assert!(
        stderr_of(&out).contains("--steps 10,50,100"),
        "{}",
        stderr_of(&out)
    );

    let started = post(serde_json::json!({"to": 2, "steps": [20, 100], "interval_ms": 3600000}));
    assert_eq!(started.status, 201, "{}", started.text());
    assert_eq!(split(&started.json()), vec![(1, 80), (2, 20)]);
    post(serde_json::json!({"to": 2, "steps": [50, 100], "interval_ms": 60000}))
        .assert_error(409, "rollout_in_progress");
    // Setting the split by hand ends the rollout and keeps the new split.
    s.ok(&["traffic", "shop", "1=60", "2=40"]);
    let r = rollout(&s, "shop");
    assert_eq!(r["state"], "aborted");
    assert_eq!(split(&traffic(&s, "shop")), vec![(1, 60), (2, 40)]);
    let out = s.nubo(&["rollout", "shop", "--abort"]);
    assert!(
        stderr_of(&out).contains("rollout_not_found"),
        "{}",
        stderr_of(&out)
    );

    // `--abort` moves all traffic back to where the rollout started.
    s.ok(&["rollout", "shop", "--to", "2", "--interval", "1h"]);
    assert_eq!(split(&traffic(&s, "shop")), vec![(1, 90), (2, 10)]);
    let out = s.ok(&["rollout", "shop", "--abort"]);
    assert!(out.contains("aborted; traffic now 1=100%"), "{out}");
    assert_eq!(rollout(&s, "shop")["state"], "aborted");
}
