//! Object storage: named buckets of objects (bytes with a key, a content type and user
//! metadata), written whole or in parts, read whole or by byte range, listed S3-style.
//!
//! Content lives in files named by its sha256 under `<data dir>/objects/sha256/`, shared by
//! every object with the same bytes; metadata lives in SQLite. Functions reach a bucket only
//! through the ones they bind in their manifest; that check is the caller's (the runtime's).
//! Here a bucket is just a name: every operation on one that was not created with
//! [`Objects::create_bucket`] fails with [`ObjectError::NoSuchBucket`].
//!
//! Invariants:
//! - A put or a completed multipart upload has committed when it returns: the content file was
//!   synced and renamed into place before the metadata transaction (`synchronous=FULL`)
//!   committed, so a crash leaves either the old object or the new one, never a row naming a
//!   missing file.
//! - `object_contents.refs` is the number of object rows naming the digest, changed in the same
//!   transaction as those rows. A content file is removed only after the transaction that
//!   dropped its last reference committed, and the placing of content files and those removals
//!   happen under the write lock, so a put of the same bytes cannot race a removal. A crash in
//!   between leaves an orphan file, never a dangling row.
//! - `buckets.objects` and `buckets.bytes` are the count and total size of the bucket's object
//!   rows, updated in the same transaction as the rows.
//! - A digest or upload id becomes part of a path only after it was validated (64 lowercase hex
//!   characters; a ULID in its canonical form), so none can point outside the objects directory.
//! - A change of an object in a watched bucket (one with object triggers, see
//!   [`Objects::watch_buckets`]) inserts its `object_events` row in the same transaction as the
//!   change: a committed change always has its event, and an event always names a committed
//!   change. A delete of a missing key changes nothing and emits nothing.

use crate::pool::Pool;
use crate::{Durability, StoreError, blobs, time};
use arc_swap::ArcSwap;
use md5::Md5;
use nubo_core::ErrorCode;
use nubo_core::limits::{
    MAX_LIST_OBJECTS, MAX_OBJECT_BYTES, MAX_OBJECT_KEY_BYTES, MAX_PART_BYTES, MAX_PARTS,
    MAX_USER_METADATA_BYTES, MIN_PART_BYTES,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use std::time::SystemTime;
use tokio::sync::Notify;

/// Where object files live, relative to the data directory.
const OBJECTS_DIR: &str = "objects";
/// Content files, by sha256, under [`OBJECTS_DIR`].
const CONTENT_DIR: &str = "sha256";
/// Parts of unfinished multipart uploads, one directory per upload, under [`OBJECTS_DIR`].
const PARTS_DIR: &str = "parts";
/// Files being written, under [`OBJECTS_DIR`]; emptied when the store opens.
const TMP_DIR: &str = "tmp";

/// How much a put reads from its source at a time.
const COPY_CHUNK: usize = 256 * 1024;

/// Longest content type accepted. Bounds the metadata row; real ones are short.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Most buckets one listing returns. Bounds the answer.
const MAX_BUCKETS_LISTED: i64 = 10_000;

/// Most unfinished multipart uploads one listing returns. Bounds the answer.
const MAX_UPLOADS_LISTED: i64 = 10_000;

/// Longest piece of a key quoted in an error message.
const QUOTED_KEY_CHARS: usize = 80;

/// How often `open` looks the object up again when its content file vanished between the
/// lookup and the open (the object was replaced or deleted in between).
const OPEN_ATTEMPTS: usize = 3;

/// Why an object storage operation failed. Each message names the missing thing or the limit
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// The bucket was never created (or was deleted).
    #[error(
        "no bucket {0:?}: bind it in a function's `buckets = [...]` and deploy, or create it with `nubo obj mb {0}`"
    )]
    NoSuchBucket(String),
    /// A bucket name that breaks the S3 naming rules.
    #[error("{0}")]
    BadBucketName(#[from] nubo_core::BucketNameError),
    /// The bucket still holds objects or unfinished uploads.
    #[error(
        "bucket {0:?} is not empty; delete its objects (`nubo obj ls {0}`, `nubo obj rm {0} KEY`) and unfinished multipart uploads first"
    )]
    BucketNotEmpty(String),
    /// No object at that key.
    #[error("bucket {bucket:?} has no object {key:?}")]
    NoSuchKey {
        /// The bucket.
        bucket: String,
        /// The key (cut short when long).
        key: String,
    },
    /// No unfinished multipart upload with that id.
    #[error(
        "no unfinished multipart upload {0:?}: it was completed or aborted, or never created; start a new one"
    )]
    NoSuchUpload(String),
    /// A part list that cannot complete the upload.
    #[error("invalid multipart upload part: {reason}")]
    InvalidPart {
        /// What is wrong and the fix.
        reason: String,
    },
    /// An empty key, one over [`MAX_OBJECT_KEY_BYTES`] or one holding a NUL.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key (cut short when long).
        key: String,
        /// What is wrong and the fix.
        reason: &'static str,
    },
    /// An object or part over its size limit.
    #[error("{what} is larger than the limit of {limit} bytes; {fix}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
        /// What to do instead.
        fix: &'static str,
    },
    /// A byte range outside the object.
    #[error(
        "the byte range starting at {start} cannot be served from an object of {size} bytes; ask for a range within the object"
    )]
    RangeNotSatisfiable {
        /// The first byte asked for.
        start: u64,
        /// The object's size.
        size: u64,
    },
    /// A content type or user metadata that cannot be stored or sent back as headers.
    #[error("invalid object metadata: {reason}")]
    BadMetadata {
        /// What is wrong and the fix.
        reason: String,
    },
    /// A file operation failed.
    #[error(
        "object storage could not {doing} {path}: {source}; check that the data directory's disk is writable and not full"
    )]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the object's bytes from the caller's source failed (a client that went away
    /// mid-upload); nothing was stored.
    #[error("reading the object's body failed: {0}; send it again")]
    BodyRead(#[source] io::Error),
    /// The database failed.
    #[error(
        "object storage database error while {0}: {1}; check that the data directory's disk is writable and not full"
    )]
    Db(&'static str, #[source] rusqlite::Error),
    /// The database holds something this code cannot read (edited by hand, or damaged).
    #[error("object storage database holds {0}; restore the data directory from a backup")]
    Corrupt(String),
}

impl ObjectError {
    /// The public error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ObjectError::NoSuchBucket(_) => ErrorCode::BucketNotFound,
            ObjectError::BadBucketName(_) => ErrorCode::InvalidBucketName,
            ObjectError::BucketNotEmpty(_) => ErrorCode::BucketNotEmpty,
            ObjectError::NoSuchKey { .. } => ErrorCode::ObjectNotFound,
            ObjectError::NoSuchUpload(_) => ErrorCode::UploadNotFound,
            ObjectError::InvalidPart { .. } => ErrorCode::InvalidPart,
            ObjectError::InvalidKey { .. } | ObjectError::BadMetadata { .. } => {
                ErrorCode::InvalidObjectKey
            }
            ObjectError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            ObjectError::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            ObjectError::BodyRead(_) => ErrorCode::BadRequest,
            ObjectError::Io { .. } | ObjectError::Db(..) | ObjectError::Corrupt(_) => {
                ErrorCode::Internal
            }
        }
    }

    fn io(doing: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ObjectError {
        let path = path.to_path_buf();
        move |source| ObjectError::Io {
            doing,
            path,
            source,
        }
    }
}

fn db(doing: &'static str) -> impl Fn(rusqlite::Error) -> ObjectError {
    move |e| ObjectError::Db(doing, e)
}

/// One object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// S3's entity tag, without quotes: the hex MD5 of the content, or for an object completed
    /// from a multipart upload, the hex MD5 of its parts' binary MD5s followed by `-<parts>`.
    pub etag: String,
    /// The content type given when it was written.
    pub content_type: Option<String>,
    /// When it was written (millisecond precision).
    pub last_modified: SystemTime,
    /// User metadata (`x-amz-meta-*`), names in lowercase without the prefix.
    pub user_metadata: BTreeMap<String, String>,
    /// The sha256 of the content, lowercase hex.
    pub digest: String,
}

/// What a put stores besides the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// The content type to answer reads with.
    pub content_type: Option<String>,
    /// User metadata: names of lowercase letters, digits, `-`, `_` and `.`; values without
    /// control characters; at most [`MAX_USER_METADATA_BYTES`] of names and values together.
    pub user_metadata: BTreeMap<String, String>,
    /// The trigger hop count of the invocation that writes the object (0 for writes from
    /// outside functions); carried into the object event, so trigger chains can be bounded.
    pub hop: u32,
}

/// What happened to an object, as an object trigger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectEventKind {
    /// Written: a put, a copy, or a completed multipart upload (also over an older object).
    Created,
    /// Deleted.
    Deleted,
}

impl ObjectEventKind {
    /// Its name in the database and in trigger configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectEventKind::Created => "created",
            ObjectEventKind::Deleted => "deleted",
        }
    }

    /// Parses a name; `None` for an unknown one.
    pub fn parse(s: &str) -> Option<ObjectEventKind> {
        match s {
            "created" => Some(ObjectEventKind::Created),
            "deleted" => Some(ObjectEventKind::Deleted),
            _ => None,
        }
    }
}

/// One change of an object in a watched bucket, waiting in the outbox for its triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// Its place in the outbox: later changes have larger numbers.
    pub seq: i64,
    /// The bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// What happened.
    pub kind: ObjectEventKind,
    /// The new object's size (`None` for a delete).
    pub size: Option<u64>,
    /// The new object's etag, without quotes (`None` for a delete).
    pub etag: Option<String>,
    /// The new object's content type (`None` for a delete or when it has none).
    pub content_type: Option<String>,
    /// The trigger hop count of the invocation that made the change (0 from outside functions).
    pub hop: u32,
    /// The W3C `traceparent` of the invocation that made the change, if it ran in a trace.
    pub traceparent: Option<String>,
    /// When the change committed (millisecond precision).
    pub at: SystemTime,
}

/// One bucket, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// The bucket's name.
    pub name: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// Objects held.
    pub objects: u64,
    /// Bytes of the objects held (each object counted, also when it shares content).
    pub bytes: u64,
}

/// One page of a listing from [`Objects::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectPage {
    /// Objects in key order.
    pub objects: Vec<ObjectMeta>,
    /// Key prefixes rolled up by the delimiter, in order, each once.
    pub common_prefixes: Vec<String>,
    /// When more may follow: the last key or common prefix of this page; pass it as `after`.
    pub next: Option<String>,
}

/// Handle on the object storage of one data directory; cheap to clone, `Send + Sync`.
///
/// Every method blocks on SQLite or the filesystem: call them from `spawn_blocking` or a
/// blocking thread.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<data dir>/objects`.
    root: PathBuf,
    /// Metadata connections, writes `synchronous=FULL`. The write connection's lock is also
    /// the critical section in which content files are placed and removed (see the module
    /// invariants).
    pool: Pool,
    /// Buckets whose changes go to the `object_events` outbox.
    watched: ArcSwap<BTreeSet<String>>,
    /// Woken after each commit that added an outbox row.
    events_signal: Arc<Notify>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl Objects {
    /// Opens the object connections on the (already migrated) database at `db_path`, creates
    /// the directories under `data_dir` and removes what a crash left behind: temporary files,
    /// and part directories of uploads that no longer exist.
    pub(crate) fn new(data_dir: &Path, db_path: &Path) -> Result<Objects, StoreError> {
        let root = data_dir.join(OBJECTS_DIR);
        for dir in [CONTENT_DIR, PARTS_DIR, TMP_DIR] {
            blobs::create_private_dir(&root.join(dir))?;
        }
        let objects = Objects {
            inner: Arc::new(Inner {
                root,
                pool: Pool::open(db_path, Durability::Full)?,
                watched: ArcSwap::from_pointee(BTreeSet::new()),
                events_signal: Arc::new(Notify::new()),
            }),
        };
        objects.remove_leftovers();
        Ok(objects)
    }

    /// Best effort: a leftover only wastes space.
    fn remove_leftovers(&self) {
        if let Ok(entries) = fs::read_dir(self.inner.root.join(TMP_DIR)) {
            for e in entries.flatten() {
                if let Err(error) = fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), %error, "cannot remove stale object temp file");
                }
            }
        }
        let Ok(entries) = fs::read_dir(self.inner.root.join(PARTS_DIR)) else {
            return;
        };
        let conn = self.writer();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let known = conn
                .query_row(
                    "SELECT 1 FROM multipart_uploads WHERE id = ?1",
                    [&name],
                    |_| Ok(()),
                )
                .optional();
            if matches!(known, Ok(None))
                && let Err(error) = fs::remove_dir_all(e.path())
            {
                tracing::warn!(path = %e.path().display(), %error, "cannot remove parts of a finished upload");
            }
        }
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner.pool.writer()
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.inner.pool.reader()
    }

    /// Runs `f` in one read transaction, so its queries see one snapshot.
    fn read_tx<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ObjectError>,
    ) -> Result<T, ObjectError> {
        let mut conn = self.reader();
        let tx = conn.transaction().map_err(db(doing))?;
        f(&tx)
    }

    /// Runs `f` in one write transaction on the already locked write connection and commits.
    fn write_tx<T>(
        conn: &mut Connection,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ObjectError>,
    ) -> Result<T, ObjectError> {
        // IMMEDIATE: take the write lock up front, so the transaction never has to upgrade
        // from a read and fail with "database is locked" halfway.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let out = f(&tx)?;
        tx.commit().map_err(db(doing))?;
        Ok(out)
    }

    fn content_path(&self, digest: &str) -> PathBuf {
        // Digests are computed here, never taken from outside; check anyway before making a path.
        debug_assert!(blobs::validate_digest(digest).is_ok());
        self.inner
            .root
            .join(CONTENT_DIR)
            .join(&digest[..2])
            .join(digest)
    }

    fn parts_dir(&self, upload_id: &str) -> PathBuf {
        self.inner.root.join(PARTS_DIR).join(upload_id)
    }

    /// A new, empty temporary file under the objects directory.
    fn temp_file(&self) -> Result<(File, PathBuf), ObjectError> {
        let path = self
            .inner
            .root
            .join(TMP_DIR)
            .join(ulid::Ulid::new().to_string());
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(ObjectError::io("create a temporary file", &path))?;
        Ok((file, path))
    }

    // ---- buckets ----

    /// Creates the bucket; `true` when it was created now, `false` when it existed.
    pub fn create_bucket(&self, bucket: &str) -> Result<bool, ObjectError> {
        nubo_core::validate_bucket_name(bucket)?;
        let now = time::to_millis(SystemTime::now());
        let mut conn = self.writer();
        Self::write_tx(&mut conn, "creating a bucket", |tx| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO buckets (name, created_at_ms) VALUES (?1, ?2)",
                    params![bucket, now],
                )
                .map_err(db("creating a bucket"))?;
            Ok(n == 1)
        })
    }

    /// Deletes an empty bucket; [`ObjectError::BucketNotEmpty`] while it holds objects or
    /// unfinished multipart uploads.
    pub fn delete_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        const DOING: &str = "deleting a bucket";
        let mut conn = self.writer();
        Self::write_tx(&mut conn, DOING, |tx| {
            let objects: Option<i64> = tx
                .query_row(
                    "SELECT objects FROM buckets WHERE name = ?1",
                    [bucket],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db(DOING))?;
            let Some(objects) = objects else {
                return Err(ObjectError::NoSuchBucket(bucket.to_string()));
            };
            let uploads: i64 = tx
                .query_row(
                    "SELECT count(*) FROM multipart_uploads WHERE bucket = ?1",
                    [bucket],
                    |r| r.get(0),
                )
                .map_err(db(DOING))?;
            if objects > 0 || uploads > 0 {
                return Err(ObjectError::BucketNotEmpty(bucket.to_string()));
            }
            tx.execute("DELETE FROM buckets WHERE name = ?1", [bucket])
                .map_err(db(DOING))?;
            Ok(())
        })
    }

    /// Every bucket, by name.
    pub fn buckets(&self) -> Result<Vec<BucketInfo>, ObjectError> {
        const DOING: &str = "listing buckets";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, created_at_ms, objects, bytes FROM buckets ORDER BY name LIMIT ?1",
            )
            .map_err(db(DOING))?;
        let rows = stmt
            .query_map([MAX_BUCKETS_LISTED], bucket_row)
            .map_err(db(DOING))?;
        rows.collect::<Result<_, _>>().map_err(db(DOING))
    }

    /// One bucket, or `None` when it does not exist.
    pub fn bucket(&self, bucket: &str) -> Result<Option<BucketInfo>, ObjectError> {
        let conn = self.reader();
        conn.query_row(
            "SELECT name, created_at_ms, objects, bytes FROM buckets WHERE name = ?1",
            [bucket],
            bucket_row,
        )
        .optional()
        .map_err(db("reading a bucket"))
    }

    // ---- objects ----

    /// Starts a put: write the bytes into the returned [`PendingPut`], then commit it under a
    /// bucket and key. Nothing is visible until the commit; dropping it uncommitted discards it.
    pub fn begin_put(&self) -> Result<PendingPut, ObjectError> {
        let (file, path) = self.temp_file()?;
        Ok(PendingPut {
            objects: self.clone(),
            file,
            path: Some(path),
            sha256: Sha256::new(),
            md5: Md5::new(),
            len: 0,
            limit: MAX_OBJECT_BYTES,
            what: "the object",
            fix: "upload it in parts (multipart upload) instead",
            traceparent: None,
        })
    }

    /// Writes the object at `key` from `body`, replacing any object there.
    pub fn put(
        &self,
        bucket: &str,
        key: &str,
        body: &mut dyn Read,
        opts: PutOptions,
    ) -> Result<ObjectMeta, ObjectError> {
        self.put_traced(bucket, key, body, opts, None)
    }

    /// [`Objects::put`] by an invocation running in a trace: the `created` event keeps its
    /// `traceparent`, so the delivery continues the trace.
    pub fn put_traced(
        &self,
        bucket: &str,
        key: &str,
        body: &mut dyn Read,
        opts: PutOptions,
        traceparent: Option<String>,
    ) -> Result<ObjectMeta, ObjectError> {
        // Refuse before reading what may be gigabytes.
        validate_key(key)?;
        validate_options(&opts)?;
        self.require_bucket(bucket)?;
        let mut pending = self.begin_put()?;
        pending.set_traceparent(traceparent);
        pending.copy_from(body)?;
        pending.commit(bucket, key, opts)
    }

    fn require_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        match self.bucket(bucket)? {
            Some(_) => Ok(()),
            None => Err(ObjectError::NoSuchBucket(bucket.to_string())),
        }
    }

    /// The object's metadata, or `None` when there is no object at `key`.
    pub fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        self.read_tx("reading an object", |tx| {
            let meta = object_row(tx, bucket, key)?;
            if meta.is_none() {
                require_bucket_tx(tx, bucket)?;
            }
            Ok(meta)
        })
    }

    /// The object's bytes from `range` (first byte, last byte inclusive or to the end), checked
    /// against its size ([`ObjectError::RangeNotSatisfiable`]); `None` when there is no object
    /// at `key`. A last byte beyond the end means the end.
    pub fn open(
        &self,
        bucket: &str,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<(ObjectMeta, ObjectReader)>, ObjectError> {
        for _ in 0..OPEN_ATTEMPTS {
            let Some(meta) = self.head(bucket, key)? else {
                return Ok(None);
            };
            let (start, len) = match range {
                None => (0, meta.size),
                Some((start, last)) => {
                    let last = last.unwrap_or(u64::MAX).min(meta.size.saturating_sub(1));
                    if start >= meta.size || last < start {
                        return Err(ObjectError::RangeNotSatisfiable {
                            start,
                            size: meta.size,
                        });
                    }
                    (start, last - start + 1)
                }
            };
            let path = self.content_path(&meta.digest);
            let mut file = match File::open(&path) {
                Ok(f) => f,
                // Replaced or deleted since the lookup: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ObjectError::io("open object content", &path)(e)),
            };
            let on_disk = file
                .metadata()
                .map_err(ObjectError::io("read object content", &path))?
                .len();
            if on_disk != meta.size {
                return Err(ObjectError::Corrupt(format!(
                    "content file {} of {on_disk} bytes for an object of {} bytes",
                    path.display(),
                    meta.size
                )));
            }
            if start > 0 {
                file.seek(SeekFrom::Start(start))
                    .map_err(ObjectError::io("read object content", &path))?;
            }
            return Ok(Some((
                meta,
                ObjectReader {
                    inner: file.take(len),
                    len,
                },
            )));
        }
        // The object keeps changing under us; report it as the content being gone.
        Ok(None)
    }

    /// Deletes the object at `key`; `true` when there was one. The same as
    /// [`Objects::delete_at_hop`] at hop 0 (a delete from outside functions).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        self.delete_at_hop(bucket, key, 0)
    }

    /// Deletes the object at `key` for an invocation at trigger hop `hop`; `true` when there
    /// was one. In a watched bucket the delete of an object emits a `deleted` event.
    pub fn delete_at_hop(&self, bucket: &str, key: &str, hop: u32) -> Result<bool, ObjectError> {
        self.delete_traced(bucket, key, hop, None)
    }

    /// [`Objects::delete_at_hop`] by an invocation running in a trace: its `deleted` event
    /// keeps the invocation's `traceparent`, so the delivery continues the trace.
    pub fn delete_traced(
        &self,
        bucket: &str,
        key: &str,
        hop: u32,
        traceparent: Option<&str>,
    ) -> Result<bool, ObjectError> {
        const DOING: &str = "deleting an object";
        let mut conn = self.writer();
        let removed = Self::write_tx(&mut conn, DOING, |tx| {
            require_bucket_tx(tx, bucket)?;
            let old: Option<(String, i64)> = tx
                .query_row(
                    "SELECT digest, size FROM objects WHERE bucket = ?1 AND key = ?2",
                    params![bucket, key.as_bytes()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db(DOING))?;
            let Some((digest, size)) = old else {
                return Ok(None);
            };
            tx.execute(
                "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
                params![bucket, key.as_bytes()],
            )
            .map_err(db(DOING))?;
            tx.execute(
                "UPDATE buckets SET objects = objects - 1, bytes = bytes - ?2 WHERE name = ?1",
                params![bucket, size],
            )
            .map_err(db(DOING))?;
            let now = time::to_millis(SystemTime::now());
            let cause = Cause { hop, traceparent };
            let emitted = self.emit_event(tx, bucket, key, None, cause, now)?;
            Ok(Some((release_content(tx, &digest)?, emitted)))
        })?;
        match removed {
            None => Ok(false),
            Some((unreferenced, emitted)) => {
                if let Some(digest) = unreferenced {
                    self.remove_content(&digest);
                }
                drop(conn);
                if emitted {
                    self.inner.events_signal.notify_one();
                }
                Ok(true)
            }
        }
    }

    // ---- object events ----

    /// Sets the buckets whose changes go to the object-event outbox (the buckets that have
    /// object triggers), replacing the earlier set. Changes committed before the call are not
    /// emitted after the fact.
    pub fn watch_buckets(&self, buckets: BTreeSet<String>) {
        self.inner.watched.store(Arc::new(buckets));
    }

    /// Notified (one permit, `notify_one`) after each commit that added an outbox row, so the
    /// one task draining [`Objects::object_events`] wakes at once.
    pub fn object_events_signal(&self) -> Arc<Notify> {
        self.inner.events_signal.clone()
    }

    /// Up to `limit` events from the outbox, oldest first.
    pub fn object_events(&self, limit: usize) -> Result<Vec<ObjectEvent>, ObjectError> {
        const DOING: &str = "reading object events";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, bucket, key, kind, size, etag, content_type, hop, at_ms, traceparent
                 FROM object_events ORDER BY seq LIMIT ?1",
            )
            .map_err(db(DOING))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })
            .map_err(db(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, bucket, key, kind, size, etag, content_type, hop, at, traceparent) =
                row.map_err(db(DOING))?;
            let Some(kind) = ObjectEventKind::parse(&kind) else {
                return Err(ObjectError::Corrupt(format!(
                    "an object event of unknown kind {kind:?}"
                )));
            };
            out.push(ObjectEvent {
                seq,
                bucket,
                key: key_string(key)?,
                kind,
                size: size.map(|s| s.max(0) as u64),
                etag,
                content_type,
                hop: u32::try_from(hop).unwrap_or(u32::MAX),
                traceparent,
                at: time::from_millis(at),
            });
        }
        Ok(out)
    }

    /// Removes the outbox events up to and including `up_to_seq` (delivered); returns how many.
    pub fn ack_object_events(&self, up_to_seq: i64) -> Result<u64, ObjectError> {
        const DOING: &str = "removing delivered object events";
        let mut conn = self.writer();
        Self::write_tx(&mut conn, DOING, |tx| {
            let n = tx
                .execute("DELETE FROM object_events WHERE seq <= ?1", [up_to_seq])
                .map_err(db(DOING))?;
            Ok(n as u64)
        })
    }

    /// Inside a write transaction: adds the outbox row of a change when `bucket` is watched:
    /// `created` with the object `written`, or `deleted` when `None`. Returns whether it did
    /// (the caller notifies once the transaction committed).
    fn emit_event(
        &self,
        tx: &Transaction<'_>,
        bucket: &str,
        key: &str,
        written: Option<Written<'_>>,
        cause: Cause<'_>,
        at_ms: i64,
    ) -> Result<bool, ObjectError> {
        let Cause { hop, traceparent } = cause;
        if !self.inner.watched.load().contains(bucket) {
            return Ok(false);
        }
        let (kind, size, etag, content_type) = match written {
            Some(w) => (
                ObjectEventKind::Created,
                Some(i64::try_from(w.size).unwrap_or(i64::MAX)),
                Some(w.etag),
                w.content_type,
            ),
            None => (ObjectEventKind::Deleted, None, None, None),
        };
        tx.execute(
            "INSERT INTO object_events
             (bucket, key, kind, size, etag, content_type, hop, at_ms, traceparent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                bucket,
                key.as_bytes(),
                kind.as_str(),
                size,
                etag,
                content_type,
                hop,
                at_ms,
                traceparent
            ],
        )
        .map_err(db("recording an object event"))?;
        Ok(true)
    }

    /// Removes a content file whose last reference was just committed away. Called with the
    /// write lock held. Best effort: a file left behind is an orphan, never a dangling row.
    fn remove_content(&self, digest: &str) {
        let path = self.content_path(digest);
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove unreferenced object content");
        }
    }

    /// Keys in byte order, after `after` (exclusive), with `prefix`, at most `limit` entries
    /// (objects and common prefixes together, capped at [`MAX_LIST_OBJECTS`]). With
    /// `delimiter`, keys that hold it after the prefix are rolled up into `common_prefixes`
    /// (the prefix through the first delimiter), each listed once; an `after` that is such a
    /// common prefix continues past all its keys.
    pub fn list(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ObjectPage, ObjectError> {
        const DOING: &str = "listing objects";
        let limit = limit.clamp(1, MAX_LIST_OBJECTS);
        let prefix = prefix.unwrap_or("");
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let upper = prefix_upper_bound(prefix.as_bytes());
        // The lowest key still to consider and whether it is itself excluded.
        let mut low: Vec<u8> = prefix.as_bytes().to_vec();
        let mut low_excluded = false;
        if let Some(after) = after
            && after.as_bytes() >= low.as_slice()
        {
            let rolled_up = delimiter.is_some_and(|d| {
                after
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.find(d).map(|i| i + d.len() == rest.len()))
                    .unwrap_or(false)
            });
            match (rolled_up, prefix_upper_bound(after.as_bytes())) {
                (true, Some(next)) => low = next,
                (true, None) => return Ok(ObjectPage::default()),
                (false, _) => {
                    low = after.as_bytes().to_vec();
                    low_excluded = true;
                }
            }
        }
        self.read_tx(DOING, |tx| {
            require_bucket_tx(tx, bucket)?;
            let mut page = ObjectPage::default();
            let mut emitted = 0usize;
            let mut last_emitted: Option<String> = None;
            // Each query runs until it meets a new common prefix, then the next one starts
            // past that prefix's keys: at most `limit + 1` entries, so at most `limit + 2`
            // queries.
            'query: loop {
                let rows = query_keys(tx, bucket, &low, low_excluded, upper.as_deref(), limit + 1)?;
                if rows.is_empty() {
                    break;
                }
                let full_batch = rows.len() == limit + 1;
                let mut last_key: Option<Vec<u8>> = None;
                for meta in rows {
                    let rolled = delimiter.and_then(|d| {
                        let rest = &meta.key[prefix.len()..];
                        rest.find(d)
                            .map(|i| meta.key[..prefix.len() + i + d.len()].to_string())
                    });
                    if emitted == limit {
                        // One more entry exists: this page is truncated.
                        page.next = last_emitted;
                        return Ok(page);
                    }
                    emitted += 1;
                    match rolled {
                        Some(common) => {
                            let next = prefix_upper_bound(common.as_bytes());
                            last_emitted = Some(common.clone());
                            page.common_prefixes.push(common);
                            match next {
                                Some(next) => {
                                    low = next;
                                    low_excluded = false;
                                    continue 'query;
                                }
                                None => break 'query,
                            }
                        }
                        None => {
                            last_key = Some(meta.key.as_bytes().to_vec());
                            last_emitted = Some(meta.key.clone());
                            page.objects.push(meta);
                        }
                    }
                }
                match (full_batch, last_key) {
                    (true, Some(k)) => {
                        low = k;
                        low_excluded = true;
                    }
                    _ => break,
                }
            }
            Ok(page)
        })
    }

    // ---- multipart uploads ----

    /// Starts a multipart upload of `key`; returns its id.
    pub fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
    ) -> Result<String, ObjectError> {
        const DOING: &str = "starting a multipart upload";
        validate_key(key)?;
        validate_options(&opts)?;
        let id = ulid::Ulid::new().to_string();
        let meta_json = metadata_json(&opts.user_metadata);
        let now = time::to_millis(SystemTime::now());
        let mut conn = self.writer();
        Self::write_tx(&mut conn, DOING, |tx| {
            require_bucket_tx(tx, bucket)?;
            tx.execute(
                "INSERT INTO multipart_uploads
                 (id, bucket, key, content_type, user_meta, created_at_ms, hop)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    bucket,
                    key.as_bytes(),
                    opts.content_type,
                    meta_json,
                    now,
                    opts.hop
                ],
            )
            .map_err(db(DOING))?;
            Ok(())
        })?;
        Ok(id)
    }

    /// Stores part `part_number` (1 to [`MAX_PARTS`]) of an upload from `body`, replacing an
    /// earlier upload of the same number; returns the part's etag (hex MD5).
    pub fn upload_part(
        &self,
        upload_id: &str,
        part_number: u32,
        body: &mut dyn Read,
    ) -> Result<String, ObjectError> {
        const DOING: &str = "storing a multipart upload part";
        if !(1..=MAX_PARTS).contains(&part_number) {
            return Err(ObjectError::InvalidPart {
                reason: format!(
                    "part number {part_number} is out of range; number parts from 1 to {MAX_PARTS}"
                ),
            });
        }
        let id = self.require_upload(upload_id)?.id;
        let mut pending = self.begin_put()?;
        pending.limit = MAX_PART_BYTES;
        pending.what = "the part";
        pending.fix = "split the object into more, smaller parts";
        pending.copy_from(body)?;
        let (tmp, _sha256, md5, size) = pending.finish()?;
        let etag = hex::encode(md5);
        let dir = self.parts_dir(&id);
        let part_path = dir.join(part_number.to_string());
        let mut conn = self.writer();
        // Under the write lock: a completion or abort either ran before (the upload is gone,
        // refuse) or runs after (and sees this part).
        let placed = Self::write_tx(&mut conn, DOING, |tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM multipart_uploads WHERE id = ?1",
                    [&id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(db(DOING))?;
            if exists.is_none() {
                return Err(ObjectError::NoSuchUpload(id.clone()));
            }
            ensure_dir(&dir)?;
            fs::rename(&tmp, &part_path)
                .map_err(ObjectError::io("store upload part", &part_path))?;
            sync_dir(&dir)?;
            tx.execute(
                "INSERT OR REPLACE INTO multipart_parts (upload_id, part_number, size, etag)
                     VALUES (?1, ?2, ?3, ?4)",
                params![id, part_number, size as i64, etag],
            )
            .map_err(db(DOING))?;
            Ok(())
        });
        drop(conn);
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed.map(|()| etag)
    }

    /// Completes an upload from `parts` (part number and etag, in ascending order; quotes
    /// around the etags are ignored): concatenates them into the object at the upload's key,
    /// replacing any object there, and ends the upload. Every part but the last must be at
    /// least [`MIN_PART_BYTES`].
    pub fn complete_multipart(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta, ObjectError> {
        const DOING: &str = "completing a multipart upload";
        let upload = self.require_upload(upload_id)?;
        if parts.is_empty() {
            return Err(ObjectError::InvalidPart {
                reason: "the part list is empty; name at least one uploaded part".into(),
            });
        }
        let stored: BTreeMap<u32, (u64, String)> = self.read_tx(DOING, |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT part_number, size, etag FROM multipart_parts WHERE upload_id = ?1",
                )
                .map_err(db(DOING))?;
            let rows = stmt
                .query_map([&upload.id], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        (r.get::<_, i64>(1)?.max(0) as u64, r.get::<_, String>(2)?),
                    ))
                })
                .map_err(db(DOING))?;
            rows.collect::<Result<_, _>>().map_err(db(DOING))
        })?;
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        let mut previous = 0u32;
        for (i, (number, etag)) in parts.iter().enumerate() {
            if *number <= previous {
                return Err(ObjectError::InvalidPart {
                    reason: format!(
                        "part {number} follows part {previous}; list parts in ascending order, each once"
                    ),
                });
            }
            previous = *number;
            let Some((size, stored_etag)) = stored.get(number) else {
                return Err(ObjectError::InvalidPart {
                    reason: format!("part {number} was not uploaded; upload it first"),
                });
            };
            let etag = etag.trim().trim_matches('"').to_ascii_lowercase();
            if etag != *stored_etag {
                return Err(ObjectError::InvalidPart {
                    reason: format!(
                        "part {number} has etag {stored_etag:?}, not {etag:?}; name the etag its upload answered"
                    ),
                });
            }
            if i + 1 < parts.len() && *size < MIN_PART_BYTES {
                return Err(ObjectError::InvalidPart {
                    reason: format!(
                        "part {number} is {size} bytes; every part but the last must be at least {MIN_PART_BYTES} bytes (5 MiB)"
                    ),
                });
            }
            md5s.extend(hex::decode(stored_etag).map_err(|_| {
                ObjectError::Corrupt(format!("part etag {stored_etag:?} that is not hex"))
            })?);
        }
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), parts.len());
        let mut pending = self.begin_put()?;
        pending.limit = u64::MAX;
        let dir = self.parts_dir(&upload.id);
        for (number, _) in parts {
            let path = dir.join(number.to_string());
            let mut file = File::open(&path).map_err(ObjectError::io("read upload part", &path))?;
            pending.copy_from(&mut file)?;
        }
        let opts = PutOptions {
            content_type: upload.content_type,
            user_metadata: upload.user_metadata,
            hop: upload.hop,
        };
        let meta = pending.commit_inner(
            &upload.bucket,
            &upload.key,
            opts,
            Some(etag),
            Some(&upload.id),
        )?;
        Ok(meta)
    }

    /// Ends an upload without an object, dropping its parts.
    pub fn abort_multipart(&self, upload_id: &str) -> Result<(), ObjectError> {
        const DOING: &str = "aborting a multipart upload";
        let id = canonical_upload_id(upload_id)?;
        let mut conn = self.writer();
        Self::write_tx(&mut conn, DOING, |tx| {
            tx.execute("DELETE FROM multipart_parts WHERE upload_id = ?1", [&id])
                .map_err(db(DOING))?;
            let n = tx
                .execute("DELETE FROM multipart_uploads WHERE id = ?1", [&id])
                .map_err(db(DOING))?;
            if n == 0 {
                return Err(ObjectError::NoSuchUpload(upload_id.to_string()));
            }
            Ok(())
        })?;
        remove_parts_dir(&self.parts_dir(&id));
        Ok(())
    }

    /// The unfinished uploads of a bucket: key, upload id and when it started, by key.
    pub fn list_multipart(
        &self,
        bucket: &str,
    ) -> Result<Vec<(String, String, SystemTime)>, ObjectError> {
        const DOING: &str = "listing multipart uploads";
        self.read_tx(DOING, |tx| {
            require_bucket_tx(tx, bucket)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, id, created_at_ms FROM multipart_uploads WHERE bucket = ?1
                     ORDER BY key, id LIMIT ?2",
                )
                .map_err(db(DOING))?;
            let rows = stmt
                .query_map(params![bucket, MAX_UPLOADS_LISTED], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db(DOING))?;
            let mut out = Vec::new();
            for row in rows {
                let (key, id, at) = row.map_err(db(DOING))?;
                out.push((key_string(key)?, id, time::from_millis(at)));
            }
            Ok(out)
        })
    }

    fn require_upload(&self, upload_id: &str) -> Result<Upload, ObjectError> {
        const DOING: &str = "reading a multipart upload";
        let id = canonical_upload_id(upload_id)?;
        let row = self.read_tx(DOING, |tx| {
            tx.query_row(
                "SELECT bucket, key, content_type, user_meta, hop FROM multipart_uploads
                 WHERE id = ?1",
                [&id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(db(DOING))
        })?;
        let Some((bucket, key, content_type, meta, hop)) = row else {
            return Err(ObjectError::NoSuchUpload(upload_id.to_string()));
        };
        Ok(Upload {
            id,
            bucket,
            key: key_string(key)?,
            content_type,
            user_metadata: parse_metadata(&meta)?,
            hop: u32::try_from(hop).unwrap_or(u32::MAX),
        })
    }
}

/// Who made a change, for its outbox row: the trigger hop count and the `traceparent` of the
/// invocation (0 and none from outside functions).
#[derive(Clone, Copy)]
struct Cause<'a> {
    hop: u32,
    traceparent: Option<&'a str>,
}

/// The object a `created` event describes.
struct Written<'a> {
    size: u64,
    etag: &'a str,
    content_type: Option<&'a str>,
}

/// An unfinished multipart upload.
struct Upload {
    id: String,
    bucket: String,
    key: String,
    content_type: Option<String>,
    user_metadata: BTreeMap<String, String>,
    /// The trigger hop count of the invocation that started it.
    hop: u32,
}

/// An object being written: bytes go to a temporary file while they are hashed (sha256 and
/// MD5); [`PendingPut::commit`] makes it the object at a key. Dropping it uncommitted removes
/// the temporary file.
pub struct PendingPut {
    objects: Objects,
    file: File,
    /// `None` once the file was moved into place.
    path: Option<PathBuf>,
    sha256: Sha256,
    md5: Md5,
    len: u64,
    limit: u64,
    what: &'static str,
    fix: &'static str,
    /// The `traceparent` of the invocation writing the object, for its `created` event.
    traceparent: Option<String>,
}

impl fmt::Debug for PendingPut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPut")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl PendingPut {
    /// Marks the write as made by an invocation running in the trace `traceparent`: the
    /// object's `created` event keeps it, so the delivery continues the trace.
    pub fn set_traceparent(&mut self, traceparent: Option<String>) {
        self.traceparent = traceparent;
    }

    /// Appends `chunk`; fails with [`ObjectError::TooLarge`] once the object would pass
    /// [`MAX_OBJECT_BYTES`].
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        let new_len = self.len.saturating_add(chunk.len() as u64);
        if new_len > self.limit {
            return Err(ObjectError::TooLarge {
                what: self.what,
                limit: self.limit,
                fix: self.fix,
            });
        }
        let path = self.path.as_deref().unwrap_or(Path::new("?"));
        self.file
            .write_all(chunk)
            .map_err(ObjectError::io("write object content to", path))?;
        self.sha256.update(chunk);
        self.md5.update(chunk);
        self.len = new_len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends everything `body` yields.
    fn copy_from(&mut self, body: &mut dyn Read) -> Result<(), ObjectError> {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ObjectError::BodyRead(source)),
            };
            self.write(&buf[..n])?;
        }
    }

    /// Syncs the file and hands back its path, sha256, MD5 and length. The caller owns the
    /// temporary file from here on.
    fn finish(mut self) -> Result<(PathBuf, String, [u8; 16], u64), ObjectError> {
        let path = self.path.take().unwrap_or_default();
        let synced = self
            .file
            .flush()
            .and_then(|()| self.file.sync_all())
            .map_err(ObjectError::io("sync object content", &path));
        if let Err(e) = synced {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let sha256 = hex::encode(std::mem::take(&mut self.sha256).finalize());
        let md5: [u8; 16] = std::mem::take(&mut self.md5).finalize().into();
        Ok((path, sha256, md5, self.len))
    }

    /// Makes the bytes written the object at `key` in `bucket`, replacing any object there.
    pub fn commit(
        self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
    ) -> Result<ObjectMeta, ObjectError> {
        self.commit_inner(bucket, key, opts, None, None)
    }

    /// `commit`, with the etag given (multipart) and the upload to end in the same transaction.
    fn commit_inner(
        self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
        etag: Option<String>,
        upload: Option<&str>,
    ) -> Result<ObjectMeta, ObjectError> {
        const DOING: &str = "writing an object";
        validate_key(key)?;
        validate_options(&opts)?;
        let objects = self.objects.clone();
        let traceparent = self.traceparent.clone();
        let (tmp, digest, md5, size) = self.finish()?;
        let etag = etag.unwrap_or_else(|| hex::encode(md5));
        let meta_json = metadata_json(&opts.user_metadata);
        let path = objects.content_path(&digest);
        let mut conn = objects.writer();
        let result = (|| {
            // Under the write lock, so no delete removes this digest's file between placing
            // it and committing the reference.
            place_content(&tmp, &path)?;
            let now = SystemTime::now();
            let now_ms = time::to_millis(now);
            let released = Objects::write_tx(&mut conn, DOING, |tx| {
                require_bucket_tx(tx, bucket)?;
                if let Some(id) = upload {
                    tx.execute("DELETE FROM multipart_parts WHERE upload_id = ?1", [id])
                        .map_err(db(DOING))?;
                    let n = tx
                        .execute("DELETE FROM multipart_uploads WHERE id = ?1", [id])
                        .map_err(db(DOING))?;
                    if n == 0 {
                        return Err(ObjectError::NoSuchUpload(id.to_string()));
                    }
                }
                tx.execute(
                    "INSERT INTO object_contents (digest, size, refs) VALUES (?1, ?2, 1)
                     ON CONFLICT (digest) DO UPDATE SET refs = refs + 1",
                    params![digest, size as i64],
                )
                .map_err(db(DOING))?;
                let old: Option<(String, i64)> = tx
                    .query_row(
                        "SELECT digest, size FROM objects WHERE bucket = ?1 AND key = ?2",
                        params![bucket, key.as_bytes()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db(DOING))?;
                tx.execute(
                    "INSERT OR REPLACE INTO objects
                     (bucket, key, digest, size, etag, content_type, user_meta, last_modified_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        bucket,
                        key.as_bytes(),
                        digest,
                        size as i64,
                        etag,
                        opts.content_type,
                        meta_json,
                        now_ms
                    ],
                )
                .map_err(db(DOING))?;
                let (count, old_size, released) = match old {
                    Some((old_digest, old_size)) => {
                        (0, old_size, release_content(tx, &old_digest)?)
                    }
                    None => (1, 0, None),
                };
                tx.execute(
                    "UPDATE buckets SET objects = objects + ?2, bytes = bytes + ?3 WHERE name = ?1",
                    params![bucket, count, size as i64 - old_size],
                )
                .map_err(db(DOING))?;
                let written = Written {
                    size,
                    etag: &etag,
                    content_type: opts.content_type.as_deref(),
                };
                let cause = Cause {
                    hop: opts.hop,
                    traceparent: traceparent.as_deref(),
                };
                let emitted = objects.emit_event(tx, bucket, key, Some(written), cause, now_ms)?;
                Ok((released, emitted))
            })?;
            let (released, emitted) = released;
            if emitted {
                objects.inner.events_signal.notify_one();
            }
            if let Some(old) = released {
                objects.remove_content(&old);
            }
            if let Some(id) = upload {
                remove_parts_dir(&objects.parts_dir(id));
            }
            Ok(ObjectMeta {
                bucket: bucket.to_string(),
                key: key.to_string(),
                size,
                etag,
                content_type: opts.content_type,
                last_modified: time::from_millis(now_ms),
                user_metadata: opts.user_metadata,
                digest: digest.clone(),
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            // Still under the write lock: when no object names the digest, the content file
            // (placed just now, or an orphan of an earlier crash) is nobody's.
            let referenced = conn
                .query_row(
                    "SELECT 1 FROM object_contents WHERE digest = ?1",
                    [&digest],
                    |_| Ok(()),
                )
                .optional();
            if matches!(referenced, Ok(None)) {
                objects.remove_content(&digest);
            }
        }
        drop(conn);
        result
    }
}

impl Write for PendingPut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        PendingPut::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PendingPut {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// The bytes of one object (or of the range asked for); yields exactly [`ObjectReader::len`]
/// bytes. It reads an open file, so it keeps working when the object is deleted meanwhile.
#[derive(Debug)]
pub struct ObjectReader {
    inner: io::Take<File>,
    len: u64,
}

impl ObjectReader {
    /// How many bytes it yields in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it yields nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

// ---- helpers ----

fn bucket_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BucketInfo> {
    Ok(BucketInfo {
        name: r.get(0)?,
        created_at: time::from_millis(r.get(1)?),
        objects: r.get::<_, i64>(2)?.max(0) as u64,
        bytes: r.get::<_, i64>(3)?.max(0) as u64,
    })
}

fn require_bucket_tx(tx: &Transaction<'_>, bucket: &str) -> Result<(), ObjectError> {
    let found = tx
        .query_row(
            "SELECT 1 FROM buckets WHERE name = ?1",
            [bucket],
            |_| Ok(()),
        )
        .optional()
        .map_err(db("reading a bucket"))?;
    match found {
        Some(()) => Ok(()),
        None => Err(ObjectError::NoSuchBucket(bucket.to_string())),
    }
}

const OBJECT_COLUMNS: &str = "key, digest, size, etag, content_type, user_meta, last_modified_ms";

type RawObject = (Vec<u8>, String, i64, String, Option<String>, String, i64);

fn raw_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawObject> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn to_meta(bucket: &str, raw: RawObject) -> Result<ObjectMeta, ObjectError> {
    let (key, digest, size, etag, content_type, meta, at) = raw;
    if blobs::validate_digest(&digest).is_err() {
        return Err(ObjectError::Corrupt(format!(
            "an object digest {digest:?} that is not a sha256"
        )));
    }
    Ok(ObjectMeta {
        bucket: bucket.to_string(),
        key: key_string(key)?,
        size: size.max(0) as u64,
        etag,
        content_type,
        last_modified: time::from_millis(at),
        user_metadata: parse_metadata(&meta)?,
        digest,
    })
}

fn object_row(
    tx: &Transaction<'_>,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectMeta>, ObjectError> {
    let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key = ?2");
    let raw = tx
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(params![bucket, key.as_bytes()], raw_object)
                .optional()
        })
        .map_err(db("reading an object"))?;
    raw.map(|r| to_meta(bucket, r)).transpose()
}

/// Objects of `bucket` with keys from `low` (excluded or not) below `high`, in order.
fn query_keys(
    tx: &Transaction<'_>,
    bucket: &str,
    low: &[u8],
    low_excluded: bool,
    high: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<ObjectMeta>, ObjectError> {
    const DOING: &str = "listing objects";
    let op = if low_excluded { ">" } else { ">=" };
    let sql = format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key {op} ?2
         AND (?3 IS NULL OR key < ?3) ORDER BY key LIMIT ?4"
    );
    let mut stmt = tx.prepare_cached(&sql).map_err(db(DOING))?;
    let rows = stmt
        .query_map(params![bucket, low, high, limit as i64], raw_object)
        .map_err(db(DOING))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(to_meta(bucket, row.map_err(db(DOING))?)?);
    }
    Ok(out)
}

/// The smallest byte string greater than every string starting with `prefix`; `None` when
/// there is none (an empty prefix, or one of only 0xFF bytes, which UTF-8 never holds).
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xFF {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// Drops one reference to `digest`; returns it when that was the last one (its file is to be
/// removed once the transaction committed).
fn release_content(tx: &Transaction<'_>, digest: &str) -> Result<Option<String>, ObjectError> {
    const DOING: &str = "releasing object content";
    let refs: i64 = tx
        .query_row(
            "SELECT refs FROM object_contents WHERE digest = ?1",
            [digest],
            |r| r.get(0),
        )
        .map_err(db(DOING))?;
    if refs <= 1 {
        tx.execute("DELETE FROM object_contents WHERE digest = ?1", [digest])
            .map_err(db(DOING))?;
        Ok(Some(digest.to_string()))
    } else {
        tx.execute(
            "UPDATE object_contents SET refs = refs - 1 WHERE digest = ?1",
            [digest],
        )
        .map_err(db(DOING))?;
        Ok(None)
    }
}

/// Moves the synced temp file to `path` unless the same content is already there, and makes
/// the new directory entry durable.
fn place_content(tmp: &Path, path: &Path) -> Result<(), ObjectError> {
    if path.is_file() {
        // Content-addressed: a file of that name holds these bytes already.
        let _ = fs::remove_file(tmp);
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    fs::rename(tmp, path).map_err(ObjectError::io("move object content into", path))?;
    sync_dir(dir)
}

fn ensure_dir(dir: &Path) -> Result<(), ObjectError> {
    if dir.is_dir() {
        return Ok(());
    }
    blobs::create_private_dir(dir).map_err(|e| ObjectError::Io {
        doing: "create directory",
        path: dir.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), ObjectError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ObjectError::io("sync directory", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), ObjectError> {
    Ok(())
}

fn remove_parts_dir(dir: &Path) {
    if let Err(error) = fs::remove_dir_all(dir)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), %error, "cannot remove multipart upload parts");
    }
}

/// An upload id in the canonical form it was handed out in, or [`ObjectError::NoSuchUpload`];
/// only such an id becomes a path.
fn canonical_upload_id(id: &str) -> Result<String, ObjectError> {
    match ulid::Ulid::from_string(id) {
        Ok(u) if u.to_string() == id => Ok(id.to_string()),
        _ => Err(ObjectError::NoSuchUpload(id.to_string())),
    }
}

fn key_string(key: Vec<u8>) -> Result<String, ObjectError> {
    String::from_utf8(key)
        .map_err(|_| ObjectError::Corrupt("an object key that is not UTF-8".into()))
}

fn quoted(key: &str) -> String {
    key.chars().take(QUOTED_KEY_CHARS).collect()
}

/// Checks an object key: 1 to [`MAX_OBJECT_KEY_BYTES`] bytes of UTF-8 without NUL.
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    let reason = if key.is_empty() {
        "it is empty; give the object a name"
    } else if key.len() > MAX_OBJECT_KEY_BYTES {
        "it is longer than 1024 bytes; use a shorter key"
    } else if key.contains('\0') {
        "it holds a NUL character; remove it"
    } else {
        return Ok(());
    };
    Err(ObjectError::InvalidKey {
        key: quoted(key),
        reason,
    })
}

/// Checks a content type and user metadata can be stored and sent back as HTTP headers.
pub fn validate_options(opts: &PutOptions) -> Result<(), ObjectError> {
    let bad = |reason: String| Err(ObjectError::BadMetadata { reason });
    if let Some(ct) = &opts.content_type {
        if ct.len() > MAX_CONTENT_TYPE_BYTES {
            return bad(format!(
                "the content type is {} bytes, longer than {MAX_CONTENT_TYPE_BYTES}; send a shorter one",
                ct.len()
            ));
        }
        if !is_header_text(ct) {
            return bad("the content type holds control characters; remove them".into());
        }
    }
    let mut total = 0usize;
    for (name, value) in &opts.user_metadata {
        if name.is_empty()
            || !name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
        {
            return bad(format!(
                "metadata name {:?} must be lowercase letters, digits, '-', '_' or '.'",
                quoted(name)
            ));
        }
        if !is_header_text(value) {
            return bad(format!(
                "the value of metadata {name:?} holds control characters; remove them"
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_USER_METADATA_BYTES {
        return bad(format!(
            "user metadata is {total} bytes of names and values, more than the limit of {MAX_USER_METADATA_BYTES}; store less, or keep it in the object itself"
        ));
    }
    Ok(())
}

/// Text that can be an HTTP header value: no control characters but tab.
fn is_header_text(s: &str) -> bool {
    s.chars().all(|c| c == '\t' || !c.is_control())
}

fn metadata_json(meta: &BTreeMap<String, String>) -> String {
    serde_json::to_string(meta).unwrap_or_else(|_| "{}".into())
}

fn parse_metadata(json: &str) -> Result<BTreeMap<String, String>, ObjectError> {
    serde_json::from_str(json)
        .map_err(|_| ObjectError::Corrupt("object metadata that is not a JSON object".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper_bound(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper_bound(b""), None);
        assert_eq!(prefix_upper_bound(b"\xff\xff"), None);
    }

    fn objects() -> (tempfile::TempDir, Objects) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        (dir, store.objects())
    }

    fn put(o: &Objects, bucket: &str, key: &str, body: &[u8], hop: u32) -> ObjectMeta {
        let opts = PutOptions {
            content_type: Some("text/plain".into()),
            hop,
            ..PutOptions::default()
        };
        o.put(bucket, key, &mut &body[..], opts).unwrap()
    }

    #[test]
    fn only_changes_in_watched_buckets_reach_the_outbox_in_order() {
        let (_dir, o) = objects();
        o.create_bucket("uploads").unwrap();
        o.create_bucket("quiet").unwrap();
        let signal = o.object_events_signal();
        put(&o, "uploads", "before-watch", b"x", 0);
        o.watch_buckets(BTreeSet::from(["uploads".to_string()]));
        put(&o, "quiet", "a", b"x", 0);
        o.delete("quiet", "a").unwrap();
        assert!(o.object_events(10).unwrap().is_empty());

        let meta = put(&o, "uploads", "img/1.png", b"png", 3);
        // The signal holds a permit once an event row committed.
        assert!(
            ready_now(signal.notified()),
            "the drainer was not woken after a watched put"
        );
        assert!(o.delete_at_hop("uploads", "img/1.png", 4).unwrap());
        assert!(!o.delete("uploads", "never-there").unwrap());
        o.delete("uploads", "before-watch").unwrap();

        let events = o.object_events(10).unwrap();
        let summary: Vec<(&str, ObjectEventKind, u32)> = events
            .iter()
            .map(|e| (e.key.as_str(), e.kind, e.hop))
            .collect();
        assert_eq!(
            summary,
            [
                ("img/1.png", ObjectEventKind::Created, 3),
                ("img/1.png", ObjectEventKind::Deleted, 4),
                ("before-watch", ObjectEventKind::Deleted, 0),
            ]
        );
        let created = &events[0];
        assert_eq!(created.bucket, "uploads");
        assert_eq!(created.size, Some(3));
        assert_eq!(created.etag.as_deref(), Some(meta.etag.as_str()));
        assert_eq!(created.content_type.as_deref(), Some("text/plain"));
        assert_eq!(created.at, meta.last_modified);
        assert_eq!((events[1].size, events[1].etag.as_deref()), (None, None));
        assert!(events[0].seq < events[1].seq && events[1].seq < events[2].seq);

        assert_eq!(o.object_events(1).unwrap(), events[..1]);
        assert_eq!(o.ack_object_events(events[1].seq).unwrap(), 2);
        assert_eq!(o.object_events(10).unwrap(), events[2..]);
        assert_eq!(o.ack_object_events(events[2].seq).unwrap(), 1);
        assert!(o.object_events(10).unwrap().is_empty());

        o.watch_buckets(BTreeSet::new());
        put(&o, "uploads", "after", b"x", 0);
        assert!(o.object_events(10).unwrap().is_empty(), "no longer watched");
    }

    #[test]
    fn a_completed_multipart_upload_emits_one_created_event_at_its_hop() {
        let (_dir, o) = objects();
        o.create_bucket("big").unwrap();
        o.watch_buckets(BTreeSet::from(["big".to_string()]));
        let opts = PutOptions {
            hop: 5,
            ..PutOptions::default()
        };
        let id = o.create_multipart("big", "movie", opts).unwrap();
        let etag = o.upload_part(&id, 1, &mut &b"frames"[..]).unwrap();
        assert!(
            o.object_events(10).unwrap().is_empty(),
            "a part is no change"
        );
        let meta = o.complete_multipart(&id, &[(1, etag)]).unwrap();
        let events = o.object_events(10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].hop, events[0].size),
            (ObjectEventKind::Created, 5, Some(6))
        );
        assert_eq!(events[0].etag.as_deref(), Some(meta.etag.as_str()));
    }

    /// Whether `fut` is ready at its first poll.
    fn ready_now<F: Future>(fut: F) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::select! {
                biased;
                _ = fut => true,
                () = std::future::ready(()) => false,
            }
        })
    }

    #[test]
    fn upload_ids_must_be_canonical() {
        let id = ulid::Ulid::new().to_string();
        assert!(canonical_upload_id(&id).is_ok());
        for bad in ["", "..", "../etc", &id.to_lowercase(), &format!("{id}/x")] {
            assert!(canonical_upload_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
