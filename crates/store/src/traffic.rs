//! Traffic splits: which revisions of an app serve and with what weight, the app's generation
//! counter, and the history of splits that rollback reads.

use crate::error::db;
use crate::{Store, StoreError, rollout, time};
use nubo_core::api::v1::WeightedRevision;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// How many past splits are kept per app. Rollback needs only the latest few; the bound keeps
/// an app whose traffic is flipped in a loop from growing the table without end.
pub const MAX_HISTORY_PER_APP: usize = 100;

/// What a new revision does to its app's traffic when it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficInstruction {
    /// It takes all traffic (a plain deploy).
    All,
    /// It takes this percent (1..=99); the revisions serving now keep the rest, scaled in
    /// proportion to their weights.
    Canary(u8),
    /// It takes none: stored and reachable only by pinning (`--no-traffic`).
    None,
}

impl TrafficInstruction {
    /// The instruction for "the new revision takes `percent`" (100 = all, 0 = none).
    pub fn from_percent(percent: u8) -> TrafficInstruction {
        match percent {
            0 => TrafficInstruction::None,
            100.. => TrafficInstruction::All,
            p => TrafficInstruction::Canary(p),
        }
    }
}

/// An app's traffic split as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSplit {
    /// The app.
    pub app: String,
    /// Its generation: bumped by every deploy, traffic change, rollback and removal.
    pub generation: u64,
    /// Revisions with weight > 0, highest weight first (ties: newest first); sums to 100.
    pub split: Vec<WeightedRevision>,
}

impl TrafficSplit {
    /// The revision with the most traffic.
    pub fn primary(&self) -> Option<u64> {
        self.split.first().map(|w| w.revision)
    }

    /// The weight of `revision` (0 when it takes no traffic).
    pub fn weight(&self, revision: u64) -> u8 {
        self.split
            .iter()
            .find(|w| w.revision == revision)
            .map_or(0, |w| w.weight)
    }
}

/// Sorts a split highest weight first, ties newest first.
pub(crate) fn sort_split(split: &mut [WeightedRevision]) {
    split.sort_by(|a, b| b.weight.cmp(&a.weight).then(b.revision.cmp(&a.revision)));
}

/// Checks a requested split: each revision named once, weights at most 100 and summing to
/// 100. Entries with weight 0 are dropped. Returns the split sorted highest weight first; the
/// error says what is wrong and how to fix it.
pub fn validate_split(split: &[WeightedRevision]) -> Result<Vec<WeightedRevision>, String> {
    let mut seen = BTreeSet::new();
    let mut sum = 0u32;
    for w in split {
        if !seen.insert(w.revision) {
            return Err(format!(
                "revision {} is named twice; name each revision once",
                w.revision
            ));
        }
        if w.weight > 100 {
            return Err(format!(
                "revision {} has weight {}; a weight is a percent from 0 to 100",
                w.revision, w.weight
            ));
        }
        sum += u32::from(w.weight);
    }
    if sum != 100 {
        return Err(format!(
            "the weights sum to {sum}; they must sum to 100 (e.g. `12=90 13=10`)"
        ));
    }
    let mut out: Vec<WeightedRevision> = split.iter().copied().filter(|w| w.weight > 0).collect();
    sort_split(&mut out);
    Ok(out)
}

/// The split after a canary deploy: `new_revision` takes `percent` (1..=99) and the revisions
/// in `current` share the rest in proportion to their weights (largest remainder, so the
/// result sums to exactly 100; a revision whose share rounds to 0 drops out).
pub fn canary_split(
    current: &[WeightedRevision],
    new_revision: u64,
    percent: u8,
) -> Vec<WeightedRevision> {
    let percent = percent.min(100);
    let rest = u32::from(100 - percent);
    let total: u32 = current.iter().map(|w| u32::from(w.weight)).sum();
    let mut out = Vec::with_capacity(current.len() + 1);
    if total > 0 && rest > 0 {
        // (revision, floor share, remainder numerator)
        let mut shares: Vec<(u64, u32, u32)> = current
            .iter()
            .map(|w| {
                let exact = u32::from(w.weight) * rest;
                (w.revision, exact / total, exact % total)
            })
            .collect();
        let given: u32 = shares.iter().map(|s| s.1).sum();
        let mut left = rest - given;
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| {
            shares[b]
                .2
                .cmp(&shares[a].2)
                .then(shares[b].0.cmp(&shares[a].0))
        });
        for i in order {
            if left == 0 {
                break;
            }
            shares[i].1 += 1;
            left -= 1;
        }
        for (revision, weight, _) in shares {
            if weight > 0 {
                out.push(WeightedRevision {
                    revision,
                    weight: u8::try_from(weight).unwrap_or(100),
                });
            }
        }
    }
    if percent > 0 {
        out.push(WeightedRevision {
            revision: new_revision,
            weight: percent,
        });
    }
    sort_split(&mut out);
    out
}

/// The app's generation (0 when it never had one).
pub(crate) fn read_generation(conn: &Connection, app: &str) -> Result<u64, StoreError> {
    let g: Option<i64> = conn
        .query_row(
            "SELECT generation FROM generations WHERE app = ?1",
            [app],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("reading an app's generation"))?;
    Ok(g.and_then(|g| u64::try_from(g).ok()).unwrap_or(0))
}

/// Refuses an expectation that does not match.
pub(crate) fn check_generation(
    app: &str,
    expected: Option<u64>,
    current: u64,
) -> Result<(), StoreError> {
    match expected {
        Some(e) if e != current => Err(StoreError::Conflict {
            app: app.to_string(),
            expected: e,
            current,
        }),
        _ => Ok(()),
    }
}

/// Increments the app's generation and returns the new value.
pub(crate) fn bump_generation(conn: &Connection, app: &str) -> Result<u64, StoreError> {
    let g: i64 = conn
        .query_row(
            "INSERT INTO generations (app, generation) VALUES (?1, 1)
             ON CONFLICT (app) DO UPDATE SET generation = generation + 1
             RETURNING generation",
            [app],
            |row| row.get(0),
        )
        .map_err(db("bumping an app's generation"))?;
    Ok(u64::try_from(g).unwrap_or(0))
}

/// The app's current split, sorted (empty when it is not deployed).
pub(crate) fn read_split(
    conn: &Connection,
    app: &str,
) -> Result<Vec<WeightedRevision>, StoreError> {
    let doing = "reading a traffic split";
    let mut stmt = conn
        .prepare_cached("SELECT revision, weight FROM traffic WHERE app = ?1")
        .map_err(db(doing))?;
    let rows = stmt
        .query_map([app], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(db(doing))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(doing))?;
    let mut split = Vec::with_capacity(rows.len());
    for (revision, weight) in rows {
        let (Ok(revision), Ok(weight)) = (u64::try_from(revision), u8::try_from(weight)) else {
            return Err(StoreError::Corrupt {
                what: format!("traffic split of app {app:?}"),
                reason: format!("revision {revision} has weight {weight}"),
            });
        };
        split.push(WeightedRevision { revision, weight });
    }
    sort_split(&mut split);
    Ok(split)
}

/// The split a new revision's commit produces.
pub(crate) fn apply_instruction(
    app: &str,
    current: &[WeightedRevision],
    new_revision: u64,
    instruction: TrafficInstruction,
) -> Result<Vec<WeightedRevision>, StoreError> {
    if current.is_empty() && instruction != TrafficInstruction::All {
        return Err(StoreError::InvalidTraffic {
            app: app.to_string(),
            reason: "the first deploy of an app takes all traffic; deploy it without --canary or --no-traffic first".into(),
        });
    }
    Ok(match instruction {
        TrafficInstruction::All => vec![WeightedRevision {
            revision: new_revision,
            weight: 100,
        }],
        TrafficInstruction::Canary(p) if (1..=99).contains(&p) => {
            canary_split(current, new_revision, p)
        }
        TrafficInstruction::Canary(p) => {
            return Err(StoreError::InvalidTraffic {
                app: app.to_string(),
                reason: format!(
                    "a canary takes 1 to 99 percent, not {p}; use 100 for a plain deploy or 0 for --no-traffic"
                ),
            });
        }
        TrafficInstruction::None => current.to_vec(),
    })
}

pub(crate) fn encode_split(split: &[WeightedRevision]) -> String {
    split
        .iter()
        .map(|w| format!("{}={}", w.revision, w.weight))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_split(text: &str) -> Option<Vec<WeightedRevision>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (r, w) = p.split_once('=')?;
            Some(WeightedRevision {
                revision: r.parse().ok()?,
                weight: w.parse().ok()?,
            })
        })
        .collect()
}

/// What changes a split. A change by anything but the app's running rollout ends that rollout
/// (state `aborted`), in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changer {
    /// A deploy whose revision takes traffic.
    Deploy,
    /// A traffic change or rollback asked for by a person or tool.
    Request,
    /// The app's running rollout.
    Rollout,
}

/// Replaces the app's split with `new` (already valid and sorted), keeps `apps.live_revision`
/// on its highest-weight revision, records `old` in the history when the split changed, ends a
/// running rollout that did not make the change, and bumps the generation. Returns the new
/// generation.
pub(crate) fn write_split(
    conn: &Connection,
    app: &str,
    old: &[WeightedRevision],
    new: &[WeightedRevision],
    changer: Changer,
) -> Result<u64, StoreError> {
    let doing = "writing a traffic split";
    let primary = new.first().ok_or_else(|| StoreError::InvalidTraffic {
        app: app.to_string(),
        reason: "the split is empty; give at least one revision weight".into(),
    })?;
    let to_sql = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    if old != new {
        conn.execute("DELETE FROM traffic WHERE app = ?1", [app])
            .map_err(db(doing))?;
        let mut insert = conn
            .prepare_cached("INSERT INTO traffic (app, revision, weight) VALUES (?1, ?2, ?3)")
            .map_err(db(doing))?;
        for w in new {
            insert
                .execute(params![app, to_sql(w.revision), w.weight])
                .map_err(db(doing))?;
        }
        if !old.is_empty() {
            conn.execute(
                "INSERT INTO traffic_history (app, changed_at_ms, before) VALUES (?1, ?2, ?3)",
                params![app, time::to_millis(SystemTime::now()), encode_split(old)],
            )
            .map_err(db(doing))?;
            conn.execute(
                "DELETE FROM traffic_history WHERE app = ?1 AND seq <= (
                    SELECT seq FROM traffic_history WHERE app = ?1
                    ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![app, MAX_HISTORY_PER_APP as i64],
            )
            .map_err(db(doing))?;
        }
        match changer {
            Changer::Deploy => rollout::end_running(conn, app, "a deploy changed the traffic")?,
            Changer::Request => rollout::end_running(conn, app, "the traffic was changed by hand")?,
            Changer::Rollout => {}
        }
    }
    conn.execute(
        "INSERT INTO apps (name, live_revision) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET live_revision = excluded.live_revision",
        params![app, to_sql(primary.revision)],
    )
    .map_err(db(doing))?;
    bump_generation(conn, app)
}

pub(crate) fn revision_exists(
    conn: &Connection,
    app: &str,
    revision: u64,
) -> Result<bool, StoreError> {
    let Ok(r) = i64::try_from(revision) else {
        return Ok(false);
    };
    conn.query_row(
        "SELECT 1 FROM revisions WHERE app = ?1 AND revision = ?2",
        params![app, r],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(db("reading a revision"))
}

impl Store {
    /// The traffic split of `app`, or `None` when it is not deployed.
    pub fn traffic(&self, app: &str) -> Result<Option<TrafficSplit>, StoreError> {
        let conn = self.reader();
        let split = read_split(&conn, app)?;
        if split.is_empty() {
            return Ok(None);
        }
        Ok(Some(TrafficSplit {
            app: app.to_string(),
            generation: read_generation(&conn, app)?,
            split,
        }))
    }

    /// The traffic split of every deployed app, sorted by app name (what a starting server
    /// loads).
    pub fn all_traffic(&self) -> Result<Vec<TrafficSplit>, StoreError> {
        let apps: Vec<String> = {
            let conn = self.reader();
            let doing = "listing the deployed apps";
            let mut stmt = conn
                .prepare_cached("SELECT name FROM apps ORDER BY name")
                .map_err(db(doing))?;
            stmt.query_map([], |row| row.get(0))
                .map_err(db(doing))?
                .collect::<Result<_, _>>()
                .map_err(db(doing))?
        };
        let mut out = Vec::with_capacity(apps.len());
        for app in apps {
            if let Some(t) = self.traffic(&app)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The generation of `app` (0 when it was never deployed).
    pub fn generation(&self, app: &str) -> Result<u64, StoreError> {
        let conn = self.reader();
        read_generation(&conn, app)
    }

    /// Sets the traffic split of a deployed `app`, in one durable transaction with the
    /// generation bump and the history row. The split must name retained revisions once each
    /// with weights summing to 100 ([`StoreError::InvalidTraffic`],
    /// [`StoreError::RevisionNotFound`]); with `expected_generation` it applies only if the app
    /// is still at that generation ([`StoreError::Conflict`]).
    pub fn set_traffic(
        &self,
        app: &str,
        split: &[WeightedRevision],
        expected_generation: Option<u64>,
    ) -> Result<TrafficSplit, StoreError> {
        let new = validate_split(split).map_err(|reason| StoreError::InvalidTraffic {
            app: app.to_string(),
            reason,
        })?;
        let doing = "changing traffic";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let current = read_split(&tx, app)?;
        if current.is_empty() {
            return Err(StoreError::AppNotDeployed(app.to_string()));
        }
        let generation = read_generation(&tx, app)?;
        check_generation(app, expected_generation, generation)?;
        for w in &new {
            if !revision_exists(&tx, app, w.revision)? {
                return Err(StoreError::RevisionNotFound {
                    app: app.to_string(),
                    revision: w.revision,
                });
            }
        }
        let generation = write_split(&tx, app, &current, &new, Changer::Request)?;
        tx.commit().map_err(db(doing))?;
        Ok(TrafficSplit {
            app: app.to_string(),
            generation,
            split: new,
        })
    }

    /// Where `nubo rollback` goes by default: the revision that had the most traffic before
    /// the latest traffic change (on a tie, the newest of them), skipping changes whose earlier state is already what serves
    /// (all traffic on that revision) or names a revision since pruned. `None` when there is no
    /// such revision.
    pub fn rollback_target(&self, app: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.reader();
        let doing = "reading the traffic history";
        let current = read_split(&conn, app)?;
        let befores: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT before FROM traffic_history WHERE app = ?1 ORDER BY seq DESC",
                )
                .map_err(db(doing))?;
            stmt.query_map([app], |row| row.get(0))
                .map_err(db(doing))?
                .collect::<Result<_, _>>()
                .map_err(db(doing))?
        };
        for text in befores {
            let Some(mut before) = decode_split(&text) else {
                continue;
            };
            sort_split(&mut before);
            let Some(top) = before.first().map(|w| w.revision) else {
                continue;
            };
            let already = current.len() == 1 && current[0].revision == top;
            if !already && revision_exists(&conn, app, top)? {
                return Ok(Some(top));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(revision: u64, weight: u8) -> WeightedRevision {
        WeightedRevision { revision, weight }
    }

    #[test]
    fn canary_scales_the_serving_revisions() {
        assert_eq!(canary_split(&[w(1, 100)], 2, 10), vec![w(1, 90), w(2, 10)]);
        // 90/10 scaled into 80 points: 72 and 8.
        assert_eq!(
            canary_split(&[w(1, 90), w(2, 10)], 3, 20),
            vec![w(1, 72), w(3, 20), w(2, 8)]
        );
        // Remainders: 33.33/33.33/33.33 of 99 -> 33 each, nothing left.
        let s = canary_split(&[w(1, 34), w(2, 33), w(3, 33)], 4, 1);
        assert_eq!(s.iter().map(|x| u32::from(x.weight)).sum::<u32>(), 100);
        // A tiny share rounds away.
        let s = canary_split(&[w(1, 99), w(2, 1)], 3, 60);
        assert_eq!(s.iter().map(|x| u32::from(x.weight)).sum::<u32>(), 100);
        assert!(s.iter().all(|x| x.weight > 0));
    }

    #[test]
    fn validate_split_names_the_problem() {
        assert!(
            validate_split(&[w(1, 50), w(2, 40)])
                .unwrap_err()
                .contains("sum to 90")
        );
        assert!(
            validate_split(&[w(1, 50), w(1, 50)])
                .unwrap_err()
                .contains("named twice")
        );
        assert!(
            validate_split(&[w(1, 150)])
                .unwrap_err()
                .contains("from 0 to 100")
        );
        assert_eq!(
            validate_split(&[w(1, 10), w(2, 90), w(3, 0)]).unwrap(),
            vec![w(2, 90), w(1, 10)]
        );
    }

    #[test]
    fn history_round_trips() {
        let s = vec![w(12, 90), w(13, 10)];
        assert_eq!(decode_split(&encode_split(&s)), Some(s));
        assert_eq!(decode_split("x=1"), None);
    }
}
