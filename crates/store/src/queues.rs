//! Built-in durable queues: named queues of messages that functions publish to and queue
//! triggers drain, first in, first out, with leases.
//!
//! A message is *visible* when its `visible_at` is not in the future. [`Queues::claim`] takes
//! visible messages in publish order and hides each for a lease (its `visible_at` moves to now
//! plus the lease); [`Queues::ack`] deletes a message that was handled; a message neither acked
//! nor released before its lease runs out becomes visible again, so delivery is at least once.
//! [`Queues::release`] makes a claimed message visible at a chosen time (a retry delay).
//!
//! Invariants:
//! - A publish has committed with `synchronous=FULL` when it returns: the messages survive a
//!   crash or power loss. A publish of several messages stores all of them or none.
//! - `queues.messages` is the number of the queue's message rows, changed in the same
//!   transaction as the rows; a publish that would take it past the queue's bound changes
//!   nothing.
//! - Message ids are ULIDs and never repeat; `seq` orders a queue and never goes backwards,
//!   so a released message keeps its place ahead of later ones.

use crate::pool::Pool;
use crate::{Durability, StoreError, time};
use nubo_core::ErrorCode;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, SystemTime};

/// Largest message body accepted, in bytes. Bounds the row and what one delivery carries
/// (SQS's limit is the same), so a publisher cannot make every claim of the queue huge.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Most messages one queue holds; a publish past it is refused. Bounds the disk a runaway
/// publisher (or a queue nobody drains) can take.
pub const MAX_QUEUE_MESSAGES: u64 = 1_000_000;

/// Most messages one claim returns. Bounds the memory of one answer.
pub const MAX_CLAIM: usize = 1_000;

/// Most queues one listing returns. Bounds the answer.
const MAX_QUEUES_LISTED: i64 = 10_000;

/// Longest content type accepted. Bounds the row; real ones are short.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Why a queue operation failed. Each message names the queue or the limit and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue was never created (or was deleted).
    #[error(
        "no queue {0:?}: declare it in the app's nubo.toml and deploy, or create it with `nubo queue create {0}`"
    )]
    NoSuchQueue(String),
    /// The queue holds its maximum of messages.
    #[error(
        "queue {queue:?} holds its maximum of {limit} messages; let its consumer catch up, or purge it with `nubo queue purge {queue}`"
    )]
    Full {
        /// The queue.
        queue: String,
        /// Most messages it may hold.
        limit: u64,
    },
    /// A message body over [`MAX_MESSAGE_BYTES`].
    #[error(
        "the message is {size} bytes, larger than the limit of {limit} bytes; store the payload in a bucket and publish its key"
    )]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A queue name outside the allowed alphabet, or a malformed content type.
    #[error("{0}")]
    InvalidName(String),
    /// The database failed.
    #[error(
        "queue database error while {0}: {1}; check that the data directory's disk is writable and not full"
    )]
    Db(&'static str, #[source] rusqlite::Error),
}

impl QueueError {
    /// The public error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueError::NoSuchQueue(_) => ErrorCode::NotFound,
            // A full queue drains as its consumer catches up: retrying later can succeed.
            QueueError::Full { .. } => ErrorCode::Throttled,
            QueueError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            QueueError::InvalidName(_) => ErrorCode::BadRequest,
            QueueError::Db(..) => ErrorCode::Internal,
        }
    }
}

fn db(doing: &'static str) -> impl Fn(rusqlite::Error) -> QueueError {
    move |e| QueueError::Db(doing, e)
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// The payload, at most [`MAX_MESSAGE_BYTES`].
    pub body: Vec<u8>,
    /// Its media type, handed to the consumer as is.
    pub content_type: Option<String>,
    /// The trigger hop count of the invocation that published it (0 from outside functions);
    /// the consumer's invocation runs one hop further.
    pub hop: u32,
}

/// A claimed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The queue.
    pub queue: String,
    /// Its id (a ULID), what [`Queues::ack`] and [`Queues::release`] take.
    pub id: String,
    /// Its place in the queue: later messages have larger numbers.
    pub seq: i64,
    /// The payload.
    pub body: Vec<u8>,
    /// Its media type, as published.
    pub content_type: Option<String>,
    /// The trigger hop count it was published at.
    pub hop: u32,
    /// The W3C `traceparent` of the invocation that published it, if it ran in a trace.
    pub traceparent: Option<String>,
    /// When it was published (millisecond precision).
    pub enqueued_at: SystemTime,
    /// How many times it was claimed, this claim included.
    pub receive_count: u32,
}

/// One queue's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// Messages it holds, visible or not.
    pub messages: u64,
    /// Messages not visible now: leased by a claim, or released with a delay.
    pub in_flight: u64,
    /// When the oldest message it holds was published.
    pub oldest_enqueued_at: Option<SystemTime>,
    /// Messages ever published to it.
    pub published: u64,
}

/// Handle on the durable queues of one data directory; cheap to clone, `Send + Sync`.
///
/// Every method blocks on SQLite: call them from `spawn_blocking` or a blocking thread. Every
/// operation on a queue that does not exist fails with [`QueueError::NoSuchQueue`], except
/// [`Queues::info`], which answers `None`.
#[derive(Clone)]
pub struct Queues {
    inner: Arc<Inner>,
    /// Most messages a queue holds: [`MAX_QUEUE_MESSAGES`], lowered by tests.
    max_messages: u64,
}

struct Inner {
    /// Connections of their own, writes `synchronous=FULL` (a publish is answered as durable).
    pool: Pool,
}

impl fmt::Debug for Queues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

const MESSAGE_COLUMNS: &str =
    "queue, id, seq, body, content_type, hop, enqueued_at_ms, receive_count, traceparent";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueMessage> {
    Ok(QueueMessage {
        queue: r.get(0)?,
        id: r.get(1)?,
        seq: r.get(2)?,
        body: r.get(3)?,
        content_type: r.get(4)?,
        hop: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        enqueued_at: time::from_millis(r.get(6)?),
        receive_count: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        traceparent: r.get(8)?,
    })
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Queues {
    /// Opens the queue connections on the (already migrated) database at `db_path`.
    pub(crate) fn new(db_path: &Path) -> Result<Queues, StoreError> {
        Ok(Queues {
            inner: Arc::new(Inner {
                pool: Pool::open(db_path, Durability::Full)?,
            }),
            max_messages: MAX_QUEUE_MESSAGES,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner.pool.writer()
    }

    /// Runs `f` in one write transaction and commits it.
    fn write_tx<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut conn = self.writer();
        // IMMEDIATE: take the write lock up front, so the transaction never has to upgrade
        // from a read and fail with "database is locked" halfway.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let out = f(&tx)?;
        tx.commit().map_err(db(doing))?;
        Ok(out)
    }

    /// Runs `f` in one read transaction, so its queries see one snapshot.
    fn read_tx<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut conn = self.inner.pool.reader();
        let tx = conn.transaction().map_err(db(doing))?;
        f(&tx)
    }

    /// Creates the queue; `true` when it was created now, `false` when it existed.
    pub fn create(&self, name: &str) -> Result<bool, QueueError> {
        const DOING: &str = "creating a queue";
        nubo_core::validate_name("queue", name)
            .map_err(|e| QueueError::InvalidName(e.to_string()))?;
        let now = time::to_millis(SystemTime::now());
        self.write_tx(DOING, |tx| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO queues (name, created_at_ms) VALUES (?1, ?2)",
                    params![name, now],
                )
                .map_err(db(DOING))?;
            Ok(n == 1)
        })
    }

    /// Deletes the queue and every message it holds; `true` when it existed.
    pub fn delete(&self, name: &str) -> Result<bool, QueueError> {
        const DOING: &str = "deleting a queue";
        self.write_tx(DOING, |tx| {
            tx.execute("DELETE FROM queue_messages WHERE queue = ?1", [name])
                .map_err(db(DOING))?;
            let n = tx
                .execute("DELETE FROM queues WHERE name = ?1", [name])
                .map_err(db(DOING))?;
            Ok(n == 1)
        })
    }

    /// Appends `msgs` to the queue, in order; returns their ids. Every message is checked
    /// before anything is stored, and they commit together (`synchronous=FULL`) before this
    /// returns, or none is stored.
    pub fn publish(&self, queue: &str, msgs: Vec<NewMessage>) -> Result<Vec<String>, QueueError> {
        self.publish_traced(queue, msgs, None)
    }

    /// [`Queues::publish`] by an invocation running in a trace: the messages keep its
    /// `traceparent`, so the deliveries they cause continue the trace.
    pub fn publish_traced(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
        traceparent: Option<&str>,
    ) -> Result<Vec<String>, QueueError> {
        const DOING: &str = "publishing to a queue";
        for m in &msgs {
            if m.body.len() > MAX_MESSAGE_BYTES {
                return Err(QueueError::TooLarge {
                    size: m.body.len(),
                    limit: MAX_MESSAGE_BYTES,
                });
            }
            if let Some(ct) = &m.content_type
                && (ct.len() > MAX_CONTENT_TYPE_BYTES || ct.chars().any(char::is_control))
            {
                return Err(QueueError::InvalidName(format!(
                    "invalid message content type: use at most {MAX_CONTENT_TYPE_BYTES} bytes without control characters"
                )));
            }
        }
        let now = time::to_millis(SystemTime::now());
        let added = msgs.len() as u64;
        self.write_tx(DOING, |tx| {
            let held = require_queue(tx, queue)?;
            if held.saturating_add(added) > self.max_messages {
                return Err(QueueError::Full {
                    queue: queue.to_string(),
                    limit: self.max_messages,
                });
            }
            let mut ids = Vec::with_capacity(msgs.len());
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO queue_messages
                         (queue, id, body, content_type, hop, enqueued_at_ms, visible_at_ms,
                          traceparent)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                    )
                    .map_err(db(DOING))?;
                for m in &msgs {
                    let id = ulid::Ulid::new().to_string();
                    insert
                        .execute(params![
                            queue,
                            id,
                            m.body,
                            m.content_type,
                            m.hop,
                            now,
                            traceparent
                        ])
                        .map_err(db(DOING))?;
                    ids.push(id);
                }
            }
            let added = i64::try_from(added).unwrap_or(i64::MAX);
            tx.execute(
                "UPDATE queues SET messages = messages + ?2, published = published + ?2
                 WHERE name = ?1",
                params![queue, added],
            )
            .map_err(db(DOING))?;
            Ok(ids)
        })
    }

    /// Claims up to `max` (at most [`MAX_CLAIM`]) visible messages, oldest first: each is
    /// hidden until now plus `lease` and its receive count goes up by one.
    pub fn claim(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        const DOING: &str = "claiming queue messages";
        let max = max.min(MAX_CLAIM);
        let now = time::to_millis(SystemTime::now());
        let until = now.saturating_add(millis(lease));
        self.write_tx(DOING, |tx| {
            require_queue(tx, queue)?;
            if max == 0 {
                return Ok(Vec::new());
            }
            // Walk the queue in order and skip the hidden messages: those are the few leased
            // near its head, while a scan by visibility would visit every visible message to
            // sort them.
            let mut msgs = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM queue_messages INDEXED BY queue_messages_fifo
                         WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY seq LIMIT ?3"
                    ))
                    .map_err(db(DOING))?;
                stmt.query_map(params![queue, now, max as i64], message_row)
                    .map_err(db(DOING))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db(DOING))?
            };
            let mut update = tx
                .prepare_cached(
                    "UPDATE queue_messages SET visible_at_ms = ?2, receive_count = receive_count + 1
                     WHERE seq = ?1",
                )
                .map_err(db(DOING))?;
            for m in &mut msgs {
                update.execute(params![m.seq, until]).map_err(db(DOING))?;
                m.receive_count = m.receive_count.saturating_add(1);
            }
            Ok(msgs)
        })
    }

    /// Deletes the messages of `queue` with these ids (handled); returns how many there were.
    /// Ids not in the queue (acked already, or of another queue) are skipped.
    pub fn ack(&self, queue: &str, ids: &[String]) -> Result<u64, QueueError> {
        const DOING: &str = "acknowledging queue messages";
        self.write_tx(DOING, |tx| {
            require_queue(tx, queue)?;
            let mut removed = 0u64;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM queue_messages WHERE queue = ?1 AND id = ?2")
                    .map_err(db(DOING))?;
                for id in ids {
                    removed += delete.execute(params![queue, id]).map_err(db(DOING))? as u64;
                }
            }
            tx.execute(
                "UPDATE queues SET messages = max(messages - ?2, 0) WHERE name = ?1",
                params![queue, i64::try_from(removed).unwrap_or(i64::MAX)],
            )
            .map_err(db(DOING))?;
            Ok(removed)
        })
    }

    /// Makes the messages of `queue` with these ids visible again at `visible_at` (now or
    /// earlier: at once), ending their leases; their receive counts stay. Ids not in the queue
    /// are skipped.
    pub fn release(
        &self,
        queue: &str,
        ids: &[String],
        visible_at: SystemTime,
    ) -> Result<(), QueueError> {
        const DOING: &str = "releasing queue messages";
        let at = time::to_millis(visible_at);
        self.write_tx(DOING, |tx| {
            require_queue(tx, queue)?;
            let mut update = tx
                .prepare_cached(
                    "UPDATE queue_messages SET visible_at_ms = ?3 WHERE queue = ?1 AND id = ?2",
                )
                .map_err(db(DOING))?;
            for id in ids {
                update.execute(params![queue, id, at]).map_err(db(DOING))?;
            }
            Ok(())
        })
    }

    /// The queue's figures, or `None` when it does not exist.
    pub fn info(&self, queue: &str) -> Result<Option<QueueInfo>, QueueError> {
        const DOING: &str = "reading a queue";
        let now = time::to_millis(SystemTime::now());
        self.read_tx(DOING, |tx| {
            let row = tx
                .query_row(
                    "SELECT name, created_at_ms, messages, published FROM queues WHERE name = ?1",
                    [queue],
                    queue_row,
                )
                .optional()
                .map_err(db(DOING))?;
            row.map(|r| queue_info(tx, r, now)).transpose()
        })
    }

    /// Every queue with its figures, by name.
    pub fn list(&self) -> Result<Vec<QueueInfo>, QueueError> {
        const DOING: &str = "listing queues";
        let now = time::to_millis(SystemTime::now());
        self.read_tx(DOING, |tx| {
            let rows = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT name, created_at_ms, messages, published FROM queues
                         ORDER BY name LIMIT ?1",
                    )
                    .map_err(db(DOING))?;
                stmt.query_map([MAX_QUEUES_LISTED], queue_row)
                    .map_err(db(DOING))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db(DOING))?
            };
            rows.into_iter().map(|r| queue_info(tx, r, now)).collect()
        })
    }

    /// Deletes every message of the queue, leased or not; returns how many.
    pub fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        const DOING: &str = "purging a queue";
        self.write_tx(DOING, |tx| {
            require_queue(tx, queue)?;
            let n = tx
                .execute("DELETE FROM queue_messages WHERE queue = ?1", [queue])
                .map_err(db(DOING))?;
            tx.execute("UPDATE queues SET messages = 0 WHERE name = ?1", [queue])
                .map_err(db(DOING))?;
            Ok(n as u64)
        })
    }

    /// The earliest time one of the queue's messages is (or was) visible: in the past or now
    /// when one can be claimed at once; `None` when the queue is empty.
    pub fn next_visible_at(&self, queue: &str) -> Result<Option<SystemTime>, QueueError> {
        const DOING: &str = "reading a queue";
        self.read_tx(DOING, |tx| {
            require_queue(tx, queue)?;
            let at: Option<i64> = tx
                .query_row(
                    "SELECT min(visible_at_ms) FROM queue_messages WHERE queue = ?1",
                    [queue],
                    |r| r.get(0),
                )
                .map_err(db(DOING))?;
            Ok(at.map(time::from_millis))
        })
    }
}

/// The number of messages `queue` holds, or [`QueueError::NoSuchQueue`].
fn require_queue(tx: &Transaction<'_>, queue: &str) -> Result<u64, QueueError> {
    let held: Option<i64> = tx
        .query_row(
            "SELECT messages FROM queues WHERE name = ?1",
            [queue],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("reading a queue"))?;
    held.map(count)
        .ok_or_else(|| QueueError::NoSuchQueue(queue.to_string()))
}

/// A `queues` row: name, created at, messages, published.
type QueueRow = (String, i64, i64, i64);

fn queue_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// Completes a `queues` row with the figures read from its messages.
fn queue_info(tx: &Transaction<'_>, row: QueueRow, now: i64) -> Result<QueueInfo, QueueError> {
    const DOING: &str = "reading a queue";
    let (name, created_at_ms, messages, published) = row;
    let in_flight: i64 = tx
        .query_row(
            "SELECT count(*) FROM queue_messages INDEXED BY queue_messages_visible
             WHERE queue = ?1 AND visible_at_ms > ?2",
            params![name, now],
            |r| r.get(0),
        )
        .map_err(db(DOING))?;
    let oldest: Option<i64> = tx
        .query_row(
            "SELECT enqueued_at_ms FROM queue_messages INDEXED BY queue_messages_fifo
             WHERE queue = ?1 ORDER BY seq LIMIT 1",
            [&name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db(DOING))?;
    Ok(QueueInfo {
        name,
        created_at: time::from_millis(created_at_ms),
        messages: count(messages),
        in_flight: count(in_flight),
        oldest_enqueued_at: oldest.map(time::from_millis),
        published: count(published),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use std::time::Instant;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn msg(body: &str) -> NewMessage {
        NewMessage {
            body: body.as_bytes().to_vec(),
            content_type: Some("text/plain".into()),
            hop: 2,
        }
    }

    fn bodies(msgs: &[QueueMessage]) -> Vec<&[u8]> {
        msgs.iter().map(|m| m.body.as_slice()).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn create_is_idempotent_and_names_are_checked() {
        let (_dir, store) = store();
        let q = store.queues();
        assert!(q.create("orders").unwrap());
        assert!(!q.create("orders").unwrap());
        let e = q.create("Bad Name").unwrap_err();
        assert!(matches!(e, QueueError::InvalidName(_)), "{e}");
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let e = q.publish("nope", vec![msg("x")]).unwrap_err();
        assert!(matches!(e, QueueError::NoSuchQueue(_)), "{e}");
        assert!(q.info("nope").unwrap().is_none());
        assert!(matches!(
            q.claim("nope", 1, HOUR),
            Err(QueueError::NoSuchQueue(_))
        ));
    }

    #[test]
    fn claims_come_in_publish_order_and_a_lease_hides_them() {
        let (_dir, store) = store();
        let q = store.queues();
        q.create("jobs").unwrap();
        let first = q.publish("jobs", vec![msg("a"), msg("b")]).unwrap();
        let second = q.publish("jobs", vec![msg("c")]).unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().chain(&second).all(|id| id.len() == 26));

        let got = q.claim("jobs", 2, HOUR).unwrap();
        assert_eq!(bodies(&got), [b"a", b"b"]);
        assert_eq!(got[0].id, first[0]);
        assert_eq!(got[0].hop, 2);
        assert_eq!(got[0].content_type.as_deref(), Some("text/plain"));
        assert_eq!(got[0].receive_count, 1);
        assert!(got[0].seq < got[1].seq);

        // The leased two are hidden; the third is next.
        let got = q.claim("jobs", 10, HOUR).unwrap();
        assert_eq!(bodies(&got), [b"c"]);
        assert!(q.claim("jobs", 10, HOUR).unwrap().is_empty());

        // Released, "a" comes back ahead of anything later and counts a second receive.
        q.release("jobs", &first[..1], SystemTime::UNIX_EPOCH)
            .unwrap();
        let got = q.claim("jobs", 10, HOUR).unwrap();
        assert_eq!(bodies(&got), [b"a"]);
        assert_eq!(got[0].receive_count, 2);
    }

    #[test]
    fn an_expired_lease_shows_the_message_again() {
        let (_dir, store) = store();
        let q = store.queues();
        q.create("jobs").unwrap();
        q.publish("jobs", vec![msg("a")]).unwrap();
        assert_eq!(
            q.claim("jobs", 1, Duration::from_millis(1)).unwrap().len(),
            1
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            let got = q.claim("jobs", 1, HOUR).unwrap();
            if !got.is_empty() || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(bodies(&again), [b"a"], "the message never came back");
        assert_eq!(again[0].receive_count, 2);
    }

    #[test]
    fn ack_removes_and_info_counts() {
        let (_dir, store) = store();
        let q = store.queues();
        q.create("jobs").unwrap();
        let before = SystemTime::now() - Duration::from_secs(1);
        let ids = q
            .publish("jobs", vec![msg("a"), msg("b"), msg("c")])
            .unwrap();
        let claimed = q.claim("jobs", 2, HOUR).unwrap();
        let info = q.info("jobs").unwrap().unwrap();
        assert_eq!(
            (info.messages, info.in_flight, info.published),
            (3, 2, 3),
            "{info:?}"
        );
        assert!(info.oldest_enqueued_at.unwrap() >= before);

        let acked: Vec<String> = claimed.iter().map(|m| m.id.clone()).collect();
        assert_eq!(q.ack("jobs", &acked).unwrap(), 2);
        assert_eq!(q.ack("jobs", &acked).unwrap(), 0, "acked once");
        let info = q.info("jobs").unwrap().unwrap();
        assert_eq!((info.messages, info.in_flight, info.published), (1, 0, 3));
        assert!(q.next_visible_at("jobs").unwrap().unwrap() <= SystemTime::now());
        let got = q.claim("jobs", 10, HOUR).unwrap();
        assert_eq!(got[0].id, ids[2]);
        assert!(q.next_visible_at("jobs").unwrap().unwrap() > SystemTime::now());

        q.create("other").unwrap();
        let listed = q.list().unwrap();
        assert_eq!(
            listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["jobs", "other"]
        );

        assert_eq!(q.purge("jobs").unwrap(), 1);
        let info = q.info("jobs").unwrap().unwrap();
        assert_eq!((info.messages, info.oldest_enqueued_at), (0, None));
        assert_eq!(q.next_visible_at("jobs").unwrap(), None);
        assert!(q.delete("jobs").unwrap());
        assert!(!q.delete("jobs").unwrap());
        assert!(q.info("jobs").unwrap().is_none());
    }

    #[test]
    fn a_full_queue_or_a_large_body_is_refused_and_nothing_is_stored() {
        let (_dir, store) = store();
        let mut q = store.queues();
        q.max_messages = 3;
        q.create("small").unwrap();
        q.publish("small", vec![msg("a"), msg("b")]).unwrap();
        let e = q.publish("small", vec![msg("c"), msg("d")]).unwrap_err();
        assert!(matches!(e, QueueError::Full { limit: 3, .. }), "{e}");
        assert_eq!(q.info("small").unwrap().unwrap().messages, 2, "all or none");
        q.publish("small", vec![msg("c")]).unwrap();
        assert!(matches!(
            q.publish("small", vec![msg("d")]),
            Err(QueueError::Full { .. })
        ));
        let acked = q.claim("small", 1, HOUR).unwrap();
        q.ack("small", &[acked[0].id.clone()]).unwrap();
        q.publish("small", vec![msg("d")]).unwrap();

        q.create("big").unwrap();
        let large = NewMessage {
            body: vec![0; MAX_MESSAGE_BYTES + 1],
            ..NewMessage::default()
        };
        let e = q.publish("big", vec![msg("ok"), large]).unwrap_err();
        assert!(
            matches!(e, QueueError::TooLarge { size, limit: MAX_MESSAGE_BYTES } if size == MAX_MESSAGE_BYTES + 1),
            "{e}"
        );
        assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
        assert_eq!(q.info("big").unwrap().unwrap().messages, 0);
        let exact = NewMessage {
            body: vec![7; MAX_MESSAGE_BYTES],
            ..NewMessage::default()
        };
        q.publish("big", vec![exact]).unwrap();
    }

    #[test]
    fn published_messages_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let q = store.queues();
            q.create("jobs").unwrap();
            q.publish("jobs", vec![msg("kept")]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let got = store.queues().claim("jobs", 10, HOUR).unwrap();
        assert_eq!(bodies(&got), [b"kept"]);
    }

    #[test]
    fn a_traced_publish_keeps_its_traceparent() {
        let (_dir, store) = store();
        let q = store.queues();
        q.create("jobs").unwrap();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        q.publish_traced("jobs", vec![msg("a")], Some(parent))
            .unwrap();
        q.publish("jobs", vec![msg("b")]).unwrap();
        let got = q.claim("jobs", 10, HOUR).unwrap();
        let traces: Vec<Option<&str>> = got.iter().map(|m| m.traceparent.as_deref()).collect();
        assert_eq!(traces, [Some(parent), None]);
    }
}
