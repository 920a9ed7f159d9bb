//! `nubo invocations APP --status S`, `nubo invocation ID [--cancel]` and `nubo dlq APP`: async
//! invocations, their attempts, and an app's dead-letter queue.

use crate::client::{Client, encode_query};
use anyhow::Context as _;
use http::{HeaderValue, Method, header};
use nubo_core::api::v1::{
    AsyncInvocation, AsyncList, DlqChange, InvocationDetail, LogLine, RedriveRequest,
};
use std::process::ExitCode;

/// Characters of an error shown in a table cell.
const SHORT_ERROR: usize = 60;

pub(crate) async fn list(
    app: &str,
    function: Option<&str>,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut path = format!(
        "/_nubo/api/v1/apps/{}/async?limit={limit}",
        encode_query(app)
    );
    if let Some(s) = state {
        path.push_str(&format!("&state={}", encode_query(s)));
    }
    if let Some(f) = function {
        path.push_str(&format!("&function={}", encode_query(f)));
    }
    let list: AsyncList = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.invocations.is_empty() {
        match state {
            Some(s) => println!("{app} has no {s} async invocations"),
            None => println!(
                "{app} has no async invocations; queue one with `nubo invoke {app}/FUNCTION --async`"
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&list.invocations);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn show(id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let detail: InvocationDetail = client.get(&invocation_path(id)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(ExitCode::SUCCESS);
    }
    match (&detail.async_invocation, &detail.record) {
        (Some(a), _) => print_async(a),
        (None, Some(r)) => {
            println!(
                "invocation {} of {}/{} (revision {}, trigger {})",
                r.id, r.app, r.function, r.revision, r.trigger
            );
            println!("  outcome:   {}", r.outcome);
            println!(
                "  status:    {}",
                r.status.map_or("-".to_string(), |s| s.to_string())
            );
            println!("  started:   {}", r.started_at);
            println!("  duration:  {}µs", r.duration_us);
            match (r.cold, r.init_ms) {
                (true, Some(ms)) => println!("  start:     cold (worker started in {ms} ms)"),
                (true, None) => println!("  start:     cold"),
                (false, _) => println!("  start:     warm"),
            }
            println!("  bytes:     {} in, {} out", r.bytes_in, r.bytes_out);
            if let Some(u) = &r.usage {
                println!("  billed:    {}", usage_line(u));
            }
            if r.outbound_requests > 0 {
                println!(
                    "  outbound:  {} requests, {} bytes sent, {} received",
                    r.outbound_requests, r.outbound_bytes_out, r.outbound_bytes_in
                );
            }
            print_logs(&detail.logs, "");
            if r.logs_truncated {
                println!("  (log lines were cut at the per-invocation limit)");
            }
        }
        (None, None) => anyhow::bail!("the server's answer for invocation {id} holds nothing"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let a: AsyncInvocation = client
        .json(
            Method::DELETE,
            &invocation_path(id),
            nubo_core::empty_body(),
            &[],
        )
        .await
        .with_context(|| format!("invocation {id} not cancelled"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        println!(
            "cancelled async invocation {} of {}/{}; it will not run",
            a.id, a.app, a.function
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn dlq(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: AsyncList = client.get(&dlq_path(app)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.invocations.is_empty() {
        println!("the dead-letter queue of {app} is empty");
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&list.invocations);
    println!(
        "\n`nubo invocation ID` shows an invocation's attempts; `nubo dlq {app} --redrive [ID…]` queues them again once the function is fixed"
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn redrive(app: &str, ids: Vec<String>, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let req = RedriveRequest {
        ids: (!ids.is_empty()).then_some(ids),
    };
    let change: DlqChange = client
        .json(
            Method::POST,
            &format!("{}/redrive", dlq_path(app)),
            nubo_core::full_body(serde_json::to_vec(&req)?),
            &[(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
        )
        .await
        .with_context(|| format!("dead-letter queue of {app} not redriven"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&change)?);
    } else if change.redriven.is_empty() {
        println!("nothing to redrive: the dead-letter queue of {app} is empty");
    } else {
        println!(
            "queued again {} invocation(s) of {app}, attempts starting over: {}",
            change.redriven.len(),
            change.redriven.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn purge(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let change: DlqChange = client
        .json(Method::DELETE, &dlq_path(app), nubo_core::empty_body(), &[])
        .await
        .with_context(|| format!("dead-letter queue of {app} not purged"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&change)?);
    } else {
        println!(
            "purged {} failed invocation(s) from the dead-letter queue of {app}",
            change.purged
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn invocation_path(id: &str) -> String {
    format!("/_nubo/api/v1/invocations/{}", encode_query(id))
}

fn dlq_path(app: &str) -> String {
    format!("/_nubo/api/v1/apps/{}/dlq", encode_query(app))
}

fn print_table(list: &[AsyncInvocation]) {
    println!(
        "{:<26}  {:<16} {:<10} {:>8}  {:<24}  LAST ERROR",
        "ID", "FUNCTION", "STATE", "ATTEMPTS", "ENQUEUED"
    );
    for a in list {
        println!(
            "{:<26}  {:<16} {:<10} {:>8}  {:<24}  {}",
            a.id,
            a.function,
            a.state,
            format!("{}/{}", a.attempts, a.max_attempts),
            a.enqueued_at,
            a.last_error
                .as_deref()
                .map_or("-".to_string(), |e| one_line(e, SHORT_ERROR))
        );
    }
}

fn print_async(a: &AsyncInvocation) {
    println!(
        "async invocation {} of {}/{}: {}",
        a.id, a.app, a.function, a.state
    );
    println!(
        "  request:   {} {} ({} bytes)",
        a.method, a.path, a.body_bytes
    );
    println!("  attempts:  {} of at most {}", a.attempts, a.max_attempts);
    println!("  enqueued:  {}", a.enqueued_at);
    if let Some(d) = &a.due_at {
        println!("  next due:  {d}");
    }
    if let Some(f) = &a.finished_at {
        println!("  finished:  {f}");
    }
    println!("  expires:   {}", a.expires_at);
    if let Some(k) = &a.idempotency_key {
        println!("  key:       {k}");
    }
    if let Some(e) = &a.last_error {
        println!("  last error: {}", one_line(e, usize::MAX));
    }
    for t in &a.attempt_list {
        println!();
        println!(
            "attempt {}  revision {}  {}  {}ms  {}{}",
            t.attempt,
            t.revision,
            t.started_at,
            t.duration_ms,
            t.outcome,
            t.status.map_or(String::new(), |s| format!("  status {s}"))
        );
        if let Some(e) = &t.error {
            println!("  error: {}", one_line(e, usize::MAX));
        }
        print_logs(&t.logs, "  ");
    }
    println!();
    match (&a.body, &a.body_base64) {
        (Some(b), _) if b.is_empty() => println!("payload: empty"),
        (Some(b), _) => {
            println!("payload:");
            println!("{b}");
        }
        (None, Some(_)) => println!(
            "payload: {} bytes, not text (`--json` shows it in base64)",
            a.body_bytes
        ),
        (None, None) => println!("payload: {} bytes (not returned)", a.body_bytes),
    }
    match a.state.as_str() {
        "queued" => println!(
            "\n`nubo invocation {} --cancel` cancels it before it runs",
            a.id
        ),
        "failed" => println!(
            "\nit is in the dead-letter queue; `nubo dlq {} --redrive {}` queues it again",
            a.app, a.id
        ),
        _ => {}
    }
}

fn print_logs(logs: &[LogLine], indent: &str) {
    for l in logs {
        println!("{indent}{} [{}] {}", l.time, l.stream, l.line);
    }
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat.to_string()
    }
}

/// Billed time, then memory, GB-seconds and CPU time where they were measured:
/// `2 ms, 128 MiB given, 1.1 MiB peak, 0.00025 GB-s, cpu 0.4 ms`.
fn usage_line(u: &nubo_core::api::v1::InvocationUsage) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut parts = vec![format!("{} ms", u.billed_ms)];
    if let Some(b) = u.memory_limit_bytes {
        parts.push(format!("{:.0} MiB given", mib(b)));
    }
    if let Some(b) = u.peak_memory_bytes {
        parts.push(format!("{:.1} MiB peak", mib(b)));
    }
    if let Some(gbs) = u.gb_seconds {
        parts.push(format!("{gbs:.6} GB-s"));
    }
    if let Some(us) = u.cpu_time_us {
        parts.push(format!("cpu {:.1} ms", us as f64 / 1000.0));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory as _, Parser as _};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("nubo").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn async_options_combine_only_where_they_make_sense() {
        assert!(matches!(
            parse(&["invoke", "a/f", "--async", "--idempotency-key", "k"]),
            Ok(Command::Invoke { asynchronous: true, idempotency_key: Some(k), .. }) if k == "k"
        ));
        assert!(parse(&["invoke", "a/f", "--idempotency-key", "k"]).is_err());
        assert!(parse(&["invoke", "a/f", "--async", "--revision", "3"]).is_err());
        assert!(matches!(
            parse(&["invocations", "a", "--status", "failed"]),
            Ok(Command::Invocations { status: Some(s), .. }) if s == "failed"
        ));
        assert!(parse(&["invocations", "a", "--status", "lost"]).is_err());
        assert!(matches!(
            parse(&["dlq", "a", "--redrive", "X", "Y"]),
            Ok(Command::Dlq { redrive: true, ids, .. }) if ids == ["X", "Y"]
        ));
        assert!(parse(&["dlq", "a", "X"]).is_err());
        assert!(parse(&["dlq", "a", "--redrive", "--purge"]).is_err());
        assert!(matches!(
            parse(&["invocation", "X", "--cancel"]),
            Ok(Command::Invocation { cancel: true, .. })
        ));
    }

    #[test]
    fn errors_in_tables_stay_on_one_short_line() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdefgh", 4), "abc…");
        assert_eq!(one_line("  x  ", 4), "x");
    }
}
