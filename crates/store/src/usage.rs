//! Metering: what each invocation is billed for, the per-minute, per-hour and per-day
//! aggregates the record writer keeps in the same transaction as the records, the markers
//! that make lost usage visible (a run that never stopped cleanly, records dropped under
//! load), and the reports and exports read from them.
//!
//! Usage is keyed by tenant, app, function, revision and trigger kind. Every app belongs to
//! the tenant `default` until tenants land; [`tenant_of`] is the one place that says so.
//!
//! Cost is not stored: reports multiply the aggregates by the prices the server runs with at
//! report time, so a price change applies to past usage too.

use crate::error::db;
use crate::{Store, StoreError, time};
use nubo_core::api::v1::{
    DEFAULT_TENANT, InvocationUsage, UsageCost, UsageExportRecord, UsageGap, UsagePrices,
    UsageQuery, UsageReport, UsageRow,
};
use nubo_core::{ErrorCode, Outcome};
use nubo_telemetry::{FinishedInvocation, RecordSinkStats};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default price of one million requests (AWS Lambda x86, public price).
pub const DEFAULT_PRICE_PER_MILLION_REQUESTS: f64 = 0.20;
/// Default price of one GB-second (AWS Lambda x86, first tier, public price).
pub const DEFAULT_PRICE_PER_GB_SECOND: f64 = 0.000_016_666_7;
/// Default price of one GB sent out (AWS data transfer out, first tier, public price).
pub const DEFAULT_PRICE_PER_GB_OUT: f64 = 0.09;
/// Default billing granularity: every millisecond counts.
pub const DEFAULT_BILLING_GRANULARITY: Duration = Duration::from_millis(1);
/// Finest billing granularity: records keep wall time in microseconds, bills in milliseconds.
pub const MIN_BILLING_GRANULARITY: Duration = Duration::from_millis(1);
/// Coarsest billing granularity. Bounds how far a bill can stray from the time used.
pub const MAX_BILLING_GRANULARITY: Duration = Duration::from_secs(60);
/// How long per-minute usage is kept by default.
pub const DEFAULT_KEEP_USAGE_MINUTES: Duration = Duration::from_secs(7 * 86_400);
/// How long per-hour usage is kept by default.
pub const DEFAULT_KEEP_USAGE_HOURS: Duration = Duration::from_secs(90 * 86_400);
/// Most aggregate rows kept per period by default (roughly 100 MB of rows each): bounds the
/// disk a server with many functions and revisions fills before the age limits apply.
pub const DEFAULT_KEEP_USAGE_ROWS: u64 = 1_000_000;
/// Largest row bound accepted. Past it the bound no longer bounds anything a disk holds (a
/// billion rows per period is hundreds of GB).
pub const MAX_KEEP_USAGE_ROWS: u64 = 1_000_000_000;
/// Rows a usage report lists at most (the total always covers every row). Bounds the memory
/// and time of one report.
pub const MAX_REPORT_ROWS: usize = 10_000;
/// Records one export page reads at most. Bounds the memory an export holds at once.
pub const MAX_EXPORT_PAGE: usize = 1_000;
/// How often an idle writer records that it is alive, so the gap left by a crash starts no
/// more than this before the crash.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often old usage rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Buckets deleted per statement when pruning, so one prune never holds the write lock long.
const PRUNE_CHUNK_BUCKETS: i64 = 500;
/// Finished writer runs remembered (their markers are only needed until the next start).
const KEEP_RUNS: i64 = 100;
/// Default span of a report without `since`.
const DEFAULT_REPORT_SPAN: Duration = Duration::from_secs(7 * 86_400);

/// KiB·ms in one GB-second (1 GB = 1024 MiB, as Lambda bills).
const KIB_MS_PER_GB_SECOND: f64 = 1024.0 * 1024.0 * 1000.0;
/// Bytes in the GB that data transfer is priced by.
const BYTES_PER_GB: f64 = (1u64 << 30) as f64;

/// How the server meters: billing granularity, prices, and how long aggregates are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageSettings {
    /// Wall time is rounded up to a multiple of this (whole milliseconds, 1 ms to 1 min).
    pub granularity: Duration,
    /// The price table.
    pub prices: UsagePrices,
    /// Per-minute rows older than this are pruned.
    pub keep_minutes: Duration,
    /// Per-hour rows older than this are pruned.
    pub keep_hours: Duration,
    /// Per-day rows (and gap markers) older than this are pruned; `None` keeps them.
    pub keep_days: Option<Duration>,
    /// Most rows kept per period; past it the oldest buckets are pruned first.
    pub keep_rows: u64,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            granularity: DEFAULT_BILLING_GRANULARITY,
            prices: UsagePrices {
                per_million_requests: DEFAULT_PRICE_PER_MILLION_REQUESTS,
                per_gb_second: DEFAULT_PRICE_PER_GB_SECOND,
                per_gb_out: DEFAULT_PRICE_PER_GB_OUT,
            },
            keep_minutes: DEFAULT_KEEP_USAGE_MINUTES,
            keep_hours: DEFAULT_KEEP_USAGE_HOURS,
            keep_days: None,
            keep_rows: DEFAULT_KEEP_USAGE_ROWS,
        }
    }
}

impl UsageSettings {
    /// Checks the settings, naming the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        check_granularity(self.granularity)?;
        for (flag, price) in [
            (
                "--price-per-million-requests",
                self.prices.per_million_requests,
            ),
            ("--price-per-gb-second", self.prices.per_gb_second),
            ("--price-per-gb-out", self.prices.per_gb_out),
        ] {
            check_price(price).map_err(|e| format!("{flag}: {e}"))?;
        }
        if self.keep_hours < self.keep_minutes {
            return Err(format!(
                "--keep-usage-hours ({}) is shorter than --keep-usage-minutes ({}); keep hourly usage at least as long as per-minute usage",
                span(self.keep_hours),
                span(self.keep_minutes)
            ));
        }
        if let Some(days) = self.keep_days
            && days < self.keep_hours
        {
            return Err(format!(
                "--keep-usage-days ({}) is shorter than --keep-usage-hours ({}); keep daily usage at least as long as hourly usage",
                span(days),
                span(self.keep_hours)
            ));
        }
        check_keep_rows(self.keep_rows).map_err(|e| format!("--keep-usage-rows: {e}"))?;
        Ok(())
    }
}

/// Checks a bound on aggregate rows: from 1 to [`MAX_KEEP_USAGE_ROWS`].
pub fn check_keep_rows(rows: u64) -> Result<(), String> {
    if (1..=MAX_KEEP_USAGE_ROWS).contains(&rows) {
        Ok(())
    } else {
        Err(format!(
            "{rows} is not a number of rows to keep: use a whole number from 1 to {MAX_KEEP_USAGE_ROWS}, like {DEFAULT_KEEP_USAGE_ROWS}"
        ))
    }
}

/// Parses the bound on aggregate rows given on the command line.
pub fn parse_keep_rows(s: &str) -> Result<u64, String> {
    let rows: u64 = s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not a number of rows to keep: use a whole number from 1 to {MAX_KEEP_USAGE_ROWS}, like {DEFAULT_KEEP_USAGE_ROWS}"
        )
    })?;
    check_keep_rows(rows)?;
    Ok(rows)
}

/// The tenant `app` belongs to, as usage is keyed. Every app belongs to tenant
/// [`DEFAULT_TENANT`] until tenants land; this is the one place that decides it, where the
/// lookup of an app's tenant will go.
pub fn tenant_of(_app: &str) -> &'static str {
    DEFAULT_TENANT
}

/// Checks a billing granularity: whole milliseconds from 1 ms to 1 min.
pub fn check_granularity(g: Duration) -> Result<(), String> {
    if g < MIN_BILLING_GRANULARITY
        || g > MAX_BILLING_GRANULARITY
        || !g.subsec_nanos().is_multiple_of(1_000_000)
    {
        return Err(format!(
            "billing granularity {g:?} is out of range: use whole milliseconds from 1ms to 1m, like \"1ms\" or \"100ms\""
        ));
    }
    Ok(())
}

/// Checks a price: a finite number, zero or more.
pub fn check_price(price: f64) -> Result<(), String> {
    if price.is_finite() && price >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{price} is not a price: use a number of zero or more, like 0.20"
        ))
    }
}

/// Parses a price given on the command line.
pub fn parse_price(s: &str) -> Result<f64, String> {
    let price: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a price: use a number of zero or more, like 0.20"))?;
    check_price(price)?;
    Ok(price)
}

/// A duration as whole days, hours, minutes or seconds, for messages.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Billed milliseconds: `duration` rounded up to a multiple of `granularity`, at least one
/// unit (an invocation that ran is never free).
pub fn billed_ms(duration: Duration, granularity: Duration) -> u64 {
    let unit_us = u64::try_from(granularity.as_micros())
        .unwrap_or(u64::MAX)
        .max(1_000);
    let used_us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    let units = used_us.div_ceil(unit_us).max(1);
    units.saturating_mul(unit_us / 1_000)
}

/// Billed milliseconds × the memory limit in KiB (rounded up): the exact integer behind
/// GB-seconds.
pub fn kib_ms(billed_ms: u64, memory_limit_bytes: u64) -> u64 {
    billed_ms.saturating_mul(memory_limit_bytes.div_ceil(1024))
}

/// GB-seconds of `kib_ms` (1 GB = 1024 MiB).
pub fn gb_seconds(kib_ms: u64) -> f64 {
    kib_ms as f64 / KIB_MS_PER_GB_SECOND
}

/// The cost of usage figures under `prices`.
pub fn cost(prices: &UsagePrices, requests: u64, gb_seconds: f64, bytes_out: u64) -> UsageCost {
    let requests = requests as f64 / 1e6 * prices.per_million_requests;
    let compute = gb_seconds * prices.per_gb_second;
    let transfer = bytes_out as f64 / BYTES_PER_GB * prices.per_gb_out;
    UsageCost {
        requests,
        compute,
        transfer,
        total: requests + compute + transfer,
    }
}

/// Whether a finished invocation ran (a throttled one never did and is not billed).
fn ran(fin: &FinishedInvocation) -> bool {
    fin.outcome != Outcome::Throttled
}

/// Whether a finished invocation that ran failed: an outcome other than `ok`, or a 5xx.
fn failed(fin: &FinishedInvocation) -> bool {
    fin.outcome != Outcome::Ok || fin.status.is_some_and(|s| s >= 500)
}

/// What one record is billed for, as stored with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Billed {
    pub billed_ms: u64,
    pub kib_ms: Option<u64>,
    pub cpu_us: Option<u64>,
}

pub(crate) fn billed(fin: &FinishedInvocation, granularity: Duration) -> Billed {
    let billed_ms = if ran(fin) {
        billed_ms(fin.duration, granularity)
    } else {
        0
    };
    Billed {
        billed_ms,
        kib_ms: fin.memory_limit_bytes.map(|m| kib_ms(billed_ms, m)),
        cpu_us: fin
            .cpu_time
            .map(|c| u64::try_from(c.as_micros()).unwrap_or(u64::MAX)),
    }
}

/// The wire form of a record's usage, from its stored columns.
pub(crate) fn invocation_usage(
    billed_ms: Option<u64>,
    memory_limit_bytes: Option<u64>,
    peak_memory_bytes: Option<u64>,
    kib_ms: Option<u64>,
    cpu_time_us: Option<u64>,
) -> Option<InvocationUsage> {
    Some(InvocationUsage {
        billed_ms: billed_ms?,
        memory_limit_bytes,
        peak_memory_bytes,
        gb_seconds: kib_ms.map(gb_seconds),
        cpu_time_us,
    })
}

/// The aggregation periods: name and length in seconds.
const PERIODS: [(&str, i64); 3] = [("minute", 60), ("hour", 3_600), ("day", 86_400)];

/// The key of one aggregate row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    period: &'static str,
    start_s: i64,
    tenant: &'static str,
    app: Arc<str>,
    function: Arc<str>,
    revision: u64,
    trigger: &'static str,
}

/// Sums of one aggregate row within a batch.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    requests: u64,
    errors: u64,
    throttles: u64,
    cold_starts: u64,
    duration_us: u64,
    billed_ms: u64,
    kib_ms: u64,
    unmetered: u64,
    cpu_us: u64,
    bytes_in: u64,
    bytes_out: u64,
    outbound_requests: u64,
    outbound_bytes_out: u64,
    peak_memory_bytes: Option<u64>,
}

/// Clamps an unsigned figure to SQLite's signed integers.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn now_us() -> i64 {
    time::to_micros(SystemTime::now())
}

/// The record writer's metering: run markers, dropped-record markers, aggregates and their
/// pruning. Lives on the writer thread and uses its connection.
pub(crate) struct Meter {
    settings: UsageSettings,
    run: i64,
    dropped: Option<Arc<RecordSinkStats>>,
    dropped_seen: u64,
    last_beat: Instant,
    last_prune: Option<Instant>,
}

impl Meter {
    /// Opens a run: every earlier run that never stopped cleanly leaves a gap marker from its
    /// last commit to now, then this run is recorded.
    pub(crate) fn start(
        conn: &mut Connection,
        settings: UsageSettings,
        dropped: Option<Arc<RecordSinkStats>>,
    ) -> rusqlite::Result<Meter> {
        let now = now_us();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR IGNORE INTO usage_gaps (kind, from_us, until_us)
             SELECT 'unclean_stop', last_commit_us, ?1 FROM usage_runs WHERE clean = 0",
            [now],
        )?;
        // 2: stopped without shutting down, its gap recorded.
        tx.execute("UPDATE usage_runs SET clean = 2 WHERE clean = 0", [])?;
        tx.execute(
            "INSERT INTO usage_runs (started_at_us, last_commit_us) VALUES (?1, ?1)",
            [now],
        )?;
        let run = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM usage_runs WHERE id <= ?1 - ?2 AND clean != 0",
            params![run, KEEP_RUNS],
        )?;
        tx.commit()?;
        let dropped_seen = dropped
            .as_ref()
            .map_or(0, |d| d.dropped.load(Ordering::Relaxed));
        Ok(Meter {
            settings,
            run,
            dropped,
            dropped_seen,
            last_beat: Instant::now(),
            last_prune: None,
        })
    }

    /// The settings the writer meters with.
    pub(crate) fn granularity(&self) -> Duration {
        self.settings.granularity
    }

    /// Adds a batch to the aggregates and moves the run's last commit, inside the batch's
    /// transaction: the aggregates and the records commit together.
    pub(crate) fn record_batch(
        &mut self,
        tx: &Transaction<'_>,
        batch: &[FinishedInvocation],
    ) -> rusqlite::Result<()> {
        let mut sums: HashMap<Key, Sums> = HashMap::new();
        for fin in batch {
            let started_s = time::to_micros(fin.started_at).div_euclid(1_000_000);
            let bill = billed(fin, self.settings.granularity);
            for (period, len) in PERIODS {
                let key = Key {
                    period,
                    start_s: started_s - started_s.rem_euclid(len),
                    tenant: tenant_of(&fin.meta.app),
                    app: fin.meta.app.clone(),
                    function: fin.meta.function.clone(),
                    revision: fin.meta.revision,
                    trigger: fin.meta.trigger,
                };
                let s = sums.entry(key).or_default();
                if !ran(fin) {
                    s.throttles += 1;
                    continue;
                }
                s.requests += 1;
                s.errors += u64::from(failed(fin));
                s.cold_starts += u64::from(fin.cold);
                s.duration_us = s
                    .duration_us
                    .saturating_add(u64::try_from(fin.duration.as_micros()).unwrap_or(u64::MAX));
                s.billed_ms = s.billed_ms.saturating_add(bill.billed_ms);
                match bill.kib_ms {
                    Some(k) => s.kib_ms = s.kib_ms.saturating_add(k),
                    None => s.unmetered += 1,
                }
                s.cpu_us = s.cpu_us.saturating_add(bill.cpu_us.unwrap_or(0));
                s.bytes_in = s.bytes_in.saturating_add(fin.bytes_in);
                s.bytes_out = s.bytes_out.saturating_add(fin.bytes_out);
                s.outbound_requests = s.outbound_requests.saturating_add(fin.outbound_requests);
                s.outbound_bytes_out = s.outbound_bytes_out.saturating_add(fin.outbound_bytes_out);
                s.peak_memory_bytes = s.peak_memory_bytes.max(fin.peak_memory_bytes);
            }
        }
        // Update first and insert when there was no row, so the rows each period gains are
        // known and its row count (the size bound's) moves in the same transaction.
        let mut update = tx.prepare_cached(
            "UPDATE usage SET
                 requests = requests + ?8,
                 errors = errors + ?9,
                 throttles = throttles + ?10,
                 cold_starts = cold_starts + ?11,
                 duration_us = duration_us + ?12,
                 billed_ms = billed_ms + ?13,
                 kib_ms = kib_ms + ?14,
                 unmetered = unmetered + ?15,
                 cpu_us = cpu_us + ?16,
                 bytes_in = bytes_in + ?17,
                 bytes_out = bytes_out + ?18,
                 outbound_requests = outbound_requests + ?19,
                 outbound_bytes_out = outbound_bytes_out + ?20,
                 peak_memory_bytes = max(coalesce(peak_memory_bytes, ?21),
                                         coalesce(?21, peak_memory_bytes))
             WHERE period = ?1 AND start_s = ?2 AND tenant = ?3 AND app = ?4 AND function = ?5
                 AND revision = ?6 AND trigger = ?7",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO usage (period, start_s, tenant, app, function, revision, trigger,
                 requests, errors, throttles, cold_starts, duration_us, billed_ms, kib_ms,
                 unmetered, cpu_us, bytes_in, bytes_out, outbound_requests, outbound_bytes_out,
                 peak_memory_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21)",
        )?;
        let mut added: HashMap<&'static str, i64> = HashMap::new();
        for (k, s) in &sums {
            let values = params![
                k.period,
                k.start_s,
                k.tenant,
                &*k.app,
                &*k.function,
                signed(k.revision),
                k.trigger,
                signed(s.requests),
                signed(s.errors),
                signed(s.throttles),
                signed(s.cold_starts),
                signed(s.duration_us),
                signed(s.billed_ms),
                signed(s.kib_ms),
                signed(s.unmetered),
                signed(s.cpu_us),
                signed(s.bytes_in),
                signed(s.bytes_out),
                signed(s.outbound_requests),
                signed(s.outbound_bytes_out),
                s.peak_memory_bytes.map(signed),
            ];
            if update.execute(values)? == 0 {
                insert.execute(values)?;
                *added.entry(k.period).or_default() += 1;
            }
        }
        for (period, n) in added {
            tx.execute(
                "UPDATE usage_periods SET rows = rows + ?2 WHERE period = ?1",
                params![period, n],
            )?;
        }
        tx.execute(
            "UPDATE usage_runs SET last_commit_us = ?1 WHERE id = ?2",
            params![now_us(), self.run],
        )?;
        self.last_beat = Instant::now();
        Ok(())
    }

    /// Whether housekeeping is due (a heartbeat, a prune, or dropped records to mark).
    pub(crate) fn due(&self) -> bool {
        self.last_beat.elapsed() >= HEARTBEAT
            || self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
            || self.dropped_now() > self.dropped_seen
    }

    fn dropped_now(&self) -> u64 {
        self.dropped
            .as_ref()
            .map_or(0, |d| d.dropped.load(Ordering::Relaxed))
    }

    /// Housekeeping between batches: marks records dropped since the last look, records that
    /// the run is alive, and prunes old usage rows when due. Failures are logged; metering
    /// never stops the records.
    pub(crate) fn tick(&mut self, conn: &Connection) {
        if let Err(e) = self.mark_dropped(conn) {
            tracing::warn!(error = %e, "cannot mark dropped invocation records in the usage data");
        }
        if self.last_beat.elapsed() >= HEARTBEAT {
            self.last_beat = Instant::now();
            if let Err(e) = conn.execute(
                "UPDATE usage_runs SET last_commit_us = ?1 WHERE id = ?2",
                params![now_us(), self.run],
            ) {
                tracing::warn!(error = %e, "cannot record that the record writer is alive");
            }
        }
        if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.last_prune = Some(Instant::now());
            match prune_usage(conn, &self.settings, SystemTime::now()) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "pruned old usage rows"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old usage rows"),
            }
        }
    }

    /// Counts records dropped since the last look into the gap marker of the current minute.
    fn mark_dropped(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let now = self.dropped_now();
        let new = now.saturating_sub(self.dropped_seen);
        if new == 0 {
            return Ok(());
        }
        let at = now_us();
        let minute = at - at.rem_euclid(60_000_000);
        conn.execute(
            "INSERT INTO usage_gaps (kind, from_us, until_us, records)
             VALUES ('dropped', ?1, ?2, ?3)
             ON CONFLICT (kind, from_us) DO UPDATE SET records = records + excluded.records",
            params![minute, minute + 60_000_000, signed(new)],
        )?;
        self.dropped_seen = now;
        Ok(())
    }

    /// Marks the run as stopped cleanly (after the last batch is written), leaving the usage
    /// rows within their retention at rest.
    pub(crate) fn stop(&mut self, conn: &Connection) {
        if let Err(e) = self.mark_dropped(conn) {
            tracing::warn!(error = %e, "cannot mark dropped invocation records in the usage data");
        }
        if let Err(e) = prune_usage(conn, &self.settings, SystemTime::now()) {
            tracing::warn!(error = %e, "cannot prune old usage rows");
        }
        if let Err(e) = conn.execute(
            "UPDATE usage_runs SET clean = 1, last_commit_us = ?1 WHERE id = ?2",
            params![now_us(), self.run],
        ) {
            tracing::warn!(error = %e, "cannot mark the record writer's clean stop; the next start will report a usage gap");
        }
    }
}

/// Deletes usage rows past their retention (and gap markers past the daily retention), then
/// the oldest buckets of each period that holds more than `keep_rows` rows. Returns the number
/// of rows deleted.
pub(crate) fn prune_usage(
    conn: &Connection,
    settings: &UsageSettings,
    now: SystemTime,
) -> rusqlite::Result<usize> {
    let now_s = time::to_micros(now).div_euclid(1_000_000);
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    let limits = [
        ("minute", 60, Some(settings.keep_minutes)),
        ("hour", 3_600, Some(settings.keep_hours)),
        ("day", 86_400, settings.keep_days),
    ];
    for (period, len, keep) in limits {
        if let Some(keep) = keep {
            total += delete_before(conn, period, len, now_s.saturating_sub(secs(keep)), false)?;
        }
        total += prune_to_rows(conn, period, len, settings.keep_rows)?;
    }
    if let Some(keep) = settings.keep_days {
        let cutoff = time::to_micros(now)
            .saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX));
        total += conn.execute("DELETE FROM usage_gaps WHERE until_us < ?1", [cutoff])?;
    }
    Ok(total)
}

/// Deletes the oldest whole buckets of `period` until at most `keep_rows` of its rows are left
/// (a newest bucket holding more than that goes too: the bound is kept), and records where the
/// pruned usage ends so reports reaching back past it say so.
fn prune_to_rows(
    conn: &Connection,
    period: &str,
    len: i64,
    keep_rows: u64,
) -> rusqlite::Result<usize> {
    let rows: i64 = conn
        .query_row(
            "SELECT rows FROM usage_periods WHERE period = ?1",
            [period],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let excess = unsigned(rows).saturating_sub(keep_rows);
    if excess == 0 {
        return Ok(0);
    }
    // The bucket holding the excess-th oldest row: it and everything before it go. The walk
    // reads the excess rows along the key, never the whole table.
    let cut: Option<i64> = conn
        .query_row(
            "SELECT start_s FROM usage WHERE period = ?1 ORDER BY start_s LIMIT 1 OFFSET ?2",
            params![period, signed(excess - 1)],
            |r| r.get(0),
        )
        .optional()?;
    let Some(cut) = cut else {
        // The count says more rows than there are (it cannot, as the count moves in the same
        // transactions as the rows; but a count that is off must not prune): count again.
        conn.execute(
            "UPDATE usage_periods
             SET rows = (SELECT count(*) FROM usage WHERE period = ?1) WHERE period = ?1",
            [period],
        )?;
        return Ok(0);
    };
    delete_before(conn, period, len, cut.saturating_add(len), true)
}

/// Deletes the rows of `period` whose bucket starts before `end_s`, oldest first, in chunks of
/// [`PRUNE_CHUNK_BUCKETS`] buckets, each in a transaction with the period's row count (and,
/// for the row bound, the end of the pruned usage).
fn delete_before(
    conn: &Connection,
    period: &str,
    len: i64,
    end_s: i64,
    for_rows: bool,
) -> rusqlite::Result<usize> {
    let mut total = 0;
    loop {
        let oldest: Option<i64> = conn
            .query_row(
                "SELECT min(start_s) FROM usage WHERE period = ?1",
                [period],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(oldest) = oldest.filter(|o| *o < end_s) else {
            break;
        };
        let upto = end_s.min(oldest.saturating_add(len * PRUNE_CHUNK_BUCKETS));
        let tx = conn.unchecked_transaction()?;
        let n = tx.execute(
            "DELETE FROM usage WHERE period = ?1 AND start_s < ?2",
            params![period, upto],
        )?;
        if for_rows {
            tx.execute(
                "UPDATE usage_periods SET rows = max(rows - ?2, 0),
                     size_pruned_before_s = max(coalesce(size_pruned_before_s, ?3), ?3)
                 WHERE period = ?1",
                params![period, signed(n as u64), upto],
            )?;
        } else {
            tx.execute(
                "UPDATE usage_periods SET rows = max(rows - ?2, 0) WHERE period = ?1",
                params![period, signed(n as u64)],
            )?;
        }
        tx.commit()?;
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

/// Why a usage query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A filter is malformed or asks for what is not kept.
    #[error("{0}")]
    BadQuery(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UsageError {
    /// The public error code: `bad_request` for a query to fix, `internal` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            UsageError::BadQuery(_) => ErrorCode::BadRequest,
            UsageError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// How a report groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    /// One row per app and function.
    Function,
    /// One row per tenant.
    Tenant,
    /// One row per app, function and revision, with cost per 1,000 invocations.
    Revision,
    /// One row per UTC day.
    Day,
    /// One row per UTC hour.
    Hour,
}

impl UsageBy {
    /// The names accepted by `--by` and `by=`.
    pub const NAMES: [&str; 5] = ["function", "tenant", "revision", "day", "hour"];

    /// Parses a grouping name.
    pub fn parse(s: &str) -> Result<UsageBy, String> {
        match s.trim() {
            "function" => Ok(UsageBy::Function),
            "tenant" => Ok(UsageBy::Tenant),
            "revision" => Ok(UsageBy::Revision),
            "day" => Ok(UsageBy::Day),
            "hour" => Ok(UsageBy::Hour),
            other => Err(format!(
                "cannot group usage by {other:?}: use function, tenant, revision, day or hour"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            UsageBy::Function => "function",
            UsageBy::Tenant => "tenant",
            UsageBy::Revision => "revision",
            UsageBy::Day => "day",
            UsageBy::Hour => "hour",
        }
    }
}

/// Parses a span of whole seconds, minutes, hours, days or weeks (`90s`, `30m`, `12h`, `7d`,
/// `2w`): retention flags and report bounds.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a span: write a whole number and a unit (s, m, h, d or w), like \"7d\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        "w" => n.checked_mul(7 * 86_400),
        _ => return Err(bad()),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_secs(secs))
}

/// Parses a report bound: a span back from `now` (`90s`, `30m`, `12h`, `7d`, `2w`), an
/// RFC 3339 time (`2026-11-01T08:00:00Z`, offsets allowed) or a date (`2026-11-01`, midnight
/// UTC).
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is neither a span back from now nor a time: use e.g. 30m, 12h, 7d, 2w, or an RFC 3339 time like 2026-11-01T00:00:00Z"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if s.as_bytes()[0].is_ascii_digit() && s.len() >= 10 && s.as_bytes().get(4) == Some(&b'-') {
        return parse_rfc3339(s).ok_or_else(bad);
    }
    let back = parse_span(s).map_err(|_| bad())?;
    now.checked_sub(back)
        .filter(|t| *t >= UNIX_EPOCH)
        .ok_or_else(|| format!("{s:?} reaches back before 1970"))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` when malformed.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let num = |a: usize, b: usize| -> Option<i64> {
        let part = s.get(a..b)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.as_bytes()[7] != b'-' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let mut us = days * 86_400_000_000;
    if s.len() > 10 {
        if !matches!(s.as_bytes()[10], b'T' | b't' | b' ')
            || s.get(13..14)? != ":"
            || s.get(16..17)? != ":"
        {
            return None;
        }
        let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        us += (h * 3_600 + mi * 60 + sec) * 1_000_000;
        let mut rest = s.get(19..)?;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            if digits == 0 {
                return None;
            }
            let f = &frac[..digits.min(6)];
            us += f.parse::<i64>().ok()? * 10i64.pow(6 - f.len() as u32);
            rest = &frac[digits..];
        }
        let offset_s = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let off = rest.get(1..)?;
                if off.len() != 5 || off.as_bytes()[2] != b':' {
                    return None;
                }
                let (oh, om): (i64, i64) = (off[..2].parse().ok()?, off[3..].parse().ok()?);
                sign * (oh * 3_600 + om * 60)
            }
        };
        us -= offset_s * 1_000_000;
    }
    (us >= 0).then(|| UNIX_EPOCH + Duration::from_micros(us.unsigned_abs()))
}

/// Where one period's aggregates are whole from, and whether the row bound (rather than the
/// age limit) put it there.
#[derive(Debug, Clone, Copy)]
struct Kept {
    from_us: i64,
    by_rows: bool,
}

/// Microseconds as whole seconds, rounded up.
fn ceil_secs(us: i64) -> i64 {
    us.div_euclid(1_000_000) + i64::from(us.rem_euclid(1_000_000) > 0)
}

fn secs_of(t: SystemTime) -> i64 {
    time::to_micros(t).div_euclid(1_000_000)
}

fn format_secs(s: i64) -> String {
    nubo_core::rfc3339_millis(s.saturating_mul(1_000))
}

/// The sums of a report row as read from SQL, before cost.
fn report_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UsageRow> {
    let int = |i: usize| -> rusqlite::Result<u64> {
        Ok(unsigned(r.get::<_, Option<i64>>(at + i)?.unwrap_or(0)))
    };
    Ok(UsageRow {
        requests: int(0)?,
        errors: int(1)?,
        throttles: int(2)?,
        cold_starts: int(3)?,
        duration_ms: int(4)? as f64 / 1_000.0,
        billed_ms: int(5)?,
        gb_seconds: gb_seconds(int(6)?),
        unmetered_requests: int(7)?,
        cpu_ms: int(8)? as f64 / 1_000.0,
        bytes_in: int(9)?,
        bytes_out: int(10)?,
        outbound_requests: int(11)?,
        outbound_bytes_out: int(12)?,
        peak_memory_bytes: r.get::<_, Option<i64>>(at + 13)?.map(unsigned),
        ..UsageRow::default()
    })
}

const SUMS: &str = "sum(requests), sum(errors), sum(throttles), sum(cold_starts), \
     sum(duration_us), sum(billed_ms), sum(kib_ms), sum(unmetered), sum(cpu_us), sum(bytes_in), \
     sum(bytes_out), sum(outbound_requests), sum(outbound_bytes_out), max(peak_memory_bytes)";

fn priced(mut row: UsageRow, prices: &UsagePrices) -> UsageRow {
    row.cost = cost(
        prices,
        row.requests,
        row.gb_seconds,
        row.bytes_out.saturating_add(row.outbound_bytes_out),
    );
    row.cost_per_1k = (row.requests > 0).then(|| row.cost.total / row.requests as f64 * 1_000.0);
    row
}

impl Store {
    /// Sets how usage is metered and priced. The record writer reads the settings when it
    /// starts; reports use the current ones.
    pub fn configure_usage(&self, settings: UsageSettings) {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// How usage is metered and priced.
    pub fn usage_settings(&self) -> UsageSettings {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A usage report for `q`, as of now.
    pub fn usage_report(&self, q: &UsageQuery) -> Result<UsageReport, UsageError> {
        self.usage_report_at(q, SystemTime::now())
    }

    /// A usage report for `q` as of `now`: spans in `q` count back from it, and it decides
    /// which aggregates are still kept for the start.
    pub fn usage_report_at(
        &self,
        q: &UsageQuery,
        now: SystemTime,
    ) -> Result<UsageReport, UsageError> {
        use rusqlite::types::Value;
        let settings = self.usage_settings();
        let by = match &q.by {
            Some(b) => UsageBy::parse(b).map_err(UsageError::BadQuery)?,
            None => UsageBy::Function,
        };
        let since = match &q.since {
            Some(s) => {
                parse_time(s, now).map_err(|e| UsageError::BadQuery(format!("since: {e}")))?
            }
            None => now.checked_sub(DEFAULT_REPORT_SPAN).unwrap_or(UNIX_EPOCH),
        };
        let until = match &q.until {
            Some(s) => {
                parse_time(s, now).map_err(|e| UsageError::BadQuery(format!("until: {e}")))?
            }
            None => now,
        };
        if until < since {
            return Err(UsageError::BadQuery(format!(
                "until ({}) is before since ({}); swap them",
                time::format_rfc3339(until),
                time::format_rfc3339(since)
            )));
        }
        let doing = "reading usage";
        let conn = self.reader();
        // Where each period's aggregates are whole from: after its age cutoff, and after the
        // newest bucket pruned to keep its row bound.
        let size_pruned: HashMap<String, i64> = conn
            .prepare_cached(
                "SELECT period, size_pruned_before_s FROM usage_periods
                 WHERE size_pruned_before_s IS NOT NULL",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(db(doing))?;
        let now_us = time::to_micros(now);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let keeps = [
            Some(settings.keep_minutes),
            Some(settings.keep_hours),
            settings.keep_days,
        ];
        let kept: Vec<Option<Kept>> = PERIODS
            .iter()
            .zip(keeps)
            .map(|(&(period, _), keep)| {
                let by_age = keep.map(|k| Kept {
                    from_us: now_us.saturating_sub(micros(k)),
                    by_rows: false,
                });
                let by_rows = size_pruned.get(period).map(|s| Kept {
                    from_us: s.saturating_mul(1_000_000),
                    by_rows: true,
                });
                match (by_age, by_rows) {
                    (Some(a), Some(r)) => Some(if r.from_us > a.from_us { r } else { a }),
                    (a, r) => a.or(r),
                }
            })
            .collect();
        // The finest aggregates still whole from the start; the coarsest when none is.
        let since_us = time::to_micros(since);
        let covers = |k: &Option<Kept>| k.is_none_or(|k| since_us >= k.from_us);
        let at = kept.iter().position(covers).unwrap_or(PERIODS.len() - 1);
        let (resolution, len) = PERIODS[at];
        if by == UsageBy::Hour && len > 3_600 {
            return Err(UsageError::BadQuery(match kept[1] {
                Some(Kept {
                    from_us,
                    by_rows: true,
                }) => {
                    let from = format_secs(ceil_secs(from_us));
                    format!(
                        "hourly usage before {from} was pruned to stay within --keep-usage-rows ({}); use --by day, or a --since of {from} or later",
                        settings.keep_rows
                    )
                }
                _ => format!(
                    "hourly usage is kept for {} (--keep-usage-hours); use --by day, or a later --since",
                    span(settings.keep_hours)
                ),
            }));
        }
        let since_s = secs_of(since);
        let from_s = since_s - since_s.rem_euclid(len);
        // Rounded up: the bucket holding `until` counts even when `until` is a fraction of a
        // second into it.
        let until_s = ceil_secs(time::to_micros(until));
        let end_s = until_s + (len - until_s.rem_euclid(len)) % len;
        let end_s = if end_s == from_s { end_s + len } else { end_s };
        // Even the coarsest aggregates no longer reach back to the start: say what is gone.
        let pruned = kept[at].filter(|_| !covers(&kept[at])).map(|k| {
            let before_s = ceil_secs(k.from_us);
            let before_s = before_s + (len - before_s.rem_euclid(len)) % len;
            let before = format_secs(before_s);
            let why = if k.by_rows {
                format!(
                    "the oldest per-day usage was pruned to stay within --keep-usage-rows {}",
                    settings.keep_rows
                )
            } else {
                format!(
                    "per-day usage is kept for {}, --keep-usage-days",
                    settings.keep_days.map_or_else(String::new, span)
                )
            };
            let gap = UsageGap {
                kind: "pruned".to_string(),
                from: format_secs(from_s),
                until: format_secs(before_s.min(end_s)),
                records: None,
                message: format!(
                    "usage before {before} is no longer kept ({why}); the report counts none of it"
                ),
            };
            (before, gap)
        });

        let mut filter = String::from("period = ?1 AND start_s >= ?2 AND start_s < ?3");
        let mut args: Vec<Value> = vec![
            Value::Text(resolution.to_string()),
            Value::Integer(from_s),
            Value::Integer(end_s),
        ];
        if let Some(tenant) = &q.tenant {
            args.push(Value::Text(tenant.clone()));
            filter.push_str(&format!(" AND tenant = ?{}", args.len()));
        }
        if let Some(app) = &q.app {
            args.push(Value::Text(app.clone()));
            filter.push_str(&format!(" AND app = ?{}", args.len()));
        }
        if let Some(function) = &q.function {
            args.push(Value::Text(function.clone()));
            filter.push_str(&format!(" AND function = ?{}", args.len()));
        }
        let group = match by {
            UsageBy::Function => "tenant, app, function",
            UsageBy::Tenant => "tenant",
            UsageBy::Revision => "tenant, app, function, revision",
            UsageBy::Day => "start_s - start_s % 86400",
            UsageBy::Hour => "start_s - start_s % 3600",
        };
        let keys = match by {
            UsageBy::Function => 3,
            UsageBy::Revision => 4,
            UsageBy::Tenant | UsageBy::Day | UsageBy::Hour => 1,
        };
        let rows = conn
            .prepare(&format!(
                "SELECT {group}, {SUMS} FROM usage WHERE {filter}
                 GROUP BY {group} ORDER BY {group} LIMIT {MAX_REPORT_ROWS}"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    let mut row = report_row(r, keys)?;
                    match by {
                        UsageBy::Function => {
                            row.tenant = Some(r.get(0)?);
                            row.app = Some(r.get(1)?);
                            row.function = Some(r.get(2)?);
                        }
                        UsageBy::Tenant => {
                            row.tenant = Some(r.get(0)?);
                        }
                        UsageBy::Revision => {
                            row.tenant = Some(r.get(0)?);
                            row.app = Some(r.get(1)?);
                            row.function = Some(r.get(2)?);
                            row.revision = Some(unsigned(r.get(3)?));
                        }
                        UsageBy::Day | UsageBy::Hour => {
                            row.bucket = Some(format_secs(r.get(0)?));
                        }
                    }
                    Ok(priced(row, &settings.prices))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db(doing))?;
        let total = conn
            .prepare(&format!("SELECT {SUMS} FROM usage WHERE {filter}"))
            .and_then(|mut stmt| {
                stmt.query_row(rusqlite::params_from_iter(args.iter()), |r| {
                    report_row(r, 0)
                })
            })
            .map_err(db(doing))?;
        let mut gaps = conn
            .prepare(
                "SELECT kind, from_us, until_us, records FROM usage_gaps
                 WHERE until_us > ?1 AND from_us < ?2 ORDER BY from_us LIMIT ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![
                        from_s.saturating_mul(1_000_000),
                        end_s.saturating_mul(1_000_000),
                        signed(MAX_REPORT_ROWS as u64)
                    ],
                    |r| {
                        let kind: String = r.get(0)?;
                        let from = time::format_micros(r.get(1)?);
                        let until = time::format_micros(r.get(2)?);
                        let records = r.get::<_, Option<i64>>(3)?.map(unsigned);
                        let message = match (kind.as_str(), records) {
                            ("dropped", Some(n)) => format!(
                                "{n} invocation records were dropped between {from} and {until} (the record writer fell behind); usage then is undercounted"
                            ),
                            _ => format!(
                                "usage between {from} and {until} may be incomplete: the server stopped without shutting down"
                            ),
                        };
                        Ok(UsageGap {
                            kind,
                            from,
                            until,
                            records,
                            message,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db(doing))?;
        let pruned_before = pruned.map(|(at, gap)| {
            gaps.insert(0, gap);
            at
        });
        Ok(UsageReport {
            from: format_secs(from_s),
            until: format_secs(end_s),
            resolution: resolution.to_string(),
            by: by.as_str().to_string(),
            billing_granularity_ms: u64::try_from(settings.granularity.as_millis())
                .unwrap_or(u64::MAX),
            prices: settings.prices,
            rows,
            total: priced(total, &settings.prices),
            gaps,
            pruned_before,
        })
    }

    /// One page of per-invocation usage records for `q` (its `by` is ignored; spans count
    /// back from `now`, which an export keeps the same for all its pages so its bounds do not
    /// move), after the record at position `after` (0 for the first page), oldest first, at
    /// most `limit` (and never more than [`MAX_EXPORT_PAGE`]; fewer, possibly none, when
    /// `q.tenant` leaves some out). Returns the records and the position to pass for the next
    /// page, `None` when this was the last.
    pub fn usage_export_page(
        &self,
        q: &UsageQuery,
        now: SystemTime,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<UsageExportRecord>, Option<i64>), UsageError> {
        use rusqlite::types::Value;
        let since = match &q.since {
            Some(s) => {
                parse_time(s, now).map_err(|e| UsageError::BadQuery(format!("since: {e}")))?
            }
            None => UNIX_EPOCH,
        };
        let until = match &q.until {
            Some(s) => {
                parse_time(s, now).map_err(|e| UsageError::BadQuery(format!("until: {e}")))?
            }
            None => now,
        };
        let limit = limit.clamp(1, MAX_EXPORT_PAGE);
        let mut sql = String::from(
            "SELECT seq, id, app, function, revision, trigger, started_at_us, outcome, status,
                 cold, duration_us, billed_ms, memory_limit_bytes, peak_memory_bytes, kib_ms,
                 cpu_time_us, bytes_in, bytes_out, outbound_requests, outbound_bytes_out,
                 outbound_bytes_in
             FROM invocations WHERE seq > ?1 AND started_at_us >= ?2 AND started_at_us < ?3",
        );
        let mut args: Vec<Value> = vec![
            Value::Integer(after),
            Value::Integer(time::to_micros(since)),
            Value::Integer(time::to_micros(until)),
        ];
        if let Some(app) = &q.app {
            args.push(Value::Text(app.clone()));
            sql.push_str(&format!(" AND app = ?{}", args.len()));
        }
        if let Some(function) = &q.function {
            args.push(Value::Text(function.clone()));
            sql.push_str(&format!(" AND function = ?{}", args.len()));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
        let rows = self
            .reader()
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
                        Ok(r.get::<_, Option<i64>>(i)?.map(unsigned))
                    };
                    let seq: i64 = r.get(0)?;
                    let app: String = r.get(2)?;
                    Ok((
                        seq,
                        UsageExportRecord {
                            id: r.get(1)?,
                            tenant: tenant_of(&app).to_string(),
                            app,
                            function: r.get(3)?,
                            revision: unsigned(r.get(4)?),
                            trigger: r.get(5)?,
                            started_at: time::format_micros(r.get(6)?),
                            outcome: r.get(7)?,
                            status: opt(8)?.and_then(|s| u16::try_from(s).ok()),
                            cold: r.get(9)?,
                            duration_us: unsigned(r.get(10)?),
                            usage: invocation_usage(
                                opt(11)?,
                                opt(12)?,
                                opt(13)?,
                                opt(14)?,
                                opt(15)?,
                            ),
                            bytes_in: unsigned(r.get(16)?),
                            bytes_out: unsigned(r.get(17)?),
                            outbound_requests: unsigned(r.get(18)?),
                            outbound_bytes_out: unsigned(r.get(19)?),
                            outbound_bytes_in: unsigned(r.get(20)?),
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db("exporting usage records"))?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|(s, _)| *s))
            .flatten();
        // The tenant is the app's (see `tenant_of`), not a column of the records, so it is
        // filtered here; the page position still moves past every record read.
        let records = rows
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| q.tenant.as_ref().is_none_or(|t| *t == r.tenant))
            .collect();
        Ok((records, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_up_to_the_granularity_and_never_to_zero() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        assert_eq!(billed_ms(us(1), ms(1)), 1);
        assert_eq!(billed_ms(us(0), ms(1)), 1);
        assert_eq!(billed_ms(us(1_000), ms(1)), 1);
        assert_eq!(billed_ms(us(1_001), ms(1)), 2);
        assert_eq!(billed_ms(ms(15), ms(100)), 100);
        assert_eq!(billed_ms(ms(100), ms(100)), 100);
        assert_eq!(billed_ms(us(100_001), ms(100)), 200);
        assert_eq!(billed_ms(ms(61_000), Duration::from_secs(60)), 120_000);
    }

    #[test]
    fn gb_seconds_use_1024_mib_per_gb() {
        // 1 s at 1 GiB is one GB-second; 100 ms at 128 MiB is 1/80 of one.
        assert_eq!(gb_seconds(kib_ms(1_000, 1 << 30)), 1.0);
        assert_eq!(gb_seconds(kib_ms(100, 128 << 20)), 0.0125);
        // A limit that is not whole KiB is rounded up.
        assert_eq!(kib_ms(2, 1_025), 4);
    }

    #[test]
    fn settings_are_checked() {
        assert!(UsageSettings::default().validate().is_ok());
        for g in [
            Duration::ZERO,
            Duration::from_micros(1_500),
            Duration::from_secs(61),
        ] {
            let s = UsageSettings {
                granularity: g,
                ..UsageSettings::default()
            };
            assert!(s.validate().is_err(), "{g:?}");
        }
        assert!(parse_price("-1").unwrap_err().contains("zero or more"));
        assert!(parse_price("NaN").is_err());
        assert_eq!(parse_price("0").unwrap(), 0.0);
        let short = UsageSettings {
            keep_hours: Duration::from_secs(3_600),
            ..UsageSettings::default()
        };
        assert!(short.validate().unwrap_err().contains("--keep-usage-hours"));
        for rows in [0, MAX_KEEP_USAGE_ROWS + 1] {
            let s = UsageSettings {
                keep_rows: rows,
                ..UsageSettings::default()
            };
            let e = s.validate().unwrap_err();
            assert!(
                e.contains("--keep-usage-rows") && e.contains("from 1 to"),
                "{e}"
            );
        }
        assert_eq!(parse_keep_rows("1").unwrap(), 1);
        for bad in ["0", "-5", "1e6", "", "1000000001"] {
            assert!(
                parse_keep_rows(bad)
                    .unwrap_err()
                    .contains("from 1 to 1000000000"),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_parse_as_spans_dates_and_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_time("7d", now).unwrap(),
            now - Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_time("2w", now).unwrap(),
            now - Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_time("90s", now).unwrap(),
            now - Duration::from_secs(90)
        );
        let at = |s| time::format_rfc3339(parse_time(s, now).unwrap());
        assert_eq!(at("2026-11-01"), "2026-11-01T00:00:00.000Z");
        assert_eq!(at("2024-02-29T23:59:59.5Z"), "2024-02-29T23:59:59.500Z");
        assert_eq!(at("2026-11-01T02:00:00+02:00"), "2026-11-01T00:00:00.000Z");
        for bad in [
            "yesterday",
            "",
            "7",
            "7y",
            "2026-13-01",
            "2026-11-01T25:00:00Z",
            "2026-11-01T00:00:00",
        ] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains("1970"), "{bad}: {e}");
        }
        assert!(
            UsageBy::parse("week")
                .unwrap_err()
                .contains("function, tenant, revision, day or hour")
        );
    }

    #[test]
    fn cost_adds_requests_compute_and_transfer() {
        let prices = UsageSettings::default().prices;
        let c = cost(&prices, 2_000_000, 10.0, 1 << 30);
        assert!((c.requests - 0.40).abs() < 1e-12);
        assert!((c.compute - 0.000_166_667).abs() < 1e-12);
        assert!((c.transfer - 0.09).abs() < 1e-12);
        assert!((c.total - (c.requests + c.compute + c.transfer)).abs() < 1e-12);
    }
}
