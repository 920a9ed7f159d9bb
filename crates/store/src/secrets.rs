//! Secrets: named values that belong to an app, encrypted at rest with a server key and held
//! decrypted in a lock-free snapshot so invocations read them without SQLite or decryption.
//!
//! Each value is sealed with ChaCha20-Poly1305 under a 32-byte server key, with a random 96-bit
//! nonce of its own and `app NUL name` as associated data, so a ciphertext copied to another
//! name or app fails to open. The key comes from `NUBO_SECRET_KEY` (64 hex characters) or from
//! `<data dir>/secret.key`, generated at the first start with mode 0600.
//!
//! Invariants:
//! - Plaintext never reaches the database file, and no method returns a value except
//!   [`Secrets::get`] and the snapshot ([`Secrets::app`]), which are for the runtime. Nothing
//!   here logs a value; `Debug` shows names only.
//! - A change commits (its own transaction, `synchronous=FULL`) before the snapshot is swapped,
//!   and every change bumps the app's generation, so a reader that sees a new generation sees
//!   the new values.
//! - A server started with a key other than the one the secrets were written with refuses to
//!   start (the key check row fails to open) instead of writing secrets nobody can read back.

use crate::{Durability, StoreError, open_connection, time};
use arc_swap::ArcSwap;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use nubo_core::ErrorCode;
use nubo_core::limits::{MAX_SECRET_VALUE_BYTES, MAX_SECRETS_PER_APP};
use nubo_telemetry::LogMask;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use zeroize::Zeroizing;

/// The environment variable that carries the server key (64 hex characters). When unset, the
/// key is read from (or generated into) [`KEY_FILE`] in the data directory.
pub const KEY_ENV: &str = "NUBO_SECRET_KEY";

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "secret.key";

/// Associated data of the key check row; no secret's associated data can equal it, since
/// those hold a NUL between app and name.
const KEY_CHECK_AAD: &[u8] = b"nubo secret key check v1";

/// The plaintext sealed in the key check row.
const KEY_CHECK_PLAINTEXT: &[u8] = b"nubo";

/// Why a secret operation failed, or why the secrets could not be opened. Messages never
/// carry a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The app or secret name breaks the naming rule.
    #[error("{0}")]
    BadName(#[from] nubo_core::NameError),
    /// The value is larger than [`MAX_SECRET_VALUE_BYTES`].
    #[error(
        "the secret value is {len} bytes, larger than the limit of {MAX_SECRET_VALUE_BYTES} bytes (64 KiB); keep large files in a bucket and put only a key to them in the secret"
    )]
    TooLarge {
        /// The value's length in bytes.
        len: usize,
    },
    /// The app already holds [`MAX_SECRETS_PER_APP`] secrets and the write would add one.
    #[error(
        "app {app:?} holds the maximum of {MAX_SECRETS_PER_APP} secrets; remove unused ones with `nubo secrets rm {app} NAME` or combine related values into one"
    )]
    TooMany {
        /// The app.
        app: String,
    },
    /// `NUBO_SECRET_KEY` is not 64 hex characters.
    #[error(
        "{KEY_ENV} must be 64 hex characters (32 bytes), found {len} characters{hex}; generate one with `openssl rand -hex 32`"
    )]
    BadEnvKey {
        /// Its length in characters.
        len: usize,
        /// Whether the problem is non-hex characters (text to append to the message).
        hex: &'static str,
    },
    /// The key file is not 64 hex characters.
    #[error(
        "the secret key file {} must hold 64 hex characters (32 bytes), {problem}; restore the original file, or set {KEY_ENV} to the key the secrets were written with",
        path.display()
    )]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key file may be read by other users.
    #[error(
        "the secret key file {} has mode {mode:o}; it must be readable by this user only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key does not open the secrets stored in this data directory.
    #[error(
        "the secret key does not match the one the secrets in {} were encrypted with; set {KEY_ENV} to that key, or restore the data directory's {KEY_FILE} that was there before",
        db.display()
    )]
    WrongKey {
        /// The database file.
        db: PathBuf,
    },
    /// A stored secret does not open under the key that opens the key check (the row was
    /// altered or copied from elsewhere).
    #[error(
        "secret {name:?} of app {app:?} cannot be decrypted with the server key (the stored row was altered or copied from another server); set it again with `nubo secrets set {app} {name}`"
    )]
    Undecryptable {
        /// The app.
        app: String,
        /// The secret.
        name: String,
    },
    /// The operating system's random number generator failed.
    #[error(
        "the operating system's random number generator failed ({0}); check that /dev/urandom or getrandom(2) is available to the server"
    )]
    Random(String),
    /// A file failed.
    #[error("cannot {doing} {}: {source}; check that the data directory is writable", path.display())]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error(
        "secrets database error while {0}: {1}; check that the data directory's disk is writable and not full"
    )]
    Db(&'static str, #[source] rusqlite::Error),
    /// Opening the database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl SecretError {
    /// The public error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            SecretError::BadName(_)
            | SecretError::TooLarge { .. }
            | SecretError::TooMany { .. } => ErrorCode::InvalidSecret,
            _ => ErrorCode::Internal,
        }
    }
}

/// A secret's name and when it was last set; never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// When it was last set.
    pub updated_at: SystemTime,
}

/// One app's decrypted secrets at one generation. Shared by every reader of the snapshot.
pub struct AppSecrets {
    generation: u64,
    values: BTreeMap<String, Zeroizing<Vec<u8>>>,
    /// The values as a mask for the function's captured logs.
    mask: Arc<LogMask>,
}

impl AppSecrets {
    /// Bumped by every change of this app's secrets. Process workers remember the generation
    /// they were started under and are replaced when it moved.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The value of `name`, when set.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values.get(name).map(|v| v.as_slice())
    }

    /// The mask that replaces these values in captured function logs.
    pub fn log_mask(&self) -> &Arc<LogMask> {
        &self.mask
    }

    fn new(generation: u64, values: BTreeMap<String, Zeroizing<Vec<u8>>>) -> AppSecrets {
        let mask = Arc::new(LogMask::new(values.values().map(|v| v.as_slice())));
        AppSecrets {
            generation,
            values,
            mask,
        }
    }
}

impl fmt::Debug for AppSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSecrets")
            .field("generation", &self.generation)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The apps' secrets. Cheap to clone (`Arc`), `Send + Sync`; every clone shares one snapshot.
/// Methods other than [`Secrets::app`] and [`Secrets::generation`] block: call them from
/// `spawn_blocking`.
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    cipher: ChaCha20Poly1305,
    snapshot: ArcSwap<HashMap<String, Arc<AppSecrets>>>,
    /// The last generation handed out; generations are unique across apps.
    generation: AtomicU64,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("apps", &self.inner.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

/// The server key from `env_hex` (the value of [`KEY_ENV`]) or the data directory's key file,
/// generating that file when it does not exist.
pub fn load_key(
    data_dir: &Path,
    env_hex: Option<&str>,
) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    if let Some(hex_key) = env_hex {
        let hex_key = hex_key.trim();
        return parse_hex_key(hex_key).ok_or(SecretError::BadEnvKey {
            len: hex_key.chars().count(),
            hex: if hex_key.len() == 64 {
                " that are not all hex digits"
            } else {
                ""
            },
        });
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => read_key_file(&path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate_key_file(&path),
        Err(source) => Err(SecretError::Io {
            doing: "read the secret key file",
            path,
            source,
        }),
    }
}

fn parse_hex_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text, key.as_mut()).ok()?;
    Some(key)
}

fn read_key_file(
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    if !meta.is_file() {
        return Err(SecretError::BadKeyFile {
            path: path.to_path_buf(),
            problem: "but it is not a regular file".into(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Io {
        doing: "read the secret key file",
        path: path.to_path_buf(),
        source,
    })?);
    let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
    std::str::from_utf8(trimmed)
        .ok()
        .filter(|t| t.len() == 64)
        .and_then(parse_hex_key)
        .ok_or_else(|| SecretError::BadKeyFile {
            path: path.to_path_buf(),
            problem: format!("but it holds {} bytes that are not such a key", text.len()),
        })
}

fn generate_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let key =
        Zeroizing::new(<[u8; 32]>::try_generate().map_err(|e| SecretError::Random(e.to_string()))?);
    let mut text = Zeroizing::new(hex::encode(key.as_ref()));
    text.push('\n');
    let io = |doing, source| SecretError::Io {
        doing,
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another process generated it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|source| io("read the secret key file", source))?;
            return read_key_file(path, &meta);
        }
        Err(source) => return Err(io("create the secret key file", source)),
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io("write the secret key file", source))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|source| io("sync the data directory", source))?;
    }
    tracing::info!(path = %path.display(), "generated the secret key; back it up with the data directory");
    Ok(key)
}

fn aad(app: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(app.len() + name.len() + 1);
    aad.extend_from_slice(app.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

impl Secrets {
    /// Opens the secrets of the database at `db_path` (already migrated) with the server key
    /// from `env_hex` or `<data_dir>/secret.key`, and decrypts them all into the snapshot.
    /// Fails when the key does not match the one the stored secrets were written with.
    pub fn open(
        data_dir: &Path,
        db_path: &Path,
        env_hex: Option<&str>,
    ) -> Result<Secrets, SecretError> {
        let key = load_key(data_dir, env_hex)?;
        let cipher =
            ChaCha20Poly1305::new_from_slice(key.as_ref()).map_err(|_| SecretError::BadEnvKey {
                len: key.len() * 2,
                hex: "",
            })?;
        let conn = open_connection(db_path, Durability::Full)?;
        check_key(&conn, &cipher, db_path)?;

        let mut apps: HashMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>> = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT app, name, nonce, ciphertext FROM secrets")
                .map_err(|e| SecretError::Db("loading secrets", e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .map_err(|e| SecretError::Db("loading secrets", e))?;
            for row in rows {
                let (app, name, nonce, ciphertext) =
                    row.map_err(|e| SecretError::Db("loading secrets", e))?;
                let value =
                    open_value(&cipher, &app, &name, &nonce, &ciphertext).ok_or_else(|| {
                        SecretError::Undecryptable {
                            app: app.clone(),
                            name: name.clone(),
                        }
                    })?;
                apps.entry(app).or_default().insert(name, value);
            }
        }
        let generation = 1;
        let snapshot = apps
            .into_iter()
            .map(|(app, values)| (app, Arc::new(AppSecrets::new(generation, values))))
            .collect();
        Ok(Secrets {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                cipher,
                snapshot: ArcSwap::from_pointee(snapshot),
                generation: AtomicU64::new(generation),
            }),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back when the `Transaction`
        // dropped, so the connection is still usable.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app's decrypted secrets from the snapshot: no lock, no IO. `None` when the app
    /// never had a secret since the server started.
    pub fn app(&self, app: &str) -> Option<Arc<AppSecrets>> {
        self.inner.snapshot.load().get(app).cloned()
    }

    /// The app's generation (0 when it has no secrets), from the snapshot.
    pub fn generation(&self, app: &str) -> u64 {
        self.inner
            .snapshot
            .load()
            .get(app)
            .map_or(0, |a| a.generation)
    }

    /// Whether `name` is set for `app`, from the snapshot.
    pub fn is_set(&self, app: &str, name: &str) -> bool {
        self.inner
            .snapshot
            .load()
            .get(app)
            .is_some_and(|a| a.values.contains_key(name))
    }

    /// Sets (or replaces) a secret. It has committed when this returns, and invocations that
    /// start afterwards see the new value.
    pub fn set(&self, app: &str, name: &str, value: &[u8]) -> Result<(), SecretError> {
        nubo_core::validate_name("app", app)?;
        nubo_core::validate_name("secret", name)?;
        if value.len() > MAX_SECRET_VALUE_BYTES {
            return Err(SecretError::TooLarge { len: value.len() });
        }
        let nonce = Nonce::try_generate().map_err(|e| SecretError::Random(e.to_string()))?;
        let aad = aad(app, name);
        let ciphertext = self
            .inner
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            // Only fails for inputs far beyond the value limit.
            .map_err(|_| SecretError::TooLarge { len: value.len() })?;
        let now = time::to_millis(SystemTime::now());

        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| SecretError::Db("setting a secret", e))?;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM secrets WHERE app = ?1 AND name = ?2",
                params![app, name],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| SecretError::Db("setting a secret", e))?
            .is_some();
        if !exists {
            let count: i64 = tx
                .query_row("SELECT COUNT(*) FROM secrets WHERE app = ?1", [app], |r| {
                    r.get(0)
                })
                .map_err(|e| SecretError::Db("setting a secret", e))?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_SECRETS_PER_APP {
                return Err(SecretError::TooMany {
                    app: app.to_string(),
                });
            }
        }
        tx.execute(
            "INSERT INTO secrets (app, name, nonce, ciphertext, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app, name) DO UPDATE SET
                 nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                 updated_at_ms = excluded.updated_at_ms",
            params![app, name, nonce.as_slice(), ciphertext, now],
        )
        .map_err(|e| SecretError::Db("setting a secret", e))?;
        tx.commit()
            .map_err(|e| SecretError::Db("setting a secret", e))?;
        // Still under the connection lock, so snapshot swaps happen in commit order.
        self.swap_app(app, |values| {
            values.insert(name.to_string(), Zeroizing::new(value.to_vec()));
        });
        Ok(())
    }

    /// Deletes a secret; `false` when it was not set. Invocations that start afterwards no
    /// longer see it.
    pub fn delete(&self, app: &str, name: &str) -> Result<bool, SecretError> {
        nubo_core::validate_name("app", app)?;
        nubo_core::validate_name("secret", name)?;
        let conn = self.conn();
        let deleted = conn
            .execute(
                "DELETE FROM secrets WHERE app = ?1 AND name = ?2",
                params![app, name],
            )
            .map_err(|e| SecretError::Db("deleting a secret", e))?;
        if deleted == 0 {
            return Ok(false);
        }
        self.swap_app(app, |values| {
            values.remove(name);
        });
        Ok(true)
    }

    /// The names of the app's secrets and when each was last set, in name order. Never values.
    pub fn names(&self, app: &str) -> Result<Vec<SecretInfo>, SecretError> {
        nubo_core::validate_name("app", app)?;
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name, updated_at_ms FROM secrets WHERE app = ?1 ORDER BY name")
            .map_err(|e| SecretError::Db("listing secrets", e))?;
        let rows = stmt
            .query_map([app], |r| {
                Ok(SecretInfo {
                    name: r.get(0)?,
                    updated_at: time::from_millis(r.get(1)?),
                })
            })
            .map_err(|e| SecretError::Db("listing secrets", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| SecretError::Db("listing secrets", e))
    }

    /// One secret's value, for the runtime only: never answer it to a client or log it.
    pub fn get(&self, app: &str, name: &str) -> Option<Zeroizing<Vec<u8>>> {
        self.app(app)
            .and_then(|a| a.get(name).map(|v| Zeroizing::new(v.to_vec())))
    }

    /// Replaces the app's entry in the snapshot with `change` applied and a new generation.
    /// Called with the connection lock held.
    fn swap_app(&self, app: &str, change: impl FnOnce(&mut BTreeMap<String, Zeroizing<Vec<u8>>>)) {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let current = self.inner.snapshot.load_full();
        let mut values = current
            .get(app)
            .map(|a| a.values.clone())
            .unwrap_or_default();
        change(&mut values);
        let mut next = (*current).clone();
        next.insert(
            app.to_string(),
            Arc::new(AppSecrets::new(generation, values)),
        );
        self.inner.snapshot.store(Arc::new(next));
    }
}

fn open_value(
    cipher: &ChaCha20Poly1305,
    app: &str,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce = Nonce::try_from(nonce).ok()?;
    let aad = aad(app, name);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Checks that `cipher` opens the key check row, writing the row when there is none yet.
fn check_key(conn: &Connection, cipher: &ChaCha20Poly1305, db: &Path) -> Result<(), SecretError> {
    let db_err = |e| SecretError::Db("checking the secret key", e);
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT nonce, ciphertext FROM secret_key_check WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    let row = match row {
        Some(row) => row,
        None => {
            let nonce = Nonce::try_generate().map_err(|e| SecretError::Random(e.to_string()))?;
            let sealed = cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: KEY_CHECK_PLAINTEXT,
                        aad: KEY_CHECK_AAD,
                    },
                )
                .map_err(|_| SecretError::WrongKey {
                    db: db.to_path_buf(),
                })?;
            // Another process may have written its row first; then that one is checked.
            conn.execute(
                "INSERT OR IGNORE INTO secret_key_check (id, nonce, ciphertext) VALUES (1, ?1, ?2)",
                params![nonce.as_slice(), sealed],
            )
            .map_err(db_err)?;
            conn.query_row(
                "SELECT nonce, ciphertext FROM secret_key_check WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err)?
        }
    };
    let opened = Nonce::try_from(row.0.as_slice()).ok().and_then(|nonce| {
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &row.1,
                    aad: KEY_CHECK_AAD,
                },
            )
            .ok()
    });
    match opened {
        Some(plain) if plain == KEY_CHECK_PLAINTEXT => Ok(()),
        _ => Err(SecretError::WrongKey {
            db: db.to_path_buf(),
        }),
    }
}
