//! Metering as a user sees it: `nubo usage` counts requests and errors and prices them with
//! the server's flags, `--by revision` puts revisions side by side, `nubo usage export` gives
//! each invocation once under a stable id, every app's usage is the `default` tenant's, a
//! `kill -9` leaves a visible gap, `--keep-usage-rows` prunes and the report says so, and bad
//! flags get clear errors.

use crate::support::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// An app with a function that answers and one that traps on every request.
fn app(echo: &Path, trap: &Path) -> tempfile::TempDir {
    app_dir(&format!(
        r#"[app]
name = "bill"

[function.echo]
source = "{}"
memory = "64MiB"

[function.trap]
source = "{}"

[[route]]
path = "/echo/..."
function = "echo"

[[route]]
path = "/trap/..."
function = "trap"
"#,
        echo.display(),
        trap.display()
    ))
}

fn usage_json(s: &Server, args: &[&str]) -> Value {
    let mut all = vec!["usage", "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&s.ok(&all)).unwrap()
}

/// Waits (bounded) until the report over the last hour counts `n` invocations (requests and
/// throttles): the record writer commits in batches.
fn wait_for(s: &Server, n: u64) -> Value {
    eventually(Duration::from_secs(15), || {
        let r = usage_json(s, &["--since", "1h"]);
        let seen =
            r["total"]["requests"].as_u64().unwrap() + r["total"]["throttles"].as_u64().unwrap();
        (seen >= n).then_some(r)
    })
}

fn get(s: &Server, path: &str) -> Resp {
    http(s.addr, "GET", path, &[], b"")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn usage_counts_prices_and_exports_invocations() {
    // Prices far from the defaults, so the check shows the flags are used.
    let s = Server::start_with(&[
        "--price-per-million-requests",
        "5",
        "--price-per-gb-second",
        "0.5",
        "--price-per-gb-out",
        "7",
        "--billing-granularity",
        "100ms",
    ]);
    let dir = app(&guest("echo"), &guest("trap"));
    s.deploy(dir.path());
    for i in 0..5 {
        let r = get(&s, &format!("/echo/hello?i={i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        assert_eq!(get(&s, "/trap/x").status, 500);
    }
    let r = wait_for(&s, 7);
    assert_eq!(r["by"], "function");
    assert_eq!(r["resolution"], "minute");
    assert_eq!(r["billing_granularity_ms"], 100);
    assert_eq!(r["total"]["requests"], 7, "{r:#}");
    assert_eq!(r["total"]["errors"], 2, "{r:#}");
    let rows = r["rows"].as_array().unwrap();
    let row = |function: &str| {
        rows.iter()
            .find(|x| x["app"] == "bill" && x["function"] == function)
            .unwrap_or_else(|| panic!("no row for {function}: {r:#}"))
    };
    assert_eq!(row("echo")["requests"], 5);
    assert_eq!(row("echo")["errors"], 0);
    assert_eq!(row("trap")["errors"], 2);
    // Every invocation is billed in whole 100 ms units.
    let billed = r["total"]["billed_ms"].as_u64().unwrap();
    assert!(billed >= 700 && billed.is_multiple_of(100), "{r:#}");
    // Cost is requests × price + GB-s × price + GB out × price, with the server's prices.
    let t = &r["total"];
    let out_bytes = t["bytes_out"].as_u64().unwrap() + t["outbound_bytes_out"].as_u64().unwrap();
    let want =
        7.0 / 1e6 * 5.0 + f(&t["gb_seconds"]) * 0.5 + out_bytes as f64 / (1u64 << 30) as f64 * 7.0;
    assert!((f(&t["cost"]["total"]) - want).abs() < 1e-12, "{r:#}");
    assert_eq!(f(&r["prices"]["per_gb_second"]), 0.5);

    // The export: one JSON line per invocation, ids unique, figures that add up to the report.
    let out = s.ok(&["usage", "export", "--since", "1h", "--format", "jsonl"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 7, "{out}");
    let ids: HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7, "ids are unique");
    assert!(lines.iter().all(|l| l["tenant"] == "default"), "{out}");
    let billed_sum: u64 = lines
        .iter()
        .map(|l| l["usage"]["billed_ms"].as_u64().unwrap())
        .sum();
    assert_eq!(billed_sum, billed);
    let gbs: f64 = lines
        .iter()
        .filter_map(|l| l["usage"]["gb_seconds"].as_f64())
        .sum();
    assert!((gbs - f(&t["gb_seconds"])).abs() < 1e-9, "{out}\n{r:#}");
    for l in &lines {
        let u = &l["usage"];
        // Where the runtime reported the limit, GB-s is billed seconds × GB (1 GB = 1024 MiB).
        if let Some(limit) = u["memory_limit_bytes"].as_u64() {
            let want = u["billed_ms"].as_u64().unwrap() as f64 / 1_000.0 * limit as f64
                / (1u64 << 30) as f64;
            assert!((f(&u["gb_seconds"]) - want).abs() < 1e-9, "{l}");
            if l["function"] == "echo" {
                assert_eq!(limit, 64 << 20, "{l}");
            }
        } else {
            assert!(u.get("gb_seconds").is_none(), "{l}");
        }
    }
    // The invocation record carries the same usage.
    let one = lines[0]["id"].as_str().unwrap();
    let detail = s.invocation(one);
    assert_eq!(detail["record"]["usage"], lines[0]["usage"], "{detail:#}");
    // The admin API streams JSON lines too, and filters.
    let api = get(&s, "/_nubo/api/v1/usage/export?since=1h&function=trap");
    assert_eq!(api.status, 200);
    assert_eq!(api.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(api.text().lines().count(), 2);

    // Every app belongs to the tenant `default` until tenants land.
    let by_tenant = usage_json(&s, &["--since", "1h", "--by", "tenant"]);
    let tenants = by_tenant["rows"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{by_tenant:#}");
    assert_eq!(tenants[0]["tenant"], "default");
    assert_eq!(tenants[0]["requests"], 7);
    assert!(rows.iter().all(|x| x["tenant"] == "default"), "{r:#}");
    let other = usage_json(&s, &["--since", "1h", "--tenant", "other"]);
    assert_eq!(other["total"]["requests"], 0, "{other:#}");
    let table = s.ok(&["usage", "--since", "1h", "--by", "tenant"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("TENANT")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("default ")), "{table}");
    let none = s.ok(&["usage", "export", "--since", "1h", "--tenant", "other"]);
    assert!(none.is_empty(), "{none}");

    // A second revision: `--by revision` shows both, each with its cost per 1,000.
    s.deploy(dir.path());
    for _ in 0..3 {
        assert_eq!(get(&s, "/echo/again").status, 200);
    }
    wait_for(&s, 10);
    let by_rev = usage_json(
        &s,
        &["--since", "1h", "--by", "revision", "--function", "echo"],
    );
    let revs: Vec<(u64, u64)> = by_rev["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["revision"].as_u64().unwrap(),
                x["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(revs, [(1, 5), (2, 3)], "{by_rev:#}");
    for x in by_rev["rows"].as_array().unwrap() {
        let per_1k = f(&x["cost_per_1k"]);
        let want = f(&x["cost"]["total"]) / x["requests"].as_u64().unwrap() as f64 * 1_000.0;
        assert!((per_1k - want).abs() < 1e-12, "{x}");
    }
    let table = s.ok(&[
        "usage", "--since", "1h", "--by", "revision", "--app", "bill",
    ]);
    assert!(
        table.contains("REVISION") && table.contains("COST/1K"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("TOTAL")), "{table}");
    let csv = s.ok(&["usage", "--since", "1h", "--format", "csv", "--by", "day"]);
    assert!(csv.starts_with("bucket,requests,errors"), "{csv}");
    // One line per UTC day (two when the test runs across midnight).
    let requests: u64 = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, 10, "{csv}");
    assert!(!table.contains("may be incomplete"), "{table}");
}

#[test]
fn a_kill_9_leaves_a_gap_marker_in_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_in(&data, &[]);
    let dir = app(&guest("echo"), &guest("trap"));
    s.deploy(dir.path());
    assert_eq!(get(&s, "/echo/one").status, 200);
    wait_for(&s, 1);
    // An orderly stop leaves no gap.
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{stderr}");
    let s = Server::start_in(&data, &[]);
    let table = s.ok(&["usage", "--since", "1h"]);
    assert!(!table.contains("may be incomplete"), "{table}");
    assert_eq!(get(&s, "/echo/two").status, 200);
    wait_for(&s, 2);

    let data = s.kill9();
    let s = Server::start_in(&data, &[]);
    let table = s.ok(&["usage", "--since", "1h"]);
    assert!(
        table.contains("may be incomplete: the server stopped without shutting down"),
        "{table}"
    );
    let report = usage_json(&s, &["--since", "1h"]);
    let gaps = report["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{report:#}");
    assert_eq!(gaps[0]["kind"], "unclean_stop");
    // Both invocations were committed before the kill and are still counted.
    assert_eq!(report["total"]["requests"], 2, "{report:#}");
}

#[test]
fn bad_usage_flags_get_clear_errors() {
    let s = Server::start();
    let out = s.nubo(&["usage", "--by", "week"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("week") && err.contains("revision"), "{err}");
    let out = s.nubo(&["usage", "--since", "yesterday"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--since") && err.contains("yesterday") && err.contains("RFC 3339"),
        "{err}"
    );
    let out = s.nubo(&["usage", "export", "--since", "1h", "--format", "csv"]);
    assert!(!out.status.success());
    // The admin API answers the same mistakes with 400 and a message.
    get(&s, "/_nubo/api/v1/usage?by=week").assert_error(400, "bad_request");
    let r = get(&s, "/_nubo/api/v1/usage/export?since=yesterday");
    let v = r.assert_error(400, "bad_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("since"),
        "{v}"
    );
    get(&s, "/_nubo/api/v1/usage/export?format=csv").assert_error(400, "bad_request");
    drop(s);

    // Server flags are checked before it starts.
    for (flag, value, says) in [
        ("--billing-granularity", "0ms", "1ms to 1m"),
        ("--billing-granularity", "2m", "1ms to 1m"),
        ("--price-per-gb-second", "-1", "zero or more"),
        ("--keep-usage-minutes", "7y", "unit"),
        ("--keep-usage-rows", "0", "from 1 to 1000000000"),
        ("--keep-usage-rows", "5000000000", "from 1 to 1000000000"),
        ("--keep-usage-rows", "many", "from 1 to 1000000000"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(nubo_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path())
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
}

#[test]
fn keep_usage_rows_prunes_the_aggregates_and_the_report_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_in(&data, &["--keep-usage-rows", "1"]);
    let dir = app(&guest("echo"), &guest("trap"));
    s.deploy(dir.path());
    // Two functions: two rows in each period's bucket, one more than the bound.
    assert_eq!(get(&s, "/echo/one").status, 200);
    assert_eq!(get(&s, "/trap/x").status, 500);
    // An orderly stop writes what is queued and then prunes.
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{stderr}");

    let s = Server::start_in(&data, &["--keep-usage-rows", "1"]);
    let report = usage_json(&s, &["--since", "1h"]);
    assert_eq!(report["total"]["requests"], 0, "{report:#}");
    assert!(report["pruned_before"].is_string(), "{report:#}");
    let gaps = report["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{report:#}");
    assert_eq!(gaps[0]["kind"], "pruned");
    let table = s.ok(&["usage", "--since", "1h"]);
    assert!(
        table.contains("is no longer kept") && table.contains("--keep-usage-rows 1"),
        "{table}"
    );
    // The per-invocation records keep their own retention.
    let out = s.ok(&["usage", "export", "--since", "1h"]);
    assert_eq!(out.lines().count(), 2, "{out}");
}
