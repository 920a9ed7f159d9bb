//! `/_nubo/metrics`: valid Prometheus text (checked by `promtool`), counters that move with
//! traffic, store commits timed by operation, the admin API's access rule, and a real
//! Prometheus scraping it.

use crate::support::*;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Labels a series may carry; anything else (an invocation id, a path) is a bug.
const ALLOWED_LABELS: [&str; 8] = [
    "app", "function", "revision", "outcome", "trigger", "runtime", "op", "le",
];

fn tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install it with `apt-get install -y prometheus` (scripts/test.sh does)"
    );
    path
}

/// Sample lines as (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("a number"))
        })
        .collect()
}

/// Sum of the samples named `name` whose labels include all of `want`.
fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn scrape(s: &Server) -> Resp {
    let r = http(s.addr, "GET", "/_nubo/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn promtool_check(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_are_valid_and_count_invocations() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    for i in 0..3 {
        let r = http(s.addr, "GET", &format!("/echo/hello?i={i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // An async invocation: accepted once its group commit is durable.
    let r = http(
        s.addr,
        "POST",
        "/echo/later",
        &[("nubo-invocation-type", "event")],
        b"later",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let ok = [
        ("app", "echo"),
        ("function", "echo"),
        ("outcome", "ok"),
        ("trigger", "http"),
    ];
    let commits = |text: &str, op: &str| {
        sum(
            text,
            "nubo_store_operation_duration_seconds_count",
            &[("op", op)],
        )
    };
    // A record is emitted when the response has ended; the counter follows right after. The
    // records reach the database in a later batch, and the async invocation runs later still.
    let async_ok = [("app", "echo"), ("outcome", "ok"), ("trigger", "async")];
    let text = eventually(Duration::from_secs(20), || {
        let text = scrape(&s).text();
        (sum(&text, "nubo_invocations_total", &ok) >= 3.0
            && sum(&text, "nubo_invocations_total", &async_ok) >= 1.0
            && commits(&text, "records_commit") > 0.0)
            .then_some(text)
    });
    let r = scrape(&s);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    promtool_check(&text);

    let echo = [("app", "echo"), ("function", "echo")];
    assert_eq!(sum(&text, "nubo_invocations_total", &ok), 3.0, "{text}");
    assert_eq!(
        sum(
            &text,
            "nubo_invocation_duration_seconds_count",
            &[("app", "echo"), ("function", "echo"), ("trigger", "http")]
        ),
        3.0,
        "{text}"
    );
    // Each store operation is its own series: the record writer's batches, the async group
    // commit, and the reads of the previous scrapes.
    assert!(commits(&text, "records_commit") > 0.0, "{text}");
    assert!(commits(&text, "events_commit") >= 1.0, "{text}");
    assert!(commits(&text, "scrape_read") >= 3.0, "{text}");
    assert!(
        samples(&text).iter().all(|(n, l, _)| !n
            .starts_with("nubo_store_operation_duration_seconds")
            || ["records_commit", "events_commit", "scrape_read"]
                .contains(&l.get("op").map_or("", String::as_str))),
        "{text}"
    );
    // Only a server exporting traces counts them.
    assert!(!text.contains("nubo_trace_"), "{text}");
    assert!(sum(&text, "nubo_cold_starts_total", &echo) >= 1.0, "{text}");
    assert_eq!(
        sum(&text, "nubo_deploys_total", &[("app", "echo")]),
        1.0,
        "{text}"
    );
    assert!(
        sum(&text, "nubo_process_resident_memory_bytes", &[]) > 0.0,
        "{text}"
    );
    assert!(
        samples(&text).iter().any(|(n, l, _)| n == "nubo_instances"
            && l.get("runtime").map(String::as_str) == Some("wasm")),
        "{text}"
    );
    for name in [
        "nubo_in_flight_invocations",
        "nubo_queued_invocations",
        "nubo_throttled_total",
        "nubo_async_backlog",
        "nubo_async_oldest_age_seconds",
        "nubo_store_operation_duration_seconds_count",
        "nubo_records_dropped_total",
        "nubo_wasm_linear_memory_bytes",
    ] {
        assert!(
            samples(&text).iter().any(|(n, _, _)| n == name),
            "{name} missing:\n{text}"
        );
    }
    for (name, labels, _) in samples(&text) {
        for key in labels.keys() {
            assert!(
                ALLOWED_LABELS.contains(&key.as_str()),
                "{name} carries label {key}"
            );
        }
    }
    assert!(!text.contains("/echo/hello"), "a path became a label");
    // Every instance has ended: none holds linear memory.
    assert_eq!(
        sum(&text, "nubo_wasm_linear_memory_bytes", &[]),
        0.0,
        "{text}"
    );
    // A sleeping instance holds its memory until it ends.
    let addr = s.addr;
    let sleeper = std::thread::spawn(move || http(addr, "GET", "/echo/sleep?ms=3000", &[], b""));
    let held = eventually(Duration::from_secs(20), || {
        let held = sum(&scrape(&s).text(), "nubo_wasm_linear_memory_bytes", &[]);
        (held > 0.0).then_some(held)
    });
    assert!(held >= 65_536.0, "at least one wasm page: {held}");
    assert_eq!(sleeper.join().unwrap().status, 200);
    eventually(Duration::from_secs(20), || {
        let held = sum(&scrape(&s).text(), "nubo_wasm_linear_memory_bytes", &[]);
        (held == 0.0).then_some(())
    });

    // A scraper that asks for OpenMetrics gets it.
    let r = http(
        s.addr,
        "GET",
        "/_nubo/metrics",
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
        b"",
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    assert!(r.text().ends_with("# EOF\n"), "{}", r.text());
}

#[test]
fn metrics_follow_the_admin_key() {
    let key = "metrics-test-key-0123456789abcdef";
    let tmp = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(nubo_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path())
            .env("NUBO_ADMIN_KEY", key)
            .env("NUBO_S3_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("nubo listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    http(addr, "GET", "/_nubo/metrics", &[], b"").assert_error(403, "forbidden");
    let bearer = format!("Bearer {key}");
    let r = http(
        addr,
        "GET",
        "/_nubo/metrics",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("# TYPE nubo_async_backlog gauge"),
        "{}",
        r.text()
    );
}

#[test]
fn telemetry_can_be_turned_off() {
    let s = Server::start_with(&["--no-telemetry"]);
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/echo/hello", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("nubo-invocation-id").unwrap().to_string();
    // The record and its usage are kept, without the CPU time that was not measured.
    let usage = s.invocation(&id)["record"]["usage"].clone();
    assert!(usage["billed_ms"].as_u64().unwrap() >= 1, "{usage}");
    assert!(usage["peak_memory_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage.get("cpu_time_us").is_none(), "{usage}");
    let r = http(s.addr, "GET", "/_nubo/metrics", &[], b"");
    r.assert_error(404, "not_found");
    assert!(r.text().contains("--no-telemetry"), "{}", r.text());

    // Traces need the telemetry it turns off: asking for both is refused before starting.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(nubo_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--no-telemetry"])
        .args(["--otlp-endpoint", "http://127.0.0.1:4318", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--no-telemetry") && err.contains("--otlp-endpoint"),
        "{err}"
    );
}

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_server() {
    let s = Server::start();
    let app = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    for _ in 0..2 {
        assert_eq!(http(s.addr, "GET", "/echo/hi", &[], b"").status, 200);
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: nubo\n    metrics_path: /_nubo/metrics\n    static_configs:\n      - targets: ['{}']\n",
            s.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = KillOnDrop(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let value = eventually(Duration::from_secs(90), || {
        // Not listening yet, or no sample yet: try again.
        std::net::TcpStream::connect(prom).ok()?;
        let r = http(
            prom,
            "GET",
            "/api/v1/query?query=nubo_invocations_total",
            &[],
            b"",
        );
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        let total: f64 = v["data"]["result"]
            .as_array()?
            .iter()
            .filter(|series| series["metric"]["app"] == "echo")
            .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
            .sum();
        (total >= 2.0).then_some(total)
    });
    assert_eq!(value, 2.0);
    drop(prometheus);
}
