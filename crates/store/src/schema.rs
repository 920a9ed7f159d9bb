//! The database schema and its migrations, keyed by `PRAGMA user_version`.
//!
//! Migrations are append-only: version N is reached by running `MIGRATIONS[..N]` in order, each
//! exactly once, in one transaction with the version bump. Never edit a shipped migration; add
//! a new one.

use crate::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// Version 1: apps, revisions, invocation records and logs.
///
/// Times are integers: milliseconds since the Unix epoch for revisions, microseconds for records
/// and logs (formatted as RFC 3339 when read). `AUTOINCREMENT` keeps `seq` and `cursor`
/// increasing even after pruning, so a log cursor handed to a client never names another line.
const V1: &str = "
CREATE TABLE revisions (
    app           TEXT    NOT NULL,
    revision      INTEGER NOT NULL CHECK (revision >= 1),
    created_at_ms INTEGER NOT NULL,
    manifest      TEXT    NOT NULL,
    PRIMARY KEY (app, revision)
) WITHOUT ROWID;

CREATE TABLE revision_functions (
    app      TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    digest   TEXT    NOT NULL,
    size     INTEGER NOT NULL,
    PRIMARY KEY (app, revision, name),
    FOREIGN KEY (app, revision) REFERENCES revisions (app, revision)
) WITHOUT ROWID;

-- The live set: one row per deployed app, pointing at its serving revision. Removing an app
-- deletes its row here and nothing else.
CREATE TABLE apps (
    name          TEXT    NOT NULL PRIMARY KEY,
    live_revision INTEGER NOT NULL,
    FOREIGN KEY (name, live_revision) REFERENCES revisions (app, revision)
) WITHOUT ROWID;

CREATE TABLE invocations (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    app            TEXT    NOT NULL,
    function       TEXT    NOT NULL,
    revision       INTEGER NOT NULL,
    trigger        TEXT    NOT NULL,
    started_at_us  INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    status         INTEGER,
    cold           INTEGER NOT NULL,
    bytes_in       INTEGER NOT NULL,
    bytes_out      INTEGER NOT NULL,
    logs_truncated INTEGER NOT NULL
);
CREATE INDEX invocations_by_app ON invocations (app, started_at_us);
CREATE INDEX invocations_by_function ON invocations (app, function, started_at_us);

CREATE TABLE logs (
    cursor        INTEGER PRIMARY KEY AUTOINCREMENT,
    invocation_id TEXT    NOT NULL,
    app           TEXT    NOT NULL,
    function      TEXT    NOT NULL,
    time_us       INTEGER NOT NULL,
    stream        TEXT    NOT NULL,
    line          TEXT    NOT NULL
);
CREATE INDEX logs_by_app ON logs (app, cursor);
CREATE INDEX logs_by_function ON logs (app, function, cursor);
CREATE INDEX logs_by_invocation ON logs (invocation_id, cursor);
";

/// Version 2: traffic splits. An app's serving revisions and their weights move from
/// `apps.live_revision` to `traffic` (which V1 databases are migrated into at weight 100);
/// `apps.live_revision` stays, kept equal to the highest-weight revision. `generations` counts
/// every change of an app's deployment (it survives `nubo rm`, so an expectation taken before a
/// removal never matches again); `traffic_history` keeps the split in force before each change,
/// for rollback; `revisions.deployed_by` names who deployed (NULL for the local admin).
const V2: &str = "
ALTER TABLE revisions ADD COLUMN deployed_by TEXT;

CREATE TABLE traffic (
    app      TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    weight   INTEGER NOT NULL CHECK (weight BETWEEN 1 AND 100),
    PRIMARY KEY (app, revision),
    FOREIGN KEY (app, revision) REFERENCES revisions (app, revision)
) WITHOUT ROWID;
INSERT INTO traffic (app, revision, weight) SELECT name, live_revision, 100 FROM apps;

CREATE TABLE generations (
    app        TEXT    NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO generations (app, generation) SELECT name, 1 FROM apps;

CREATE TABLE traffic_history (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    app           TEXT    NOT NULL,
    changed_at_ms INTEGER NOT NULL,
    before        TEXT    NOT NULL
);
CREATE INDEX traffic_history_by_app ON traffic_history (app, seq);
";

/// Version 3: timed rollouts. One row per app: the rollout in progress, or the last one that
/// ended. No foreign key to `revisions`: an ended rollout may name revisions pruned since.
const V3: &str = "
CREATE TABLE rollouts (
    app              TEXT    NOT NULL PRIMARY KEY,
    to_revision      INTEGER NOT NULL,
    from_revision    INTEGER NOT NULL,
    steps            TEXT    NOT NULL,
    interval_ms      INTEGER NOT NULL,
    error_ratio      REAL    NOT NULL,
    min_error_rate   REAL    NOT NULL,
    step             INTEGER NOT NULL,
    step_started_ms  INTEGER NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('running', 'completed', 'rolled_back', 'aborted')),
    reason           TEXT,
    started_at_ms    INTEGER NOT NULL,
    ended_at_ms      INTEGER
) WITHOUT ROWID;
";

/// Version 4: durable async invocations (`events`) and their attempts. `attempts` counts the
/// attempts of the current round (a redrive starts a new one); `event_attempts` numbers every
/// attempt over the event's life. The partial unique index makes an idempotency key name one
/// event per function; a key older than the dedup window is cleared before it is reused.
const V4: &str = "
CREATE TABLE events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    app              TEXT    NOT NULL,
    function         TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    path             TEXT    NOT NULL,
    headers          BLOB    NOT NULL,
    body             BLOB    NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    enqueued_at_ms   INTEGER NOT NULL,
    due_at_ms        INTEGER NOT NULL,
    expires_at_ms    INTEGER NOT NULL,
    finished_at_ms   INTEGER,
    idempotency_key  TEXT,
    last_error       TEXT
);
CREATE INDEX events_due ON events (state, due_at_ms);
CREATE INDEX events_by_app ON events (app, state, seq);
CREATE UNIQUE INDEX events_idempotency ON events (app, function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE event_attempts (
    event_id       TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    invocation_id  TEXT    NOT NULL,
    revision       INTEGER NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    status         INTEGER,
    error          TEXT,
    PRIMARY KEY (event_id, attempt)
) WITHOUT ROWID;
";

/// Version 5: the cold-start duration of process function workers (spawn to first request for
/// work), on the invocation that waited for it.
const V5: &str = "
ALTER TABLE invocations ADD COLUMN init_ms INTEGER;
";

/// Version 6: key-value stores. `kv_stores` names each store with its running totals (live
/// rows, bytes of keys and values) and the last version handed out: versions come from the
/// store, not the key, so a key deleted and written again never repeats an old version and a
/// compare-and-swap cannot be fooled by it. Keys are UTF-8 stored as BLOB so that ordering and
/// prefix ranges are plain byte comparisons. `expires_at_ms` is NULL for keys without a TTL;
/// the partial index lets the sweep find expired rows without scanning the rest.
const V6: &str = "
CREATE TABLE kv_stores (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    keys          INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0,
    last_version  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE kv (
    store         TEXT    NOT NULL REFERENCES kv_stores (name),
    key           BLOB    NOT NULL,
    value         BLOB    NOT NULL,
    version       INTEGER NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (store, key)
) WITHOUT ROWID;
CREATE INDEX kv_expiry ON kv (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
";

/// Version 7: object storage. `buckets` names each bucket with its running totals (objects and
/// their bytes), updated in the same transaction as the object rows. Object content lives in
/// files named by its sha256 under `<data dir>/objects/`; `object_contents` counts the objects
/// that share one content file, so the file is removed when its last object goes. Keys are
/// UTF-8 stored as BLOB so that ordering and prefix ranges are plain byte comparisons.
/// `user_meta` is a JSON object of the `x-amz-meta-*` names and values. Unfinished multipart
/// uploads and their parts (files under `objects/parts/<upload id>/`) have tables of their own.
const V7: &str = "
CREATE TABLE buckets (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    objects       INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE object_contents (
    digest TEXT    NOT NULL PRIMARY KEY,
    size   INTEGER NOT NULL,
    refs   INTEGER NOT NULL CHECK (refs > 0)
) WITHOUT ROWID;

CREATE TABLE objects (
    bucket           TEXT    NOT NULL REFERENCES buckets (name),
    key              BLOB    NOT NULL,
    digest           TEXT    NOT NULL REFERENCES object_contents (digest),
    size             INTEGER NOT NULL,
    etag             TEXT    NOT NULL,
    content_type     TEXT,
    user_meta        TEXT    NOT NULL,
    last_modified_ms INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;

CREATE TABLE multipart_uploads (
    id            TEXT    NOT NULL PRIMARY KEY,
    bucket        TEXT    NOT NULL REFERENCES buckets (name),
    key           BLOB    NOT NULL,
    content_type  TEXT,
    user_meta     TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX multipart_uploads_by_bucket ON multipart_uploads (bucket, key);

CREATE TABLE multipart_parts (
    upload_id   TEXT    NOT NULL REFERENCES multipart_uploads (id),
    part_number INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT    NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
";

/// Version 8: the apps' secrets, encrypted with ChaCha20-Poly1305 under the server key (see
/// `secrets.rs`): a random nonce per value, the app and name as associated data, so a value
/// cannot be moved to another name. `secret_key_check` holds one known plaintext encrypted
/// under the key the secrets were written with, so a start with another key is refused before
/// any secret is written under it.
const V8: &str = "
CREATE TABLE secrets (
    app           TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    nonce         BLOB    NOT NULL,
    ciphertext    BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (app, name)
) WITHOUT ROWID;

CREATE TABLE secret_key_check (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    nonce      BLOB    NOT NULL,
    ciphertext BLOB    NOT NULL
);
";

/// Version 9: outbound requests each invocation made, and their body bytes each way.
const V9: &str = "
ALTER TABLE invocations ADD COLUMN outbound_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN outbound_bytes_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN outbound_bytes_in INTEGER NOT NULL DEFAULT 0;
";

/// Version 10: storage for triggers.
///
/// `queues` and `queue_messages` are the built-in durable queues: `queues.messages` counts the
/// queue's rows (kept in the same transaction as them, so the bound on a queue's size is one
/// row read), `published` counts every message ever published to it. A message is visible
/// when `visible_at_ms` is not in the future; a claim pushes it forward by the lease. `seq`
/// orders a queue first in, first out (`queue_messages_fifo`); `queue_messages_visible` finds
/// the next message to become visible and counts those leased.
///
/// `trigger_state` keeps, per app and trigger, what a person asks about a trigger (when it last
/// fired, how often, its last error) and the cron trigger's last tick, so a restart neither
/// fires a tick twice nor forgets one.
///
/// `object_events` is the outbox of object changes in buckets that have object triggers,
/// written in the same transaction as the change and deleted once delivered;
/// `multipart_uploads.hop` keeps the trigger hop count of the invocation that started an
/// upload, for the event its completion emits.
const V10: &str = "
CREATE TABLE queues (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    messages      INTEGER NOT NULL DEFAULT 0,
    published     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE queue_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL REFERENCES queues (name),
    id             TEXT    NOT NULL UNIQUE,
    body           BLOB    NOT NULL,
    content_type   TEXT,
    hop            INTEGER NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    visible_at_ms  INTEGER NOT NULL,
    receive_count  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_messages_visible ON queue_messages (queue, visible_at_ms, seq);
CREATE INDEX queue_messages_fifo ON queue_messages (queue, seq);

CREATE TABLE trigger_state (
    app           TEXT    NOT NULL,
    trigger       TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    last_fire_ms  INTEGER,
    last_tick_ms  INTEGER,
    fires         INTEGER NOT NULL DEFAULT 0,
    errors        INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    loops_stopped INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, trigger)
) WITHOUT ROWID;

CREATE TABLE object_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket       TEXT    NOT NULL,
    key          BLOB    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('created', 'deleted')),
    size         INTEGER,
    etag         TEXT,
    content_type TEXT,
    hop          INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL
);

ALTER TABLE multipart_uploads ADD COLUMN hop INTEGER NOT NULL DEFAULT 0;
";

/// Version 11: the level of a log line (`trace` … `error`) when the function wrote it as a
/// JSON object naming one, so `nubo logs --level` filters in SQL. Rows written before it have
/// no level.
const V11: &str = "
ALTER TABLE logs ADD COLUMN level TEXT;
";

/// Version 12: metering. Each invocation record gains what it is billed for (`billed_ms`,
/// NULL on rows written before; the memory limit and peak, CPU time, and `kib_ms` = billed ms ×
/// the memory limit in KiB, an exact integer from which GB-seconds are derived).
///
/// `usage` holds the aggregates the record writer upserts in each batch's transaction: one
/// row per period (`minute`, `hour`, `day`), bucket start (Unix seconds, UTC), app, function,
/// revision and trigger kind. `usage_runs` has a row per record writer run, its last commit
/// moved forward as batches commit and `clean` set at an orderly stop; `usage_gaps` marks
/// stretches whose usage may be undercounted: after a run that never stopped cleanly, and
/// minutes in which records were dropped (one row per kind and start).
const V12: &str = "
ALTER TABLE invocations ADD COLUMN billed_ms INTEGER;
ALTER TABLE invocations ADD COLUMN memory_limit_bytes INTEGER;
ALTER TABLE invocations ADD COLUMN peak_memory_bytes INTEGER;
ALTER TABLE invocations ADD COLUMN cpu_time_us INTEGER;
ALTER TABLE invocations ADD COLUMN kib_ms INTEGER;

CREATE TABLE usage (
    period             TEXT    NOT NULL CHECK (period IN ('minute', 'hour', 'day')),
    start_s            INTEGER NOT NULL,
    app                TEXT    NOT NULL,
    function           TEXT    NOT NULL,
    revision           INTEGER NOT NULL,
    trigger            TEXT    NOT NULL,
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    throttles          INTEGER NOT NULL DEFAULT 0,
    cold_starts        INTEGER NOT NULL DEFAULT 0,
    duration_us        INTEGER NOT NULL DEFAULT 0,
    billed_ms          INTEGER NOT NULL DEFAULT 0,
    kib_ms             INTEGER NOT NULL DEFAULT 0,
    unmetered          INTEGER NOT NULL DEFAULT 0,
    cpu_us             INTEGER NOT NULL DEFAULT 0,
    bytes_in           INTEGER NOT NULL DEFAULT 0,
    bytes_out          INTEGER NOT NULL DEFAULT 0,
    outbound_requests  INTEGER NOT NULL DEFAULT 0,
    outbound_bytes_out INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes  INTEGER,
    PRIMARY KEY (period, start_s, app, function, revision, trigger)
) WITHOUT ROWID;

CREATE TABLE usage_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at_us  INTEGER NOT NULL,
    last_commit_us INTEGER NOT NULL,
    clean          INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE usage_gaps (
    kind     TEXT    NOT NULL CHECK (kind IN ('unclean_stop', 'dropped')),
    from_us  INTEGER NOT NULL,
    until_us INTEGER NOT NULL,
    records  INTEGER,
    PRIMARY KEY (kind, from_us)
) WITHOUT ROWID;
";

/// Version 13: trace context of function-initiated work. `queue_messages.traceparent` and
/// `object_events.traceparent` keep the W3C `traceparent` of the invocation that published the
/// message or changed the object (NULL from outside functions or without a trace), so the
/// trigger delivery it causes continues that trace.
const V13: &str = "
ALTER TABLE queue_messages ADD COLUMN traceparent TEXT;
ALTER TABLE object_events ADD COLUMN traceparent TEXT;
";

/// Version 14: usage is keyed by tenant, and bounded in rows as well as in age.
///
/// `usage` gains `tenant` in its key (the table is rebuilt, as SQLite cannot change a primary
/// key); rows written before belong to `default`, the tenant of every app until tenants land.
/// `usage_periods` has one row per period: `rows` counts that period's `usage` rows, kept in
/// the same transaction as the rows, so the bound on them is checked without counting the
/// table; `size_pruned_before_s` is the end of the newest bucket pruned to keep that bound
/// (NULL until one is), so a report that reaches back past it says its usage is gone.
const V14: &str = "
CREATE TABLE usage_by_tenant (
    period             TEXT    NOT NULL CHECK (period IN ('minute', 'hour', 'day')),
    start_s            INTEGER NOT NULL,
    tenant             TEXT    NOT NULL,
    app                TEXT    NOT NULL,
    function           TEXT    NOT NULL,
    revision           INTEGER NOT NULL,
    trigger            TEXT    NOT NULL,
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    throttles          INTEGER NOT NULL DEFAULT 0,
    cold_starts        INTEGER NOT NULL DEFAULT 0,
    duration_us        INTEGER NOT NULL DEFAULT 0,
    billed_ms          INTEGER NOT NULL DEFAULT 0,
    kib_ms             INTEGER NOT NULL DEFAULT 0,
    unmetered          INTEGER NOT NULL DEFAULT 0,
    cpu_us             INTEGER NOT NULL DEFAULT 0,
    bytes_in           INTEGER NOT NULL DEFAULT 0,
    bytes_out          INTEGER NOT NULL DEFAULT 0,
    outbound_requests  INTEGER NOT NULL DEFAULT 0,
    outbound_bytes_out INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes  INTEGER,
    PRIMARY KEY (period, start_s, tenant, app, function, revision, trigger)
) WITHOUT ROWID;
INSERT INTO usage_by_tenant (period, start_s, tenant, app, function, revision, trigger,
    requests, errors, throttles, cold_starts, duration_us, billed_ms, kib_ms, unmetered, cpu_us,
    bytes_in, bytes_out, outbound_requests, outbound_bytes_out, peak_memory_bytes)
SELECT period, start_s, 'default', app, function, revision, trigger, requests, errors,
    throttles, cold_starts, duration_us, billed_ms, kib_ms, unmetered, cpu_us, bytes_in,
    bytes_out, outbound_requests, outbound_bytes_out, peak_memory_bytes
FROM usage;
DROP TABLE usage;
ALTER TABLE usage_by_tenant RENAME TO usage;

CREATE TABLE usage_periods (
    period               TEXT    NOT NULL PRIMARY KEY
                         CHECK (period IN ('minute', 'hour', 'day')),
    rows                 INTEGER NOT NULL DEFAULT 0,
    size_pruned_before_s INTEGER
) WITHOUT ROWID;
INSERT INTO usage_periods (period, rows)
SELECT column1, (SELECT count(*) FROM usage WHERE period = column1)
FROM (VALUES ('minute'), ('hour'), ('day'));
";

/// Every migration, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14];

/// Brings the database at `path` to the current schema version.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    // IMMEDIATE: two processes opening a fresh data dir at once must not both run V1.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found == supported {
        return Ok(());
    }
    for sql in &MIGRATIONS[usize::try_from(found).unwrap_or(0)..] {
        tx.execute_batch(sql).map_err(err)?;
    }
    tx.pragma_update(None, "user_version", supported)
        .map_err(err)?;
    tx.commit().map_err(err)?;
    tracing::debug!(from = found, to = supported, db = %path.display(), "migrated database schema");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_database_migrates_with_its_live_revision_taking_all_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(V1).unwrap();
            conn.execute_batch(
                "INSERT INTO revisions VALUES ('shop', 1, 0, '{}');
                 INSERT INTO revisions VALUES ('shop', 2, 0, '{}');
                 INSERT INTO apps VALUES ('shop', 2);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let split: Vec<(String, i64, i64)> = conn
            .prepare("SELECT app, revision, weight FROM traffic")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(split, vec![("shop".to_string(), 2, 100)]);
        let generation: i64 = conn
            .query_row(
                "SELECT generation FROM generations WHERE app = 'shop'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(generation, 1);
        let by: Option<String> = conn
            .query_row(
                "SELECT deployed_by FROM revisions WHERE revision = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by, None);
        // Migrating again is a no-op.
        migrate(&mut conn, &path).unwrap();
    }

    #[test]
    fn v13_usage_rows_migrate_to_the_default_tenant_with_their_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..13] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "INSERT INTO usage (period, start_s, app, function, revision, trigger, requests,
                     kib_ms, peak_memory_bytes)
                 VALUES ('minute', 60, 'shop', 'api', 1, 'http', 3, 300, 4096),
                        ('minute', 120, 'shop', 'api', 1, 'http', 2, 200, NULL),
                        ('hour', 0, 'shop', 'api', 1, 'http', 5, 500, 4096);
                 PRAGMA user_version = 13;",
            )
            .unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let rows: Vec<(String, i64, String, i64, i64, Option<i64>)> = conn
            .prepare(
                "SELECT period, start_s, tenant, requests, kib_ms, peak_memory_bytes FROM usage
                 ORDER BY period, start_s",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let row = |period: &str, start, requests, kib_ms, peak| {
            (
                period.to_string(),
                start,
                "default".to_string(),
                requests,
                kib_ms,
                peak,
            )
        };
        assert_eq!(
            rows,
            [
                row("hour", 0, 5, 500, Some(4096)),
                row("minute", 60, 3, 300, Some(4096)),
                row("minute", 120, 2, 200, None),
            ]
        );
        let counts: Vec<(String, i64, Option<i64>)> = conn
            .prepare("SELECT period, rows, size_pruned_before_s FROM usage_periods ORDER BY period")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            counts,
            [
                ("day".to_string(), 0, None),
                ("hour".to_string(), 1, None),
                ("minute".to_string(), 2, None)
            ]
        );
        // The tenant is part of the key: another tenant's row in the same bucket is its own.
        conn.execute(
            "INSERT INTO usage (period, start_s, tenant, app, function, revision, trigger)
             VALUES ('minute', 60, 'other', 'shop', 'api', 1, 'http')",
            [],
        )
        .unwrap();
    }
}
