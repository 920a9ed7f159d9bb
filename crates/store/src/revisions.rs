//! Apps and their immutable, numbered revisions: committing a deploy (with its traffic
//! instruction), reading the live set and history, pruning old revisions, and removing an app
//! from service.

use crate::error::db;
use crate::traffic::{self, TrafficInstruction, TrafficSplit};
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
    /// Who deployed it (an API key name); `None` for the local admin.
    pub deployed_by: Option<String>,
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
    /// Who deployed it; `None` for the local admin.
    pub deployed_by: Option<String>,
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

const SELECT_REVISION: &str =
    "SELECT app, revision, created_at_ms, manifest, deployed_by FROM revisions";

impl Store {
    /// The number the next commit of `app` will get (1 for an app never deployed). Only a
    /// preview: callers that need it to hold must serialize deploys of the app, as the control
    /// plane does, and check the number `commit_revision` returns.
    pub fn next_revision(&self, app: &str) -> Result<u64, StoreError> {
        let conn = self.reader();
        next_number(&conn, app).map_err(db("reading the latest revision number"))
    }

    /// Commits a new revision of `new.app` and gives it all traffic, in one transaction that
    /// is on disk when this returns. Its number is one more than any revision the app ever had.
    pub fn commit_revision(&self, new: NewRevision) -> Result<RevisionRecord, StoreError> {
        self.commit_revision_with(new, TrafficInstruction::All, None)
            .map(|(rec, _)| rec)
    }

    /// Commits a new revision of `new.app` with a traffic instruction: in one transaction the
    /// revision is stored, the app's split becomes what `traffic` says (see
    /// [`TrafficInstruction`]) and its generation is bumped. With `expected_generation`, the
    /// commit happens only if the app is still at that generation ([`StoreError::Conflict`]
    /// otherwise). The first deploy of an app (or the first after `nubo rm`) must take all
    /// traffic. Durable when it returns.
    pub fn commit_revision_with(
        &self,
        new: NewRevision,
        traffic: TrafficInstruction,
        expected_generation: Option<u64>,
    ) -> Result<(RevisionRecord, TrafficSplit), StoreError> {
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
        let generation = traffic::read_generation(&tx, &new.app)?;
        traffic::check_generation(&new.app, expected_generation, generation)?;
        let current = traffic::read_split(&tx, &new.app)?;
        let split = traffic::apply_instruction(&new.app, &current, number, traffic)?;
        let number_sql = i64::try_from(number).map_err(|_| StoreError::Corrupt {
            what: format!("revision numbers of app {:?}", new.app),
            reason: "the latest number is out of range".into(),
        })?;
        tx.execute(
            "INSERT INTO revisions (app, revision, created_at_ms, manifest, deployed_by)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                new.app,
                number_sql,
                created_at_ms,
                manifest_json,
                new.deployed_by
            ],
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
        let generation =
            traffic::write_split(&tx, &new.app, &current, &split, traffic::Changer::Deploy)?;
        tx.commit().map_err(db(doing))?;

        let rec = RevisionRecord {
            app: new.app,
            revision: number,
            // What a later read returns: the stored time, in whole milliseconds.
            created_at: time::from_millis(created_at_ms),
            manifest: new.manifest,
            functions,
            deployed_by: new.deployed_by,
        };
        let split = TrafficSplit {
            app: rec.app.clone(),
            generation,
            split,
        };
        Ok((rec, split))
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

    /// Every app's highest-weight revision, sorted by app name.
    pub fn live_revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let conn = self.reader();
        let doing = "listing the deployed apps";
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.app, r.revision, r.created_at_ms, r.manifest, r.deployed_by
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

    /// The highest-weight revision of `app`, or `None` when it is not deployed.
    pub fn app(&self, app: &str) -> Result<Option<RevisionRecord>, StoreError> {
        let conn = self.reader();
        let doing = "reading an app";
        let raw = conn
            .prepare_cached(
                "SELECT r.app, r.revision, r.created_at_ms, r.manifest, r.deployed_by
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

    /// Every retained revision of `app`, oldest first, including those of earlier deployments
    /// of a removed app (`nubo revisions`). Pruned revisions are gone.
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
        let doing = "removing an app";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        tx.execute("DELETE FROM traffic WHERE app = ?1", [app])
            .map_err(db(doing))?;
        let removed = tx
            .execute("DELETE FROM apps WHERE name = ?1", [app])
            .map_err(db(doing))?;
        if removed > 0 {
            crate::rollout::end_running(&tx, app, "the app was removed")?;
            traffic::bump_generation(&tx, app)?;
        }
        tx.commit().map_err(db(doing))?;
        Ok(removed > 0)
    }

    /// Deletes the revisions of `app` beyond the `keep` newest, except those with traffic, and
    /// their function rows; returns the numbers pruned, oldest first. Their code blobs and
    /// compiled artifacts stay on disk (other revisions or apps may share them). `keep` must
    /// be at least 1, so the newest number survives and numbers are never reused.
    pub fn prune_revisions(&self, app: &str, keep: usize) -> Result<Vec<u64>, StoreError> {
        if keep == 0 {
            return Err(StoreError::InvalidRevision {
                app: app.to_string(),
                reason: "cannot keep 0 revisions; keep at least 1 (--keep-revisions)".into(),
            });
        }
        let doing = "pruning revisions";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let keep_sql = i64::try_from(keep).unwrap_or(i64::MAX);
        let doomed: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT revision FROM revisions r WHERE app = ?1
                       AND revision NOT IN (SELECT revision FROM revisions WHERE app = ?1
                                            ORDER BY revision DESC LIMIT ?2)
                       AND NOT EXISTS (SELECT 1 FROM traffic t
                                       WHERE t.app = r.app AND t.revision = r.revision)
                       AND NOT EXISTS (SELECT 1 FROM apps a
                                       WHERE a.name = r.app AND a.live_revision = r.revision)
                     ORDER BY revision",
                )
                .map_err(db(doing))?;
            stmt.query_map(params![app, keep_sql], |row| row.get(0))
                .map_err(db(doing))?
                .collect::<Result<_, _>>()
                .map_err(db(doing))?
        };
        for r in &doomed {
            tx.execute(
                "DELETE FROM revision_functions WHERE app = ?1 AND revision = ?2",
                params![app, r],
            )
            .map_err(db(doing))?;
            tx.execute(
                "DELETE FROM revisions WHERE app = ?1 AND revision = ?2",
                params![app, r],
            )
            .map_err(db(doing))?;
        }
        tx.commit().map_err(db(doing))?;
        Ok(doomed
            .into_iter()
            .filter_map(|r| u64::try_from(r).ok())
            .collect())
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
    deployed_by: Option<String>,
}

fn raw_revision(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRevision> {
    Ok(RawRevision {
        app: row.get(0)?,
        revision: row.get(1)?,
        created_at_ms: row.get(2)?,
        manifest: row.get(3)?,
        deployed_by: row.get(4)?,
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
        deployed_by: raw.deployed_by,
    })
}
