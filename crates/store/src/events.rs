//! Durable async invocations ("events"): accepted by a group-commit writer thread, claimed by
//! delivery workers, retried with backoff, and kept in the app's dead-letter queue when every
//! attempt failed.
//!
//! Life of an event: `queued` → (claimed) `running` → `succeeded`, or back to `queued` with a
//! later `due_at` for a retry, or `failed` (the dead-letter queue) when its attempts or its age
//! ran out. A queued event can be `cancelled`. A failed one can be redriven (back to `queued`,
//! its attempts starting again) or purged.
//!
//! Invariants:
//! - An accepted event is durable before its submitter hears of it: the writer commits each
//!   batch with `synchronous=FULL` and only then answers.
//! - An event never disappears without a terminal state a person can see: a `running` event
//!   left by a crash goes back to `queued` at startup ([`Store::recover_events`]), so it runs
//!   again (at least once); finished events are pruned oldest first beyond
//!   [`MAX_FINISHED_EVENTS`], failed ones only when purged.
//! - An idempotency key names one event per (app, function) within the dedup window.

use crate::error::db;
use crate::{Durability, Store, StoreError, time};
use nubo_telemetry::{Metrics, StoreOp};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Most submissions committed in one transaction (one fsync).
pub const MAX_SUBMIT_BATCH: usize = 512;
/// Submissions that may wait for the writer; more are refused (the caller answers 429).
pub const SUBMIT_QUEUE: usize = 8192;
/// Finished (`succeeded` or `cancelled`) events kept; older ones are pruned with their
/// attempts. Failed events stay until purged or redriven.
pub const MAX_FINISHED_EVENTS: u64 = 100_000;
/// Longest stored error text of an attempt.
const MAX_ERROR_TEXT: usize = 1_000;

/// Where an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Waiting for its (next) attempt.
    Queued,
    /// An attempt is running.
    Running,
    /// An attempt succeeded.
    Succeeded,
    /// Every attempt failed, or it got too old: it is in the dead-letter queue.
    Failed,
    /// Cancelled while queued.
    Cancelled,
}

impl EventState {
    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Queued => "queued",
            EventState::Running => "running",
            EventState::Succeeded => "succeeded",
            EventState::Failed => "failed",
            EventState::Cancelled => "cancelled",
        }
    }

    /// Parses a name; `None` for an unknown one.
    pub fn parse(s: &str) -> Option<EventState> {
        Some(match s {
            "queued" => EventState::Queued,
            "running" => EventState::Running,
            "succeeded" => EventState::Succeeded,
            "failed" => EventState::Failed,
            "cancelled" => EventState::Cancelled,
            _ => return None,
        })
    }

    /// Every state, for error messages.
    pub const ALL: [EventState; 5] = [
        EventState::Queued,
        EventState::Running,
        EventState::Succeeded,
        EventState::Failed,
        EventState::Cancelled,
    ];
}

/// An event to accept.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its id (a ULID; it is also the id the submitter is answered with).
    pub id: String,
    /// The app.
    pub app: String,
    /// The function.
    pub function: String,
    /// The request to deliver: method, path with query, headers.
    pub method: String,
    /// Path and query the function sees.
    pub path: String,
    /// Request headers, as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload.
    pub body: Vec<u8>,
    /// Most attempts before it goes to the dead-letter queue.
    pub max_attempts: u32,
    /// How long after acceptance it may still be attempted.
    pub max_age: Duration,
    /// The submitter's idempotency key.
    pub idempotency_key: Option<String>,
    /// How long an idempotency key names this event.
    pub dedup_window: Duration,
}

/// What a submission got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The event's id: the new one, or for a repeated idempotency key the original's.
    pub id: String,
    /// True when the key was seen within the window and nothing new was stored.
    pub replay: bool,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its id.
    pub id: String,
    /// The app.
    pub app: String,
    /// The function.
    pub function: String,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload.
    pub body: Vec<u8>,
    /// Where it is.
    pub state: EventState,
    /// Attempts that ended (interrupted ones are not counted).
    pub attempts: u32,
    /// Most attempts.
    pub max_attempts: u32,
    /// When it was accepted.
    pub enqueued_at: SystemTime,
    /// When its next attempt is due (for a queued event).
    pub due_at: SystemTime,
    /// After this it is not attempted again.
    pub expires_at: SystemTime,
    /// When it reached a terminal state.
    pub finished_at: Option<SystemTime>,
    /// The submitter's idempotency key.
    pub idempotency_key: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// One stored attempt at an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1-based, over the event's whole life (a redriven event's attempts continue the count).
    pub attempt: u32,
    /// How it went.
    pub result: AttemptResult,
}

/// How an attempt went, as the worker reports it (the store numbers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The invocation record of this attempt.
    pub invocation_id: String,
    /// The revision that ran it.
    pub revision: u64,
    /// When it started.
    pub started_at: SystemTime,
    /// How long it ran.
    pub duration_ms: u64,
    /// `ok`, or the failure's outcome name.
    pub outcome: String,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// What follows an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// It succeeded.
    Succeeded,
    /// Try again at this time.
    RetryAt(SystemTime),
    /// Give up: to the dead-letter queue.
    DeadLetter,
}

/// Group-commits submitted events on its own thread and connection.
pub struct EventWriter {
    tx: Option<SyncSender<Submission>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter").finish_non_exhaustive()
    }
}

struct Submission {
    event: NewEvent,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// Why a submission was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The writer has [`SUBMIT_QUEUE`] submissions waiting.
    #[error("too many async submissions are waiting to be stored")]
    Busy,
    /// The writer stopped (the server is shutting down).
    #[error("the async event writer has stopped")]
    Stopped,
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventWriter {
    /// Submits an event; the answer comes once it is durable (or refused).
    pub async fn submit(&self, event: NewEvent) -> Result<Accepted, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        tx.try_send(Submission { event, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => SubmitError::Busy,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            })?;
        Ok(rx.await.map_err(|_| SubmitError::Stopped)??)
    }

    /// Stops taking submissions, commits what is waiting, and joins the thread.
    pub fn shutdown(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const COLUMNS: &str = "id, app, function, method, path, headers, body, state, attempts, \
     max_attempts, enqueued_at_ms, due_at_ms, expires_at_ms, finished_at_ms, idempotency_key, \
     last_error";

fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    // name \0 value \0 … — header names cannot hold NUL and values are bytes.
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn decode_headers(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut parts = bytes.split(|b| *b == 0);
    let mut out = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        if name.is_empty() {
            break;
        }
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}

fn decode(row: &Row<'_>) -> rusqlite::Result<Event> {
    let state: String = row.get(7)?;
    let num = |i: usize| -> rusqlite::Result<u32> {
        Ok(u32::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
    };
    Ok(Event {
        id: row.get(0)?,
        app: row.get(1)?,
        function: row.get(2)?,
        method: row.get(3)?,
        path: row.get(4)?,
        headers: decode_headers(&row.get::<_, Vec<u8>>(5)?),
        body: row.get(6)?,
        state: EventState::parse(&state).unwrap_or(EventState::Failed),
        attempts: num(8)?,
        max_attempts: num(9)?,
        enqueued_at: time::from_millis(row.get(10)?),
        due_at: time::from_millis(row.get(11)?),
        expires_at: time::from_millis(row.get(12)?),
        finished_at: row.get::<_, Option<i64>>(13)?.map(time::from_millis),
        idempotency_key: row.get(14)?,
        last_error: row.get(15)?,
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Stores one submission inside the writer's transaction.
fn insert(conn: &Connection, e: &NewEvent, now: i64) -> Result<Accepted, StoreError> {
    let doing = "storing an async invocation";
    if let Some(key) = &e.idempotency_key {
        let seen: Option<(String, i64)> = conn
            .query_row(
                "SELECT id, enqueued_at_ms FROM events
                 WHERE app = ?1 AND function = ?2 AND idempotency_key = ?3",
                params![e.app, e.function, key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db(doing))?;
        if let Some((id, at)) = seen {
            if now.saturating_sub(at) < ms(e.dedup_window) {
                return Ok(Accepted { id, replay: true });
            }
            // Outside the window: the key is free again.
            conn.execute(
                "UPDATE events SET idempotency_key = NULL WHERE id = ?1",
                [&id],
            )
            .map_err(db(doing))?;
        }
    }
    conn.execute(
        &format!(
            "INSERT INTO events ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 0, ?8, ?9, ?9, ?10, NULL, ?11, NULL)"
        ),
        params![
            e.id,
            e.app,
            e.function,
            e.method,
            e.path,
            encode_headers(&e.headers),
            e.body,
            i64::from(e.max_attempts.max(1)),
            now,
            now.saturating_add(ms(e.max_age)),
            e.idempotency_key
        ],
    )
    .map_err(db(doing))?;
    Ok(Accepted {
        id: e.id.clone(),
        replay: false,
    })
}

/// Commits submissions in batches; `metrics`, when set, times each batch's transaction.
fn writer_loop(mut conn: Connection, rx: Receiver<Submission>, metrics: Option<Arc<Metrics>>) {
    let mut batch: Vec<Submission> = Vec::with_capacity(MAX_SUBMIT_BATCH);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_SUBMIT_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let now = time::to_millis(SystemTime::now());
        let timer = metrics.as_deref().map(|m| (m, Instant::now()));
        let results = commit_batch(&mut conn, &batch, now);
        if let Some((metrics, started)) = timer {
            metrics.observe_store_operation(StoreOp::EventsCommit, started.elapsed());
        }
        for (s, r) in batch.drain(..).zip(results) {
            let _ = s.reply.send(r);
        }
    }
}

/// One transaction for the whole batch; a submission that fails on its own (say, a damaged
/// row) fails alone, a failed commit fails them all.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Submission],
    now: i64,
) -> Vec<Result<Accepted, StoreError>> {
    let doing = "committing async invocations";
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            return batch
                .iter()
                .map(|_| Err(db(doing)(clone_err(&e))))
                .collect();
        }
    };
    let mut results: Vec<Result<Accepted, StoreError>> = Vec::with_capacity(batch.len());
    for s in batch {
        // A savepoint per submission, so one failure does not undo the others (a savepoint
        // dropped without commit rolls back).
        let r = match tx.savepoint() {
            Ok(sp) => match insert(&sp, &s.event, now) {
                Ok(a) => sp.commit().map(|()| a).map_err(db(doing)),
                Err(e) => Err(e),
            },
            Err(e) => Err(db(doing)(e)),
        };
        results.push(r);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => batch
            .iter()
            .map(|_| Err(db(doing)(clone_err(&e))))
            .collect(),
    }
}

/// An error text cut to [`MAX_ERROR_TEXT`] bytes (on a character boundary).
fn error_text(e: &str) -> String {
    let mut e = e.to_string();
    if e.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
    }
    e
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        e.sqlite_error()
            .copied()
            .unwrap_or(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR)),
        Some(e.to_string()),
    )
}

impl Store {
    /// Starts the thread that group-commits async submissions, on its own `synchronous=FULL`
    /// connection. Each batch's transaction is timed when [`Store::time_commits`] was called
    /// before.
    pub fn spawn_event_writer(&self) -> Result<EventWriter, StoreError> {
        let conn = crate::open_connection(&self.db_path, Durability::Full)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBMIT_QUEUE);
        let metrics = self.commit_timer();
        let thread = std::thread::Builder::new()
            .name("nubo-events".into())
            .spawn(move || writer_loop(conn, rx, metrics))
            .map_err(StoreError::Spawn)?;
        Ok(EventWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// At startup: events whose attempt was cut short by a crash go back to `queued`, due now.
    /// Returns how many. The cut attempt is not counted.
    pub fn recover_events(&self) -> Result<u64, StoreError> {
        let n = self
            .writer()
            .execute(
                "UPDATE events SET state = 'queued', due_at_ms = ?1 WHERE state = 'running'",
                [time::to_millis(SystemTime::now())],
            )
            .map_err(db("recovering interrupted async invocations"))?;
        Ok(n as u64)
    }

    /// Events waiting or running (what the submission bound counts).
    pub fn pending_events(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .reader()
            .query_row(
                "SELECT count(*) FROM events WHERE state IN ('queued', 'running')",
                [],
                |row| row.get(0),
            )
            .map_err(db("counting async invocations"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The earliest time a queued event is due, if any is queued.
    pub fn next_event_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let t: Option<i64> = self
            .reader()
            .query_row(
                "SELECT min(due_at_ms) FROM events WHERE state = 'queued'",
                [],
                |row| row.get(0),
            )
            .map_err(db("reading the async queue"))?;
        Ok(t.map(time::from_millis))
    }

    /// Claims up to `limit` queued events due by now, oldest due first: each becomes
    /// `running`. `room(app, function)` is asked before each one is taken and says whether
    /// that function can take one more (the caller counts), so a batch never holds more of one
    /// function than it has room for.
    pub fn claim_events(
        &self,
        limit: usize,
        mut room: impl FnMut(&str, &str) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        let doing = "claiming async invocations";
        let now = time::to_millis(SystemTime::now());
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let mut out = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM events WHERE state = 'queued' AND due_at_ms <= ?1
                     ORDER BY due_at_ms, seq LIMIT ?2"
                ))
                .map_err(db(doing))?;
            // Read a few more than asked, as some may belong to busy functions.
            let want = i64::try_from(limit.saturating_mul(4).max(16)).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![now, want], decode)
                .map_err(db(doing))?;
            for row in rows {
                let e = row.map_err(db(doing))?;
                if !room(&e.app, &e.function) {
                    continue;
                }
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        for e in &mut out {
            tx.execute("UPDATE events SET state = 'running' WHERE id = ?1", [&e.id])
                .map_err(db(doing))?;
            e.state = EventState::Running;
        }
        tx.commit().map_err(db(doing))?;
        Ok(out)
    }

    /// Records an attempt of a running event and moves it on: succeeded, queued again for a
    /// retry, or failed (dead-letter queue). Returns the event as stored.
    pub fn finish_attempt(
        &self,
        id: &str,
        attempt: &AttemptResult,
        next: &Next,
    ) -> Result<Event, StoreError> {
        let doing = "recording an async attempt";
        let now = time::to_millis(SystemTime::now());
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let error = attempt.error.as_deref().map(error_text);
        tx.execute(
            "INSERT INTO event_attempts
                 (event_id, attempt, invocation_id, revision, started_at_ms, duration_ms, outcome,
                  status, error)
             VALUES (?1, (SELECT count(*) + 1 FROM event_attempts WHERE event_id = ?1),
                     ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                attempt.invocation_id,
                i64::try_from(attempt.revision).unwrap_or(i64::MAX),
                time::to_millis(attempt.started_at),
                i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
                attempt.outcome,
                attempt.status,
                error
            ],
        )
        .map_err(db(doing))?;
        let (state, due, finished) = match next {
            Next::Succeeded => ("succeeded", None, Some(now)),
            Next::RetryAt(t) => ("queued", Some(time::to_millis(*t)), None),
            Next::DeadLetter => ("failed", None, Some(now)),
        };
        tx.execute(
            "UPDATE events SET state = ?2, attempts = attempts + 1,
                 due_at_ms = coalesce(?3, due_at_ms), finished_at_ms = ?4,
                 last_error = coalesce(?5, last_error)
             WHERE id = ?1",
            params![id, state, due, finished, error],
        )
        .map_err(db(doing))?;
        let e = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM events WHERE id = ?1"),
                [id],
                decode,
            )
            .map_err(db(doing))?;
        tx.commit().map_err(db(doing))?;
        Ok(e)
    }

    /// Stores `ev` straight into the dead-letter queue (`failed`, no attempts, finished now,
    /// `error` as its last error), so a person sees it in `nubo dlq` and can redrive it. For an
    /// invocation that must not run, such as one of a trigger chain stopped for looping. Its
    /// idempotency key is not kept: it must not answer a later submission in its place. The
    /// commit is durable (`synchronous=FULL`) when this returns.
    pub fn dead_letter_event(&self, ev: &NewEvent, error: &str) -> Result<(), StoreError> {
        let now = time::to_millis(SystemTime::now());
        self.writer()
            .execute(
                &format!(
                    "INSERT INTO events ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'failed', 0, ?8, ?9, ?9, ?10, ?9, NULL,
                             ?11)"
                ),
                params![
                    ev.id,
                    ev.app,
                    ev.function,
                    ev.method,
                    ev.path,
                    encode_headers(&ev.headers),
                    ev.body,
                    i64::from(ev.max_attempts.max(1)),
                    now,
                    now.saturating_add(ms(ev.max_age)),
                    error_text(error)
                ],
            )
            .map_err(db("storing a dead-lettered async invocation"))?;
        Ok(())
    }

    /// Replaces the payload of a stored event, whatever its state (say, to narrow a batch to
    /// the records that failed before it is retried). Does nothing when there is no such
    /// event (it was purged or pruned meanwhile).
    pub fn set_event_body(&self, id: &str, body: &[u8]) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "UPDATE events SET body = ?2 WHERE id = ?1",
                params![id, body],
            )
            .map_err(db("replacing an async invocation's payload"))?;
        Ok(())
    }

    /// Puts a running event back in the queue without counting an attempt (its function was
    /// at its concurrency limit).
    pub fn requeue_event(&self, id: &str, due_at: SystemTime) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "UPDATE events SET state = 'queued', due_at_ms = ?2 WHERE id = ?1 AND state = 'running'",
                params![id, time::to_millis(due_at)],
            )
            .map_err(db("requeueing an async invocation"))?;
        Ok(())
    }

    /// One event with its attempts (oldest first).
    pub fn event(&self, id: &str) -> Result<Option<(Event, Vec<Attempt>)>, StoreError> {
        let doing = "reading an async invocation";
        let conn = self.reader();
        let Some(e) = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM events WHERE id = ?1"),
                [id],
                decode,
            )
            .optional()
            .map_err(db(doing))?
        else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT attempt, invocation_id, revision, started_at_ms, duration_ms, outcome,
                        status, error
                 FROM event_attempts WHERE event_id = ?1 ORDER BY attempt",
            )
            .map_err(db(doing))?;
        let attempts = stmt
            .query_map([id], |row| {
                Ok(Attempt {
                    attempt: u32::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    result: AttemptResult {
                        invocation_id: row.get(1)?,
                        revision: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                        started_at: time::from_millis(row.get(3)?),
                        duration_ms: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                        outcome: row.get(5)?,
                        status: row.get(6)?,
                        error: row.get(7)?,
                    },
                })
            })
            .map_err(db(doing))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db(doing))?;
        Ok(Some((e, attempts)))
    }

    /// Events of an app (optionally one function and one state), newest first.
    pub fn events(
        &self,
        app: &str,
        function: Option<&str>,
        state: Option<EventState>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let doing = "listing async invocations";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events
                 WHERE app = ?1 AND (?2 IS NULL OR function = ?2) AND (?3 IS NULL OR state = ?3)
                 ORDER BY seq DESC LIMIT ?4"
            ))
            .map_err(db(doing))?;
        stmt.query_map(
            params![
                app,
                function,
                state.map(EventState::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            decode,
        )
        .map_err(db(doing))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(doing))
    }

    /// Cancels a queued event. Returns its state after the call (`Cancelled`, or the state that
    /// kept it from being cancelled) and whether this call cancelled it; `None` when there is
    /// no such event.
    pub fn cancel_event(&self, id: &str) -> Result<Option<(EventState, bool)>, StoreError> {
        let doing = "cancelling an async invocation";
        let conn = self.writer();
        let changed = conn
            .execute(
                "UPDATE events SET state = 'cancelled', finished_at_ms = ?2
             WHERE id = ?1 AND state = 'queued'",
                params![id, time::to_millis(SystemTime::now())],
            )
            .map_err(db(doing))?;
        let state: Option<String> = conn
            .query_row("SELECT state FROM events WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db(doing))?;
        Ok(state
            .and_then(|s| EventState::parse(&s))
            .map(|s| (s, changed > 0)))
    }

    /// Sends failed events of `app` (all, or those in `ids`) back to the queue, due now, their
    /// attempts and age starting again; earlier attempts stay recorded. Returns the ids moved.
    pub fn redrive_events(
        &self,
        app: &str,
        ids: Option<&[String]>,
        retry: impl Fn(&str) -> (Duration, u32),
    ) -> Result<Vec<String>, StoreError> {
        let doing = "redriving async invocations";
        let now = time::to_millis(SystemTime::now());
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let failed: Vec<(String, String)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, function FROM events WHERE app = ?1 AND state = 'failed' ORDER BY seq",
                )
                .map_err(db(doing))?;
            stmt.query_map([app], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db(doing))?
                .collect::<Result<_, _>>()
                .map_err(db(doing))?
        };
        let mut moved = Vec::new();
        for (id, function) in failed {
            if ids.is_some_and(|ids| !ids.contains(&id)) {
                continue;
            }
            let (max_age, max_attempts) = retry(&function);
            tx.execute(
                "UPDATE events SET state = 'queued', attempts = 0, due_at_ms = ?2,
                     expires_at_ms = ?3, finished_at_ms = NULL, max_attempts = ?4
                 WHERE id = ?1",
                params![
                    id,
                    now,
                    now.saturating_add(ms(max_age)),
                    i64::from(max_attempts.max(1))
                ],
            )
            .map_err(db(doing))?;
            // Earlier attempts keep their numbers; new ones continue after them.
            moved.push(id);
        }
        tx.commit().map_err(db(doing))?;
        Ok(moved)
    }

    /// Deletes the failed events of `app` (its dead-letter queue) with their attempts. Returns
    /// how many.
    pub fn purge_dead_letters(&self, app: &str) -> Result<u64, StoreError> {
        let doing = "purging the dead-letter queue";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        tx.execute(
            "DELETE FROM event_attempts WHERE event_id IN
                 (SELECT id FROM events WHERE app = ?1 AND state = 'failed')",
            [app],
        )
        .map_err(db(doing))?;
        let n = tx
            .execute(
                "DELETE FROM events WHERE app = ?1 AND state = 'failed'",
                [app],
            )
            .map_err(db(doing))?;
        tx.commit().map_err(db(doing))?;
        Ok(n as u64)
    }

    /// Size of each app's dead-letter queue (its `failed` events), for apps with any, by app.
    pub fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let doing = "counting dead-lettered async invocations";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT app, count(*) FROM events WHERE state = 'failed' GROUP BY app ORDER BY app",
            )
            .map_err(db(doing))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(db(doing))?;
        rows.map(|r| {
            r.map(|(app, n)| (app, u64::try_from(n).unwrap_or(0)))
                .map_err(db(doing))
        })
        .collect()
    }

    /// When the oldest queued event was first submitted, if any is queued.
    pub fn oldest_queued_event(&self) -> Result<Option<SystemTime>, StoreError> {
        let t: Option<i64> = self
            .reader()
            .query_row(
                "SELECT min(enqueued_at_ms) FROM events WHERE state = 'queued'",
                [],
                |row| row.get(0),
            )
            .map_err(db("reading the age of the async queue"))?;
        Ok(t.map(time::from_millis))
    }

    /// Prunes finished events beyond `keep`, oldest first, with their attempts. Returns how
    /// many.
    pub fn prune_finished_events(&self, keep: u64) -> Result<u64, StoreError> {
        let doing = "pruning finished async invocations";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let cutoff: Option<i64> = tx
            .query_row(
                "SELECT seq FROM events WHERE state IN ('succeeded', 'cancelled')
                 ORDER BY seq DESC LIMIT 1 OFFSET ?1",
                [i64::try_from(keep).unwrap_or(i64::MAX)],
                |row| row.get(0),
            )
            .optional()
            .map_err(db(doing))?;
        let Some(cutoff) = cutoff else {
            return Ok(0);
        };
        tx.execute(
            "DELETE FROM event_attempts WHERE event_id IN (SELECT id FROM events
                 WHERE state IN ('succeeded', 'cancelled') AND seq <= ?1)",
            [cutoff],
        )
        .map_err(db(doing))?;
        let n = tx
            .execute(
                "DELETE FROM events WHERE state IN ('succeeded', 'cancelled') AND seq <= ?1",
                [cutoff],
            )
            .map_err(db(doing))?;
        tx.commit().map_err(db(doing))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, key: Option<&str>) -> NewEvent {
        NewEvent {
            id: id.into(),
            app: "shop".into(),
            function: "api".into(),
            method: "POST".into(),
            path: "/orders?x=1".into(),
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-bin".into(), vec![1, 2, 255]),
            ],
            body: b"{\"n\":1}".to_vec(),
            max_attempts: 2,
            max_age: Duration::from_secs(3600),
            idempotency_key: key.map(str::to_string),
            dedup_window: Duration::from_secs(3600),
        }
    }

    fn attempt(n: u32, outcome: &str) -> AttemptResult {
        AttemptResult {
            invocation_id: format!("inv{n}"),
            revision: 1,
            started_at: SystemTime::now(),
            duration_ms: 3,
            outcome: outcome.into(),
            status: Some(if outcome == "ok" { 200 } else { 500 }),
            error: (outcome != "ok").then(|| "boom".to_string()),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn submissions_are_durable_and_an_idempotency_key_is_answered_once() {
        let (dir, store) = store();
        let w = store.spawn_event_writer().unwrap();
        let a = w.submit(event("e1", Some("k"))).await.unwrap();
        assert_eq!(
            a,
            Accepted {
                id: "e1".into(),
                replay: false
            }
        );
        let b = w.submit(event("e2", Some("k"))).await.unwrap();
        assert_eq!(
            b,
            Accepted {
                id: "e1".into(),
                replay: true
            }
        );
        w.submit(event("e3", None)).await.unwrap();
        w.shutdown();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.pending_events().unwrap(), 2);
        let (e, attempts) = store.event("e1").unwrap().unwrap();
        assert_eq!(e.headers[1], ("x-bin".to_string(), vec![1, 2, 255]));
        assert_eq!(e.path, "/orders?x=1");
        assert_eq!(e.state, EventState::Queued);
        assert!(attempts.is_empty());
    }

    #[tokio::test]
    async fn each_group_commit_is_timed_once_when_asked() {
        let (_dir, store) = store();
        let metrics = Metrics::new(nubo_telemetry::MetricsLabels::None);
        store.time_commits(metrics.clone());
        let w = store.spawn_event_writer().unwrap();
        // Each submission waits for its answer, so each is a batch of its own.
        w.submit(event("e1", None)).await.unwrap();
        w.submit(event("e2", None)).await.unwrap();
        w.shutdown();
        assert_eq!(crate::timed(&metrics, StoreOp::EventsCommit), 2);
        assert_eq!(crate::timed(&metrics, StoreOp::RecordsCommit), 0);
    }

    #[tokio::test]
    async fn attempts_retry_then_dead_letter_then_redrive() {
        let (_dir, store) = store();
        let w = store.spawn_event_writer().unwrap();
        w.submit(event("e1", None)).await.unwrap();
        let claimed = store.claim_events(10, |_, _| true).unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(
            store.claim_events(10, |_, _| true).unwrap().is_empty(),
            "claimed once"
        );
        let later = SystemTime::now() + Duration::from_secs(60);
        let e = store
            .finish_attempt("e1", &attempt(1, "trap"), &Next::RetryAt(later))
            .unwrap();
        assert_eq!((e.state, e.attempts), (EventState::Queued, 1));
        assert!(
            store.claim_events(10, |_, _| true).unwrap().is_empty(),
            "not due yet"
        );
        store
            .finish_attempt("e1", &attempt(2, "trap"), &Next::DeadLetter)
            .unwrap();
        let dlq = store
            .events("shop", None, Some(EventState::Failed), 10)
            .unwrap();
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].last_error.as_deref(), Some("boom"));
        let moved = store
            .redrive_events("shop", None, |_| (Duration::from_secs(60), 3))
            .unwrap();
        assert_eq!(moved, vec!["e1".to_string()]);
        let claimed = store.claim_events(10, |_, _| true).unwrap();
        assert_eq!(claimed[0].attempts, 0);
        store
            .finish_attempt("e1", &attempt(3, "ok"), &Next::Succeeded)
            .unwrap();
        let (e, attempts) = store.event("e1").unwrap().unwrap();
        assert_eq!(e.state, EventState::Succeeded);
        assert_eq!(attempts.len(), 3);
        assert_eq!(store.pending_events().unwrap(), 0);
    }

    #[test]
    fn a_dead_lettered_event_is_in_the_failed_list_and_can_be_redriven() {
        let (_dir, store) = store();
        let long = "loop ".repeat(500);
        store
            .dead_letter_event(&event("e1", Some("k")), &long)
            .unwrap();
        assert_eq!(store.pending_events().unwrap(), 0, "never queued");
        let dlq = store
            .events("shop", None, Some(EventState::Failed), 10)
            .unwrap();
        assert_eq!(dlq.len(), 1);
        let e = &dlq[0];
        assert_eq!((e.id.as_str(), e.attempts), ("e1", 0));
        assert_eq!(e.body, b"{\"n\":1}");
        assert_eq!(e.headers[1], ("x-bin".to_string(), vec![1, 2, 255]));
        assert!(e.finished_at.is_some());
        assert_eq!(e.idempotency_key, None);
        let error = e.last_error.as_deref().unwrap();
        assert!(error.starts_with("loop ") && error.len() <= MAX_ERROR_TEXT);
        let (_, attempts) = store.event("e1").unwrap().unwrap();
        assert!(attempts.is_empty());

        let moved = store
            .redrive_events("shop", None, |_| (Duration::from_secs(60), 3))
            .unwrap();
        assert_eq!(moved, ["e1"]);
        assert_eq!(store.claim_events(10, |_, _| true).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_event_body_can_be_replaced() {
        let (_dir, store) = store();
        let w = store.spawn_event_writer().unwrap();
        w.submit(event("e1", None)).await.unwrap();
        store.set_event_body("e1", b"{\"records\":[2]}").unwrap();
        store.set_event_body("missing", b"x").unwrap();
        let (e, _) = store.event("e1").unwrap().unwrap();
        assert_eq!(e.body, b"{\"records\":[2]}");
        assert_eq!(e.state, EventState::Queued);
        let claimed = store.claim_events(10, |_, _| true).unwrap();
        assert_eq!(claimed[0].body, b"{\"records\":[2]}");
    }

    #[tokio::test]
    async fn a_crash_mid_attempt_queues_the_event_again_and_cancel_only_takes_queued() {
        let (_dir, store) = store();
        let w = store.spawn_event_writer().unwrap();
        w.submit(event("e1", None)).await.unwrap();
        w.submit(event("e2", None)).await.unwrap();
        // Room for one of shop/api only: the batch takes one although two are due.
        let mut left = 1;
        let room = |_: &str, f: &str| {
            let ok = f == "api" && left > 0;
            left -= usize::from(ok);
            ok
        };
        assert_eq!(store.claim_events(10, room).unwrap().len(), 1);
        assert_eq!(store.recover_events().unwrap(), 1);
        assert_eq!(
            store.cancel_event("e1").unwrap(),
            Some((EventState::Cancelled, true))
        );
        assert_eq!(
            store.cancel_event("e1").unwrap(),
            Some((EventState::Cancelled, false))
        );
        assert_eq!(store.claim_events(10, |_, _| true).unwrap().len(), 1);
        assert_eq!(
            store.cancel_event("e2").unwrap(),
            Some((EventState::Running, false))
        );
        assert_eq!(store.cancel_event("nope").unwrap(), None);
        store
            .finish_attempt("e2", &attempt(1, "ok"), &Next::Succeeded)
            .unwrap();
        assert_eq!(store.prune_finished_events(1).unwrap(), 1);
        assert!(
            store.event("e1").unwrap().is_none(),
            "the older one is pruned"
        );
        assert!(store.event("e2").unwrap().is_some());
    }
}
