//! `nubo revisions`, `nubo traffic` and `nubo rollback`: an app's revisions and how its traffic
//! is split among them.

use crate::client::{Client, api_error, encode_query, read_body};
use anyhow::{Context as _, anyhow, bail};
use http::{HeaderValue, Method, StatusCode, header};
use nubo_core::api::v1::{
    ConflictBody, RevisionList, RollbackRequest, TrafficEntry, TrafficState, TrafficUpdate,
    WeightedRevision,
};
use serde::Serialize;
use std::collections::BTreeSet;
use std::process::ExitCode;

/// Digest characters shown in tables (enough to tell builds apart).
const SHORT_DIGEST: usize = 12;

pub(crate) async fn revisions(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: RevisionList = client
        .get(&format!(
            "/_nubo/api/v1/apps/{}/revisions",
            encode_query(app)
        ))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.revisions.is_empty() {
        println!("{app} has no retained revisions; deploy one with `nubo deploy DIR`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:<24}  {:<14}  {:>6}  {:<40}  CHANGES",
        "REVISION", "CREATED", "DEPLOYED BY", "WEIGHT", "CODE"
    );
    for r in &list.revisions {
        let code: Vec<String> = r
            .functions
            .iter()
            .map(|f| format!("{}:{}", f.name, short_digest(&f.digest)))
            .collect();
        println!(
            "{:>8}  {:<24}  {:<14}  {:>6}  {:<40}  {}",
            r.revision,
            r.created_at,
            r.deployed_by.as_deref().unwrap_or("local admin"),
            format!("{}%", r.weight),
            code.join(","),
            r.changes
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn show(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let state: TrafficState = client.get(&traffic_path(app)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print_state(&state);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn set(
    app: &str,
    split: &[String],
    expect: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let split = parse_split(app, split)?;
    let client = Client::from_env()?;
    let update = TrafficUpdate {
        split,
        expected_generation: expect,
    };
    let state = send_for_state(
        &client,
        Method::PUT,
        &traffic_path(app),
        &update,
        app,
        expect,
    )
    .await
    .with_context(|| format!("traffic of {app} unchanged"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!(
            "traffic of {app} set: {} (generation {})",
            format_split(&state.split),
            state.generation
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollback(
    app: &str,
    to: Option<u64>,
    expect: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let req = RollbackRequest {
        to,
        expected_generation: expect,
    };
    let state = send_for_state(
        &client,
        Method::POST,
        &format!("/_nubo/api/v1/apps/{}/rollback", encode_query(app)),
        &req,
        app,
        expect,
    )
    .await
    .with_context(|| format!("rollback of {app} not done; its traffic is unchanged"))?;
    match state.split.as_slice() {
        [only] => println!(
            "rolled back {app}: revision {} takes all traffic (generation {})",
            only.revision, state.generation
        ),
        split => println!(
            "rolled back {app}: {} (generation {})",
            format_split(split),
            state.generation
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn traffic_path(app: &str) -> String {
    format!("/_nubo/api/v1/apps/{}/traffic", encode_query(app))
}

/// Sends a JSON body and decodes the app's traffic state from the answer, explaining a 409.
pub(crate) async fn send_for_state(
    client: &Client,
    method: Method,
    path: &str,
    body: &impl Serialize,
    app: &str,
    expect: Option<u64>,
) -> anyhow::Result<TrafficState> {
    let bytes = serde_json::to_vec(body)?;
    let headers = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    let resp = client
        .send(method, path, nubo_core::full_body(bytes), &headers)
        .await?;
    let status = resp.status();
    let bytes = read_body(resp).await?;
    if status == StatusCode::CONFLICT {
        return Err(conflict_error(app, expect, &bytes, "change"));
    }
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("unexpected answer from the server for {path}"))
}

/// Explains a 409 answer: which generation was expected, which one the app is at, and its split.
pub(crate) fn conflict_error(
    app: &str,
    expect: Option<u64>,
    body: &[u8],
    what: &str,
) -> anyhow::Error {
    let Ok(c) = serde_json::from_slice::<ConflictBody>(body) else {
        return api_error(StatusCode::CONFLICT, body);
    };
    let now = c.current.generation;
    let split = format_split(&c.current.split);
    match expect {
        Some(g) => anyhow!(
            "{app} changed since generation {g}; it is now at generation {now}: {split}; rerun with --expect {now} (or without --expect) to apply the {what} anyway"
        ),
        None => anyhow!(
            "{} ({}); {app} is now at generation {now}: {split}; rerun to apply the {what} anyway",
            c.error.message,
            c.error.code
        ),
    }
}

/// Parses `REVISION=PERCENT` pairs, checking what can be checked without the server: the syntax,
/// each revision named once, each percent at most 100, and a sum of 100.
pub(crate) fn parse_split(app: &str, args: &[String]) -> anyhow::Result<Vec<WeightedRevision>> {
    let mut split = Vec::with_capacity(args.len());
    let mut seen = BTreeSet::new();
    for arg in args {
        let Some((rev, weight)) = arg.split_once('=') else {
            let example = match arg.trim().parse::<u64>() {
                Ok(n) => format!("{n}=100"),
                Err(_) => "12=90 13=10".to_string(),
            };
            bail!(
                "traffic entry {arg:?} must look like REVISION=PERCENT, like `nubo traffic {app} {example}`"
            );
        };
        let revision: u64 = rev.trim().parse().ok().filter(|r| *r > 0).ok_or_else(|| {
            anyhow!(
                "{rev:?} in {arg:?} is not a revision number; `nubo revisions {app}` lists them"
            )
        })?;
        let w = weight.trim();
        let w = w.strip_suffix('%').unwrap_or(w);
        let weight: u8 = w.parse().ok().filter(|w| *w <= 100).ok_or_else(|| {
            anyhow!("{weight:?} in {arg:?} is not a percent; use a whole number from 0 to 100")
        })?;
        if !seen.insert(revision) {
            bail!(
                "revision {revision} is named more than once; name each revision once with its whole share"
            );
        }
        split.push(WeightedRevision { revision, weight });
    }
    let sum: u32 = split.iter().map(|w| u32::from(w.weight)).sum();
    if sum != 100 {
        let mut hint = String::new();
        if let Some((last, rest)) = split.split_last() {
            let others: u32 = rest.iter().map(|w| u32::from(w.weight)).sum();
            if others <= 100 {
                let fixed: Vec<String> = rest
                    .iter()
                    .map(|w| format!("{}={}", w.revision, w.weight))
                    .chain(std::iter::once(format!(
                        "{}={}",
                        last.revision,
                        100 - others
                    )))
                    .collect();
                hint = format!(", like `nubo traffic {app} {}`", fixed.join(" "));
            }
        }
        bail!("the percents add up to {sum}, not 100; change them so they sum to 100{hint}");
    }
    Ok(split)
}

/// `13=90% 12=10%`.
pub(crate) fn format_split(split: &[TrafficEntry]) -> String {
    if split.is_empty() {
        return "no revision takes traffic".to_string();
    }
    split
        .iter()
        .map(|e| format!("{}={}%", e.revision, e.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_state(state: &TrafficState) {
    println!("{}: generation {}", state.app, state.generation);
    println!(
        "{:>8}  {:>6}  {:>12}  {:>10}  {:>10}",
        "REVISION", "SHARE", "REQUESTS 5m", "ERRORS 5m", "ERROR RATE"
    );
    for e in &state.split {
        let rate = if e.requests_5m == 0 {
            "-".to_string()
        } else {
            format!("{:.2}%", e.errors_5m as f64 * 100.0 / e.requests_5m as f64)
        };
        println!(
            "{:>8}  {:>6}  {:>12}  {:>10}  {:>10}",
            e.revision,
            format!("{}%", e.weight),
            e.requests_5m,
            e.errors_5m,
            rate
        );
    }
    if let Some(r) = &state.rollout {
        let step = r.steps.get(r.step).copied().unwrap_or(0);
        println!(
            "rollout {} -> {}: {} at step {} of {} ({step}%){}",
            r.from,
            r.to,
            r.state,
            r.step + 1,
            r.steps.len(),
            r.reason
                .as_deref()
                .map(|why| format!("; {why}"))
                .unwrap_or_default()
        );
    }
}

fn short_digest(d: &str) -> &str {
    d.get(..SHORT_DIGEST).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn err(a: &[&str]) -> String {
        format!("{:#}", parse_split("shop", &args(a)).unwrap_err())
    }

    #[test]
    fn parses_pairs_with_optional_percent_sign() {
        let s = parse_split("shop", &args(&["12=90", "13=10%"])).unwrap();
        assert_eq!(
            s,
            vec![
                WeightedRevision {
                    revision: 12,
                    weight: 90
                },
                WeightedRevision {
                    revision: 13,
                    weight: 10
                }
            ]
        );
        let s = parse_split("shop", &args(&["7=100"])).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn wrong_sum_names_the_sum_and_a_fix() {
        let e = err(&["12=90", "13=20"]);
        assert!(e.contains("add up to 110"), "{e}");
        assert!(e.contains("nubo traffic shop 12=90 13=10"), "{e}");
        let e = err(&["12=50"]);
        assert!(e.contains("add up to 50") && e.contains("12=100"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_entry() {
        let e = err(&["12:90"]);
        assert!(
            e.contains("\"12:90\"") && e.contains("REVISION=PERCENT"),
            "{e}"
        );
        let e = err(&["v12=90", "13=10"]);
        assert!(e.contains("not a revision number"), "{e}");
        let e = err(&["0=100"]);
        assert!(e.contains("not a revision number"), "{e}");
        let e = err(&["12=150"]);
        assert!(e.contains("from 0 to 100"), "{e}");
        let e = err(&["12=ninety"]);
        assert!(e.contains("\"ninety\""), "{e}");
    }

    #[test]
    fn a_revision_named_twice_is_refused() {
        let e = err(&["12=50", "12=50"]);
        assert!(e.contains("revision 12 is named more than once"), "{e}");
    }

    #[test]
    fn conflict_names_both_generations_and_the_split() {
        let body = serde_json::json!({
            "error": {"code": "conflict", "message": "stale"},
            "current": {"app": "shop", "generation": 9, "split": [
                {"revision": 13, "weight": 90, "requests_5m": 0, "errors_5m": 0},
                {"revision": 12, "weight": 10, "requests_5m": 0, "errors_5m": 0}
            ]}
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let e = conflict_error("shop", Some(7), &bytes, "change").to_string();
        assert!(e.contains("since generation 7"), "{e}");
        assert!(e.contains("now at generation 9: 13=90% 12=10%"), "{e}");
        assert!(e.contains("--expect 9"), "{e}");
    }
}
