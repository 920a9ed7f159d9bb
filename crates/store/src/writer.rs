//! The invocation record writer: one OS thread that drains the record channel in batches, writes
//! each batch in one transaction, prunes old rows now and then, and announces what it committed
//! to `logs -f` followers.
//!
//! It runs on its own thread (not a tokio task) because every step is blocking SQLite work, and
//! with its own connection (`synchronous=NORMAL`: records are telemetry, and a power loss may
//! cost the last moments of them but never corrupts the database).

use crate::records::{detect_level, invocation_record};
use crate::usage::{Meter, billed};
use crate::{Durability, Store, StoreError, time};
use nubo_core::api::v1::{InvocationRecord, LogLine};
use nubo_telemetry::{FinishedInvocation, Metrics, RecordSinkStats, StoreOp};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Most records written in one transaction. Bounds how long the writer holds the database's
/// write lock (a deploy waits behind it) and the memory of one batch.
pub const MAX_BATCH: usize = 4096;

/// How long the writer waits for more records after the first of a batch. Trades a little
/// `logs -f` latency for fewer, larger transactions when records trickle in.
pub const BATCH_LINGER: Duration = Duration::from_millis(20);

/// How often an idle writer wakes to see whether it was asked to stop. Bounds how long a clean
/// shutdown waits for an idle writer.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Most invocation records kept; older ones are pruned. Bounds disk use: without it a busy
/// function (or a client hammering one) would fill the disk with records.
pub const MAX_INVOCATION_ROWS: u64 = 100_000;

/// Most log lines kept; older ones are pruned. Bounds disk use: without it a chatty function
/// would exhaust the disk with its output.
pub const MAX_LOG_ROWS: u64 = 1_000_000;

/// Committed invocations buffered for each `logs -f` follower. Bounds the memory a slow
/// follower can pin; one that falls further behind gets `Lagged` and should catch up from the
/// database with its last cursor.
pub const BROADCAST_CAPACITY: usize = 1024;

/// Pruning runs after this fraction (1/N) of a limit has been written since the last prune, so
/// the tables exceed their limits by at most about 1% between prunes, and the delete work is
/// spread out instead of running on every batch.
const PRUNE_FRACTION: u64 = 100;

/// How many records and log lines the writer keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most invocation records kept.
    pub max_invocations: u64,
    /// Most log lines kept.
    pub max_log_lines: u64,
    /// Records and log lines older than this are pruned (`None`: kept until the counts
    /// above push them out).
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_invocations: MAX_INVOCATION_ROWS,
            max_log_lines: MAX_LOG_ROWS,
            max_age: None,
        }
    }
}

impl Retention {
    /// How often an age limit is applied while no records arrive: a tenth of the age, between
    /// 1 s and a minute.
    fn age_check_every(&self) -> Option<Duration> {
        self.max_age
            .map(|age| (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

/// Rows deleted per statement when pruning by age, so one prune never holds the write lock
/// long (a deploy or a record batch waits behind it).
const AGE_PRUNE_CHUNK: i64 = 5_000;

/// An invocation as committed to the database: its record, and its log lines with the cursors
/// they were stored under. Sent to followers after the transaction commits, so a follower that
/// then queries the database finds it.
#[derive(Debug, Clone)]
pub struct CommittedInvocation {
    /// The record.
    pub record: InvocationRecord,
    /// Log lines in order, each with its cursor.
    pub logs: Vec<(i64, LogLine)>,
}

/// Totals of the writer so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterCounts {
    /// Invocation records committed.
    pub written: u64,
    /// Invocation records that could not be written (logged with the reason).
    pub failed: u64,
    /// Log lines committed.
    pub log_lines: u64,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
    log_lines: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WriterCounts {
        WriterCounts {
            written: self.written.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            log_lines: self.log_lines.load(Ordering::Relaxed),
        }
    }
}

/// The running record writer. Dropping it (or calling [`RecordWriter::shutdown`]) writes
/// everything already queued and joins the thread; records sent after that are counted as
/// dropped by the sink.
#[derive(Debug)]
pub struct RecordWriter {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    followers: broadcast::Sender<Arc<CommittedInvocation>>,
}

impl RecordWriter {
    /// A receiver of every invocation committed from now on (`logs -f`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedInvocation>> {
        self.followers.subscribe()
    }

    /// Totals so far.
    pub fn counts(&self) -> WriterCounts {
        self.counters.snapshot()
    }

    /// Invocation records committed so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Invocation records that could not be written so far.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Writes every record already queued, stops the thread and returns the final totals.
    /// Blocking: on an async runtime, call it from `spawn_blocking`.
    pub fn shutdown(mut self) -> WriterCounts {
        self.stop_and_join();
        self.counters.snapshot()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the invocation record writer panicked; records still queued are lost");
        }
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Store {
    /// Starts the record writer on its own thread with the default [`Retention`].
    pub fn spawn_record_writer(
        &self,
        rx: Receiver<FinishedInvocation>,
    ) -> Result<RecordWriter, StoreError> {
        self.spawn_record_writer_with(rx, Retention::default())
    }

    /// Starts the record writer with explicit retention limits.
    pub fn spawn_record_writer_with(
        &self,
        rx: Receiver<FinishedInvocation>,
        retention: Retention,
    ) -> Result<RecordWriter, StoreError> {
        self.spawn_metered_record_writer(rx, retention, None)
    }

    /// Starts the record writer with explicit retention limits, metering usage with the
    /// settings of [`Store::configure_usage`]; records the sink counts in `dropped` are marked
    /// in the usage data as gaps. Each batch's transaction is timed when
    /// [`Store::time_commits`] was called before.
    pub fn spawn_metered_record_writer(
        &self,
        rx: Receiver<FinishedInvocation>,
        retention: Retention,
        dropped: Option<Arc<RecordSinkStats>>,
    ) -> Result<RecordWriter, StoreError> {
        let mut conn = crate::open_connection(&self.db_path, Durability::Normal)?;
        let meter = Meter::start(&mut conn, self.usage_settings(), dropped)
            .map_err(crate::error::db("starting the usage meter"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (followers, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut worker = Worker {
            conn,
            rx,
            stop: stop.clone(),
            counters: counters.clone(),
            followers: followers.clone(),
            retention,
            since_prune: (0, 0),
            last_prune: Instant::now(),
            meter,
            metrics: self.commit_timer(),
        };
        let thread = std::thread::Builder::new()
            .name("nubo-records".into())
            .spawn(move || worker.run())
            .map_err(StoreError::Spawn)?;
        Ok(RecordWriter {
            thread: Some(thread),
            stop,
            counters,
            followers,
        })
    }
}

struct Worker {
    conn: Connection,
    rx: Receiver<FinishedInvocation>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    followers: broadcast::Sender<Arc<CommittedInvocation>>,
    retention: Retention,
    /// Invocations and log lines written since the last prune.
    since_prune: (u64, u64),
    /// When the last prune ran (an age limit is applied at least this often).
    last_prune: Instant,
    /// Usage aggregates, run and gap markers.
    meter: Meter,
    /// Where each batch transaction is timed (`None`: not timed).
    metrics: Option<Arc<Metrics>>,
}

impl Worker {
    fn run(&mut self) {
        // Limits may have been lowered since the last run: apply them before adding more.
        self.prune();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.next_batch(&mut batch) {
            if !batch.is_empty() {
                self.write(&batch);
                batch.clear();
            }
            if self.meter.due() {
                self.meter.tick(&self.conn);
            }
            let (invocations, lines) = self.since_prune;
            if invocations >= (self.retention.max_invocations / PRUNE_FRACTION).max(1)
                || lines >= (self.retention.max_log_lines / PRUNE_FRACTION).max(1)
                || self.age_prune_due()
            {
                self.prune();
            }
        }
        // Leave the tables within their limits at rest.
        self.prune();
        self.meter.stop(&self.conn);
    }

    /// Fills `batch`; returns false when there is nothing left to do (asked to stop and the
    /// queue is empty, or every sender is gone).
    fn next_batch(&self, batch: &mut Vec<FinishedInvocation>) -> bool {
        loop {
            // Once asked to stop, take only what is already queued, without waiting.
            if self.stop.load(Ordering::Acquire) {
                match self.rx.try_recv() {
                    Ok(first) => batch.push(first),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
                }
                while batch.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                return true;
            }
            match self.rx.recv_timeout(IDLE_POLL) {
                Ok(first) => {
                    batch.push(first);
                    break;
                }
                // Idle: come back empty-handed when an age limit is due, so old rows go even
                // when nothing new arrives.
                Err(RecvTimeoutError::Timeout) if self.age_prune_due() || self.meter.due() => {
                    return true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        // Let the batch fill while this thread sleeps instead of waiting on the channel: a
        // receiver blocked in `recv` is woken by every send, which costs the request path a
        // futex wake and two context switches per invocation.
        // When the queue already holds a full batch, write it at once so the writer keeps up.
        self.drain_into(batch);
        if batch.len() < MAX_BATCH && !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(BATCH_LINGER);
            self.drain_into(batch);
        }
        true
    }

    /// Moves queued records into `batch` without waiting, up to [`MAX_BATCH`].
    fn drain_into(&self, batch: &mut Vec<FinishedInvocation>) {
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(rec) => batch.push(rec),
                Err(_) => break,
            }
        }
    }

    fn write(&mut self, batch: &[FinishedInvocation]) {
        // Building the followers' copies costs allocations per line; skip it when nobody listens.
        let collect = self.followers.receiver_count() > 0;
        // One clock pair per batch, failed or committed: a slow failure (a lock held too long)
        // is latency too.
        let timer = self.metrics.as_deref().map(|m| (m, Instant::now()));
        let written = write_batch(&mut self.conn, batch, collect, &mut self.meter);
        if let Some((metrics, started)) = timer {
            metrics.observe_store_operation(StoreOp::RecordsCommit, started.elapsed());
        }
        match written {
            Ok(committed) => {
                let lines: usize = batch.iter().map(|f| f.logs.len()).sum();
                self.counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.counters
                    .log_lines
                    .fetch_add(lines as u64, Ordering::Relaxed);
                self.since_prune.0 += batch.len() as u64;
                self.since_prune.1 += lines as u64;
                for c in committed {
                    // No followers is the normal case, not an error.
                    let _ = self.followers.send(c);
                }
            }
            Err(e) => {
                self.counters
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    records = batch.len(),
                    "cannot write invocation records; they are lost (check free disk space in the data directory)"
                );
            }
        }
    }

    /// Whether the age limit (if any) should be applied now.
    fn age_prune_due(&self) -> bool {
        self.retention
            .age_check_every()
            .is_some_and(|every| self.last_prune.elapsed() >= every)
    }

    fn prune(&mut self) {
        self.last_prune = Instant::now();
        match prune(&self.conn, self.retention) {
            Ok((invocations, lines)) => {
                if invocations + lines > 0 {
                    tracing::debug!(invocations, lines, "pruned old invocation records and logs");
                }
                self.since_prune = (0, 0);
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune old invocation records"),
        }
    }
}

/// Clamps an unsigned count to SQLite's signed integers.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn write_batch(
    conn: &mut Connection,
    batch: &[FinishedInvocation],
    collect: bool,
    meter: &mut Meter,
) -> rusqlite::Result<Vec<Arc<CommittedInvocation>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut committed = Vec::with_capacity(batch.len());
    {
        // OR IGNORE: a duplicate id (which ULIDs make practically impossible) must not cost the
        // whole batch.
        let mut insert_invocation = tx.prepare_cached(
            "INSERT OR IGNORE INTO invocations (id, app, function, revision, trigger,
                 started_at_us, duration_us, outcome, status, cold, bytes_in, bytes_out,
                 logs_truncated, init_ms, outbound_requests, outbound_bytes_out,
                 outbound_bytes_in, billed_ms, memory_limit_bytes, peak_memory_bytes,
                 cpu_time_us, kib_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22)",
        )?;
        let mut insert_log = tx.prepare_cached(
            "INSERT INTO logs (invocation_id, app, function, time_us, stream, line, level)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for fin in batch {
            let bill = billed(fin, meter.granularity());
            let mut record = invocation_record(fin);
            record.usage = crate::usage::invocation_usage(
                Some(bill.billed_ms),
                fin.memory_limit_bytes,
                fin.peak_memory_bytes,
                bill.kib_ms,
                bill.cpu_us,
            );
            insert_invocation.execute(params![
                record.id,
                record.app,
                record.function,
                signed(record.revision),
                record.trigger,
                time::to_micros(fin.started_at),
                signed(record.duration_us),
                record.outcome,
                record.status,
                record.cold,
                signed(record.bytes_in),
                signed(record.bytes_out),
                record.logs_truncated,
                record.init_ms.map(signed),
                signed(record.outbound_requests),
                signed(record.outbound_bytes_out),
                signed(record.outbound_bytes_in),
                signed(bill.billed_ms),
                fin.memory_limit_bytes.map(signed),
                fin.peak_memory_bytes.map(signed),
                bill.cpu_us.map(signed),
                bill.kib_ms.map(signed),
            ])?;
            let mut logs = Vec::with_capacity(fin.logs.len());
            for (i, entry) in fin.logs.iter().enumerate() {
                let stream = entry.stream.as_str();
                // The cut notice (the last line of a cut capture) is Nubo's own warning; a
                // function's lines name their level.
                let level = if fin.logs_truncated && i + 1 == fin.logs.len() {
                    Some("warn")
                } else {
                    detect_level(&entry.line)
                };
                insert_log.execute(params![
                    record.id,
                    record.app,
                    record.function,
                    time::to_micros(entry.time),
                    stream,
                    entry.line,
                    level,
                ])?;
                if !collect {
                    continue;
                }
                let cursor = tx.last_insert_rowid();
                logs.push((
                    cursor,
                    LogLine {
                        invocation_id: record.id.clone(),
                        app: record.app.clone(),
                        function: record.function.clone(),
                        time: time::format_rfc3339(entry.time),
                        stream: stream.to_string(),
                        line: entry.line.clone(),
                        level: level.map(str::to_string),
                        cursor: Some(cursor),
                    },
                ));
            }
            if collect {
                committed.push(Arc::new(CommittedInvocation { record, logs }));
            }
        }
    }
    meter.record_batch(&tx, batch)?;
    tx.commit()?;
    Ok(committed)
}

/// Deletes the oldest rows beyond the limits. Ids only grow (AUTOINCREMENT) and rows are only
/// deleted from the old end, so "more than N below the newest" is exactly "not among the
/// newest N".
fn prune(conn: &Connection, retention: Retention) -> rusqlite::Result<(usize, usize)> {
    let invocations = conn.execute(
        "DELETE FROM invocations WHERE seq <= (SELECT MAX(seq) FROM invocations) - ?1",
        [signed(retention.max_invocations)],
    )?;
    let lines = conn.execute(
        "DELETE FROM logs WHERE cursor <= (SELECT MAX(cursor) FROM logs) - ?1",
        [signed(retention.max_log_lines)],
    )?;
    let (old_invocations, old_lines) = match retention.max_age {
        Some(age) => prune_older(conn, age)?,
        None => (0, 0),
    };
    Ok((invocations + old_invocations, lines + old_lines))
}

/// Deletes records and log lines older than `age`, oldest first in chunks. Rows are appended
/// roughly in time order, so a look at the oldest row says whether there is anything to do
/// without scanning the table.
fn prune_older(conn: &Connection, age: Duration) -> rusqlite::Result<(usize, usize)> {
    let cutoff = time::to_micros(std::time::SystemTime::now())
        .saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX));
    let mut total = (0, 0);
    for (table, key, time, count) in [
        ("invocations", "seq", "started_at_us", &mut total.0),
        ("logs", "cursor", "time_us", &mut total.1),
    ] {
        loop {
            let oldest: Option<i64> = conn
                .query_row(
                    &format!("SELECT {time} FROM {table} ORDER BY {key} LIMIT 1"),
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if oldest.is_none_or(|t| t >= cutoff) {
                break;
            }
            let n = conn.execute(
                &format!(
                    "DELETE FROM {table} WHERE {key} IN \
                     (SELECT {key} FROM {table} WHERE {time} < ?1 ORDER BY {key} LIMIT ?2)"
                ),
                rusqlite::params![cutoff, AGE_PRUNE_CHUNK],
            )?;
            *count += n;
            if n == 0 {
                break;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::finished;
    use nubo_telemetry::MetricsLabels;

    #[test]
    fn each_batch_commit_is_timed_once_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Metrics::new(MetricsLabels::None);
        store.time_commits(metrics.clone());
        // Queued before the writer starts, so its first batch takes all three.
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        for _ in 0..3 {
            tx.send(finished("cart", &[])).unwrap();
        }
        let writer = store.spawn_record_writer(rx).unwrap();
        drop(tx);
        assert_eq!(writer.shutdown().written, 3);
        assert_eq!(crate::timed(&metrics, StoreOp::RecordsCommit), 1);
        assert_eq!(crate::timed(&metrics, StoreOp::EventsCommit), 0);
    }

    #[test]
    fn nothing_is_timed_without_a_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(finished("cart", &[])).unwrap();
        let writer = store.spawn_record_writer(rx).unwrap();
        // A registry set after the writer started is not the writer's.
        let metrics = Metrics::new(MetricsLabels::None);
        store.time_commits(metrics.clone());
        drop(tx);
        assert_eq!(writer.shutdown().written, 1);
        assert_eq!(crate::timed(&metrics, StoreOp::RecordsCommit), 0);
    }
}
