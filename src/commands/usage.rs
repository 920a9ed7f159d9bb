//! `nubo usage`: usage and its cost as a table, CSV or JSON, and `nubo usage export`:
//! per-invocation usage records as JSON lines.

use crate::cli::{UsageArgs, UsageCommand};
use crate::client::{Client, api_error, encode_query};
use http::Method;
use http_body_util::BodyExt as _;
use nubo_core::api::v1::{UsageQuery, UsageReport, UsageRow};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

pub(crate) async fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(UsageCommand::Export {
            since,
            until,
            tenant,
            app,
            function,
            format: _,
        }) => {
            let q = UsageQuery {
                since: Some(since),
                until,
                tenant,
                app,
                function,
                by: None,
            };
            export(&q).await
        }
        None => {
            let q = UsageQuery {
                since: args.since,
                until: args.until,
                tenant: args.tenant,
                app: args.app,
                function: args.function,
                by: Some(args.by),
            };
            report(&q, &args.format).await
        }
    }
}

/// Checks `--since` and `--until` here too, so a typo is answered before any request.
fn check_times(q: &UsageQuery) -> anyhow::Result<()> {
    let now = SystemTime::now();
    for (flag, v) in [("--since", &q.since), ("--until", &q.until)] {
        if let Some(v) = v {
            nubo_store::usage::parse_time(v, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
    }
    Ok(())
}

/// The admin API query string of `q`.
fn query_string(q: &UsageQuery) -> String {
    let pairs = [
        ("since", &q.since),
        ("until", &q.until),
        ("tenant", &q.tenant),
        ("app", &q.app),
        ("function", &q.function),
        ("by", &q.by),
    ];
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_query(v))))
        .collect::<Vec<_>>()
        .join("&")
}

async fn report(q: &UsageQuery, format: &str) -> anyhow::Result<ExitCode> {
    check_times(q)?;
    let client = Client::from_env()?;
    let report: UsageReport = client
        .get(&format!("/_nubo/api/v1/usage?{}", query_string(q)))
        .await?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "csv" => {
            print!("{}", csv(&report));
            for g in &report.gaps {
                eprintln!("warning: {}", g.message);
            }
        }
        _ => print!("{}", table(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(q: &UsageQuery) -> anyhow::Result<ExitCode> {
    check_times(q)?;
    let client = Client::from_env()?;
    let path = format!(
        "/_nubo/api/v1/usage/export?format=jsonl&{}",
        query_string(q)
    );
    let resp = client
        .send(Method::GET, &path, nubo_core::empty_body(), &[])
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let body = crate::client::read_body(resp).await?;
        return Err(api_error(status, &body));
    }
    // Lines go out as they arrive: an export may be far larger than memory.
    let mut body = resp.into_body();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            anyhow::anyhow!("the usage export was cut short ({e}); run it again (ids let you drop the duplicates)")
        })?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Money with enough digits for per-request prices.
fn money(v: f64) -> String {
    if v == 0.0 {
        "$0".to_string()
    } else if v.abs() >= 0.01 {
        format!("${v:.2}")
    } else {
        format!("${v:.8}")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The key columns of a grouping.
fn key_header(by: &str) -> &'static [&'static str] {
    match by {
        "revision" => &["APP", "FUNCTION", "REVISION"],
        "tenant" => &["TENANT"],
        "day" => &["DAY"],
        "hour" => &["HOUR"],
        _ => &["APP", "FUNCTION"],
    }
}

fn key_cells(by: &str, r: &UsageRow) -> Vec<String> {
    let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    match by {
        "revision" => vec![
            s(&r.app),
            s(&r.function),
            r.revision.map_or_else(|| "-".into(), |v| v.to_string()),
        ],
        "tenant" => vec![s(&r.tenant)],
        "day" => vec![r.bucket.as_deref().map_or("-", |b| &b[..10]).to_string()],
        "hour" => vec![r.bucket.as_deref().map_or("-", |b| &b[..16]).to_string()],
        _ => vec![s(&r.app), s(&r.function)],
    }
}

const FIGURES: [&str; 8] = [
    "REQUESTS",
    "ERRORS",
    "THROTTLED",
    "COLD",
    "GB-S",
    "BYTES OUT",
    "COST",
    "COST/1K",
];

fn figure_cells(r: &UsageRow) -> Vec<String> {
    vec![
        r.requests.to_string(),
        r.errors.to_string(),
        r.throttles.to_string(),
        r.cold_starts.to_string(),
        format!("{:.6}", r.gb_seconds),
        bytes(r.bytes_out),
        money(r.cost.total),
        r.cost_per_1k.map_or_else(|| "-".into(), money),
    ]
}

/// The report as a table (numbers right-aligned), a total line, the prices, and a warning
/// line for each stretch whose usage may be undercounted.
fn table(report: &UsageReport) -> String {
    let keys = key_header(&report.by);
    let header: Vec<String> = keys.iter().chain(&FIGURES).map(|s| s.to_string()).collect();
    let mut rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            let mut cells = key_cells(&report.by, r);
            cells.extend(figure_cells(r));
            cells
        })
        .collect();
    let mut total = vec!["TOTAL".to_string()];
    total.extend(std::iter::repeat_n(String::new(), keys.len() - 1));
    total.extend(figure_cells(&report.total));
    rows.push(total);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!(
        "usage from {} to {} (per-{} data), by {}\n",
        report.from, report.until, report.resolution, report.by
    );
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i >= keys.len() {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let p = &report.prices;
    out.push_str(&format!(
        "prices: ${} per 1M requests, ${} per GB-s, ${} per GB out; billed in {} ms units\n",
        p.per_million_requests, p.per_gb_second, p.per_gb_out, report.billing_granularity_ms
    ));
    if report.total.unmetered_requests > 0 {
        out.push_str(&format!(
            "note: {} requests ran without a memory figure and count no GB-seconds\n",
            report.total.unmetered_requests
        ));
    }
    for g in &report.gaps {
        out.push_str(&format!("warning: {}\n", g.message));
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or newline.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The report as CSV: one line per row with raw numbers (no total line; sum the column).
fn csv(report: &UsageReport) -> String {
    let keys: &[&str] = match report.by.as_str() {
        "revision" => &["tenant", "app", "function", "revision"],
        "tenant" => &["tenant"],
        "day" | "hour" => &["bucket"],
        _ => &["tenant", "app", "function"],
    };
    let figures = [
        "requests",
        "errors",
        "throttles",
        "cold_starts",
        "duration_ms",
        "billed_ms",
        "gb_seconds",
        "bytes_in",
        "bytes_out",
        "outbound_requests",
        "cost",
        "cost_per_1k",
    ];
    let mut out = keys
        .iter()
        .chain(&figures)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in &report.rows {
        let mut cells: Vec<String> = match report.by.as_str() {
            "revision" => vec![
                r.tenant.clone().unwrap_or_default(),
                r.app.clone().unwrap_or_default(),
                r.function.clone().unwrap_or_default(),
                r.revision.map(|v| v.to_string()).unwrap_or_default(),
            ],
            "tenant" => vec![r.tenant.clone().unwrap_or_default()],
            "day" | "hour" => vec![r.bucket.clone().unwrap_or_default()],
            _ => vec![
                r.tenant.clone().unwrap_or_default(),
                r.app.clone().unwrap_or_default(),
                r.function.clone().unwrap_or_default(),
            ],
        };
        cells.extend([
            r.requests.to_string(),
            r.errors.to_string(),
            r.throttles.to_string(),
            r.cold_starts.to_string(),
            r.duration_ms.to_string(),
            r.billed_ms.to_string(),
            r.gb_seconds.to_string(),
            r.bytes_in.to_string(),
            r.bytes_out.to_string(),
            r.outbound_requests.to_string(),
            r.cost.total.to_string(),
            r.cost_per_1k.map(|c| c.to_string()).unwrap_or_default(),
        ]);
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_core::api::v1::{UsageCost, UsagePrices};

    fn sample(by: &str) -> UsageReport {
        let row = |revision: u64, requests: u64, total: f64| UsageRow {
            tenant: Some("default".into()),
            app: Some("shop".into()),
            function: Some("api,v2".into()),
            revision: Some(revision),
            requests,
            gb_seconds: 0.5,
            bytes_out: 2048,
            cost: UsageCost {
                total,
                ..UsageCost::default()
            },
            cost_per_1k: Some(total / requests as f64 * 1_000.0),
            ..UsageRow::default()
        };
        UsageReport {
            from: "2026-11-01T00:00:00.000Z".into(),
            until: "2026-11-02T00:00:00.000Z".into(),
            resolution: "minute".into(),
            by: by.into(),
            billing_granularity_ms: 1,
            prices: UsagePrices {
                per_million_requests: 0.2,
                per_gb_second: 0.0000166667,
                per_gb_out: 0.09,
            },
            rows: vec![row(1, 1_000, 0.5), row(2, 2_000, 0.25)],
            total: row(0, 3_000, 0.75),
            gaps: vec![nubo_core::api::v1::UsageGap {
                kind: "unclean_stop".into(),
                from: "a".into(),
                until: "b".into(),
                records: None,
                message: "usage between a and b may be incomplete: the server stopped without shutting down".into(),
            }],
            pruned_before: None,
        }
    }

    #[test]
    fn the_revision_table_shows_cost_per_thousand_side_by_side() {
        let t = table(&sample("revision"));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("APP"), "{t}");
        assert!(lines[1].contains("REVISION") && lines[1].ends_with("COST/1K"));
        assert!(
            lines[2].contains(" 1 ") && lines[2].ends_with("$0.50"),
            "{t}"
        );
        assert!(
            lines[3].contains(" 2 ") && lines[3].ends_with("$0.12"),
            "{t}"
        );
        assert!(lines[4].starts_with("TOTAL"));
        assert!(t.contains("2.0 KiB"));
        assert!(t.contains("warning: usage between a and b may be incomplete"));
    }

    #[test]
    fn the_tenant_table_keys_rows_by_tenant_and_prints_pruned_usage() {
        let mut report = sample("tenant");
        report.rows.truncate(1);
        report.gaps[0] = nubo_core::api::v1::UsageGap {
            kind: "pruned".into(),
            from: "a".into(),
            until: "b".into(),
            records: None,
            message: "usage before b is no longer kept (…); the report counts none of it".into(),
        };
        let t = table(&report);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("TENANT ") && lines[1].contains("REQUESTS"),
            "{t}"
        );
        assert!(lines[2].starts_with("default "), "{t}");
        assert!(
            t.contains("warning: usage before b is no longer kept"),
            "{t}"
        );
        let c = csv(&report);
        assert!(c.starts_with("tenant,requests,"), "{c}");
        assert!(
            c.lines().nth(1).unwrap().starts_with("default,1000,"),
            "{c}"
        );
    }

    #[test]
    fn csv_quotes_fields_and_keeps_raw_numbers() {
        let c = csv(&sample("revision"));
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("tenant,app,function,revision,requests"));
        assert!(
            lines[1].starts_with("default,shop,\"api,v2\",1,1000,"),
            "{c}"
        );
        assert!(lines[1].ends_with(",0.5,0.5"), "{c}");
        assert!(lines[2].ends_with(",0.25,0.125"), "{c}");
    }

    #[test]
    fn queries_are_encoded() {
        let q = UsageQuery {
            since: Some("2026-11-01T00:00:00+01:00".into()),
            app: Some("shop".into()),
            by: Some("day".into()),
            ..UsageQuery::default()
        };
        assert_eq!(
            query_string(&q),
            "since=2026-11-01T00%3A00%3A00%2B01%3A00&app=shop&by=day"
        );
    }
}
