//! Key-value stores: named stores of UTF-8 keys and byte values with optional TTLs, versions for
//! compare-and-swap, atomic increments and batches, in the embedded SQLite database.
//!
//! Functions reach a store only through the ones they bind in their manifest; that check is the
//! caller's (the runtime's). Here a store is just a name: every operation on one that was not
//! created with [`Kv::ensure_store`] fails with [`KvError::NoSuchStore`].
//!
//! Invariants:
//! - A write has committed when it returns (its own transaction on the key-value connection;
//!   see [`Kv::new`] for the durability this gives).
//! - An expired key is absent to every read (get, exists, listing, increment, compare-and-swap)
//!   from the moment its TTL passes, whether or not its row was purged yet.
//! - A key's version strictly increases over the store's life, also across a delete and a
//!   rewrite, so a compare-and-swap never succeeds against a value it did not read.
//! - `kv_stores.keys` and `kv_stores.bytes` are the row count and the bytes (key + value) of the
//!   store's rows, expired rows included until purged, updated in the same transaction as the
//!   rows.

use crate::pool::Pool;
use crate::{Durability, StoreError, time};
use nubo_core::ErrorCode;
use nubo_core::limits::{
    MAX_KV_BATCH, MAX_KV_KEY_BYTES, MAX_KV_KEYS_PER_STORE, MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

/// How often the server purges expired keys (reads never see them either way; the sweep only
/// gives back their disk and their place under [`MAX_KV_KEYS_PER_STORE`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Most expired rows one sweep purges. Bounds how long one sweep holds the write lock; what is
/// left waits for the next sweep (or is purged when its key is written).
pub const SWEEP_BATCH: usize = 10_000;

/// Most expired rows of one store purged to make room when the store is full.
const FULL_STORE_PURGE: usize = 1_000;

/// Longest piece of a key quoted in an error message.
const QUOTED_KEY_CHARS: usize = 80;

/// Why a key-value operation failed. Each message names the limit or the missing thing and
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The store was never created.
    #[error(
        "no key-value store {0:?}: bind it in a function's `kv = [...]` and deploy, or create it with `nubo kv create {0}`"
    )]
    NoSuchStore(String),
    /// A store name that cannot be created.
    #[error("{0}")]
    BadStoreName(#[from] nubo_core::NameError),
    /// The key is longer than [`MAX_KV_KEY_BYTES`].
    #[error(
        "key-value key is {len} bytes, longer than the limit of {MAX_KV_KEY_BYTES} bytes; use a shorter key (hash long identifiers)"
    )]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key is empty or holds a NUL character.
    #[error("invalid key-value key {key:?}: {reason}")]
    BadKey {
        /// The key (cut short when long).
        key: String,
        /// What is wrong and the fix.
        reason: &'static str,
    },
    /// The value is larger than [`MAX_KV_VALUE_BYTES`].
    #[error(
        "key-value value is {len} bytes, larger than the limit of {MAX_KV_VALUE_BYTES} bytes (1 MiB); split it over several keys or keep large data in the object store"
    )]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
    },
    /// The store holds [`MAX_KV_KEYS_PER_STORE`] keys and the write would add one.
    #[error(
        "key-value store {store:?} holds the maximum of {MAX_KV_KEYS_PER_STORE} keys; delete keys or give them a TTL, or spread them over more stores"
    )]
    StoreFull {
        /// The store.
        store: String,
    },
    /// An increment of a value that is not a signed 64-bit decimal number.
    #[error(
        "the value of key {key:?} in key-value store {store:?} is not a signed 64-bit decimal number, so it cannot be incremented; set it to a number like \"0\" first or use another key"
    )]
    NotANumber {
        /// The store.
        store: String,
        /// The key (cut short when long).
        key: String,
    },
    /// An increment whose sum does not fit in a signed 64-bit number.
    #[error(
        "incrementing key {key:?} in key-value store {store:?} by {delta} would overflow a signed 64-bit number; reset the key or use a smaller delta"
    )]
    Overflow {
        /// The store.
        store: String,
        /// The key (cut short when long).
        key: String,
        /// The delta asked for.
        delta: i64,
    },
    /// A batch names more than [`MAX_KV_BATCH`] keys.
    #[error(
        "a key-value batch names {len} keys, more than the limit of {MAX_KV_BATCH}; split it into smaller batches"
    )]
    BatchTooLarge {
        /// How many keys the batch named.
        len: usize,
    },
    /// The database failed.
    #[error(
        "key-value database error while {0}: {1}; check that the data directory's disk is writable and not full"
    )]
    Db(&'static str, #[source] rusqlite::Error),
}

impl KvError {
    /// The public error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            KvError::NoSuchStore(_) => ErrorCode::KvStoreNotFound,
            KvError::BadStoreName(_)
            | KvError::KeyTooLong { .. }
            | KvError::BadKey { .. }
            | KvError::BatchTooLarge { .. } => ErrorCode::KvInvalidKey,
            KvError::ValueTooLarge { .. } => ErrorCode::PayloadTooLarge,
            KvError::StoreFull { .. } => ErrorCode::KvStoreFull,
            KvError::NotANumber { .. } | KvError::Overflow { .. } => ErrorCode::KvNotANumber,
            KvError::Db(..) => ErrorCode::Internal,
        }
    }
}

/// One store, as listed by [`Kv::stores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// The store's name.
    pub name: String,
    /// Keys held, expired keys included until they are purged (within [`SWEEP_INTERVAL`]).
    pub keys: u64,
    /// Bytes of the keys and values held, counted like `keys`.
    pub bytes: u64,
    /// When the store was created.
    pub created_at: SystemTime,
}

/// One page of keys from [`Kv::list_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    /// Keys in byte order.
    pub keys: Vec<String>,
    /// The last key of this page when more may follow: pass it back as `cursor` for the next.
    pub cursor: Option<String>,
}

/// A value with its version, from [`Kv::get_versioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Changes on every write of the key, never repeating; pass it to
    /// [`Kv::compare_and_swap`].
    pub version: u64,
}

/// Handle on the key-value stores of one data directory; cheap to clone, `Send + Sync`.
///
/// Every method blocks on SQLite: call them from `spawn_blocking` or a blocking thread.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its own connections, so key-value writes never queue behind a deploy's or the record
    /// writer's statements in this process (SQLite still takes one write lock per database,
    /// held for the length of one short transaction).
    pool: Pool,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// Opens the key-value connections on the (already migrated) database at `db_path`.
    ///
    /// Writes use `synchronous=NORMAL` in WAL mode: a commit is in the WAL file when it
    /// returns, so it survives the process being killed (`kill -9`, a crash); only a power
    /// loss or kernel crash before the next checkpoint may lose the last moments of writes,
    /// never corrupt the database. `FULL` would add an fsync to every `set`, which multiplies
    /// the latency guests see on every write; this is the default trade of most key-value
    /// stores (Redis syncs its append-only file once a second). Revisions and accepted async
    /// invocations, which a client was told are safe, keep `FULL`.
    pub(crate) fn new(db_path: &Path) -> Result<Kv, StoreError> {
        Ok(Kv {
            inner: Arc::new(Inner {
                pool: Pool::open(db_path, Durability::Normal)?,
            }),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner.pool.writer()
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.inner.pool.reader()
    }

    /// Runs `f` in one write transaction and commits it.
    fn write_tx<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut conn = self.writer();
        // IMMEDIATE: take the write lock up front, so the transaction never has to upgrade
        // from a read and fail with "database is locked" halfway.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| KvError::Db(doing, e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| KvError::Db(doing, e))?;
        Ok(out)
    }

    /// Runs `f` in one read transaction, so its queries see one snapshot.
    fn read_tx<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut conn = self.reader();
        let tx = conn.transaction().map_err(|e| KvError::Db(doing, e))?;
        f(&tx)
    }

    /// Creates the store if missing (deploys call it for every bound name).
    pub fn ensure_store(&self, store: &str) -> Result<(), KvError> {
        nubo_core::validate_name("key-value store", store)?;
        let now = now_ms();
        self.write_tx("creating a key-value store", |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO kv_stores (name, created_at_ms) VALUES (?1, ?2)",
                params![store, now],
            )
            .map_err(|e| KvError::Db("creating a key-value store", e))?;
            Ok(())
        })
    }

    /// Every store, by name.
    pub fn stores(&self) -> Result<Vec<StoreInfo>, KvError> {
        const DOING: &str = "listing key-value stores";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, keys, bytes, created_at_ms FROM kv_stores ORDER BY name LIMIT ?1",
            )
            .map_err(|e| KvError::Db(DOING, e))?;
        let rows = stmt
            .query_map([MAX_STORES_LISTED], |r| {
                Ok(StoreInfo {
                    name: r.get(0)?,
                    keys: r.get::<_, i64>(1)?.max(0) as u64,
                    bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    created_at: time::from_millis(r.get(3)?),
                })
            })
            .map_err(|e| KvError::Db(DOING, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| KvError::Db(DOING, e))
    }

    /// The value of `key`, or `None` when it is absent or expired.
    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.get_versioned(store, key)?.map(|v| v.value))
    }

    /// The value and its version (bumped on every write of the key).
    pub fn get_versioned(&self, store: &str, key: &str) -> Result<Option<Versioned>, KvError> {
        const DOING: &str = "reading a key-value key";
        check_key(key)?;
        let now = now_ms();
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.name, k.value, k.version FROM kv_stores s
                 LEFT JOIN kv k ON k.store = s.name AND k.key = ?2
                     AND (k.expires_at_ms IS NULL OR k.expires_at_ms > ?3)
                 WHERE s.name = ?1",
            )
            .map_err(|e| KvError::Db(DOING, e))?;
        let row = stmt
            .query_row(params![store, key.as_bytes(), now], |r| {
                Ok((r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, Option<i64>>(2)?))
            })
            .optional()
            .map_err(|e| KvError::Db(DOING, e))?;
        match row {
            None => Err(KvError::NoSuchStore(store.to_string())),
            Some((Some(value), Some(version))) => Ok(Some(Versioned {
                value,
                version: version.max(0) as u64,
            })),
            Some(_) => Ok(None),
        }
    }

    /// Whether `key` is present (and not expired).
    pub fn exists(&self, store: &str, key: &str) -> Result<bool, KvError> {
        const DOING: &str = "checking a key-value key";
        check_key(key)?;
        let now = now_ms();
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM kv WHERE store = ?1 AND key = ?2
                     AND (expires_at_ms IS NULL OR expires_at_ms > ?3))
                 FROM kv_stores WHERE name = ?1",
            )
            .map_err(|e| KvError::Db(DOING, e))?;
        stmt.query_row(params![store, key.as_bytes(), now], |r| r.get::<_, bool>(0))
            .optional()
            .map_err(|e| KvError::Db(DOING, e))?
            .ok_or_else(|| KvError::NoSuchStore(store.to_string()))
    }

    /// Sets `key` to `value`, replacing any value and TTL. With `ttl`, the key disappears
    /// (reads as absent) once it has passed.
    pub fn set(
        &self,
        store: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        let now = now_ms();
        let expires = ttl.map(|t| expiry(now, t));
        self.write_tx("writing a key-value key", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            s.put(tx, key, value, expires, now)?;
            s.save(tx)
        })
    }

    /// Deletes `key`; says whether it existed (an expired key did not).
    pub fn delete(&self, store: &str, key: &str) -> Result<bool, KvError> {
        check_key(key)?;
        let now = now_ms();
        self.write_tx("deleting a key-value key", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            let existed = s.remove(tx, key, now)?;
            s.save(tx)?;
            Ok(existed)
        })
    }

    /// Keys in byte order after `cursor` (exclusive), starting with `prefix` when given, at
    /// most `limit` (clamped to 1..=[`MAX_KV_LIST_LIMIT`]). The page's `cursor` is the last key
    /// returned when more may follow.
    pub fn list_keys(
        &self,
        store: &str,
        prefix: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        const DOING: &str = "listing key-value keys";
        let limit = limit.clamp(1, MAX_KV_LIST_LIMIT);
        let now = now_ms();
        let prefix = prefix.filter(|p| !p.is_empty());
        let upper = prefix.and_then(|p| prefix_end(p.as_bytes()));
        self.read_tx(DOING, |tx| {
            require_store(tx, store)?;
            let mut sql = String::from(
                "SELECT key FROM kv WHERE store = ?1
                 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
            );
            let mut args: Vec<Box<dyn rusqlite::ToSql>> =
                vec![Box::new(store.to_string()), Box::new(now)];
            if let Some(c) = cursor {
                args.push(Box::new(c.as_bytes().to_vec()));
                sql.push_str(&format!(" AND key > ?{}", args.len()));
            }
            if let Some(p) = prefix {
                args.push(Box::new(p.as_bytes().to_vec()));
                sql.push_str(&format!(" AND key >= ?{}", args.len()));
            }
            if let Some(u) = &upper {
                args.push(Box::new(u.clone()));
                sql.push_str(&format!(" AND key < ?{}", args.len()));
            }
            // One more than asked: whether it exists says whether more may follow.
            args.push(Box::new(limit as i64 + 1));
            sql.push_str(&format!(" ORDER BY key LIMIT ?{}", args.len()));
            let mut stmt = tx.prepare_cached(&sql).map_err(|e| KvError::Db(DOING, e))?;
            let mut keys: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    let bytes: Vec<u8> = r.get(0)?;
                    // Keys are written from `&str`, so this is lossless.
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                })
                .map_err(|e| KvError::Db(DOING, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| KvError::Db(DOING, e))?;
            let more = keys.len() > limit;
            keys.truncate(limit);
            let cursor = if more { keys.last().cloned() } else { None };
            Ok(KeyPage { keys, cursor })
        })
    }

    /// Adds `delta` to the value read as a signed 64-bit decimal ASCII number (absent or
    /// expired = 0), stores and returns the sum, atomically. The key keeps its TTL.
    pub fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        check_key(key)?;
        let now = now_ms();
        self.write_tx("incrementing a key-value key", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            let (current, expires) = match live_row(tx, store, key, now)? {
                Some(row) => (parse_number(&row.value, store, key)?, row.expires_at_ms),
                None => (0, None),
            };
            let sum = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow {
                    store: store.to_string(),
                    key: quote_key(key),
                    delta,
                })?;
            s.put(tx, key, sum.to_string().as_bytes(), expires, now)?;
            s.save(tx)?;
            Ok(sum)
        })
    }

    /// Writes `value` only if the key's version is still `expected` (`None`: the key must be
    /// absent or expired). Says whether it wrote. Like [`Kv::set`], it clears the key's TTL.
    pub fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        check_key(key)?;
        check_value(value)?;
        let now = now_ms();
        self.write_tx("swapping a key-value key", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            let current = live_row(tx, store, key, now)?.map(|r| r.version);
            if current != expected {
                return Ok(false);
            }
            s.put(tx, key, value, None, now)?;
            s.save(tx)?;
            Ok(true)
        })
    }

    /// The values of `keys`, in order (`None` for absent or expired keys), from one snapshot.
    pub fn get_many(&self, store: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        const DOING: &str = "reading key-value keys";
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        let now = now_ms();
        self.read_tx(DOING, |tx| {
            require_store(tx, store)?;
            keys.iter()
                .map(|k| Ok(live_row(tx, store, k, now)?.map(|r| r.value)))
                .collect()
        })
    }

    /// Sets every key to its value (no TTL) in one transaction: all or none are written.
    pub fn set_many(&self, store: &str, items: &[(String, Vec<u8>)]) -> Result<(), KvError> {
        check_batch(items.len())?;
        for (k, v) in items {
            check_key(k)?;
            check_value(v)?;
        }
        let now = now_ms();
        self.write_tx("writing key-value keys", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            for (k, v) in items {
                s.put(tx, k, v, None, now)?;
            }
            s.save(tx)
        })
    }

    /// Deletes every key in one transaction; absent keys are skipped.
    pub fn delete_many(&self, store: &str, keys: &[String]) -> Result<(), KvError> {
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        let now = now_ms();
        self.write_tx("deleting key-value keys", |tx| {
            let mut s = StoreRow::load(tx, store)?;
            for k in keys {
                s.remove(tx, k, now)?;
            }
            s.save(tx)
        })
    }

    /// Purges up to `limit` expired keys (of every store), oldest expiry first; returns how
    /// many. Reads never see expired keys either way: this gives back their space.
    pub fn sweep_expired(&self, limit: usize) -> Result<usize, KvError> {
        const DOING: &str = "purging expired key-value keys";
        let now = now_ms();
        self.write_tx(DOING, |tx| purge_expired(tx, now, limit))
    }

    /// Starts a task on the current tokio runtime that purges expired keys every
    /// [`SWEEP_INTERVAL`], at most [`SWEEP_BATCH`] per round. It ends when every handle on
    /// these stores (and the [`crate::Store`] holding one) has been dropped.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: keys that expired while the server was down go first.
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let kv = Kv { inner };
                match tokio::task::spawn_blocking(move || kv.sweep_expired(SWEEP_BATCH)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::debug!(purged = n, "purged expired key-value keys"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "purging expired key-value keys failed");
                    }
                    Err(e) => tracing::warn!(error = %e, "the key-value sweep panicked"),
                }
            }
        })
    }
}

/// Most stores one listing returns. Bounds the answer; stores are created by deploys and by
/// hand, so a real server has far fewer.
const MAX_STORES_LISTED: i64 = 10_000;

/// A store's row, loaded at the start of a write transaction and saved at its end.
struct StoreRow<'a> {
    name: &'a str,
    keys: i64,
    bytes: i64,
    last_version: i64,
}

/// A key's row, live or expired.
struct KeyRow {
    value: Vec<u8>,
    version: u64,
    expires_at_ms: Option<i64>,
}

impl<'a> StoreRow<'a> {
    fn load(tx: &Transaction<'_>, name: &'a str) -> Result<StoreRow<'a>, KvError> {
        tx.prepare_cached("SELECT keys, bytes, last_version FROM kv_stores WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| {
                    Ok(StoreRow {
                        name,
                        keys: r.get(0)?,
                        bytes: r.get(1)?,
                        last_version: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(|e| KvError::Db("reading a key-value store", e))?
            .ok_or_else(|| KvError::NoSuchStore(name.to_string()))
    }

    fn save(&self, tx: &Transaction<'_>) -> Result<(), KvError> {
        tx.prepare_cached(
            "UPDATE kv_stores SET keys = ?2, bytes = ?3, last_version = ?4 WHERE name = ?1",
        )
        .and_then(|mut s| s.execute(params![self.name, self.keys, self.bytes, self.last_version]))
        .map_err(|e| KvError::Db("updating a key-value store", e))?;
        Ok(())
    }

    /// Writes one key with a fresh version, keeping the store's totals.
    fn put(
        &mut self,
        tx: &Transaction<'_>,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<i64>,
        now: i64,
    ) -> Result<(), KvError> {
        const DOING: &str = "writing a key-value key";
        let old: Option<i64> = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE store = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![self.name, key.as_bytes()], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| KvError::Db(DOING, e))?;
        let key_len = key.len() as i64;
        match old {
            Some(old_len) => self.bytes -= key_len + old_len,
            None => {
                if self.keys as u64 >= MAX_KV_KEYS_PER_STORE {
                    self.keys -= purge_expired_counted(tx, self.name, now, &mut self.bytes)?;
                    if self.keys as u64 >= MAX_KV_KEYS_PER_STORE {
                        return Err(KvError::StoreFull {
                            store: self.name.to_string(),
                        });
                    }
                }
                self.keys += 1;
            }
        }
        self.bytes += key_len + value.len() as i64;
        self.last_version += 1;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO kv (store, key, value, version, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                self.name,
                key.as_bytes(),
                value,
                self.last_version,
                expires_at_ms
            ])
        })
        .map_err(|e| KvError::Db(DOING, e))?;
        Ok(())
    }

    /// Deletes one key's row; says whether it was live.
    fn remove(&mut self, tx: &Transaction<'_>, key: &str, now: i64) -> Result<bool, KvError> {
        const DOING: &str = "deleting a key-value key";
        let old: Option<(i64, Option<i64>)> = tx
            .prepare_cached(
                "DELETE FROM kv WHERE store = ?1 AND key = ?2
                 RETURNING length(value), expires_at_ms",
            )
            .and_then(|mut s| {
                s.query_row(params![self.name, key.as_bytes()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(|e| KvError::Db(DOING, e))?;
        let Some((len, expires)) = old else {
            return Ok(false);
        };
        self.keys -= 1;
        self.bytes -= key.len() as i64 + len;
        Ok(expires.is_none_or(|at| at > now))
    }
}

/// Purges expired rows of one full store and returns how many went, taking their bytes off
/// `bytes` (the caller takes the count off its keys).
fn purge_expired_counted(
    tx: &Transaction<'_>,
    store: &str,
    now: i64,
    bytes: &mut i64,
) -> Result<i64, KvError> {
    const DOING: &str = "purging expired key-value keys";
    let mut stmt = tx
        .prepare_cached(
            "DELETE FROM kv WHERE store = ?1 AND key IN (
                 SELECT key FROM kv WHERE store = ?1 AND expires_at_ms <= ?2 LIMIT ?3)
             RETURNING length(key) + length(value)",
        )
        .map_err(|e| KvError::Db(DOING, e))?;
    let sizes: Vec<i64> = stmt
        .query_map(params![store, now, FULL_STORE_PURGE as i64], |r| r.get(0))
        .map_err(|e| KvError::Db(DOING, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| KvError::Db(DOING, e))?;
    *bytes -= sizes.iter().sum::<i64>();
    Ok(sizes.len() as i64)
}

/// Purges up to `limit` expired rows of every store, keeping each store's totals.
fn purge_expired(tx: &Transaction<'_>, now: i64, limit: usize) -> Result<usize, KvError> {
    const DOING: &str = "purging expired key-value keys";
    let expired: Vec<(String, Vec<u8>, i64)> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT store, key, length(key) + length(value) FROM kv
                 WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1
                 ORDER BY expires_at_ms LIMIT ?2",
            )
            .map_err(|e| KvError::Db(DOING, e))?;
        stmt.query_map(
            params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| KvError::Db(DOING, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| KvError::Db(DOING, e))?
    };
    let mut delete = tx
        .prepare_cached("DELETE FROM kv WHERE store = ?1 AND key = ?2")
        .map_err(|e| KvError::Db(DOING, e))?;
    let mut totals = tx
        .prepare_cached("UPDATE kv_stores SET keys = keys - 1, bytes = bytes - ?2 WHERE name = ?1")
        .map_err(|e| KvError::Db(DOING, e))?;
    for (store, key, size) in &expired {
        delete
            .execute(params![store, key])
            .map_err(|e| KvError::Db(DOING, e))?;
        totals
            .execute(params![store, size])
            .map_err(|e| KvError::Db(DOING, e))?;
    }
    Ok(expired.len())
}

/// The live (present, unexpired) row of a key.
fn live_row(
    tx: &Transaction<'_>,
    store: &str,
    key: &str,
    now: i64,
) -> Result<Option<KeyRow>, KvError> {
    tx.prepare_cached(
        "SELECT value, version, expires_at_ms FROM kv WHERE store = ?1 AND key = ?2
         AND (expires_at_ms IS NULL OR expires_at_ms > ?3)",
    )
    .and_then(|mut s| {
        s.query_row(params![store, key.as_bytes(), now], |r| {
            Ok(KeyRow {
                value: r.get(0)?,
                version: r.get::<_, i64>(1)?.max(0) as u64,
                expires_at_ms: r.get(2)?,
            })
        })
        .optional()
    })
    .map_err(|e| KvError::Db("reading a key-value key", e))
}

fn require_store(tx: &Transaction<'_>, store: &str) -> Result<(), KvError> {
    let found = tx
        .prepare_cached("SELECT 1 FROM kv_stores WHERE name = ?1")
        .and_then(|mut s| s.exists([store]))
        .map_err(|e| KvError::Db("reading a key-value store", e))?;
    if found {
        Ok(())
    } else {
        Err(KvError::NoSuchStore(store.to_string()))
    }
}

/// Checks a key against the rules every store enforces.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::BadKey {
            key: String::new(),
            reason: "a key cannot be empty; use at least one character",
        });
    }
    if key.len() > MAX_KV_KEY_BYTES {
        return Err(KvError::KeyTooLong { len: key.len() });
    }
    if key.contains('\0') {
        return Err(KvError::BadKey {
            key: quote_key(key),
            reason: "a key cannot contain a NUL character; remove it",
        });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(KvError::ValueTooLarge { len: value.len() });
    }
    Ok(())
}

fn check_batch(len: usize) -> Result<(), KvError> {
    if len > MAX_KV_BATCH {
        return Err(KvError::BatchTooLarge { len });
    }
    Ok(())
}

fn parse_number(value: &[u8], store: &str, key: &str) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| KvError::NotANumber {
            store: store.to_string(),
            key: quote_key(key),
        })
}

/// A key as quoted in messages: cut at [`QUOTED_KEY_CHARS`] characters.
fn quote_key(key: &str) -> String {
    match key.char_indices().nth(QUOTED_KEY_CHARS) {
        Some((at, _)) => format!("{}…", &key[..at]),
        None => key.to_string(),
    }
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` when
/// there is none (a prefix of 0xFF bytes only, which UTF-8 never holds).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn now_ms() -> i64 {
    time::to_millis(SystemTime::now())
}

/// When a TTL set at `now` runs out, in ms since the epoch (rounded up, so a TTL below 1 ms
/// still outlives the write that set it by at least one tick).
fn expiry(now: i64, ttl: Duration) -> i64 {
    let ms = ttl.as_micros().div_ceil(1000);
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_byte_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn long_keys_are_cut_in_messages() {
        let long = "é".repeat(200);
        let quoted = quote_key(&long);
        assert_eq!(quoted.chars().count(), QUOTED_KEY_CHARS + 1);
        assert_eq!(quote_key("short"), "short");
    }

    #[test]
    fn expiry_rounds_up() {
        assert_eq!(expiry(1_000, Duration::from_micros(1)), 1_001);
        assert_eq!(expiry(1_000, Duration::from_secs(2)), 3_000);
        assert_eq!(expiry(1_000, Duration::MAX), i64::MAX);
    }
}
