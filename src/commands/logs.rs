//! `nubo logs APP[/FN] [-f]`: print function log lines; with -f keep streaming, reconnecting
//! from the last line seen if the connection drops.

use crate::client::{Client, api_error, encode_query, read_body};
use crate::commands::split_target;
use anyhow::Context as _;
use http::Method;
use http_body_util::BodyExt;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn run(
    target: &str,
    follow: bool,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (app, function) = split_target(target, false)?;
    if let Some(s) = since {
        nubo_core::parse_duration(s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    }
    let client = Client::from_env()?;
    stream(&client, &app, function.as_deref(), follow, since).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints log lines; with `follow`, runs until the process is interrupted.
pub(crate) async fn stream(
    client: &Client,
    app: &str,
    function: Option<&str>,
    follow: bool,
    since: Option<&str>,
) -> anyhow::Result<()> {
    let mut cursor: Option<i64> = None;
    loop {
        let mut path = format!(
            "/_nubo/api/v1/apps/{}/logs?follow={follow}",
            encode_query(app)
        );
        if let Some(f) = function {
            path.push_str(&format!("&function={}", encode_query(f)));
        }
        match (cursor, since) {
            (Some(c), _) => path.push_str(&format!("&after={c}")),
            (None, Some(s)) => path.push_str(&format!("&since={}", encode_query(s))),
            (None, None) => {}
        }
        let resp = match client
            .send(Method::GET, &path, nubo_core::empty_body(), &[])
            .await
        {
            Ok(r) => r,
            Err(e) if follow && cursor.is_some() => {
                eprintln!("[nubo] {e}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let status = resp.status();
        if !status.is_success() {
            let bytes = read_body(resp).await?;
            return Err(api_error(status, &bytes));
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        let mut out = std::io::stdout();
        let ended = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        pending.extend_from_slice(data);
                        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=pos).collect();
                            if let Some(c) = print_line(&mut out, &line[..line.len() - 1])? {
                                cursor = Some(c);
                            }
                        }
                    }
                }
            }
        };
        if !follow {
            return ended.context("the log stream was cut off");
        }
        eprintln!("[nubo] log stream ended; reconnecting from the last line seen");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_line(out: &mut impl std::io::Write, line: &[u8]) -> anyhow::Result<Option<i64>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None); // keep-alive
    }
    let v: serde_json::Value =
        serde_json::from_slice(line).context("malformed log line from the server")?;
    let id = v["invocation_id"].as_str().unwrap_or("");
    writeln!(
        out,
        "{} {}/{} {} {}{}",
        v["time"].as_str().unwrap_or(""),
        v["app"].as_str().unwrap_or(""),
        v["function"].as_str().unwrap_or(""),
        &id[id.len().saturating_sub(8)..],
        if v["stream"] == "stderr" {
            "[stderr] "
        } else {
            ""
        },
        v["line"].as_str().unwrap_or("")
    )?;
    out.flush()?;
    Ok(v["cursor"].as_i64())
}
