//! Queries over invocation records and log lines, answered as the admin API's wire types.

use crate::error::db;
use crate::{Store, StoreError, time};
use nubo_core::api::v1::{InvocationRecord, LogLine};
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
    }
}

const INVOCATION_COLUMNS: &str = "id, app, function, revision, trigger, started_at_us, \
     duration_us, outcome, status, cold, bytes_in, bytes_out, logs_truncated, init_ms, \
     outbound_requests, outbound_bytes_out, outbound_bytes_in";

const LOG_COLUMNS: &str = "cursor, invocation_id, app, function, time_us, stream, line";

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
}
