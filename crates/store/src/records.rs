//! Queries over invocation records and log lines, answered as the admin API's wire types.

use crate::error::db;
use crate::{Store, StoreError, time};
use nubo_core::api::v1::{InvocationRecord, LogFilter, LogLine};
use nubo_telemetry::FinishedInvocation;
use rusqlite::{OptionalExtension, params};
use std::time::SystemTime;

/// Most rows one query returns; larger limits are lowered to it. Bounds the memory and time a
/// single admin request can make the server spend materializing records or logs.
pub const MAX_QUERY_ROWS: usize = 10_000;

/// The wire form of a finished invocation's record.
pub fn invocation_record(fin: &FinishedInvocation) -> InvocationRecord {
    InvocationRecord {
        id: fin.meta.id.to_string(),
        app: fin.meta.app.to_string(),
        function: fin.meta.function.to_string(),
        revision: fin.meta.revision,
        trigger: fin.meta.trigger.to_string(),
        started_at: time::format_rfc3339(fin.started_at),
        duration_us: u64::try_from(fin.duration.as_micros()).unwrap_or(u64::MAX),
        outcome: fin.outcome.as_str().to_string(),
        status: fin.status,
        cold: fin.cold,
        init_ms: fin.init_ms,
        outbound_requests: fin.outbound_requests,
        outbound_bytes_out: fin.outbound_bytes_out,
        outbound_bytes_in: fin.outbound_bytes_in,
        bytes_in: fin.bytes_in,
        bytes_out: fin.bytes_out,
        logs_truncated: fin.logs_truncated,
        // The record writer adds it: billing depends on the server's settings.
        usage: None,
    }
}

const INVOCATION_COLUMNS: &str = "id, app, function, revision, trigger, started_at_us, \
     duration_us, outcome, status, cold, bytes_in, bytes_out, logs_truncated, init_ms, \
     outbound_requests, outbound_bytes_out, outbound_bytes_in, billed_ms, memory_limit_bytes, \
     peak_memory_bytes, kib_ms, cpu_time_us";

const LOG_COLUMNS: &str = "cursor, invocation_id, app, function, time_us, stream, line, level";

/// The level of a log line written as a JSON object with a `level`, `severity` or `lvl` string
/// field (the first present wins), normalized by [`nubo_telemetry::normalize_level`]; `None`
/// for any other line. The record writer calls it, off the request path: parsing JSON costs
/// more than capturing the line did.
pub fn detect_level(line: &str) -> Option<&'static str> {
    let trimmed = line.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    let serde_json::Value::Object(obj) = serde_json::from_str(trimmed).ok()? else {
        return None;
    };
    ["level", "severity", "lvl"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(serde_json::Value::as_str))
        .and_then(nubo_telemetry::normalize_level)
}

/// The levels at or above `min`, by [`nubo_telemetry::LOG_LEVELS`]; empty when `min` is not
/// a level name (callers check the name first and answer a clear error).
fn levels_from(min: &str) -> &'static [&'static str] {
    let levels = &nubo_telemetry::LOG_LEVELS;
    match nubo_telemetry::normalize_level(min).and_then(|m| levels.iter().position(|l| *l == m)) {
        Some(at) => &levels[at..],
        None => &[],
    }
}

/// SQLite integers are signed; the writer clamps on the way in, so this only maps back.
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit.min(MAX_QUERY_ROWS)).unwrap_or(0)
}

fn invocation_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationRecord> {
    Ok(InvocationRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        function: row.get(2)?,
        revision: unsigned(row.get(3)?),
        trigger: row.get(4)?,
        started_at: time::format_micros(row.get(5)?),
        duration_us: unsigned(row.get(6)?),
        outcome: row.get(7)?,
        status: row
            .get::<_, Option<i64>>(8)?
            .and_then(|s| u16::try_from(s).ok()),
        cold: row.get(9)?,
        bytes_in: unsigned(row.get(10)?),
        bytes_out: unsigned(row.get(11)?),
        logs_truncated: row.get(12)?,
        init_ms: row.get::<_, Option<i64>>(13)?.map(unsigned),
        outbound_requests: unsigned(row.get(14)?),
        outbound_bytes_out: unsigned(row.get(15)?),
        outbound_bytes_in: unsigned(row.get(16)?),
        usage: {
            let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
                Ok(row.get::<_, Option<i64>>(i)?.map(unsigned))
            };
            crate::usage::invocation_usage(opt(17)?, opt(18)?, opt(19)?, opt(20)?, opt(21)?)
        },
    })
}

fn log_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, LogLine)> {
    Ok((
        row.get(0)?,
        LogLine {
            invocation_id: row.get(1)?,
            app: row.get(2)?,
            function: row.get(3)?,
            time: time::format_micros(row.get(4)?),
            stream: row.get(5)?,
            line: row.get(6)?,
            level: row.get(7)?,
            cursor: Some(row.get(0)?),
        },
    ))
}

impl Store {
    /// The most recent invocations of `app` (of one function when given), newest first, at most
    /// `limit` (and never more than [`MAX_QUERY_ROWS`]).
    pub fn invocations(
        &self,
        app: &str,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        let doing = "listing invocations";
        let conn = self.reader();
        let order = "ORDER BY started_at_us DESC, id DESC LIMIT";
        let rows = match function {
            Some(function) => conn
                .prepare_cached(&format!(
                    "SELECT {INVOCATION_COLUMNS} FROM invocations
                     WHERE app = ?1 AND function = ?2 {order} ?3"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![app, function, limit_sql(limit)], invocation_row)?
                        .collect::<Result<Vec<_>, _>>()
                }),
            None => conn
                .prepare_cached(&format!(
                    "SELECT {INVOCATION_COLUMNS} FROM invocations WHERE app = ?1 {order} ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![app, limit_sql(limit)], invocation_row)?
                        .collect::<Result<Vec<_>, _>>()
                }),
        };
        rows.map_err(db(doing))
    }

    /// One invocation and its log lines in the order they were written, or `None` when no
    /// record has that id (never written, or pruned).
    pub fn invocation(
        &self,
        id: &str,
    ) -> Result<Option<(InvocationRecord, Vec<LogLine>)>, StoreError> {
        let doing = "reading an invocation";
        let conn = self.reader();
        let record = conn
            .prepare_cached(&format!(
                "SELECT {INVOCATION_COLUMNS} FROM invocations WHERE id = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([id], invocation_row).optional())
            .map_err(db(doing))?;
        let Some(record) = record else {
            return Ok(None);
        };
        let logs = conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM logs WHERE invocation_id = ?1 ORDER BY cursor LIMIT ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![id, limit_sql(MAX_QUERY_ROWS)], log_row)?
                    .map(|r| r.map(|(_, line)| line))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db(doing))?;
        Ok(Some((record, logs)))
    }

    /// The newest `limit` log lines of `app` (of one function when given; never more than
    /// [`MAX_QUERY_ROWS`]), returned oldest first with their cursors: what `nubo logs` shows
    /// before following with [`Store::logs`] from the last cursor.
    pub fn recent_logs(
        &self,
        app: &str,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, LogLine)>, StoreError> {
        let conn = self.reader();
        let rows = match function {
            Some(function) => conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM logs WHERE app = ?1 AND function = ?2
                     ORDER BY cursor DESC LIMIT ?3"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![app, function, limit_sql(limit)], log_row)?
                        .collect::<Result<Vec<_>, _>>()
                }),
            None => conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM logs WHERE app = ?1 ORDER BY cursor DESC LIMIT ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![app, limit_sql(limit)], log_row)?
                        .collect::<Result<Vec<_>, _>>()
                }),
        };
        let mut rows = rows.map_err(db("reading recent logs"))?;
        rows.reverse();
        Ok(rows)
    }

    /// Log lines of `app` (of one function when given) written at or after `since` and, when
    /// given, after the line with cursor `after_cursor`; oldest first, at most `limit` (and
    /// never more than [`MAX_QUERY_ROWS`]). Each comes with its cursor: pass the last one back
    /// as `after_cursor` to continue where the previous call stopped.
    pub fn logs(
        &self,
        app: &str,
        function: Option<&str>,
        since: SystemTime,
        after_cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, LogLine)>, StoreError> {
        let doing = "reading logs";
        let conn = self.reader();
        let since = time::to_micros(since);
        let after = after_cursor.unwrap_or(0);
        let rows = match function {
            Some(function) => conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM logs
                     WHERE app = ?1 AND function = ?2 AND cursor > ?3 AND time_us >= ?4
                     ORDER BY cursor LIMIT ?5"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(
                        params![app, function, after, since, limit_sql(limit)],
                        log_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()
                }),
            None => conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM logs
                     WHERE app = ?1 AND cursor > ?2 AND time_us >= ?3
                     ORDER BY cursor LIMIT ?4"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![app, after, since, limit_sql(limit)], log_row)?
                        .collect::<Result<Vec<_>, _>>()
                }),
        };
        rows.map_err(db(doing))
    }

    /// Log lines of `app` that pass `filter`, written at or after `since` and after the line
    /// with cursor `after_cursor` when given; oldest first, at most `limit` (and never more
    /// than [`MAX_QUERY_ROWS`]), each with its cursor.
    ///
    /// A `level` that names no level matches no line. Every condition is SQL: the cursor-ordered indexes (by invocation, by function, by
    /// app) bound the scan, and `grep` is a case-sensitive substring match (`instr`).
    pub fn search_logs(
        &self,
        app: &str,
        filter: &LogFilter,
        since: SystemTime,
        after_cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, LogLine)>, StoreError> {
        use rusqlite::types::Value;
        let mut sql = format!(
            "SELECT {LOG_COLUMNS} FROM logs WHERE app = ?1 AND cursor > ?2 AND time_us >= ?3"
        );
        let mut args: Vec<Value> = vec![
            Value::Text(app.to_string()),
            Value::Integer(after_cursor.unwrap_or(0)),
            Value::Integer(time::to_micros(since)),
        ];
        let mut push = |sql: &mut String, clause: &str, value: Value| {
            args.push(value);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(f) = &filter.function {
            push(&mut sql, "function =", Value::Text(f.clone()));
        }
        if let Some(id) = &filter.invocation {
            push(&mut sql, "invocation_id =", Value::Text(id.clone()));
        }
        if let Some(text) = filter.grep.as_deref().filter(|t| !t.is_empty()) {
            push(&mut sql, "instr(line,", Value::Text(text.to_string()));
            sql.push_str(") > 0");
        }
        if let Some(min) = &filter.level {
            let levels = levels_from(min);
            if levels.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(" AND level IN (");
            for (i, level) in levels.iter().enumerate() {
                args.push(Value::Text((*level).to_string()));
                sql.push_str(&format!("{}?{}", if i > 0 { ", " } else { "" }, args.len()));
            }
            sql.push(')');
        }
        args.push(Value::Integer(limit_sql(limit)));
        sql.push_str(&format!(" ORDER BY cursor LIMIT ?{}", args.len()));
        self.reader()
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args), log_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db("searching logs"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nubo_core::{InvocationId, Outcome};
    use nubo_telemetry::{InvocationMeta, LogEntry, Stream};
    use std::time::{Duration, UNIX_EPOCH};

    /// A finished invocation of `shop`'s `function` that wrote `lines` to stdout.
    pub(crate) fn finished(function: &str, lines: &[&str]) -> FinishedInvocation {
        let started_at = UNIX_EPOCH + Duration::from_secs(1_000);
        FinishedInvocation {
            meta: InvocationMeta {
                id: InvocationId::new(),
                app: "shop".into(),
                function: function.into(),
                revision: 1,
                trigger: "http",
            },
            started_at,
            duration: Duration::from_micros(10),
            outcome: Outcome::Ok,
            status: Some(200),
            cold: false,
            init_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            outbound_requests: 0,
            outbound_bytes_out: 0,
            outbound_bytes_in: 0,
            memory_limit_bytes: None,
            peak_memory_bytes: None,
            cpu_time: None,
            dispatched_after: None,
            running_after: None,
            logs: lines
                .iter()
                .map(|line| LogEntry {
                    time: started_at,
                    stream: Stream::Stdout,
                    line: line.to_string(),
                })
                .collect(),
            logs_truncated: false,
        }
    }

    #[test]
    fn levels_are_read_from_json_lines_only() {
        assert_eq!(
            detect_level(r#"{"level":"ERROR","msg":"x"}"#),
            Some("error")
        );
        assert_eq!(detect_level(r#" {"severity":"Warning"} "#), Some("warn"));
        assert_eq!(detect_level(r#"{"lvl":"dbg"}"#), Some("debug"));
        assert_eq!(detect_level(r#"{"level":3}"#), None);
        assert_eq!(detect_level(r#"{"level":"loud"}"#), None);
        assert_eq!(detect_level(r#"["level","error"]"#), None);
        assert_eq!(detect_level("level=error plain text"), None);
        assert_eq!(detect_level("{not json}"), None);
    }

    #[test]
    fn search_applies_every_filter_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let writer = store.spawn_record_writer(rx).unwrap();
        let api = finished(
            "api",
            &[
                r#"{"level":"error","msg":"db down"}"#,
                "plain db line",
                r#"{"level":"info","msg":"ok"}"#,
            ],
        );
        let api_id = api.meta.id.to_string();
        tx.send(api).unwrap();
        tx.send(finished("web", &[r#"{"severity":"WARN","msg":"slow DB"}"#]))
            .unwrap();
        writer.shutdown();

        let search = |filter: LogFilter, after: Option<i64>| -> Vec<String> {
            store
                .search_logs("shop", &filter, UNIX_EPOCH, after, 100)
                .unwrap()
                .into_iter()
                .map(|(c, l)| {
                    assert_eq!(l.cursor, Some(c));
                    l.line
                })
                .collect()
        };
        let filter = |f: fn(&mut LogFilter)| {
            let mut filter = LogFilter::default();
            f(&mut filter);
            filter
        };
        assert_eq!(search(LogFilter::default(), None).len(), 4);
        assert_eq!(
            search(filter(|f| f.grep = Some("db".into())), None),
            [r#"{"level":"error","msg":"db down"}"#, "plain db line"]
        );
        assert_eq!(
            search(filter(|f| f.level = Some("warn".into())), None),
            [
                r#"{"level":"error","msg":"db down"}"#,
                r#"{"severity":"WARN","msg":"slow DB"}"#
            ]
        );
        assert_eq!(
            search(filter(|f| f.level = Some("trace".into())), None).len(),
            3,
            "lines without a level are left out"
        );
        assert!(search(filter(|f| f.level = Some("loud".into())), None).is_empty());
        assert_eq!(
            search(filter(|f| f.function = Some("web".into())), None).len(),
            1
        );
        let mut by_id = LogFilter {
            invocation: Some(api_id),
            ..LogFilter::default()
        };
        assert_eq!(search(by_id.clone(), None).len(), 3);
        by_id.grep = Some("ok".into());
        assert_eq!(search(by_id, None), [r#"{"level":"info","msg":"ok"}"#]);
        let all = store
            .search_logs("shop", &LogFilter::default(), UNIX_EPOCH, None, 2)
            .unwrap();
        assert_eq!(all.len(), 2, "limit");
        assert_eq!(
            search(LogFilter::default(), Some(all[1].0)).len(),
            2,
            "after"
        );
        let levels: Vec<Option<String>> = store
            .search_logs("shop", &LogFilter::default(), UNIX_EPOCH, None, 10)
            .unwrap()
            .into_iter()
            .map(|(_, l)| l.level)
            .collect();
        assert_eq!(
            levels,
            [
                Some("error".into()),
                None,
                Some("info".into()),
                Some("warn".into())
            ]
        );
    }
}
