//! What each trigger of an app has done: when it last fired and how often, its errors, the
//! chains it stopped for looping, and for a cron trigger the last tick it handled, so a
//! restarted server neither fires a tick twice nor silently forgets the ones it missed.
//!
//! One row per (app, trigger), created by the first thing recorded about the trigger. These
//! are low-rate writes on the store's metadata connection (`synchronous=FULL`).

use crate::error::db;
use crate::{Store, StoreError, time};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use std::time::SystemTime;

/// Longest stored error text of a trigger. Bounds the row.
const MAX_ERROR_TEXT: usize = 1_000;

/// The kind recorded for a trigger first seen through a cron tick.
const CRON_KIND: &str = "cron";

/// What one trigger has done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerState {
    /// The app.
    pub app: String,
    /// The trigger's name within the app.
    pub trigger: String,
    /// Its kind (`cron`, `queue`, `object`, `mqtt`, `nats`).
    pub kind: String,
    /// When it last fired (millisecond precision).
    pub last_fire: Option<SystemTime>,
    /// For a cron trigger: the last scheduled tick it handled.
    pub last_tick: Option<SystemTime>,
    /// Invocations it started in all.
    pub fires: u64,
    /// Failures in all.
    pub errors: u64,
    /// The last failure's text.
    pub last_error: Option<String>,
    /// Chains of invocations it stopped because they looped.
    pub loops_stopped: u64,
    /// For a cron trigger: ticks passed over (missed while the server was down, or while the
    /// previous run still ran).
    pub skipped: u64,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn truncated(text: &str) -> &str {
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let mut cut = MAX_ERROR_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

impl Store {
    /// The state of every trigger of `app` recorded so far, by trigger name.
    pub fn trigger_states(&self, app: &str) -> Result<Vec<TriggerState>, StoreError> {
        let doing = "reading trigger state";
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT app, trigger, kind, last_fire_ms, last_tick_ms, fires, errors, last_error,
                        loops_stopped, skipped
                 FROM trigger_state WHERE app = ?1 ORDER BY trigger",
            )
            .map_err(db(doing))?;
        stmt.query_map([app], |r| {
            Ok(TriggerState {
                app: r.get(0)?,
                trigger: r.get(1)?,
                kind: r.get(2)?,
                last_fire: r.get::<_, Option<i64>>(3)?.map(time::from_millis),
                last_tick: r.get::<_, Option<i64>>(4)?.map(time::from_millis),
                fires: to_u64(r.get(5)?),
                errors: to_u64(r.get(6)?),
                last_error: r.get(7)?,
                loops_stopped: to_u64(r.get(8)?),
                skipped: to_u64(r.get(9)?),
            })
        })
        .map_err(db(doing))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(doing))
    }

    /// Records that the trigger started `n` invocations at `at`.
    pub fn trigger_fired(
        &self,
        app: &str,
        trigger: &str,
        kind: &str,
        n: u64,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO trigger_state (app, trigger, kind, last_fire_ms, fires)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app, trigger) DO UPDATE SET kind = excluded.kind,
                     last_fire_ms = excluded.last_fire_ms, fires = fires + excluded.fires",
                params![app, trigger, kind, time::to_millis(at), to_i64(n)],
            )
            .map_err(db("recording a trigger's fire"))?;
        Ok(())
    }

    /// Records a failure of the trigger (its text cut to 1000 bytes).
    pub fn trigger_failed(
        &self,
        app: &str,
        trigger: &str,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO trigger_state (app, trigger, kind, errors, last_error)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (app, trigger) DO UPDATE SET kind = excluded.kind,
                     errors = errors + 1, last_error = excluded.last_error",
                params![app, trigger, kind, truncated(error)],
            )
            .map_err(db("recording a trigger's failure"))?;
        Ok(())
    }

    /// Records that the trigger stopped a chain of invocations that looped.
    pub fn trigger_loop_stopped(
        &self,
        app: &str,
        trigger: &str,
        kind: &str,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO trigger_state (app, trigger, kind, loops_stopped)
                 VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (app, trigger) DO UPDATE SET kind = excluded.kind,
                     loops_stopped = loops_stopped + 1",
                params![app, trigger, kind],
            )
            .map_err(db("recording a stopped trigger loop"))?;
        Ok(())
    }

    /// Records that a cron trigger handled the scheduled tick `tick`, passing over `skipped`
    /// earlier ones.
    pub fn cron_tick_done(
        &self,
        app: &str,
        trigger: &str,
        tick: SystemTime,
        skipped: u64,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO trigger_state (app, trigger, kind, last_tick_ms, skipped)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app, trigger) DO UPDATE SET
                     last_tick_ms = excluded.last_tick_ms, skipped = skipped + excluded.skipped",
                params![
                    app,
                    trigger,
                    CRON_KIND,
                    time::to_millis(tick),
                    to_i64(skipped)
                ],
            )
            .map_err(db("recording a cron tick"))?;
        Ok(())
    }

    /// The last scheduled tick the cron trigger handled, if any.
    pub fn cron_last_tick(
        &self,
        app: &str,
        trigger: &str,
    ) -> Result<Option<SystemTime>, StoreError> {
        let at: Option<Option<i64>> = self
            .reader()
            .query_row(
                "SELECT last_tick_ms FROM trigger_state WHERE app = ?1 AND trigger = ?2",
                params![app, trigger],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading a cron trigger's last tick"))?;
        Ok(at.flatten().map(time::from_millis))
    }

    /// Deletes the state of every trigger of `app` not named in `keep` (triggers removed by a
    /// deploy, or all of them when the app is removed).
    pub fn forget_triggers(&self, app: &str, keep: &[String]) -> Result<(), StoreError> {
        let doing = "forgetting trigger state";
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(doing))?;
        let names: Vec<String> = {
            let mut stmt = tx
                .prepare_cached("SELECT trigger FROM trigger_state WHERE app = ?1")
                .map_err(db(doing))?;
            stmt.query_map([app], |r| r.get(0))
                .map_err(db(doing))?
                .collect::<Result<_, _>>()
                .map_err(db(doing))?
        };
        for name in names.iter().filter(|n| !keep.contains(n)) {
            tx.execute(
                "DELETE FROM trigger_state WHERE app = ?1 AND trigger = ?2",
                params![app, name],
            )
            .map_err(db(doing))?;
        }
        tx.commit().map_err(db(doing))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn at(ms: i64) -> SystemTime {
        time::from_millis(ms)
    }

    #[test]
    fn fires_errors_and_loops_add_up_per_trigger() {
        let (_dir, store) = store();
        assert!(store.trigger_states("shop").unwrap().is_empty());
        store
            .trigger_fired("shop", "orders", "queue", 3, at(1_000))
            .unwrap();
        store
            .trigger_fired("shop", "orders", "queue", 2, at(2_000))
            .unwrap();
        store
            .trigger_failed("shop", "orders", "queue", "first")
            .unwrap();
        store
            .trigger_failed("shop", "orders", "queue", &"é".repeat(2_000))
            .unwrap();
        store
            .trigger_loop_stopped("shop", "uploads", "object")
            .unwrap();
        store
            .trigger_fired("other", "orders", "queue", 1, at(5))
            .unwrap();

        let states = store.trigger_states("shop").unwrap();
        assert_eq!(states.len(), 2);
        let orders = &states[0];
        assert_eq!(
            (orders.trigger.as_str(), orders.kind.as_str()),
            ("orders", "queue")
        );
        assert_eq!((orders.fires, orders.errors), (5, 2));
        assert_eq!(orders.last_fire, Some(at(2_000)));
        let last_error = orders.last_error.as_deref().unwrap();
        assert!(last_error.len() <= MAX_ERROR_TEXT && last_error.starts_with('é'));
        let uploads = &states[1];
        assert_eq!(
            (uploads.trigger.as_str(), uploads.kind.as_str()),
            ("uploads", "object")
        );
        assert_eq!((uploads.loops_stopped, uploads.fires), (1, 0));
        assert_eq!(uploads.last_fire, None);
    }

    #[test]
    fn cron_ticks_are_remembered_and_forgotten_with_their_trigger() {
        let (_dir, store) = store();
        assert_eq!(store.cron_last_tick("shop", "nightly").unwrap(), None);
        let tick = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        store.cron_tick_done("shop", "nightly", tick, 0).unwrap();
        store
            .cron_tick_done("shop", "nightly", tick + Duration::from_secs(60), 4)
            .unwrap();
        store
            .trigger_fired("shop", "nightly", "cron", 1, tick)
            .unwrap();
        assert_eq!(
            store.cron_last_tick("shop", "nightly").unwrap(),
            Some(tick + Duration::from_secs(60))
        );
        let s = &store.trigger_states("shop").unwrap()[0];
        assert_eq!((s.kind.as_str(), s.skipped, s.fires), ("cron", 4, 1));

        store
            .trigger_fired("shop", "hourly", "cron", 1, tick)
            .unwrap();
        store.forget_triggers("shop", &["hourly".into()]).unwrap();
        assert_eq!(store.cron_last_tick("shop", "nightly").unwrap(), None);
        let names: Vec<String> = store
            .trigger_states("shop")
            .unwrap()
            .into_iter()
            .map(|s| s.trigger)
            .collect();
        assert_eq!(names, ["hourly"]);
        store.forget_triggers("shop", &[]).unwrap();
        assert!(store.trigger_states("shop").unwrap().is_empty());
    }
}
