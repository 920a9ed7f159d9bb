//! A write connection and a few read connections on the database, for a service (key-value,
//! objects) whose statements should not queue behind the metadata connection's.

use crate::{Durability, StoreError, open_connection};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Read connections per pool: WAL lets them read while a write commits, and several let
/// concurrent requests read side by side instead of queueing on one lock.
const READERS: usize = 4;

/// One write connection and [`READERS`] query-only read connections.
pub(crate) struct Pool {
    write: Mutex<Connection>,
    readers: Box<[Mutex<Connection>]>,
    /// Where the next read starts looking for a free connection.
    next_reader: AtomicUsize,
}

impl Pool {
    /// Opens the connections on the (already migrated) database at `db_path`, writes with
    /// `durability`.
    pub(crate) fn open(db_path: &Path, durability: Durability) -> Result<Pool, StoreError> {
        let write = open_connection(db_path, durability)?;
        let readers = (0..READERS)
            .map(|_| {
                let read = open_connection(db_path, durability)?;
                // Guards against a read method ever writing.
                read.pragma_update(None, "query_only", true)
                    .map_err(|source| StoreError::Open {
                        path: db_path.to_path_buf(),
                        source,
                    })?;
                Ok(Mutex::new(read))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Pool {
            write: Mutex::new(write),
            readers: readers.into_boxed_slice(),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// The write connection.
    pub(crate) fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back when the `Transaction`
        // dropped, so the connection is still usable.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free read connection, or when all are busy, the next one in turn.
    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        let readers = &self.readers;
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            match readers[(start + i) % readers.len()].try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        readers[start % readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
