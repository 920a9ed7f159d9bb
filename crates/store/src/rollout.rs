//! Rollouts as stored: one row per app holding the rollout in progress or the last one that
//! ended. Every step's traffic change and the row's update commit in one transaction, so after a
//! crash the split and the rollout's step always agree.

use crate::error::db;
use crate::traffic::{self, Changer, TrafficSplit};
use crate::{Store, StoreError, time};
use nubo_core::api::v1::WeightedRevision;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::time::SystemTime;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Shifting traffic step by step.
    Running,
    /// The new revision took all traffic.
    Completed,
    /// The new revision's error rate tripped the threshold; all traffic went back.
    RolledBack,
    /// Ended by a person (abort, a traffic change, a deploy that took traffic, `nubo rm`).
    Aborted,
}

impl RolloutState {
    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Option<RolloutState> {
        Some(match s {
            "running" => RolloutState::Running,
            "completed" => RolloutState::Completed,
            "rolled_back" => RolloutState::RolledBack,
            "aborted" => RolloutState::Aborted,
            _ => return None,
        })
    }
}

/// A rollout of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The app.
    pub app: String,
    /// The revision being rolled out.
    pub to: u64,
    /// The revision that served most traffic when it started; the rollback target.
    pub from: u64,
    /// The new revision's share at each step, in percent; increasing, the last one 100.
    pub steps: Vec<u8>,
    /// How long each step lasts, in milliseconds.
    pub interval_ms: u64,
    /// The threshold: the new revision's error rate may be at most this many times the old
    /// revision's …
    pub error_ratio: f64,
    /// … or this percent, whichever is higher.
    pub min_error_rate: f64,
    /// Index into `steps` of the step in force.
    pub step: usize,
    /// When that step started (or was resumed after a restart).
    pub step_started_at: SystemTime,
    /// Where it is.
    pub state: RolloutState,
    /// Why it ended, once it did.
    pub reason: Option<String>,
    /// When it started.
    pub started_at: SystemTime,
    /// When it ended.
    pub ended_at: Option<SystemTime>,
}

impl Rollout {
    /// The split a step puts in force: `to` takes the step's percent and `from` the rest.
    pub fn split_at(&self, step: usize) -> Vec<WeightedRevision> {
        let percent = self.steps.get(step).copied().unwrap_or(100).min(100);
        let mut split = vec![WeightedRevision {
            revision: self.to,
            weight: percent,
        }];
        if percent < 100 {
            split.push(WeightedRevision {
                revision: self.from,
                weight: 100 - percent,
            });
        }
        traffic::sort_split(&mut split);
        split
    }
}

/// A move of a running rollout to its next state.
#[derive(Debug, Clone)]
pub struct RolloutMove {
    /// The step it must be at now; the move is refused when it is not (another move came
    /// first).
    pub from_step: usize,
    /// The step it goes to.
    pub step: usize,
    /// The state it goes to.
    pub state: RolloutState,
    /// The split that comes into force.
    pub split: Vec<WeightedRevision>,
    /// Why, when it ends.
    pub reason: Option<String>,
}

const COLUMNS: &str = "app, to_revision, from_revision, steps, interval_ms, error_ratio, \
     min_error_rate, step, step_started_ms, state, reason, started_at_ms, ended_at_ms";

fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn encode_steps(steps: &[u8]) -> String {
    steps
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(row: &Row<'_>) -> rusqlite::Result<Result<Rollout, StoreError>> {
    let app: String = row.get(0)?;
    let steps_text: String = row.get(3)?;
    let state_text: String = row.get(9)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("rollout of app {app:?}"),
        reason,
    };
    let steps: Option<Vec<u8>> = steps_text.split(',').map(|p| p.parse().ok()).collect();
    let Some(steps) = steps.filter(|s| !s.is_empty()) else {
        return Ok(Err(corrupt(format!("steps {steps_text:?}"))));
    };
    let Some(state) = RolloutState::parse(&state_text) else {
        return Ok(Err(corrupt(format!("state {state_text:?}"))));
    };
    let num = |i: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
    };
    let step = usize::try_from(row.get::<_, i64>(7)?).unwrap_or(usize::MAX);
    if step >= steps.len() {
        return Ok(Err(corrupt(format!(
            "step {step} of {} steps",
            steps.len()
        ))));
    }
    Ok(Ok(Rollout {
        to: num(1)?,
        from: num(2)?,
        steps,
        interval_ms: num(4)?,
        error_ratio: row.get(5)?,
        min_error_rate: row.get(6)?,
        step,
        step_started_at: time::from_millis(row.get(8)?),
        state,
        reason: row.get(10)?,
        started_at: time::from_millis(row.get(11)?),
        ended_at: row.get::<_, Option<i64>>(12)?.map(time::from_millis),
        app,
    }))
}

fn read(conn: &Connection, app: &str) -> Result<Option<Rollout>, StoreError> {
    let doing = "reading a rollout";
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM rollouts WHERE app = ?1"))
        .map_err(db(doing))?
        .query_row([app], decode)
        .optional()
        .map_err(db(doing))?
        .transpose()
}

/// Ends the app's running rollout, if there is one, as `aborted` because of `why`.
pub(crate) fn end_running(conn: &Connection, app: &str, why: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET state = 'aborted', reason = ?2, ended_at_ms = ?3
         WHERE app = ?1 AND state = 'running'",
        params![app, why, time::to_millis(SystemTime::now())],
    )
    .map_err(db("ending a rollout"))?;
    Ok(())
}

impl Store {
    /// The app's rollout in progress, or the last one that ended; `None` when it never had one.
    pub fn rollout(&self, app: &str) -> Result<Option<Rollout>, StoreError> {
        read(&self.reader(), app)
    }

    /// The rollouts of every deployed app (running or the last one ended), by app name.
    pub fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let doing = "listing rollouts";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM rollouts WHERE app IN (SELECT name FROM apps) ORDER BY app"
            ))
            .map_err(db(doing))?;
        let rows = stmt
            .query_map([], decode)
            .map_err(db(doing))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db(doing))?;
        rows.into_iter().collect()
    }

    /// Starts `rollout` (state running, or completed when its first step is already 100): in
    /// one transaction its first step's split comes into force, the generation is bumped and
    /// the row replaces the app's last rollout. With `expected_generation` it applies only if
    /// the app is still at that generation.
    ///
    /// Errors: [`StoreError::AppNotDeployed`]; [`StoreError::Conflict`];
    /// [`StoreError::RolloutRunning`] when a rollout of the app is running;
    /// [`StoreError::RevisionNotFound`] when `to` or `from` is not retained.
    pub fn start_rollout(
        &self,
        rollout: &Rollout,
        expected_generation: Option<u64>,
    ) -> Result<TrafficSplit, StoreError> {
        let app = rollout.app.as_str();
        let doing = "starting a rollout";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let current = traffic::read_split(&tx, app)?;
        if current.is_empty() {
            return Err(StoreError::AppNotDeployed(app.to_string()));
        }
        let generation = traffic::read_generation(&tx, app)?;
        traffic::check_generation(app, expected_generation, generation)?;
        if let Some(r) = read(&tx, app)?
            && r.state == RolloutState::Running
        {
            return Err(StoreError::RolloutRunning {
                app: app.to_string(),
                to: r.to,
                percent: r.steps[r.step],
            });
        }
        for revision in [rollout.to, rollout.from] {
            if !traffic::revision_exists(&tx, app, revision)? {
                return Err(StoreError::RevisionNotFound {
                    app: app.to_string(),
                    revision,
                });
            }
        }
        let split = rollout.split_at(rollout.step);
        let generation = traffic::write_split(&tx, app, &current, &split, Changer::Rollout)?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO rollouts ({COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                app,
                to_sql(rollout.to),
                to_sql(rollout.from),
                encode_steps(&rollout.steps),
                to_sql(rollout.interval_ms),
                rollout.error_ratio,
                rollout.min_error_rate,
                to_sql(rollout.step as u64),
                time::to_millis(rollout.step_started_at),
                rollout.state.as_str(),
                rollout.reason,
                time::to_millis(rollout.started_at),
                rollout.ended_at.map(time::to_millis),
            ],
        )
        .map_err(db(doing))?;
        tx.commit().map_err(db(doing))?;
        Ok(TrafficSplit {
            app: app.to_string(),
            generation,
            split,
        })
    }

    /// Moves the app's running rollout: in one transaction the move's split comes into force
    /// (bumping the generation) and the row takes its step and state, the step starting now.
    /// Returns the new split and the rollout as stored.
    ///
    /// Errors: [`StoreError::RolloutNotRunning`] when no rollout runs or it is no longer at
    /// `from_step` (it ended or moved meanwhile; nothing changed);
    /// [`StoreError::RevisionNotFound`] when the split names a revision not retained.
    pub fn move_rollout(
        &self,
        app: &str,
        change: &RolloutMove,
    ) -> Result<(TrafficSplit, Rollout), StoreError> {
        let doing = "moving a rollout";
        let split = traffic::validate_split(&change.split).map_err(|reason| {
            StoreError::InvalidTraffic {
                app: app.to_string(),
                reason,
            }
        })?;
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        match read(&tx, app)? {
            Some(r) if r.state == RolloutState::Running && r.step == change.from_step => {}
            _ => return Err(StoreError::RolloutNotRunning(app.to_string())),
        }
        for w in &split {
            if !traffic::revision_exists(&tx, app, w.revision)? {
                return Err(StoreError::RevisionNotFound {
                    app: app.to_string(),
                    revision: w.revision,
                });
            }
        }
        let current = traffic::read_split(&tx, app)?;
        let generation = traffic::write_split(&tx, app, &current, &split, Changer::Rollout)?;
        let now = time::to_millis(SystemTime::now());
        let ended = (change.state != RolloutState::Running).then_some(now);
        tx.execute(
            "UPDATE rollouts SET step = ?2, step_started_ms = ?3, state = ?4, reason = ?5,
                 ended_at_ms = ?6
             WHERE app = ?1",
            params![
                app,
                to_sql(change.step as u64),
                now,
                change.state.as_str(),
                change.reason,
                ended
            ],
        )
        .map_err(db(doing))?;
        let stored = read(&tx, app)?.ok_or_else(|| StoreError::RolloutNotRunning(app.into()))?;
        tx.commit().map_err(db(doing))?;
        Ok((
            TrafficSplit {
                app: app.to_string(),
                generation,
                split,
            },
            stored,
        ))
    }

    /// Starts the running rollout's current step again from now (after a restart, whose counts
    /// did not survive). Returns the rollout as stored, `None` when none runs.
    pub fn restart_rollout_step(&self, app: &str) -> Result<Option<Rollout>, StoreError> {
        let doing = "resuming a rollout";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        tx.execute(
            "UPDATE rollouts SET step_started_ms = ?2 WHERE app = ?1 AND state = 'running'",
            params![app, time::to_millis(SystemTime::now())],
        )
        .map_err(db(doing))?;
        let stored = read(&tx, app)?;
        tx.commit().map_err(db(doing))?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FunctionCode, NewRevision, TrafficInstruction};

    fn w(revision: u64, weight: u8) -> WeightedRevision {
        WeightedRevision { revision, weight }
    }

    fn deploy(store: &Store, traffic: TrafficInstruction) -> u64 {
        let manifest = nubo_core::manifest::parse(
            "[app]\nname = \"shop\"\n[function.api]\nsource = \"api.wasm\"\n",
        )
        .unwrap();
        let digest = store.put_blob(b"code").unwrap();
        let (rec, _) = store
            .commit_revision_with(
                NewRevision {
                    app: "shop".into(),
                    manifest,
                    functions: vec![FunctionCode {
                        name: "api".into(),
                        digest,
                        size: 4,
                    }],
                    deployed_by: None,
                },
                traffic,
                None,
            )
            .unwrap();
        rec.revision
    }

    fn plan(to: u64, from: u64) -> Rollout {
        let now = SystemTime::now();
        Rollout {
            app: "shop".into(),
            to,
            from,
            steps: vec![10, 50, 100],
            interval_ms: 60_000,
            error_ratio: 2.0,
            min_error_rate: 5.0,
            step: 0,
            step_started_at: now,
            state: RolloutState::Running,
            reason: None,
            started_at: now,
            ended_at: None,
        }
    }

    fn step(
        from_step: usize,
        step: usize,
        state: RolloutState,
        split: Vec<WeightedRevision>,
    ) -> RolloutMove {
        RolloutMove {
            from_step,
            step,
            state,
            split,
            reason: None,
        }
    }

    #[test]
    fn a_rollout_moves_step_by_step_with_its_split() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        deploy(&store, TrafficInstruction::All);
        deploy(&store, TrafficInstruction::None);
        let g0 = store.generation("shop").unwrap();
        let t = store.start_rollout(&plan(2, 1), Some(g0)).unwrap();
        assert_eq!(t.split, vec![w(1, 90), w(2, 10)]);
        assert_eq!(t.generation, g0 + 1);
        // A second rollout is refused while this one runs.
        assert!(matches!(
            store.start_rollout(&plan(2, 1), None),
            Err(StoreError::RolloutRunning {
                to: 2,
                percent: 10,
                ..
            })
        ));
        let (t, r) = store
            .move_rollout(
                "shop",
                &step(0, 1, RolloutState::Running, vec![w(2, 50), w(1, 50)]),
            )
            .unwrap();
        assert_eq!(t.split, vec![w(2, 50), w(1, 50)]);
        assert_eq!((r.step, r.state), (1, RolloutState::Running));
        // A stale move (from step 0 again) changes nothing.
        assert!(matches!(
            store.move_rollout("shop", &step(0, 1, RolloutState::Running, vec![w(2, 100)])),
            Err(StoreError::RolloutNotRunning(_))
        ));
        let (t, r) = store
            .move_rollout(
                "shop",
                &step(1, 2, RolloutState::Completed, vec![w(2, 100)]),
            )
            .unwrap();
        assert_eq!(t.split, vec![w(2, 100)]);
        assert_eq!(r.state, RolloutState::Completed);
        assert!(r.ended_at.is_some());
        assert_eq!(store.rollout("shop").unwrap().unwrap(), r);
        assert_eq!(store.rollouts().unwrap(), vec![r]);
        // Rollback after the rollout goes to the revision that served before it.
        assert_eq!(store.rollback_target("shop").unwrap(), Some(1));
    }

    #[test]
    fn a_change_by_hand_or_a_deploy_ends_the_running_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        deploy(&store, TrafficInstruction::All);
        deploy(&store, TrafficInstruction::None);
        store.start_rollout(&plan(2, 1), None).unwrap();
        // A no-traffic deploy leaves it running.
        deploy(&store, TrafficInstruction::None);
        assert_eq!(
            store.rollout("shop").unwrap().unwrap().state,
            RolloutState::Running
        );
        store.set_traffic("shop", &[w(1, 100)], None).unwrap();
        let r = store.rollout("shop").unwrap().unwrap();
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(r.reason.as_deref(), Some("the traffic was changed by hand"));

        store.start_rollout(&plan(2, 1), None).unwrap();
        deploy(&store, TrafficInstruction::Canary(5));
        let r = store.rollout("shop").unwrap().unwrap();
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(r.reason.as_deref(), Some("a deploy changed the traffic"));
    }

    #[test]
    fn resuming_restarts_the_step_clock_and_keeps_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        deploy(&store, TrafficInstruction::All);
        deploy(&store, TrafficInstruction::None);
        let mut p = plan(2, 1);
        p.step_started_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        store.start_rollout(&p, None).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let r = store.restart_rollout_step("shop").unwrap().unwrap();
        assert_eq!((r.step, r.state), (0, RolloutState::Running));
        assert!(r.step_started_at > p.step_started_at);
        assert_eq!(
            store.traffic("shop").unwrap().unwrap().split,
            vec![w(1, 90), w(2, 10)]
        );
    }
}
