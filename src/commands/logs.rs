//! `nubo logs APP[/FN] [-f] [--grep TEXT] [--level L] [--invocation ID] [--json]`: print
//! function log lines, filtered by the server; with -f keep streaming, and when the connection
//! drops, reconnect (bounded retries with backoff) from the last line printed, so no line is
//! shown twice or skipped.

use crate::cli::LogsArgs;
use crate::client::{Client, api_error, encode_query, read_body};
use crate::commands::split_target;
use anyhow::Context as _;
use http::Method;
use http_body_util::BodyExt;
use nubo_core::api::v1::LogFilter;
use std::process::ExitCode;
use std::time::Duration;

/// Reconnection attempts in a row before `-f` gives up. Bounds how long a follower spins
/// against a server that is gone for good (about a minute with [`MAX_BACKOFF`]).
const MAX_RECONNECTS: u32 = 15;
/// First wait before reconnecting; doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to ask the server for and how to print it.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogsQuery {
    /// The app.
    pub app: String,
    /// Function, invocation, text and level filters.
    pub filter: LogFilter,
    /// How far back to start (`10m`), when no line was printed yet.
    pub since: Option<String>,
    /// Print the API's JSON objects as they are.
    pub json: bool,
}

pub(crate) async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let (app, target_function) = split_target(&args.target, false)?;
    let function = match (target_function, args.function) {
        (Some(a), Some(b)) if a != b => anyhow::bail!(
            "the target names function {a:?} but --function names {b:?}; give one of them"
        ),
        (a, b) => a.or(b),
    };
    if let Some(s) = &args.since {
        nubo_core::parse_duration(s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    }
    let query = LogsQuery {
        app,
        filter: LogFilter {
            function,
            invocation: args.invocation,
            grep: args.grep,
            level: args.level,
        },
        since: args.since,
        json: args.json,
    };
    let client = Client::from_env()?;
    follow_query(&client, &query, args.follow).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints log lines of `app` (one function's when given); with `follow`, runs until the
/// process is interrupted or the server stays unreachable.
pub(crate) async fn stream(
    client: &Client,
    app: &str,
    function: Option<&str>,
    follow: bool,
    since: Option<&str>,
) -> anyhow::Result<()> {
    let query = LogsQuery {
        app: app.to_string(),
        filter: LogFilter {
            function: function.map(str::to_string),
            ..LogFilter::default()
        },
        since: since.map(str::to_string),
        json: false,
    };
    follow_query(client, &query, follow).await
}

/// The request path for `query`, continuing after `cursor` when a line was already printed.
fn request_path(query: &LogsQuery, follow: bool, cursor: Option<i64>) -> String {
    let mut path = format!(
        "/_nubo/api/v1/apps/{}/logs?follow={follow}",
        encode_query(&query.app)
    );
    let f = &query.filter;
    for (name, value) in [
        ("function", &f.function),
        ("invocation", &f.invocation),
        ("grep", &f.grep),
        ("level", &f.level),
    ] {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", encode_query(v)));
        }
    }
    match (cursor, &query.since) {
        (Some(c), _) => path.push_str(&format!("&after={c}")),
        (None, Some(s)) => path.push_str(&format!("&since={}", encode_query(s))),
        (None, None) => {}
    }
    path
}

/// Prints the lines `query` selects; with `follow`, keeps the stream open and resumes it
/// after the last printed cursor whenever it drops.
pub(crate) async fn follow_query(
    client: &Client,
    query: &LogsQuery,
    follow: bool,
) -> anyhow::Result<()> {
    let mut cursor: Option<i64> = None;
    let mut connected = false;
    let mut failures = 0u32;
    let mut out = std::io::stdout();
    loop {
        let path = request_path(query, follow, cursor);
        let problem = match client
            .send(Method::GET, &path, nubo_core::empty_body(), &[])
            .await
        {
            Err(e) if follow && connected => format!("{e:#}"),
            Err(e) => return Err(e),
            Ok(resp) if resp.status().is_server_error() && follow && connected => {
                format!("the server answered {}", resp.status())
            }
            Ok(resp) if !resp.status().is_success() => {
                let status = resp.status();
                let bytes = read_body(resp).await?;
                return Err(api_error(status, &bytes));
            }
            Ok(resp) => {
                connected = true;
                failures = 0;
                let ended = read_lines(resp.into_body(), &mut out, query.json, &mut cursor).await;
                if !follow {
                    return ended.context("the log stream was cut off");
                }
                match ended {
                    Ok(()) => "the log stream ended".to_string(),
                    Err(e) => format!("the log stream broke: {e:#}"),
                }
            }
        };
        failures += 1;
        if failures > MAX_RECONNECTS {
            anyhow::bail!(
                "{problem}; gave up after {MAX_RECONNECTS} reconnection attempts (is the server running at {}?)",
                client.base()
            );
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << (failures - 1).min(5))
            .min(MAX_BACKOFF);
        eprintln!(
            "[nubo] {problem}; reconnecting in {wait:?} from the last line shown (attempt {failures} of {MAX_RECONNECTS})"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Prints every complete line of `body`, advancing `cursor`; returns when the body ends.
async fn read_lines(
    mut body: hyper::body::Incoming,
    out: &mut impl std::io::Write,
    json: bool,
    cursor: &mut Option<i64>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the log stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            print_line(out, &line[..line.len() - 1], json, cursor)?;
        }
    }
    Ok(())
}

/// Prints one NDJSON line from the server unless it is a keep-alive or was already printed
/// (at or before `cursor`), and moves `cursor` to it.
fn print_line(
    out: &mut impl std::io::Write,
    line: &[u8],
    json: bool,
    cursor: &mut Option<i64>,
) -> anyhow::Result<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(()); // keep-alive
    }
    let v: serde_json::Value =
        serde_json::from_slice(line).context("malformed log line from the server")?;
    let this = v["cursor"].as_i64();
    if let (Some(this), Some(last)) = (this, *cursor)
        && this <= last
    {
        return Ok(());
    }
    if json {
        out.write_all(line)?;
        out.write_all(b"\n")?;
    } else {
        let id = v["invocation_id"].as_str().unwrap_or("");
        let level = match v["level"].as_str() {
            Some(l) => format!("[{l}] "),
            None => String::new(),
        };
        writeln!(
            out,
            "{} {}/{} {} {}{}{}",
            v["time"].as_str().unwrap_or(""),
            v["app"].as_str().unwrap_or(""),
            v["function"].as_str().unwrap_or(""),
            &id[id.len().saturating_sub(8)..],
            if v["stream"] == "stderr" {
                "[stderr] "
            } else {
                ""
            },
            level,
            v["line"].as_str().unwrap_or("")
        )?;
    }
    out.flush()?;
    if this.is_some() {
        *cursor = this;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_at_or_before_the_cursor_are_not_printed_again() {
        let mut out = Vec::new();
        let mut cursor = None;
        let line = |c: i64, text: &str| {
            format!(
                r#"{{"invocation_id":"01ABCDEFGH","app":"a","function":"f","time":"t","stream":"stdout","line":"{text}","cursor":{c}}}"#
            )
        };
        for (c, text) in [
            (1, "one"),
            (2, "two"),
            (2, "two again"),
            (1, "old"),
            (3, "three"),
        ] {
            print_line(&mut out, line(c, text).as_bytes(), false, &mut cursor).unwrap();
        }
        print_line(&mut out, b"   ", false, &mut cursor).unwrap();
        let text = String::from_utf8(out).unwrap();
        let shown: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(shown, ["one", "two", "three"]);
        assert_eq!(cursor, Some(3));
    }

    #[test]
    fn filters_travel_in_the_query_and_a_cursor_replaces_since() {
        let query = LogsQuery {
            app: "shop".into(),
            filter: LogFilter {
                function: Some("api".into()),
                invocation: None,
                grep: Some("needle".into()),
                level: Some("error".into()),
            },
            since: Some("1h".into()),
            json: true,
        };
        let first = request_path(&query, true, None);
        assert!(first.contains("function=api") && first.contains("grep=needle"));
        assert!(first.contains("level=error") && first.contains("since=1h"));
        let resumed = request_path(&query, true, Some(42));
        assert!(resumed.contains("after=42") && !resumed.contains("since="));
    }
}
