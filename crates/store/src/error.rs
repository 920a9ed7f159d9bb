//! The store's error type. Each message names the file, record or value involved and what to do.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory, or a directory inside it, cannot be created or used.
    #[error(
        "cannot use the data directory {}: {source}; make it writable by this user or choose another with --data-dir",
        path.display()
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The database cannot be opened or configured.
    #[error(
        "cannot open the database {}: {source}; check that the file and its directory are writable, or choose another --data-dir",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused write-ahead logging (typically on a network file system).
    #[error(
        "the database {} cannot use write-ahead logging (journal mode stays {mode:?}); put the data directory on a local file system with --data-dir",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer Nubo.
    #[error(
        "the database {} has schema version {found}, newer than this nubo supports ({supported}); upgrade nubo or choose another --data-dir",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A query or write failed.
    #[error("database error while {doing}: {source}")]
    Db {
        /// What was being done, e.g. "committing a revision".
        doing: &'static str,
        /// The underlying failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading or writing a file failed.
    #[error("cannot {doing} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "write blob".
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A digest is not a sha256 in lowercase hex.
    #[error("invalid digest {0:?}: expected a sha256 as 64 lowercase hex characters")]
    InvalidDigest(String),
    /// An artifact key is not a safe file name.
    #[error(
        "invalid artifact key {0:?}: use 1 to 128 ASCII letters, digits, '.', '-' or '_', not starting with '.'"
    )]
    InvalidArtifactKey(String),
    /// A blob is not in the store.
    #[error("code blob {digest} is missing ({}); deploy the app again to upload its code", path.display())]
    BlobNotFound {
        /// The digest asked for.
        digest: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// A blob's content does not match its name.
    #[error(
        "code blob {} is damaged (its content hashes to {actual}); deploy the app again to replace it",
        path.display()
    )]
    BlobCorrupt {
        /// The file.
        path: PathBuf,
        /// The digest of what the file holds.
        actual: String,
    },
    /// A revision handed to `commit_revision` is inconsistent; nothing was committed.
    #[error("cannot commit a revision of app {app:?}: {reason}")]
    InvalidRevision {
        /// The app.
        app: String,
        /// What is inconsistent.
        reason: String,
    },
    /// An update named a generation the app is no longer at; nothing was changed.
    #[error(
        "app {app:?} is at generation {current}, not {expected}: another change came first; read the current state and retry with its generation"
    )]
    Conflict {
        /// The app.
        app: String,
        /// The generation the caller expected.
        expected: u64,
        /// The app's generation now.
        current: u64,
    },
    /// A traffic split or instruction is invalid; nothing was changed.
    #[error("invalid traffic for app {app:?}: {reason}")]
    InvalidTraffic {
        /// The app.
        app: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A revision is not retained (never existed or was pruned).
    #[error(
        "app {app:?} has no retained revision {revision}; `nubo revisions {app}` lists the ones that can take traffic"
    )]
    RevisionNotFound {
        /// The app.
        app: String,
        /// The revision asked for.
        revision: u64,
    },
    /// A rollout of the app is running; nothing was changed.
    #[error(
        "app {app:?} is rolling out revision {to} (now at {percent}%); wait for it to end, or stop it with `nubo rollout {app} --abort`"
    )]
    RolloutRunning {
        /// The app.
        app: String,
        /// The revision being rolled out.
        to: u64,
        /// Its share now.
        percent: u8,
    },
    /// No rollout of the app runs (or it moved on since the caller looked); nothing changed.
    #[error("app {0:?} has no running rollout; `nubo rollout {0}` shows the last one")]
    RolloutNotRunning(String),
    /// The app is not deployed.
    #[error("app {0:?} is not deployed; deploy it first (`nubo ls` lists the deployed apps)")]
    AppNotDeployed(String),
    /// A stored row cannot be decoded.
    #[error(
        "stored {what} is damaged: {reason}; deploy the app again, or restore the data directory from a backup"
    )]
    Corrupt {
        /// What was being decoded, e.g. "manifest of app \"shop\" revision 3".
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The record writer thread cannot be started.
    #[error("cannot start the invocation record writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Maps a rusqlite error to [`StoreError::Db`] naming what was being done.
pub(crate) fn db(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { doing, source }
}
