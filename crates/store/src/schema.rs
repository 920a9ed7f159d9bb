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

/// Every migration, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[V1];

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
