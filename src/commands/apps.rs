//! `nubo ls`, `nubo rm` and `nubo invocations`.

use crate::client::{Client, encode_query};
use http::Method;
use nubo_core::api::v1::{AppSummary, InvocationRecord};
use std::process::ExitCode;

pub(crate) async fn ls() -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let apps: Vec<AppSummary> = client.get("/_nubo/api/v1/apps").await?;
    if apps.is_empty() {
        println!("no apps deployed; deploy one with `nubo deploy DIR`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>8}  {:<24}  {:<30}  ROUTES",
        "APP", "REVISION", "DEPLOYED", "FUNCTIONS"
    );
    for a in apps {
        let routes: Vec<String> = a.routes.iter().map(|r| r.path.clone()).collect();
        println!(
            "{:<24} {:>8}  {:<24}  {:<30}  {}",
            a.name,
            a.revision,
            a.deployed_at,
            a.functions.join(","),
            routes.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rm(app: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let v: serde_json::Value = client
        .json(
            Method::DELETE,
            &format!("/_nubo/api/v1/apps/{}", encode_query(app)),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    println!(
        "removed app {app} (it was serving revision {})",
        v["removed_revision"]
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn invocations(
    app: &str,
    function: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut path = format!(
        "/_nubo/api/v1/apps/{}/invocations?limit={limit}",
        encode_query(app)
    );
    if let Some(f) = function {
        path.push_str(&format!("&function={}", encode_query(f)));
    }
    let recs: Vec<InvocationRecord> = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if recs.is_empty() {
        println!("no invocations recorded for {app}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<26}  {:<16} {:>4}  {:<24} {:>10}  {:<12} {:>6}  {:<4} {:>8} {:>8}",
        "ID", "FUNCTION", "REV", "STARTED", "DURATION", "OUTCOME", "STATUS", "COLD", "IN", "OUT"
    );
    for r in recs {
        println!(
            "{:<26}  {:<16} {:>4}  {:<24} {:>10}  {:<12} {:>6}  {:<4} {:>8} {:>8}",
            r.id,
            r.function,
            r.revision,
            r.started_at,
            format_us(r.duration_us),
            r.outcome,
            r.status.map_or("-".to_string(), |s| s.to_string()),
            if r.cold { "cold" } else { "warm" },
            r.bytes_in,
            r.bytes_out
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn format_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
