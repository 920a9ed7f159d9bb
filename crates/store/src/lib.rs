//! Nubo's embedded storage backend: apps and their immutable revisions in SQLite (WAL mode),
//! code as content-addressed blobs, compiled artifacts, and invocation records and logs written
//! by one batching thread; for triggers, durable queues ([`Queues`]), each trigger's state
//! ([`TriggerState`]) and the outbox of object changes ([`objects::ObjectEvent`]).
//!
//! Layout under the data directory:
//!
//! ```text
//! <data_dir>/nubo.db                                  SQLite: apps, revisions, records, logs,
//!                                                     queues, trigger state, object events
//! <data_dir>/secret.key                               the key secrets are encrypted with
//! <data_dir>/blobs/sha256/<2 hex>/<64 hex>            component code, named by its sha256
//! <data_dir>/artifacts/<artifact_key>/<digest>.cwasm  compiled code, per engine build
//! <data_dir>/objects/sha256/<2 hex>/<64 hex>          object content, named by its sha256
//! <data_dir>/objects/parts/<upload id>/<part number>  parts of unfinished multipart uploads
//! <data_dir>/objects/tmp/                             objects and parts being written
//! ```
//!
//! Every method is synchronous; async callers run them on `spawn_blocking`.
//!
//! Invariants:
//! - A revision is immutable and its number is never reused for its app, even after the app is
//!   removed and deployed again.
//! - `commit_revision` is one transaction with `synchronous=FULL`: when it returns, the revision,
//!   the app's new traffic split and its generation bump survive a crash or power loss. Traffic
//!   changes are the same: the split, the generation and the history row commit together.
//! - An app's traffic split always sums to 100 and names only retained revisions; a revision
//!   with weight > 0 is never pruned.
//! - Files are written to a temporary name, synced, renamed into place and the directory
//!   synced, so a reader never sees a partly written blob or artifact.
//! - A digest or artifact key taken from outside is validated before it becomes part of a path,
//!   so none can point outside the data directory.
//! - Invocation records and logs are bounded in number (see [`MAX_INVOCATION_ROWS`] and
//!   [`MAX_LOG_ROWS`]); the oldest are pruned.

mod blobs;
mod error;
mod events;
pub mod kv;
pub mod objects;
mod pool;
mod queues;
mod records;
mod revisions;
mod rollout;
mod schema;
pub mod secrets;
mod time;
mod traffic;
mod trigger_state;
pub mod usage;
mod writer;

pub use blobs::validate_digest;
pub use error::StoreError;
pub use events::{
    Accepted, Attempt, AttemptResult, Event, EventState, EventWriter, MAX_FINISHED_EVENTS,
    NewEvent, Next, SubmitError,
};
pub use queues::{
    MAX_CLAIM, MAX_MESSAGE_BYTES, MAX_QUEUE_MESSAGES, NewMessage, QueueError, QueueInfo,
    QueueMessage, Queues,
};
pub use records::{MAX_QUERY_ROWS, invocation_record};
pub use revisions::{FunctionCode, NewRevision, RevisionRecord};
pub use rollout::{Rollout, RolloutMove, RolloutState};
pub use time::format_rfc3339;
pub use traffic::{TrafficInstruction, TrafficSplit, canary_split, validate_split};
pub use trigger_state::TriggerState;
pub use usage::{UsageError, UsageSettings};
pub use writer::{
    BATCH_LINGER, BROADCAST_CAPACITY, CommittedInvocation, MAX_BATCH, MAX_INVOCATION_ROWS,
    MAX_LOG_ROWS, RecordWriter, Retention, WriterCounts,
};

use nubo_telemetry::Metrics;
use rusqlite::Connection;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The database file's name inside the data directory.
const DB_FILE: &str = "nubo.db";

/// How long a connection waits for another one's write lock before failing with "database is
/// locked". Writes are short (one revision, one batch of records), so this is only reached when
/// something is badly wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded store. `Send + Sync`: share it behind an `Arc`.
pub struct Store {
    dir: PathBuf,
    db_path: PathBuf,
    /// Metadata writes (revisions, app pointers), `synchronous=FULL` so a returned commit is on
    /// disk. The record writer has its own connection so a batch of records never waits behind
    /// a deploy or the other way round.
    write: Mutex<Connection>,
    /// Queries. WAL lets it read while the writers write.
    read: Mutex<Connection>,
    /// The key-value stores, on connections of their own (see [`kv::Kv`]).
    kv: kv::Kv,
    /// The object storage buckets, on connections of their own (see [`objects::Objects`]).
    objects: objects::Objects,
    /// The durable queues, on connections of their own (see [`Queues`]).
    queues: Queues,
    /// The apps' secrets, opened with the server key on first use (see [`Store::secrets`]).
    secrets: OnceLock<secrets::Secrets>,
    /// How usage is metered and priced (see [`Store::configure_usage`]).
    usage: Mutex<UsageSettings>,
    /// Where the writers spawned later time their commits (see [`Store::time_commits`]).
    metrics: OnceLock<Arc<Metrics>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How hard SQLite works to make a commit durable, per connection.
#[derive(Debug, Clone, Copy)]
enum Durability {
    /// Every commit is synced to disk before it returns.
    Full,
    /// Commits are synced at checkpoints: a power loss may lose the last moments, never corrupt
    /// the database. Used for invocation records, which are telemetry.
    Normal,
}

impl Store {
    /// Opens (creating when needed) the store under `data_dir`, migrating the schema to the
    /// current version.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = std::path::absolute(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        blobs::create_private_dir(&dir)?;
        blobs::create_private_dir(&dir.join(blobs::BLOBS_DIR))?;
        blobs::create_private_dir(&dir.join(blobs::ARTIFACTS_DIR))?;
        blobs::remove_stale_temp_files(&dir);

        let db_path = dir.join(DB_FILE);
        let mut write = open_connection(&db_path, Durability::Full)?;
        schema::migrate(&mut write, &db_path)?;
        let read = open_connection(&db_path, Durability::Full)?;
        // Guards against a query method ever writing through the read connection.
        read.pragma_update(None, "query_only", true)
            .map_err(|source| StoreError::Open {
                path: db_path.clone(),
                source,
            })?;
        let kv = kv::Kv::new(&db_path)?;
        let objects = objects::Objects::new(&dir, &db_path)?;
        let queues = Queues::new(&db_path)?;
        Ok(Store {
            dir,
            db_path,
            write: Mutex::new(write),
            read: Mutex::new(read),
            kv,
            objects,
            queues,
            secrets: OnceLock::new(),
            usage: Mutex::new(UsageSettings::default()),
            metrics: OnceLock::new(),
        })
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A handle on the key-value stores of this data directory.
    pub fn kv(&self) -> kv::Kv {
        self.kv.clone()
    }

    /// A handle on the object storage buckets of this data directory.
    pub fn objects(&self) -> objects::Objects {
        self.objects.clone()
    }

    /// A handle on the durable queues of this data directory.
    pub fn queues(&self) -> Queues {
        self.queues.clone()
    }

    /// A handle on the apps' secrets, opened on the first call with the server key from
    /// `NUBO_SECRET_KEY` or `<data dir>/secret.key` (generated when missing); later calls
    /// share that handle and its snapshot. Fails when the key is malformed, the key file is
    /// readable by others, or the key is not the one the stored secrets were written with.
    pub fn secrets(&self) -> Result<secrets::Secrets, secrets::SecretError> {
        let env = std::env::var(secrets::KEY_ENV).ok();
        self.secrets_with_key(env.as_deref())
    }

    /// [`Store::secrets`] with the key given as 64 hex characters (`None`: the key file).
    /// Only the first successful call opens the secrets; later calls return that handle.
    pub fn secrets_with_key(
        &self,
        hex_key: Option<&str>,
    ) -> Result<secrets::Secrets, secrets::SecretError> {
        if let Some(s) = self.secrets.get() {
            return Ok(s.clone());
        }
        let opened = secrets::Secrets::open(&self.dir, &self.db_path, hex_key)?;
        Ok(self.secrets.get_or_init(|| opened).clone())
    }

    /// Times the commits of the record writer and the async-invocation writer spawned from
    /// now on in `metrics` (`nubo_store_operation_duration_seconds`, once per batch). Without
    /// this call nothing is timed, as with `--no-telemetry`. The first call counts.
    pub fn time_commits(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The registry commits are timed in, when [`Store::time_commits`] set one.
    fn commit_timer(&self) -> Option<Arc<Metrics>> {
        self.metrics.get().cloned()
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back when the `Transaction`
        // dropped, so the connection is still usable.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_err)?;
    Ok(conn)
}

/// How many store operations of kind `op` (its `op` label) `metrics` has timed.
#[cfg(test)]
fn timed(metrics: &Metrics, op: nubo_telemetry::StoreOp) -> u64 {
    let text = metrics
        .render(
            &nubo_telemetry::Gauges::default(),
            nubo_telemetry::Exposition::Text,
        )
        .unwrap();
    let series = format!(
        "nubo_store_operation_duration_seconds_count{{op=\"{}\"}} ",
        op.as_str()
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}
