//! `nubo rollout`: shift an app's traffic to a revision in timed steps, watch it, or stop it.

use crate::client::{Client, api_error, encode_query, read_body};
use crate::commands::traffic::{format_split, send_for_state};
use anyhow::{Context as _, anyhow};
use http::Method;
use nubo_core::api::v1::{RolloutRequest, RolloutStatus, TrafficState};
use std::process::ExitCode;
use std::time::Duration;

/// Steps when `--steps` is not given.
pub(crate) const DEFAULT_STEPS: &str = "10,50,100";
/// Step length when `--interval` is not given.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How often `--wait` looks at the rollout.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// What `nubo rollout APP --to N …` asks for.
pub(crate) struct Plan<'a> {
    pub to: u64,
    pub steps: &'a str,
    pub interval: Duration,
    pub error_ratio: Option<f64>,
    pub min_error_rate: Option<f64>,
    pub expect: Option<u64>,
}

fn rollout_path(app: &str) -> String {
    format!("/_nubo/api/v1/apps/{}/rollout", encode_query(app))
}

/// Parses `10,50,100` (a `%` after a number is allowed); the server checks the order and the
/// final 100 and names the fix.
fn parse_steps(text: &str) -> anyhow::Result<Vec<u8>> {
    text.split(',')
        .map(|p| {
            let p = p.trim();
            let n = p.strip_suffix('%').unwrap_or(p);
            n.parse::<u8>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
                anyhow!(
                    "step {p:?} in --steps {text:?} is not a percent from 1 to 100; list the shares in increasing order ending at 100, like --steps 10,50,100"
                )
            })
        })
        .collect()
}

pub(crate) async fn start(
    app: &str,
    plan: Plan<'_>,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let steps = parse_steps(plan.steps)?;
    let interval_ms = u64::try_from(plan.interval.as_millis()).unwrap_or(u64::MAX);
    let req = RolloutRequest {
        to: plan.to,
        steps,
        interval_ms,
        error_ratio: plan.error_ratio,
        min_error_rate: plan.min_error_rate,
        expected_generation: plan.expect,
    };
    let client = Client::from_env()?;
    let state = send_for_state(
        &client,
        Method::POST,
        &rollout_path(app),
        &req,
        app,
        plan.expect,
    )
    .await
    .with_context(|| format!("rollout of {app} not started; its traffic is unchanged"))?;
    if json && !wait {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    let r = rollout_of(&state)?;
    println!(
        "rolling out revision {} of {app} from revision {}: steps {}, {} each; now {}",
        r.to,
        r.from,
        steps_text(&r.steps),
        humantime(r.interval_ms),
        format_split(&state.split)
    );
    if wait {
        return follow(&client, app, r.clone(), json).await;
    }
    println!(
        "follow it with `nubo rollout {app} --wait`; stop it with `nubo rollout {app} --abort`"
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn show(app: &str, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let r: RolloutStatus = client.get(&rollout_path(app)).await?;
    if wait {
        return follow(&client, app, r, json).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_status(app, &r);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn abort(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let resp = client
        .send(
            Method::DELETE,
            &rollout_path(app),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    let status = resp.status();
    let bytes = read_body(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    let state: TrafficState =
        serde_json::from_slice(&bytes).context("unexpected answer from the server")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!(
            "rollout of {app} aborted; traffic now {}",
            format_split(&state.split)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rollout_of(state: &TrafficState) -> anyhow::Result<&RolloutStatus> {
    state.rollout.as_ref().ok_or_else(|| {
        anyhow!("the server answered without the rollout's state; is it an older nubo?")
    })
}

/// Prints each step as it comes and the end; the exit status says how it ended.
async fn follow(
    client: &Client,
    app: &str,
    mut last: RolloutStatus,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !json {
        print_status(app, &last);
    }
    while last.state == "running" {
        tokio::time::sleep(WAIT_POLL).await;
        let now: RolloutStatus = client.get(&rollout_path(app)).await?;
        if !json && (now.step != last.step || now.state != last.state) {
            print_status(app, &now);
        }
        last = now;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&last)?);
    }
    Ok(if last.state == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_status(app: &str, r: &RolloutStatus) {
    let percent = r.steps.get(r.step).copied().unwrap_or(0);
    match r.state.as_str() {
        "running" => println!(
            "{app}: revision {} at {percent}% (step {} of {}, started {}; {} of {} requests failed so far), the rest on revision {}",
            r.to,
            r.step + 1,
            r.steps.len(),
            r.step_started_at,
            r.step_errors,
            r.step_requests,
            r.from
        ),
        "completed" => println!(
            "{app}: revision {} takes all traffic; rollout completed",
            r.to
        ),
        state => println!(
            "{app}: rollout of revision {} {} at {percent}%; all traffic on revision {}{}",
            r.to,
            state.replace('_', " "),
            r.from,
            r.reason
                .as_deref()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default()
        ),
    }
}

fn steps_text(steps: &[u8]) -> String {
    steps
        .iter()
        .map(|s| format!("{s}%"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// `300000` → `5m`, `1500` → `1.5s`.
fn humantime(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{}s", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_with_optional_percent_signs() {
        assert_eq!(parse_steps("10,50,100").unwrap(), vec![10, 50, 100]);
        assert_eq!(parse_steps("25%, 100%").unwrap(), vec![25, 100]);
        let e = parse_steps("10,fifty,100").unwrap_err().to_string();
        assert!(
            e.contains("\"fifty\"") && e.contains("--steps 10,50,100"),
            "{e}"
        );
        assert!(parse_steps("0,100").is_err());
        assert!(parse_steps("10,150").is_err());
    }

    #[test]
    fn intervals_print_in_their_largest_whole_unit() {
        assert_eq!(humantime(300_000), "5m");
        assert_eq!(humantime(7_200_000), "2h");
        assert_eq!(humantime(2_000), "2s");
        assert_eq!(humantime(1_500), "1.5s");
    }
}
