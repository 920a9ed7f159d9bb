//! Apps and their immutable, numbered revisions: committing a deploy, reading the live set and
//! history, and removing an app from service.

use crate::error::db;
use crate::{Store, StoreError, time};
use nubo_core::manifest::Manifest;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// One function's code in a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCode {
    /// Function name (a key of the manifest's functions).
    pub name: String,
    /// sha256 of the component, lowercase hex; the blob must already be stored.
    pub digest: String,
    /// Component size in bytes.
    pub size: u64,
}

/// A revision to commit: everything but its number and time, which the store assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevision {
    /// The app.
    pub app: String,
    /// The validated manifest; `manifest.app` must equal `app`.
    pub manifest: Manifest,
    /// Code for each function of the manifest, exactly one per function.
    pub functions: Vec<FunctionCode>,
}

/// A committed, immutable revision of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    /// The app.
    pub app: String,
    /// Its number: 1 for the first deploy of the app, then one more each deploy, never reused.
    pub revision: u64,
    /// When it was committed (millisecond precision).
    pub created_at: SystemTime,
    /// The manifest it was deployed with.
    pub manifest: Manifest,
    /// Code for each function, sorted by name.
    pub functions: Vec<FunctionCode>,
}

impl RevisionRecord {
    /// The code of `function`, if the revision has that function.
    pub fn function(&self, function: &str) -> Option<&FunctionCode> {
        self.functions.iter().find(|f| f.name == function)
    }

    /// The code digest of `function`, if the revision has that function.
    pub fn digest(&self, function: &str) -> Option<&str> {
        self.function(function).map(|f| f.digest.as_str())
    }
}

const SELECT_REVISION: &str = "SELECT app, revision, created_at_ms, manifest FROM revisions";

impl Store {
    /// The number the next commit of `app` will get (1 for an app never deployed). Only a
    /// preview: callers that need it to hold must serialize deploys of the app, as the control
    /// plane does, and check the number `commit_revision` returns.
    pub fn next_revision(&self, app: &str) -> Result<u64, StoreError> {
        let conn = self.reader();
        next_number(&conn, app).map_err(db("reading the latest revision number"))
    }

    /// Commits a new revision of `new.app` and makes it the app's live revision, in one
    /// transaction that is on disk when this returns. Its number is one more than any revision
    /// the app ever had.
    pub fn commit_revision(&self, new: NewRevision) -> Result<RevisionRecord, StoreError> {
        self.check_new_revision(&new)?;
        let manifest_json =
            serde_json::to_string(&new.manifest).map_err(|e| StoreError::InvalidRevision {
                app: new.app.clone(),
                reason: format!("cannot encode the manifest: {e}"),
            })?;
        let created_at_ms = time::to_millis(SystemTime::now());
        let mut functions = new.functions;
        functions.sort_by(|a, b| a.name.cmp(&b.name));

        let doing = "committing a revision";
        let mut conn = self.writer();
        // IMMEDIATE takes the write lock up front, so the number read below is still the
        // latest when the row is inserted, even with another process on the same database.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let number = next_number(&tx, &new.app).map_err(db(doing))?;
        let number_sql = i64::try_from(number).map_err(|_| StoreError::Corrupt {
            what: format!("revision numbers of app {:?}", new.app),
            reason: "the latest number is out of range".into(),
        })?;
        tx.execute(
            "INSERT INTO revisions (app, revision, created_at_ms, manifest) VALUES (?1, ?2, ?3, ?4)",
            params![new.app, number_sql, created_at_ms, manifest_json],
        )
        .map_err(db(doing))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO revision_functions (app, revision, name, digest, size)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db(doing))?;
            for f in &functions {
                let size = i64::try_from(f.size).unwrap_or(i64::MAX);
                insert
                    .execute(params![new.app, number_sql, f.name, f.digest, size])
                    .map_err(db(doing))?;
            }
        }
        tx.execute(
            "INSERT INTO apps (name, live_revision) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET live_revision = excluded.live_revision",
            params![new.app, number_sql],
        )
        .map_err(db(doing))?;
        tx.commit().map_err(db(doing))?;

        Ok(RevisionRecord {
            app: new.app,
            revision: number,
            // What a later read returns: the stored time, in whole milliseconds.
            created_at: time::from_millis(created_at_ms),
            manifest: new.manifest,
            functions,
        })
    }

    /// Refuses a revision that could not be loaded later: so a bad deploy fails now, with a
    /// reason, instead of at the next restart.
    fn check_new_revision(&self, new: &NewRevision) -> Result<(), StoreError> {
        let invalid = |reason: String| StoreError::InvalidRevision {
            app: new.app.clone(),
            reason,
        };
        nubo_core::validate_name("app", &new.app).map_err(|e| invalid(e.to_string()))?;
        if new.manifest.app != new.app {
            return Err(invalid(format!(
                "the manifest is for app {:?}",
                new.manifest.app
            )));
        }
        let mut seen = BTreeSet::new();
        for f in &new.functions {
            if !seen.insert(f.name.as_str()) {
                return Err(invalid(format!("function {:?} has code twice", f.name)));
            }
            if !new.manifest.functions.contains_key(&f.name) {
                return Err(invalid(format!(
                    "function {:?} is not in the manifest",
                    f.name
                )));
            }
            if crate::validate_digest(&f.digest).is_err() {
                return Err(invalid(format!(
                    "function {:?} has invalid digest {:?}",
                    f.name, f.digest
                )));
            }
            if !self.blob_path(&f.digest).is_file() {
                return Err(invalid(format!(
                    "the code of function {:?} (blob {}) is not stored; store it with put_blob first",
                    f.name, f.digest
                )));
            }
        }
        if let Some(missing) = new
            .manifest
            .functions
            .keys()
            .find(|name| !seen.contains(name.as_str()))
        {
            return Err(invalid(format!("function {missing:?} has no code")));
        }
        Ok(())
    }

    /// Every app's live revision, sorted by app name (what a starting server loads).
    pub fn live_revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let conn = self.reader();
        let doing = "listing the deployed apps";
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.app, r.revision, r.created_at_ms, r.manifest
                 FROM apps a JOIN revisions r ON r.app = a.name AND r.revision = a.live_revision
                 ORDER BY a.name",
            )
            .map_err(db(doing))?;
        let rows = stmt.query_map([], raw_revision).map_err(db(doing))?;
        let raws = rows.collect::<Result<Vec<_>, _>>().map_err(db(doing))?;
        raws.into_iter()
            .map(|raw| finish_revision(&conn, raw))
            .collect()
    }

    /// Every deployed app's live revision, sorted by name (`nubo ls`).
    pub fn list_apps(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        self.live_revisions()
    }

    /// The live revision of `app`, or `None` when it is not deployed.
    pub fn app(&self, app: &str) -> Result<Option<RevisionRecord>, StoreError> {
        let conn = self.reader();
        let doing = "reading an app";
        let raw = conn
            .prepare_cached(
                "SELECT r.app, r.revision, r.created_at_ms, r.manifest
                 FROM apps a JOIN revisions r ON r.app = a.name AND r.revision = a.live_revision
                 WHERE a.name = ?1",
            )
            .and_then(|mut stmt| stmt.query_row([app], raw_revision).optional())
            .map_err(db(doing))?;
        raw.map(|raw| finish_revision(&conn, raw)).transpose()
    }

    /// Revision `revision` of `app`, live or not, or `None` if it never existed.
    pub fn revision(&self, app: &str, revision: u64) -> Result<Option<RevisionRecord>, StoreError> {
        let Ok(revision) = i64::try_from(revision) else {
            return Ok(None);
        };
        let conn = self.reader();
        let raw = conn
            .prepare_cached(&format!(
                "{SELECT_REVISION} WHERE app = ?1 AND revision = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![app, revision], raw_revision)
                    .optional()
            })
            .map_err(db("reading a revision"))?;
        raw.map(|raw| finish_revision(&conn, raw)).transpose()
    }

    /// Every revision `app` ever had, oldest first, including those of earlier deployments of
    /// a removed app (`nubo revisions`).
    pub fn revisions(&self, app: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        let conn = self.reader();
        let doing = "listing revisions";
        let mut stmt = conn
            .prepare_cached(&format!(
                "{SELECT_REVISION} WHERE app = ?1 ORDER BY revision"
            ))
            .map_err(db(doing))?;
        let rows = stmt.query_map([app], raw_revision).map_err(db(doing))?;
        let raws = rows.collect::<Result<Vec<_>, _>>().map_err(db(doing))?;
        raws.into_iter()
            .map(|raw| finish_revision(&conn, raw))
            .collect()
    }

    /// Takes `app` out of service. Its revisions stay, so history survives and the next deploy
    /// continues the numbering. Returns `false` when the app was not deployed. Durable when it
    /// returns.
    pub fn delete_app(&self, app: &str) -> Result<bool, StoreError> {
        let conn = self.writer();
        let removed = conn
            .execute("DELETE FROM apps WHERE name = ?1", [app])
            .map_err(db("removing an app"))?;
        Ok(removed > 0)
    }
}

fn next_number(conn: &Connection, app: &str) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions WHERE app = ?1",
        [app],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(1))
}

/// A revision row before its manifest is decoded and its functions are read.
struct RawRevision {
    app: String,
    revision: i64,
    created_at_ms: i64,
    manifest: String,
}

fn raw_revision(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRevision> {
    Ok(RawRevision {
        app: row.get(0)?,
        revision: row.get(1)?,
        created_at_ms: row.get(2)?,
        manifest: row.get(3)?,
    })
}

fn finish_revision(conn: &Connection, raw: RawRevision) -> Result<RevisionRecord, StoreError> {
    let what = || format!("revision {} of app {:?}", raw.revision, raw.app);
    let manifest: Manifest =
        serde_json::from_str(&raw.manifest).map_err(|e| StoreError::Corrupt {
            what: format!("manifest of {}", what()),
            reason: e.to_string(),
        })?;
    let doing = "reading a revision's functions";
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, digest, size FROM revision_functions
             WHERE app = ?1 AND revision = ?2 ORDER BY name",
        )
        .map_err(db(doing))?;
    let functions = stmt
        .query_map(params![raw.app, raw.revision], |row| {
            Ok(FunctionCode {
                name: row.get(0)?,
                digest: row.get(1)?,
                size: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            })
        })
        .map_err(db(doing))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(doing))?;
    let revision = u64::try_from(raw.revision).map_err(|_| StoreError::Corrupt {
        what: what(),
        reason: "negative revision number".into(),
    })?;
    Ok(RevisionRecord {
        app: raw.app,
        revision,
        created_at: time::from_millis(raw.created_at_ms),
        manifest,
        functions,
    })
}
