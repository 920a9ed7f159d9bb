//! Cron triggers: one task per trigger sleeps until the next tick of its schedule and fires
//! it, recording each handled tick so a restart neither fires a tick twice nor forgets the
//! ticks that fell while the server was down (`missed = "skip"` or `"catch_up"`).

use crate::deliver::{Ctx, Live, Stop};
use crate::event::{self, Target};
use nubo_core::manifest::{CronSpec, MAX_CATCH_UP, Missed, Schedule};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Most ticks counted one by one when working out what was missed; past that, the walk
/// jumps to a day before now and the ticks jumped over go uncounted. Bounds the work after a
/// long downtime of a schedule that ticks every second.
const MAX_TICKS_WALKED: u64 = 200_000;

/// Submissions of one tick before it is counted as an error and skipped.
const SUBMIT_TRIES: u32 = 4;

/// Longest single sleep: the wall clock is checked again at least this often, so a clock
/// step (or a suspended machine) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What to do with the ticks in `(last, now]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TickPlan {
    /// Ticks passed over: the latest of them (recorded as handled) and how many.
    pub skip: Option<(SystemTime, u64)>,
    /// Ticks to fire, oldest first.
    pub fire: Vec<SystemTime>,
}

/// Works out the ticks in `(last, now]`. At start-up (`fire_latest` false) they were all
/// missed: `skip` passes over every one, `catch_up` fires the newest [`MAX_CATCH_UP`]. While
/// running (`fire_latest` true) the latest is due and fires; older ones (the task fell
/// behind, the machine slept) follow `missed`.
pub(crate) fn plan_ticks(
    schedule: &Schedule,
    last: SystemTime,
    now: SystemTime,
    missed: Missed,
    fire_latest: bool,
) -> TickPlan {
    let keep = match missed {
        Missed::Skip => usize::from(fire_latest),
        Missed::CatchUp => MAX_CATCH_UP.max(usize::from(fire_latest)),
    };
    // The newest `keep` ticks are kept; every older one is passed over.
    let mut kept: VecDeque<SystemTime> = VecDeque::new();
    let mut skipped = 0u64;
    let mut latest_skipped = None;
    let mut cursor = last;
    let mut walked = 0u64;
    while let Some(tick) = schedule.next_after(cursor) {
        if tick > now || tick <= cursor {
            break;
        }
        walked += 1;
        if walked == MAX_TICKS_WALKED {
            // Jump ahead: what lies between is counted as passed over.
            let restart = now
                .checked_sub(Duration::from_secs(24 * 3600))
                .unwrap_or(now);
            if restart > tick {
                // Counted: this tick and those kept so far; the ones jumped over are not
                // walked, so the count is a lower bound.
                skipped += kept.len() as u64 + 1;
                latest_skipped = Some(restart);
                kept.clear();
                cursor = restart;
                continue;
            }
        }
        kept.push_back(tick);
        if kept.len() > keep
            && let Some(old) = kept.pop_front()
        {
            skipped += 1;
            latest_skipped = Some(old);
        }
        cursor = tick;
    }
    TickPlan {
        skip: latest_skipped.map(|t| (t, skipped)),
        fire: kept.into(),
    }
}

/// Runs one cron trigger until told to stop.
pub(crate) async fn run(
    ctx: Ctx,
    target: Target,
    spec: CronSpec,
    live: std::sync::Arc<Live>,
    mut stop: Stop,
) {
    let schedule = match spec.parsed() {
        Ok(s) => s,
        Err(e) => {
            live.set_state("failed");
            ctx.failed(&target, &format!("schedule {:?}: {e}", spec.schedule))
                .await;
            return;
        }
    };
    // The last tick handled; a trigger seen for the first time starts now, never in the past.
    let last = loop {
        let t = target.clone();
        match ctx
            .blocking(move |s| s.cron_last_tick(&t.app, &t.trigger))
            .await
        {
            Some(Ok(Some(last))) => break last,
            Some(Ok(None)) => {
                let now = SystemTime::now();
                let t = target.clone();
                if let Some(Err(e)) = ctx
                    .blocking(move |s| s.cron_tick_done(&t.app, &t.trigger, now, 0))
                    .await
                {
                    tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "recording a new cron trigger's start failed");
                }
                break now;
            }
            Some(Err(e)) => {
                live.set_state("failed");
                ctx.failed(&target, &format!("reading the last cron tick: {e}"))
                    .await;
            }
            None => live.set_state("failed"),
        }
        if stop.sleep(Duration::from_secs(5)).await {
            return;
        }
    };
    live.set_state("running");
    let mut last = last;
    let mut fire_latest = false;
    loop {
        let plan = plan_ticks(&schedule, last, SystemTime::now(), spec.missed, fire_latest);
        if let Some((_, n)) = plan.skip
            && n > 0
        {
            tracing::info!(app = %target.app, trigger = %target.trigger, skipped = n, "missed cron ticks are skipped and counted (missed = \"skip\")");
        }
        if !fire_latest && plan.fire.len() > 1 {
            tracing::info!(app = %target.app, trigger = %target.trigger, ticks = plan.fire.len(), "firing cron ticks missed while the server was down (missed = \"catch_up\")");
        }
        fire_latest = true;
        if let Some((tick, n)) = plan.skip {
            done(&ctx, &target, tick, n).await;
            last = last.max(tick);
        }
        for tick in plan.fire {
            if stop.is_set() {
                return;
            }
            fire(&ctx, &target, &spec, tick, &mut stop).await;
            if stop.is_set() {
                return;
            }
            last = last.max(tick);
        }
        let Some(next) = schedule.next_after(last) else {
            live.set_next_fire(None);
            live.set_state("failed");
            ctx.failed(&target, "the schedule has no further tick")
                .await;
            stop.wait().await;
            return;
        };
        live.set_next_fire(Some(next));
        let wait = next
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_SLEEP);
        if !wait.is_zero() && stop.sleep(wait).await {
            return;
        }
    }
}

/// Records `tick` as handled, with `skipped` ticks passed over before it.
async fn done(ctx: &Ctx, target: &Target, tick: SystemTime, skipped: u64) {
    let t = target.clone();
    if let Some(Err(e)) = ctx
        .blocking(move |s| s.cron_tick_done(&t.app, &t.trigger, tick, skipped))
        .await
    {
        tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "recording a cron tick failed");
    }
}

/// Fires one tick: submits it (a few tries), then records it as handled. A tick that cannot
/// be stored is counted as an error and passed over.
async fn fire(ctx: &Ctx, target: &Target, spec: &CronSpec, tick: SystemTime, stop: &mut Stop) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=SUBMIT_TRIES {
        match ctx.deliver(target, event::cron(target, spec, tick)).await {
            Ok(_) => {
                done(ctx, target, tick, 0).await;
                return;
            }
            Err(e) if attempt == SUBMIT_TRIES => {
                ctx.failed(
                    target,
                    &format!(
                        "tick {} was not stored after {SUBMIT_TRIES} tries and is skipped: {e}",
                        nubo_core::rfc3339(tick)
                    ),
                )
                .await;
                done(ctx, target, tick, 1).await;
                return;
            }
            Err(e) => {
                tracing::debug!(app = %target.app, trigger = %target.trigger, error = %e, attempt, "cron tick not stored yet; trying again");
                if stop.sleep(delay).await {
                    return;
                }
                delay *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn every_minute() -> Schedule {
        Schedule::parse("@every 60s", "UTC").unwrap()
    }

    #[test]
    fn nothing_is_due_before_the_next_tick() {
        let p = plan_ticks(&every_minute(), at(60), at(119), Missed::Skip, true);
        assert_eq!(
            p,
            TickPlan {
                skip: None,
                fire: vec![]
            }
        );
    }

    #[test]
    fn at_start_skip_fires_none_and_counts_the_missed_ticks() {
        // Ticks at 120, 180, 240, 300 fell in (60, 330].
        let p = plan_ticks(&every_minute(), at(60), at(330), Missed::Skip, false);
        assert_eq!(p.fire, Vec::<SystemTime>::new());
        assert_eq!(p.skip, Some((at(300), 4)));
    }

    #[test]
    fn at_start_catch_up_fires_each_missed_tick_oldest_first() {
        let p = plan_ticks(&every_minute(), at(60), at(330), Missed::CatchUp, false);
        assert_eq!(p.fire, vec![at(120), at(180), at(240), at(300)]);
        assert_eq!(p.skip, None);
    }

    #[test]
    fn catch_up_keeps_the_newest_ticks_and_counts_older_ones_skipped() {
        let n = MAX_CATCH_UP as u64 + 5;
        let p = plan_ticks(&every_minute(), at(0), at(n * 60), Missed::CatchUp, false);
        assert_eq!(p.fire.len(), MAX_CATCH_UP);
        assert_eq!(p.fire.first(), Some(&at(6 * 60)));
        assert_eq!(p.fire.last(), Some(&at(n * 60)));
        assert_eq!(p.skip, Some((at(5 * 60), 5)));
    }

    #[test]
    fn while_running_the_latest_tick_fires_and_older_ones_follow_missed() {
        let p = plan_ticks(&every_minute(), at(60), at(121), Missed::Skip, true);
        assert_eq!(
            p,
            TickPlan {
                skip: None,
                fire: vec![at(120)]
            }
        );
        // The machine slept through three ticks.
        let p = plan_ticks(&every_minute(), at(60), at(250), Missed::Skip, true);
        assert_eq!(p.fire, vec![at(240)]);
        assert_eq!(p.skip, Some((at(180), 2)));
        let p = plan_ticks(&every_minute(), at(60), at(250), Missed::CatchUp, true);
        assert_eq!(p.fire, vec![at(120), at(180), at(240)]);
    }

    #[test]
    fn a_handled_tick_is_never_planned_again() {
        // The last handled tick is exactly a tick: it is not in (last, now].
        let p = plan_ticks(&every_minute(), at(120), at(120), Missed::CatchUp, true);
        assert!(p.fire.is_empty());
        let p = plan_ticks(&every_minute(), at(120), at(179), Missed::CatchUp, false);
        assert!(p.fire.is_empty() && p.skip.is_none());
    }

    #[test]
    fn a_very_long_downtime_is_bounded() {
        let every_second = Schedule::parse("@every 1s", "UTC").unwrap();
        let year = 365 * 24 * 3600;
        let p = plan_ticks(&every_second, at(0), at(year), Missed::Skip, false);
        assert!(p.fire.is_empty());
        let (latest, n) = p.skip.unwrap();
        assert_eq!(latest, at(year));
        assert!(n >= MAX_TICKS_WALKED, "{n}");
    }

    #[test]
    fn cron_expressions_plan_in_their_zone() {
        let hourly = Schedule::parse("0 * * * *", "UTC").unwrap();
        let p = plan_ticks(&hourly, at(0), at(3 * 3600 + 5), Missed::CatchUp, false);
        assert_eq!(p.fire, vec![at(3600), at(7200), at(10800)]);
    }
}
