//! `nubo triggers APP`: the app's triggers in force and how each is doing.

use crate::client::Client;
use nubo_core::api::v1::{TriggerInfo, TriggerList};
use std::process::ExitCode;

/// The table's columns.
const HEADER: [&str; 10] = [
    "NAME", "KIND", "FUNCTION", "SOURCE", "STATE", "LAST", "NEXT", "BACKLOG", "FIRES", "ERRORS",
];

pub(crate) async fn run(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: TriggerList = client
        .get(&format!(
            "/_nubo/api/v1/apps/{}/triggers",
            crate::client::encode_query(app)
        ))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.triggers.is_empty() {
        println!(
            "app {} has no triggers; declare them as [[trigger.cron]], [[trigger.queue]], [[trigger.object]], [[trigger.mqtt]] or [[trigger.nats]] in its nubo.toml and deploy",
            list.app
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&list.triggers));
    for t in list.triggers.iter().filter(|t| t.last_error.is_some()) {
        println!(
            "{}: last error: {}",
            t.name,
            t.last_error.as_deref().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn row(t: &TriggerInfo) -> [String; 10] {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    [
        t.name.clone(),
        t.kind.clone(),
        t.function.clone(),
        t.source.clone(),
        t.state.clone(),
        or_dash(t.last_fire.as_deref()),
        or_dash(t.next_fire.as_deref()),
        t.backlog.map_or_else(|| "-".to_string(), |b| b.to_string()),
        t.fires.to_string(),
        t.errors.to_string(),
    ]
}

/// The triggers as a table: columns as wide as their widest cell, two spaces apart, numbers
/// right-aligned, no trailing spaces.
fn table(triggers: &[TriggerInfo]) -> String {
    let rows: Vec<[String; 10]> = triggers.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // BACKLOG, FIRES and ERRORS are numbers.
    let right = |i: usize| i >= 7;
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right(i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, kind: &str, source: &str) -> TriggerInfo {
        TriggerInfo {
            name: name.into(),
            kind: kind.into(),
            function: "api".into(),
            revision: 3,
            source: source.into(),
            state: "running".into(),
            last_fire: None,
            next_fire: Some("2030-01-01T00:05:00.000Z".into()),
            backlog: None,
            lag_ms: None,
            fires: 12,
            errors: 0,
            last_error: None,
            loops_stopped: 0,
            skipped: 0,
        }
    }

    #[test]
    fn the_table_lines_up_its_columns() {
        let mut q = info("orders", "queue", "orders");
        q.backlog = Some(1234);
        q.next_fire = None;
        q.last_fire = Some("2030-01-01T00:00:00.000Z".into());
        let text = table(&[info("tick", "cron", "*/5 * * * *"), q]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME    KIND   FUNCTION  SOURCE       STATE"));
        assert!(lines[0].ends_with("BACKLOG  FIRES  ERRORS"), "{}", lines[0]);
        assert!(lines[1].starts_with("tick    cron   api       */5 * * * *  running  -"));
        assert!(lines[1].ends_with("      -     12       0"), "{}", lines[1]);
        assert!(
            lines[2].contains("2030-01-01T00:00:00.000Z  -"),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("   1234     12       0"), "{}", lines[2]);
        let source_col = lines[0].find("SOURCE").unwrap();
        assert_eq!(lines[1].find("*/5").unwrap(), source_col);
        assert_eq!(lines[2].find(" orders ").unwrap() + 1, source_col);
    }
}
