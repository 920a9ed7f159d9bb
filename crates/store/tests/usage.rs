//! Metering as its callers see it: per-invocation usage on the records, aggregates across
//! batches and writer runs, bucket boundaries at each resolution, billed rounding and
//! GB-seconds, gap markers after an unclean stop and for dropped records, stable export ids,
//! the tenant key, and retention of the aggregates by age and by row count.

use nubo_core::api::v1::{UsageQuery, UsageReport};
use nubo_core::{InvocationId, Outcome};
use nubo_store::{Retention, Store, UsageSettings};
use nubo_telemetry::{FinishedInvocation, InvocationMeta, RecordSinkStats};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;

fn finished(function: &str, revision: u64, started_at: SystemTime) -> FinishedInvocation {
    FinishedInvocation {
        meta: InvocationMeta {
            id: InvocationId::new(),
            app: "shop".into(),
            function: function.into(),
            revision,
            trigger: "http",
        },
        started_at,
        duration: Duration::from_micros(15_000),
        outcome: Outcome::Ok,
        status: Some(200),
        cold: false,
        init_ms: None,
        bytes_in: 10,
        bytes_out: 100,
        outbound_requests: 0,
        outbound_bytes_out: 0,
        outbound_bytes_in: 0,
        memory_limit_bytes: Some(128 * MIB),
        peak_memory_bytes: Some(2 * MIB),
        cpu_time: Some(Duration::from_micros(700)),
        dispatched_after: None,
        running_after: None,
        logs: Vec::new(),
        logs_truncated: false,
    }
}

/// Writes `records` through one writer run (a batch or more) and stops it cleanly.
fn write(store: &Store, records: Vec<FinishedInvocation>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(records.len().max(1));
    let writer = store.spawn_record_writer(rx).unwrap();
    for r in records {
        tx.send(r).unwrap();
    }
    drop(tx);
    writer.shutdown();
}

fn query(since: &str, until: Option<&str>, by: &str) -> UsageQuery {
    UsageQuery {
        since: Some(since.into()),
        until: until.map(str::to_string),
        by: Some(by.into()),
        ..UsageQuery::default()
    }
}

fn report(store: &Store, q: &UsageQuery, now: SystemTime) -> UsageReport {
    store.usage_report_at(q, now).unwrap()
}

/// The start of the UTC day holding `t`.
fn day_start(t: SystemTime) -> SystemTime {
    let s = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(s - s % 86_400)
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

#[test]
fn records_carry_billed_time_and_gb_seconds_at_the_configured_granularity() {
    let (_dir, store) = open();
    store.configure_usage(UsageSettings {
        granularity: Duration::from_millis(100),
        ..UsageSettings::default()
    });
    let now = SystemTime::now();
    let mut unmeasured = finished("api", 1, now);
    unmeasured.memory_limit_bytes = None;
    unmeasured.peak_memory_bytes = None;
    unmeasured.cpu_time = None;
    let mut throttled = finished("api", 1, now);
    throttled.outcome = Outcome::Throttled;
    throttled.status = Some(429);
    let measured = finished("api", 1, now);
    let ids: Vec<String> = [&measured, &unmeasured, &throttled]
        .iter()
        .map(|f| f.meta.id.to_string())
        .collect();
    write(&store, vec![measured, unmeasured, throttled]);

    let usage = |id: &str| store.invocation(id).unwrap().unwrap().0.usage.unwrap();
    let m = usage(&ids[0]);
    // 15 ms billed as one 100 ms unit; 0.1 s × 0.125 GB.
    assert_eq!(m.billed_ms, 100);
    assert_eq!(m.gb_seconds, Some(0.0125));
    assert_eq!(m.memory_limit_bytes, Some(128 * MIB));
    assert_eq!(m.peak_memory_bytes, Some(2 * MIB));
    assert_eq!(m.cpu_time_us, Some(700));
    let u = usage(&ids[1]);
    assert_eq!(u.billed_ms, 100);
    assert_eq!(u.gb_seconds, None, "no memory figure is not zero memory");
    assert_eq!(u.cpu_time_us, None);
    assert_eq!(
        usage(&ids[2]).billed_ms,
        0,
        "a throttled invocation never ran"
    );

    let r = report(&store, &query("1h", None, "function"), now);
    assert_eq!(r.billing_granularity_ms, 100);
    assert_eq!(r.total.requests, 2);
    assert_eq!(r.total.throttles, 1);
    assert_eq!(r.total.billed_ms, 200);
    assert_eq!(r.total.gb_seconds, 0.0125);
    assert_eq!(r.total.unmetered_requests, 1);
    assert_eq!(r.total.bytes_out, 200);
    let prices = r.prices;
    let want = 2.0 / 1e6 * prices.per_million_requests
        + 0.0125 * prices.per_gb_second
        + 200.0 / (1u64 << 30) as f64 * prices.per_gb_out;
    assert!((r.total.cost.total - want).abs() < 1e-15, "{:?}", r.total);
    assert!((r.total.cost_per_1k.unwrap() - want / 2.0 * 1_000.0).abs() < 1e-12);
}

#[test]
fn aggregates_add_up_across_batches_runs_and_bucket_boundaries() {
    let (_dir, store) = open();
    let now = SystemTime::now();
    // Either side of the last midnight (UTC): different minutes, hours and days.
    let midnight = day_start(now);
    let before = midnight - Duration::from_secs(1);
    let mut first = Vec::new();
    for i in 0..5 {
        let mut f = finished("api", 1, before);
        f.cold = i == 0;
        f.peak_memory_bytes = Some((i + 1) * MIB);
        first.push(f);
    }
    let mut failing = finished("api", 2, midnight);
    failing.outcome = Outcome::Trap;
    failing.status = Some(500);
    first.push(failing);
    write(&store, first);
    // A second writer run adds to the same rows.
    let mut second = Vec::new();
    for _ in 0..3 {
        second.push(finished("api", 2, midnight));
    }
    second.push(finished("web", 1, midnight));
    let mut five_hundred = finished("web", 1, midnight);
    five_hundred.status = Some(503);
    second.push(five_hundred);
    write(&store, second);

    let since = nubo_store::format_rfc3339(before - Duration::from_secs(60));
    let check = |now: SystemTime, resolution: &str| {
        let r = report(&store, &query(&since, None, "day"), now);
        assert_eq!(r.resolution, resolution);
        assert_eq!(r.rows.len(), 2, "two days at {resolution}: {:?}", r.rows);
        assert_eq!(
            r.rows[0].bucket.as_deref(),
            Some(nubo_store::format_rfc3339(midnight - Duration::from_secs(86_400)).as_str())
        );
        assert_eq!(r.rows[0].requests, 5);
        assert_eq!(r.rows[0].cold_starts, 1);
        assert_eq!(r.rows[0].peak_memory_bytes, Some(5 * MIB));
        assert_eq!(r.rows[1].requests, 6);
        assert_eq!(r.rows[1].errors, 2, "a trap and a 503");
        assert_eq!(r.total.requests, 11);
        assert_eq!(r.total.errors, 2);
        assert_eq!(r.total.billed_ms, 11 * 15);
        r
    };
    // The same data read from minute rows now, hour rows in 30 days, day rows in a year.
    check(now, "minute");
    check(now + Duration::from_secs(30 * 86_400), "hour");
    check(now + Duration::from_secs(365 * 86_400), "day");

    let by_hour = report(&store, &query(&since, None, "hour"), now);
    assert_eq!(by_hour.rows.len(), 2, "23:00 and 00:00");

    let by_revision = report(&store, &query(&since, None, "revision"), now);
    let keys: Vec<(String, u64, u64)> = by_revision
        .rows
        .iter()
        .map(|r| (r.function.clone().unwrap(), r.revision.unwrap(), r.requests))
        .collect();
    assert_eq!(
        keys,
        [
            ("api".to_string(), 1, 5),
            ("api".to_string(), 2, 4),
            ("web".to_string(), 1, 2)
        ]
    );
    assert!(by_revision.rows.iter().all(|r| r.cost_per_1k.is_some()));

    let only_web = UsageQuery {
        function: Some("web".into()),
        ..query(&since, None, "function")
    };
    assert_eq!(report(&store, &only_web, now).total.requests, 2);
    let other_app = UsageQuery {
        app: Some("other".into()),
        ..query(&since, None, "function")
    };
    assert_eq!(report(&store, &other_app, now).total.requests, 0);
    // `until` before the midnight leaves the second day out.
    let until = nubo_store::format_rfc3339(before);
    let r = report(&store, &query(&since, Some(&until), "function"), now);
    assert_eq!(r.total.requests, 5);
    assert!(r.gaps.is_empty(), "clean stops leave no gap: {:?}", r.gaps);
}

#[test]
fn an_unclean_stop_and_dropped_records_leave_gap_markers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = SystemTime::now();
    write(&store, vec![finished("api", 1, now)]);
    // The run that wrote it is left as a `kill -9` leaves it: never marked clean.
    let conn = rusqlite::Connection::open(dir.path().join("nubo.db")).unwrap();
    conn.execute("UPDATE usage_runs SET clean = 0", []).unwrap();
    drop(conn);

    let stats = Arc::new(RecordSinkStats::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let writer = store
        .spawn_metered_record_writer(rx, Retention::default(), Some(stats.clone()))
        .unwrap();
    stats.dropped.fetch_add(3, Ordering::Relaxed);
    tx.send(finished("api", 1, SystemTime::now())).unwrap();
    drop(tx);
    writer.shutdown();

    let r = report(&store, &query("1h", None, "function"), SystemTime::now());
    assert_eq!(r.total.requests, 2);
    let kinds: Vec<&str> = r.gaps.iter().map(|g| g.kind.as_str()).collect();
    assert_eq!(kinds.len(), 2, "{:?}", r.gaps);
    let unclean = r.gaps.iter().find(|g| g.kind == "unclean_stop").unwrap();
    assert!(
        unclean
            .message
            .contains("may be incomplete: the server stopped without shutting down"),
        "{}",
        unclean.message
    );
    assert!(unclean.from <= unclean.until);
    let dropped = r.gaps.iter().find(|g| g.kind == "dropped").unwrap();
    assert_eq!(dropped.records, Some(3));
    assert!(
        dropped
            .message
            .starts_with("3 invocation records were dropped")
    );

    // That run stopped cleanly: the next start adds no gap.
    write(&store, Vec::new());
    let again = report(&store, &query("1h", None, "function"), SystemTime::now());
    assert_eq!(again.gaps.len(), 2, "{:?}", again.gaps);
}

#[test]
fn export_pages_give_each_record_once_with_a_stable_id() {
    let (_dir, store) = open();
    let now = SystemTime::now();
    let mut records = Vec::new();
    for i in 0..7 {
        records.push(finished(if i % 2 == 0 { "api" } else { "web" }, 1, now));
    }
    let want: Vec<String> = records.iter().map(|r| r.meta.id.to_string()).collect();
    write(&store, records);

    let all = |q: &UsageQuery| {
        let mut ids = Vec::new();
        let mut after = 0;
        // Bounded: 7 records in pages of 2 end within 5 pages.
        for _ in 0..10 {
            let (page, next) = store
                .usage_export_page(q, SystemTime::now(), after, 2)
                .unwrap();
            assert!(page.len() <= 2);
            for r in &page {
                assert_eq!(r.usage.as_ref().unwrap().billed_ms, 15);
                ids.push(r.id.clone());
            }
            match next {
                Some(n) => after = n,
                None => return ids,
            }
        }
        panic!("the export did not end");
    };
    let q = UsageQuery {
        since: Some("1h".into()),
        ..UsageQuery::default()
    };
    let first = all(&q);
    assert_eq!(first, want, "oldest first, each once");
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 7);
    assert_eq!(all(&q), first, "a second export gives the same ids");
    let web = UsageQuery {
        function: Some("web".into()),
        ..q.clone()
    };
    assert_eq!(all(&web).len(), 3);
    let later = UsageQuery {
        since: Some(nubo_store::format_rfc3339(now + Duration::from_secs(1))),
        ..UsageQuery::default()
    };
    assert!(all(&later).is_empty());
    let bad = UsageQuery {
        since: Some("yesterday".into()),
        ..UsageQuery::default()
    };
    let e = store
        .usage_export_page(&bad, SystemTime::now(), 0, 10)
        .unwrap_err();
    assert_eq!(e.code(), nubo_core::ErrorCode::BadRequest);
    assert!(e.to_string().contains("since"), "{e}");
}

#[test]
fn aggregates_are_pruned_by_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let day = Duration::from_secs(86_400);
    store.configure_usage(UsageSettings {
        keep_minutes: day,
        keep_hours: 2 * day,
        keep_days: Some(5 * day),
        ..UsageSettings::default()
    });
    let now = SystemTime::now();
    let at = |ago: Duration| finished("api", 1, now - ago);
    write(
        &store,
        vec![
            at(10 * day),
            at(2 * day + day / 2),
            at(day + day / 2 - Duration::from_secs(3_600)),
            at(Duration::ZERO),
        ],
    );
    let conn = rusqlite::Connection::open(dir.path().join("nubo.db")).unwrap();
    let count = |period: &str| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM usage WHERE period = ?1",
            [period],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count("minute"), 1, "minute rows are kept for a day");
    assert_eq!(count("hour"), 2, "hour rows for two days");
    assert!(
        count("day") <= 3 && count("day") >= 2,
        "day rows for five days"
    );
    // The report over 11 days reads day rows: the record 10 days old is gone.
    let r = report(&store, &query("11d", None, "function"), now);
    assert_eq!(r.resolution, "day");
    assert_eq!(r.total.requests, 3);
    // Per-invocation usage lives with the records, under their own retention.
    let (_, next) = store
        .usage_export_page(&UsageQuery::default(), SystemTime::now(), 0, 10)
        .unwrap();
    assert_eq!(next, None);
    let hourly = report(&store, &query("36h", None, "function"), now);
    assert_eq!(hourly.resolution, "hour");
    assert_eq!(hourly.total.requests, 2);
    // The day rows older than five days are gone, and the report says so.
    assert_eq!(r.gaps.len(), 1, "{:?}", r.gaps);
    assert_eq!(r.gaps[0].kind, "pruned");
    assert!(
        r.gaps[0].message.contains("--keep-usage-days"),
        "{}",
        r.gaps[0].message
    );
    assert!(r.pruned_before.is_some());
    let e = store
        .usage_report_at(&query("11d", None, "hour"), now)
        .unwrap_err();
    assert!(e.to_string().contains("--keep-usage-hours"), "{e}");
}

/// The start of the UTC hour holding `t`.
fn hour_start(t: SystemTime) -> SystemTime {
    let s = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(s - s % 3_600)
}

#[test]
fn usage_is_keyed_by_tenant_and_every_app_is_in_default() {
    let (_dir, store) = open();
    // Half a second into a minute: a report up to then counts the minute just begun.
    let now = hour_start(SystemTime::now()) - Duration::from_millis(3_600_000 - 60_500);
    write(
        &store,
        vec![
            finished("api", 1, now),
            finished("api", 1, now),
            finished("web", 1, now),
        ],
    );
    let r = report(&store, &query("1h", None, "tenant"), now);
    assert_eq!(r.by, "tenant");
    assert_eq!(r.rows.len(), 1, "{:?}", r.rows);
    assert_eq!(r.rows[0].tenant.as_deref(), Some("default"));
    assert_eq!(r.rows[0].app, None);
    assert_eq!(r.rows[0].requests, 3);
    let by_function = report(&store, &query("1h", None, "function"), now);
    assert!(
        by_function
            .rows
            .iter()
            .all(|row| row.tenant.as_deref() == Some("default")),
        "{:?}",
        by_function.rows
    );
    let tenant = |t: &str| UsageQuery {
        tenant: Some(t.into()),
        ..query("1h", None, "function")
    };
    assert_eq!(report(&store, &tenant("default"), now).total.requests, 3);
    assert_eq!(report(&store, &tenant("other"), now).total.requests, 0);

    let export = |q: &UsageQuery| {
        let q = UsageQuery {
            since: Some("2h".into()),
            ..q.clone()
        };
        let (page, next) = store
            .usage_export_page(&q, SystemTime::now(), 0, 10)
            .unwrap();
        assert_eq!(next, None);
        page
    };
    let all = export(&tenant("default"));
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|r| r.tenant == "default"), "{all:?}");
    assert!(export(&tenant("other")).is_empty());
}

#[test]
fn the_row_bound_prunes_the_oldest_buckets_first_and_reports_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = SystemTime::now();
    // Ten minutes within one hour: ten per-minute buckets, the last with two rows.
    let t0 = hour_start(now) - Duration::from_secs(2 * 3_600);
    let minute = |i: u64| t0 + Duration::from_secs(60 * i);
    let mut records: Vec<_> = (0..10).map(|i| finished("api", 1, minute(i))).collect();
    records.push(finished("web", 1, minute(9)));
    store.configure_usage(UsageSettings {
        keep_rows: 4,
        ..UsageSettings::default()
    });
    // The writer prunes when it stops.
    write(&store, records);

    let conn = rusqlite::Connection::open(dir.path().join("nubo.db")).unwrap();
    let starts = |period: &str| -> Vec<i64> {
        conn.prepare("SELECT start_s FROM usage WHERE period = ?1 ORDER BY start_s")
            .unwrap()
            .query_map([period], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    // The newest four rows are kept; the oldest minutes went first.
    assert_eq!(
        starts("minute"),
        [
            secs(minute(7)),
            secs(minute(8)),
            secs(minute(9)),
            secs(minute(9))
        ]
    );
    assert_eq!(starts("hour").len(), 2, "within the bound, untouched");
    assert_eq!(starts("day").len(), 2);
    let kept: (i64, Option<i64>) = conn
        .query_row(
            "SELECT rows, size_pruned_before_s FROM usage_periods WHERE period = 'minute'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kept, (4, Some(secs(minute(7)))));

    // A report reaching back past the pruned minutes reads the hour rows, which hold it all.
    let since = nubo_store::format_rfc3339(minute(0));
    let r = report(&store, &query(&since, None, "function"), now);
    assert_eq!(r.resolution, "hour");
    assert_eq!(r.total.requests, 11);
    assert!(r.gaps.is_empty() && r.pruned_before.is_none(), "{r:?}");
    let since = nubo_store::format_rfc3339(minute(7));
    let r = report(&store, &query(&since, None, "function"), now);
    assert_eq!(r.resolution, "minute");
    assert_eq!(r.total.requests, 4);

    // A bound of one row: each table's newest bucket holds two, so nothing is left, and a
    // report says its usage is gone rather than showing zero as if nothing ran.
    store.configure_usage(UsageSettings {
        keep_rows: 1,
        ..UsageSettings::default()
    });
    write(&store, Vec::new());
    for period in ["minute", "hour", "day"] {
        assert!(starts(period).is_empty(), "{period}: {:?}", starts(period));
    }
    let since = nubo_store::format_rfc3339(minute(0));
    let r = report(&store, &query(&since, None, "function"), now);
    assert_eq!(r.resolution, "day");
    assert_eq!(r.total.requests, 0);
    let next_day = nubo_store::format_rfc3339(day_start(minute(0)) + Duration::from_secs(86_400));
    assert_eq!(r.pruned_before.as_deref(), Some(next_day.as_str()));
    assert_eq!(r.gaps.len(), 1, "{:?}", r.gaps);
    assert_eq!(r.gaps[0].kind, "pruned");
    assert!(
        r.gaps[0].message.contains("is no longer kept")
            && r.gaps[0].message.contains("--keep-usage-rows"),
        "{}",
        r.gaps[0].message
    );
    let e = store
        .usage_report_at(&query(&since, None, "hour"), now)
        .unwrap_err();
    assert!(e.to_string().contains("--keep-usage-rows"), "{e}");

    // New usage is counted again from zero rows.
    store.configure_usage(UsageSettings::default());
    write(&store, vec![finished("api", 1, now)]);
    assert_eq!(starts("minute").len(), 1);
    let rows: i64 = conn
        .query_row(
            "SELECT rows FROM usage_periods WHERE period = 'minute'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
}
