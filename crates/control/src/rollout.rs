//! Timed rollouts: traffic shifts to a new revision in steps, and goes back by itself when the
//! new revision fails more than the old one.
//!
//! The plan and the step in force are stored (with each step's split, in one transaction), so a
//! restart resumes the rollout at its step. The counts a step is judged on are in memory only:
//! after a restart the step is observed again for its full interval.
//!
//! Judging a step: the new revision's error rate (5xx answers, function errors included) is
//! compared with `max(error_ratio × the old revision's rate, min_error_rate)`. Above it, the
//! rollout rolls back at once once the new revision has answered [`EARLY_TRIP_REQUESTS`] in the
//! step, and at the end of the step on any count. At or below it when the step's interval is
//! over, the next step comes into force; reaching 100% completes the rollout.

use crate::live::LiveRevision;
use crate::traffic::split_text;
use crate::{Control, DeployError};
use nubo_core::api::v1::{RolloutRequest, RolloutStatus, TrafficState, WeightedRevision};
use nubo_core::rfc3339;
use nubo_store::{Rollout, RolloutMove, RolloutState, Store};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often running rollouts are looked at.
pub const TICK: Duration = Duration::from_millis(200);
/// The shortest step.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest step.
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many requests the new revision must have answered in a step before an error rate over
/// the threshold ends the rollout before the step's end.
pub const EARLY_TRIP_REQUESTS: u64 = 20;
/// Default threshold ratio to the old revision's error rate.
pub const DEFAULT_ERROR_RATIO: f64 = 2.0;
/// Default threshold floor, in percent.
pub const DEFAULT_MIN_ERROR_RATE: f64 = 5.0;

/// Requests and errors of one revision in one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    /// Errors per request, 0 when there were none.
    fn rate(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What a running rollout does next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Keep the step.
    Wait,
    /// Go to the next step.
    Advance,
    /// Go to the last step (100%) and end.
    Complete,
    /// Move all traffic back to the old revision and end; the reason says why.
    RollBack(String),
}

/// Checks a rollout request; the error says what is wrong and how to fix it.
pub(crate) fn validate(req: &RolloutRequest) -> Result<(f64, f64), String> {
    if req.steps.is_empty() {
        return Err("give at least one step, e.g. --steps 10,50,100".into());
    }
    if let Some(bad) = req.steps.iter().find(|&&p| p == 0 || p > 100) {
        return Err(format!(
            "step {bad}% is out of range; each step is a percent from 1 to 100"
        ));
    }
    if req.steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "steps {} do not increase; list them in increasing order, e.g. 10,50,100",
            steps_text(&req.steps)
        ));
    }
    if req.steps.last() != Some(&100) {
        return Err(format!(
            "the last step is {}%; a rollout ends with the new revision at 100 (add 100 to --steps)",
            req.steps.last().copied().unwrap_or(0)
        ));
    }
    let interval = Duration::from_millis(req.interval_ms);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "the interval is {} ms; a step lasts from 1s to 7d (e.g. --interval 5m)",
            req.interval_ms
        ));
    }
    let ratio = req.error_ratio.unwrap_or(DEFAULT_ERROR_RATIO);
    if !ratio.is_finite() || ratio < 1.0 {
        return Err(format!(
            "error ratio {ratio} is invalid; use a number of at least 1 (default {DEFAULT_ERROR_RATIO})"
        ));
    }
    let floor = req.min_error_rate.unwrap_or(DEFAULT_MIN_ERROR_RATE);
    if !floor.is_finite() || !(0.0..=100.0).contains(&floor) {
        return Err(format!(
            "minimum error rate {floor} is invalid; use a percent from 0 to 100 (default {DEFAULT_MIN_ERROR_RATE})"
        ));
    }
    Ok((ratio, floor))
}

fn steps_text(steps: &[u8]) -> String {
    steps
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The next move of running rollout `r`, `elapsed` into its step, from the new and old
/// revisions' counts in the step.
pub(crate) fn decide(r: &Rollout, elapsed: Duration, new: Counts, old: Counts) -> Decision {
    let threshold = (r.error_ratio * old.rate()).max(r.min_error_rate / 100.0);
    let over = new.requests > 0 && new.rate() > threshold;
    let step_over = elapsed >= Duration::from_millis(r.interval_ms);
    if over && (new.requests >= EARLY_TRIP_REQUESTS || step_over) {
        return Decision::RollBack(format!(
            "revision {} failed {} of {} requests ({:.1}%) at {}% of traffic, over the threshold of {:.1}% ({}× revision {}'s {:.1}% ({} of {}), at least {:.1}%)",
            r.to,
            new.errors,
            new.requests,
            new.rate() * 100.0,
            r.steps[r.step],
            threshold * 100.0,
            r.error_ratio,
            r.from,
            old.rate() * 100.0,
            old.errors,
            old.requests,
            r.min_error_rate
        ));
    }
    if !step_over {
        Decision::Wait
    } else if r.step + 2 >= r.steps.len() {
        Decision::Complete
    } else {
        Decision::Advance
    }
}

/// A rollout as the driver holds it: the stored row and, while it runs, where the step's
/// counts start.
#[derive(Debug)]
pub(crate) struct Run {
    rollout: Rollout,
    step_started: Instant,
    new: Option<Baseline>,
    old: Option<Baseline>,
}

/// A revision's cumulative counts when the step started.
#[derive(Debug)]
struct Baseline {
    revision: Arc<LiveRevision>,
    at: (u64, u64),
}

impl Baseline {
    fn of(revision: Option<&Arc<LiveRevision>>) -> Option<Baseline> {
        revision.map(|r| Baseline {
            revision: r.clone(),
            at: r.stats.cumulative(),
        })
    }

    fn since(b: Option<&Baseline>) -> Counts {
        b.map_or(Counts::default(), |b| {
            let (r, e) = b.revision.stats.cumulative();
            Counts {
                requests: r.saturating_sub(b.at.0),
                errors: e.saturating_sub(b.at.1),
            }
        })
    }
}

fn to_wire(run: &Run) -> RolloutStatus {
    let r = &run.rollout;
    let new = Baseline::since(run.new.as_ref());
    RolloutStatus {
        to: r.to,
        from: r.from,
        steps: r.steps.clone(),
        step: r.step,
        interval_ms: r.interval_ms,
        state: r.state.as_str().to_string(),
        step_started_at: rfc3339(r.step_started_at),
        reason: r.reason.clone(),
        error_ratio: r.error_ratio,
        min_error_rate: r.min_error_rate,
        started_at: rfc3339(r.started_at),
        ended_at: r.ended_at.map(rfc3339),
        step_requests: new.requests,
        step_errors: new.errors,
    }
}

impl Control {
    /// The app's running rollout or the last one that ended, if it had one.
    pub(crate) fn rollout_status(&self, app: &str) -> Option<RolloutStatus> {
        self.runs().get(app).map(to_wire)
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Run>> {
        self.rollouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `rollout` as the app's current one, with the step's counts starting now from the
    /// revisions that serve it.
    fn hold(&self, rollout: Rollout) {
        let app = rollout.app.clone();
        let run = match self.app(&app) {
            Some(slot) if rollout.state == RolloutState::Running => {
                let state = slot.state_full();
                Run {
                    new: Baseline::of(state.loaded(rollout.to)),
                    old: Baseline::of(state.loaded(rollout.from)),
                    step_started: Instant::now(),
                    rollout,
                }
            }
            _ => Run {
                rollout,
                step_started: Instant::now(),
                new: None,
                old: None,
            },
        };
        self.runs().insert(app, run);
    }

    /// Reads the app's rollout from the store again (after a change that may have ended it).
    pub(crate) async fn reload_rollout(&self, app: &str) {
        if !self
            .runs()
            .get(app)
            .is_some_and(|r| r.rollout.state == RolloutState::Running)
        {
            return;
        }
        let store = self.store.clone();
        let name = app.to_string();
        match tokio::task::spawn_blocking(move || store.rollout(&name)).await {
            Ok(Ok(Some(r))) => {
                if r.state != RolloutState::Running {
                    tracing::info!(
                        app,
                        to = r.to,
                        reason = r.reason.as_deref().unwrap_or(""),
                        "rollout aborted"
                    );
                    self.hold(r);
                }
            }
            Ok(Ok(None)) => {
                self.runs().remove(app);
            }
            Ok(Err(e)) => tracing::warn!(app, error = %e, "cannot read the app's rollout"),
            Err(e) => tracing::warn!(app, error = %e, "rollout read task failed"),
        }
    }

    /// `POST /apps/{app}/rollout`: starts shifting the app's traffic to `req.to` in timed
    /// steps, from the revision with the most traffic now (other revisions drop out). The
    /// first step takes effect at once.
    ///
    /// Errors: [`DeployError::InvalidTraffic`] for bad steps, interval or thresholds, or when
    /// `to` already takes all traffic; [`DeployError::RolloutInProgress`];
    /// [`DeployError::RevisionNotFound`]; [`DeployError::Conflict`]; [`DeployError::AppNotFound`].
    pub async fn start_rollout(
        &self,
        app: &str,
        req: RolloutRequest,
    ) -> Result<TrafficState, DeployError> {
        let invalid = |reason: String| DeployError::InvalidTraffic {
            app: app.to_string(),
            reason,
        };
        let (error_ratio, min_error_rate) = validate(&req).map_err(invalid)?;
        if let Some(r) = self.runs().get(app)
            && r.rollout.state == RolloutState::Running
        {
            return Err(DeployError::RolloutInProgress {
                app: app.to_string(),
                to: r.rollout.to,
                percent: r.rollout.steps[r.rollout.step],
            });
        }
        let now = SystemTime::now();
        let single = req.steps.len() == 1;
        let mut planned = None;
        let (slot, ()) = self
            .switch_traffic(app, req.expected_generation, |state| {
                let from = state
                    .split
                    .iter()
                    .map(|(r, _)| r.revision)
                    .find(|&n| n != req.to)
                    .ok_or_else(|| {
                        invalid(format!(
                            "revision {} already takes all traffic; there is nothing to roll out",
                            req.to
                        ))
                    })?;
                let rollout = Rollout {
                    app: app.to_string(),
                    to: req.to,
                    from,
                    steps: req.steps.clone(),
                    interval_ms: req.interval_ms,
                    error_ratio,
                    min_error_rate,
                    step: 0,
                    step_started_at: now,
                    state: if single {
                        RolloutState::Completed
                    } else {
                        RolloutState::Running
                    },
                    reason: None,
                    started_at: now,
                    ended_at: single.then_some(now),
                };
                let split = rollout.split_at(0);
                planned = Some(rollout.clone());
                let expected = req.expected_generation;
                Ok((split, move |store: &Store| {
                    store.start_rollout(&rollout, expected).map(|t| (t, ()))
                }))
            })
            .await?;
        if let Some(rollout) = planned {
            tracing::info!(
                app,
                to = rollout.to,
                from = rollout.from,
                steps = %steps_text(&rollout.steps),
                interval_ms = rollout.interval_ms,
                split = %split_text(&rollout.split_at(0)),
                "rollout started"
            );
            self.hold(rollout);
        }
        Ok(self.traffic_state_of(&slot))
    }

    /// `GET /apps/{app}/rollout`: the running rollout, or the last one that ended.
    ///
    /// Errors: [`DeployError::AppNotFound`]; [`DeployError::RolloutNotFound`] when the app
    /// never had one.
    pub fn rollout(&self, app: &str) -> Result<RolloutStatus, DeployError> {
        if self.app(app).is_none() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        self.rollout_status(app)
            .ok_or_else(|| DeployError::RolloutNotFound {
                app: app.to_string(),
                message: format!(
                    "app {app:?} has had no rollout; start one with `nubo rollout {app} --to REVISION --steps 10,50,100 --interval 5m`"
                ),
            })
    }

    /// `DELETE /apps/{app}/rollout`: stops the running rollout and moves all traffic back to
    /// the revision it started from.
    ///
    /// Errors: [`DeployError::RolloutNotFound`] when none runs; [`DeployError::AppNotFound`].
    pub async fn abort_rollout(&self, app: &str) -> Result<TrafficState, DeployError> {
        let running = self
            .runs()
            .get(app)
            .filter(|r| r.rollout.state == RolloutState::Running)
            .map(|r| r.rollout.clone());
        let Some(r) = running else {
            if self.app(app).is_none() {
                return Err(DeployError::AppNotFound(app.to_string()));
            }
            let last = self
                .rollout_status(app)
                .map(|s| format!(" (the last one {})", s.state.replace('_', " ")))
                .unwrap_or_default();
            return Err(DeployError::RolloutNotFound {
                app: app.to_string(),
                message: format!("app {app:?} has no running rollout to abort{last}"),
            });
        };
        let mv = RolloutMove {
            from_step: r.step,
            step: r.step,
            state: RolloutState::Aborted,
            split: vec![WeightedRevision {
                revision: r.from,
                weight: 100,
            }],
            reason: Some("aborted by request; all traffic moved back".into()),
        };
        let slot = self.move_rollout(app, mv).await?;
        Ok(self.traffic_state_of(&slot))
    }

    /// Commits a move of the app's running rollout and holds the result.
    async fn move_rollout(
        &self,
        app: &str,
        mv: RolloutMove,
    ) -> Result<Arc<crate::LiveApp>, DeployError> {
        let split = mv.split.clone();
        let result = self
            .switch_traffic(app, None, |_| {
                let name = app.to_string();
                Ok((split.clone(), move |store: &Store| {
                    store.move_rollout(&name, &mv)
                }))
            })
            .await;
        match result {
            Ok((slot, stored)) => {
                tracing::info!(
                    app,
                    to = stored.to,
                    state = stored.state.as_str(),
                    split = %split_text(&split),
                    reason = stored.reason.as_deref().unwrap_or(""),
                    "rollout {}",
                    match stored.state {
                        RolloutState::Running => "advanced",
                        RolloutState::Completed => "completed",
                        RolloutState::RolledBack => "rolled back",
                        RolloutState::Aborted => "aborted",
                    }
                );
                self.hold(stored);
                Ok(slot)
            }
            Err(e) => {
                match e {
                    // It ended meanwhile: hold what the store says.
                    DeployError::RolloutNotFound { .. } => self.reload_rollout(app).await,
                    DeployError::AppNotFound(_) => {
                        self.runs().remove(app);
                    }
                    _ => {}
                }
                Err(e)
            }
        }
    }

    /// Looks at every running rollout once and makes the moves that are due.
    pub async fn drive_rollouts(&self) {
        let due: Vec<(String, RolloutMove)> = self
            .runs()
            .values()
            .filter(|run| run.rollout.state == RolloutState::Running)
            .filter_map(|run| {
                let r = &run.rollout;
                let new = Baseline::since(run.new.as_ref());
                let old = Baseline::since(run.old.as_ref());
                let (step, state, split, reason) =
                    match decide(r, run.step_started.elapsed(), new, old) {
                        Decision::Wait => return None,
                        Decision::Advance => (
                            r.step + 1,
                            RolloutState::Running,
                            r.split_at(r.step + 1),
                            None,
                        ),
                        Decision::Complete => {
                            let last = r.steps.len() - 1;
                            (last, RolloutState::Completed, r.split_at(last), None)
                        }
                        Decision::RollBack(why) => (
                            r.step,
                            RolloutState::RolledBack,
                            vec![WeightedRevision {
                                revision: r.from,
                                weight: 100,
                            }],
                            Some(why),
                        ),
                    };
                Some((
                    r.app.clone(),
                    RolloutMove {
                        from_step: r.step,
                        step,
                        state,
                        split,
                        reason,
                    },
                ))
            })
            .collect();
        for (app, mv) in due {
            if let Err(e) = self.move_rollout(&app, mv).await {
                tracing::warn!(app, error = %e, "rollout step failed; trying again");
            }
        }
    }

    /// Runs [`Control::drive_rollouts`] every [`TICK`] until the returned task is aborted.
    pub fn spawn_rollout_driver(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(control) = control.upgrade() else {
                    return;
                };
                control.drive_rollouts().await;
            }
        })
    }

    /// Picks up the stored rollouts of the loaded apps (at startup, after restore). A running
    /// one resumes at its step, observed again for the step's full interval.
    pub(crate) async fn resume_rollouts(&self) {
        let store = self.store.clone();
        let rows = match tokio::task::spawn_blocking(move || store.rollouts()).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read rollouts; running ones stay where they are until restarted");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "rollout read task failed");
                return;
            }
        };
        for row in rows {
            if self.app(&row.app).is_none() {
                continue;
            }
            if row.state != RolloutState::Running {
                self.hold(row);
                continue;
            }
            let store = self.store.clone();
            let app = row.app.clone();
            match tokio::task::spawn_blocking(move || store.restart_rollout_step(&app)).await {
                Ok(Ok(Some(r))) => {
                    tracing::info!(
                        app = %r.app,
                        to = r.to,
                        step = r.step,
                        percent = r.steps[r.step],
                        "rollout resumed; the step is observed again for its full interval (counts do not survive a restart)"
                    );
                    self.hold(r);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(app = %row.app, error = %e, "cannot resume rollout"),
                Err(e) => tracing::error!(app = %row.app, error = %e, "rollout resume task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(steps: &[u8], step: usize) -> Rollout {
        Rollout {
            app: "shop".into(),
            to: 13,
            from: 12,
            steps: steps.to_vec(),
            interval_ms: 10_000,
            error_ratio: DEFAULT_ERROR_RATIO,
            min_error_rate: DEFAULT_MIN_ERROR_RATE,
            step,
            step_started_at: SystemTime::now(),
            state: RolloutState::Running,
            reason: None,
            started_at: SystemTime::now(),
            ended_at: None,
        }
    }

    fn c(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors }
    }

    fn req(steps: &[u8], interval_ms: u64) -> RolloutRequest {
        RolloutRequest {
            to: 13,
            steps: steps.to_vec(),
            interval_ms,
            error_ratio: None,
            min_error_rate: None,
            expected_generation: None,
        }
    }

    const EARLY: Duration = Duration::from_secs(1);
    const LATE: Duration = Duration::from_secs(10);

    #[test]
    fn a_healthy_step_waits_for_its_interval_then_advances_and_the_last_completes() {
        let r = rollout(&[10, 50, 100], 0);
        assert_eq!(decide(&r, EARLY, c(100, 0), c(900, 0)), Decision::Wait);
        assert_eq!(decide(&r, LATE, c(100, 0), c(900, 0)), Decision::Advance);
        // No traffic at all is no evidence against it.
        assert_eq!(decide(&r, LATE, c(0, 0), c(0, 0)), Decision::Advance);
        let r = rollout(&[10, 50, 100], 1);
        assert_eq!(decide(&r, LATE, c(100, 1), c(100, 0)), Decision::Complete);
    }

    #[test]
    fn the_threshold_is_twice_the_old_rate_and_at_least_five_percent() {
        let r = rollout(&[10, 50, 100], 0);
        // 5% exactly is not over the floor.
        assert_eq!(decide(&r, LATE, c(100, 5), c(100, 0)), Decision::Advance);
        assert!(matches!(
            decide(&r, LATE, c(100, 6), c(100, 0)),
            Decision::RollBack(_)
        ));
        // The old revision fails 10%: the new one may fail up to 20%.
        assert_eq!(decide(&r, LATE, c(100, 20), c(100, 10)), Decision::Advance);
        let Decision::RollBack(why) = decide(&r, LATE, c(100, 21), c(100, 10)) else {
            panic!("expected a rollback");
        };
        assert!(why.contains("revision 13 failed 21 of 100"), "{why}");
        assert!(why.contains("20.0%"), "{why}");
    }

    #[test]
    fn an_early_trip_needs_enough_requests_and_the_step_end_judges_any_count() {
        let r = rollout(&[10, 50, 100], 0);
        assert_eq!(
            decide(&r, EARLY, c(EARLY_TRIP_REQUESTS - 1, 10), c(100, 0)),
            Decision::Wait
        );
        assert!(matches!(
            decide(&r, EARLY, c(EARLY_TRIP_REQUESTS, 10), c(100, 0)),
            Decision::RollBack(_)
        ));
        assert!(matches!(
            decide(&r, LATE, c(2, 1), c(100, 0)),
            Decision::RollBack(_)
        ));
    }

    #[test]
    fn requests_are_checked_with_errors_that_name_the_fix() {
        assert!(validate(&req(&[10, 50, 100], 60_000)).is_ok());
        assert!(validate(&req(&[100], 1_000)).is_ok());
        let err = |r: RolloutRequest| validate(&r).unwrap_err();
        assert!(err(req(&[], 60_000)).contains("at least one step"));
        assert!(err(req(&[50, 10, 100], 60_000)).contains("increasing order"));
        assert!(err(req(&[10, 10, 100], 60_000)).contains("increasing order"));
        assert!(err(req(&[10, 50], 60_000)).contains("add 100"));
        assert!(err(req(&[0, 100], 60_000)).contains("from 1 to 100"));
        assert!(err(req(&[10, 100], 10)).contains("from 1s to 7d"));
        let mut r = req(&[10, 100], 60_000);
        r.error_ratio = Some(0.5);
        assert!(err(r).contains("at least 1"));
        let mut r = req(&[10, 100], 60_000);
        r.min_error_rate = Some(f64::NAN);
        assert!(err(r).contains("from 0 to 100"));
    }
}
