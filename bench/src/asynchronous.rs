//! The async scenario: how many async invocations per second Nubo durably accepts (202 after
//! the group-committed fsync), sequentially and from 32 clients, and the end-to-end latency
//! from submission to the start of the first attempt at a fixed rate; each next to the same
//! function called synchronously in the same run. Figures only, no pass/fail.

use crate::http;
use crate::report::{micros, rps};
use anyhow::{bail, ensure};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The request every client sends: the echo guest answers its body (a few bytes) at once.
const PATH: &str = "/async/work";
const BODY: &[u8] = b"event";
/// Clients of the concurrent throughput phase, each on its own keep-alive connection.
pub const CLIENTS: usize = 32;
/// The fixed rate of the latency phase: well under what the function and the store sustain.
pub const LATENCY_RPS: f64 = 100.0;
/// Bounds every read and write of the load clients.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the queue to drain between phases.
const DRAIN_BOUND: Duration = Duration::from_secs(120);

/// The async app's manifest: one function with the default limits and retries.
const MANIFEST: &str = "[app]\nname = \"async\"\n\n[function.work]\nsource = \"work.wasm\"\n\n\
                        [[route]]\npath = \"/async/...\"\nfunction = \"work\"\n";
/// Paced clients of the latency phase.
pub const LATENCY_CLIENTS: usize = 4;

/// Deploys the async app (the echo test guest) on `addr`.
pub fn deploy(addr: SocketAddr, wasm: &[u8]) -> anyhow::Result<()> {
    http::deploy(addr, "the async app", MANIFEST, &[("work".into(), wasm)])
}

/// Figures of one load phase.
#[derive(Debug, Default)]
pub struct Phase {
    /// Answered as hoped: 202 for async, 200 for sync.
    pub ok: usize,
    /// 429 answers.
    pub throttled: usize,
    /// Any other status or a connection error.
    pub other: usize,
    /// Latency of the `ok` requests as the client sees it (send to last byte), µs.
    pub latency_us: Vec<f64>,
    /// Submit time (ms since the epoch) of each accepted async invocation, by id.
    pub submitted: Vec<(String, f64)>,
    pub elapsed: Duration,
}

impl Phase {
    fn merge(&mut self, o: Phase) {
        self.ok += o.ok;
        self.throttled += o.throttled;
        self.other += o.other;
        self.latency_us.extend(o.latency_us);
        self.submitted.extend(o.submitted);
    }

    /// A row: label, ok, throttled, other, ok/s, p50, p99 of the client-side latency.
    pub fn row(&self, label: &str) -> Vec<String> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        vec![
            label.to_string(),
            self.ok.to_string(),
            self.throttled.to_string(),
            self.other.to_string(),
            rps(self.ok as f64 / secs),
            percentile(&self.latency_us, 0.50).map_or("-".into(), micros),
            percentile(&self.latency_us, 0.99).map_or("-".into(), micros),
        ]
    }
}

/// Column headers of [`Phase::row`].
pub const THROUGHPUT_HEADERS: [&str; 7] = [
    "phase",
    "ok (202 async / 200 sync)",
    "throttled (429)",
    "other",
    "ok/s",
    "client p50",
    "client p99",
];

/// Column headers of the latency rows.
pub const LATENCY_HEADERS: [&str; 5] = ["at a fixed rate", "measured", "p50", "p99", "max"];

/// The `p` quantile of `v` (unsorted).
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    Some(s[i.min(s.len() - 1)])
}

/// Sends requests from `clients` keep-alive clients for `secs`: back to back when `rate` is
/// None, else paced to `rate` requests/s together. `asynchronous` adds
/// `nubo-invocation-type: event`.
pub fn phase(
    addr: SocketAddr,
    clients: usize,
    rate: Option<f64>,
    secs: u64,
    asynchronous: bool,
) -> Phase {
    let length = Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            std::thread::spawn(move || {
                let mut p = Phase::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
                let mut next = started
                    + interval.map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / clients as f64));
                while next < started + length && started.elapsed() < length {
                    if let Some(d) = interval {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += d;
                    }
                    let wall = epoch_ms(SystemTime::now());
                    let t = Instant::now();
                    match exchange(&mut conn, addr, asynchronous) {
                        Ok((status, body)) if status == if asynchronous { 202 } else { 200 } => {
                            p.ok += 1;
                            p.latency_us.push(t.elapsed().as_secs_f64() * 1e6);
                            if asynchronous && let Some(id) = invocation_id(&body) {
                                p.submitted.push((id, wall));
                            }
                        }
                        Ok((429, _)) => p.throttled += 1,
                        Ok(_) => p.other += 1,
                        Err(_) => {
                            p.other += 1;
                            conn = None;
                        }
                    }
                }
                p
            })
        })
        .collect();
    let mut total = Phase::default();
    for h in handles {
        if let Ok(p) = h.join() {
            total.merge(p);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Waits (bounded) until the app has no queued or running async invocation.
pub fn drain(addr: SocketAddr) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut busy = false;
        for state in ["queued", "running"] {
            let r = http::get(
                addr,
                &format!("/_nubo/api/v1/apps/async/async?state={state}&limit=1"),
                IO_TIMEOUT,
            )?;
            ensure!(r.status == 200, "listing async invocations: {}", r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body)?;
            busy |= v["invocations"].as_array().is_some_and(|a| !a.is_empty());
        }
        if !busy {
            return Ok(start.elapsed());
        }
        if start.elapsed() > DRAIN_BOUND {
            bail!(
                "async invocations still waiting after {} s",
                DRAIN_BOUND.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// End-to-end latency (ms) of each submitted invocation: its first attempt's `started_at`
/// minus the client's clock at submission (same machine, same clock; millisecond resolution).
/// Also counts those that did not succeed.
pub fn end_to_end(
    addr: SocketAddr,
    submitted: &[(String, f64)],
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut out = Vec::with_capacity(submitted.len());
    let mut not_ok = 0;
    for (id, at) in submitted {
        let r = http::get(addr, &format!("/_nubo/api/v1/invocations/{id}"), IO_TIMEOUT)?;
        ensure!(r.status == 200, "reading invocation {id}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        let a = &v["async"];
        if a["state"] != "succeeded" {
            not_ok += 1;
        }
        let Some(started) = a["attempt_list"][0]["started_at"]
            .as_str()
            .and_then(parse_rfc3339_ms)
        else {
            continue;
        };
        out.push((started - at).max(0.0));
    }
    Ok((out, not_ok))
}

/// A latency row from milliseconds.
pub fn latency_row(label: &str, ms: &[f64]) -> Vec<String> {
    let us = |v: Option<f64>| v.map_or("-".into(), |v| micros(v * 1e3));
    let max = ms
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    vec![
        label.to_string(),
        ms.len().to_string(),
        us(percentile(ms, 0.50)),
        us(percentile(ms, 0.99)),
        us(max),
    ]
}

/// What was measured, for the report.
pub fn describe(secs: u64) -> String {
    format!(
        "`tests/guests/echo` deployed as app `async` (default limits and retries); every request is \
         `POST {PATH}` with a {}-byte body. *async* adds `nubo-invocation-type: event`: the server \
         answers 202 once the event is fsync'd (group commit) while its deliverer runs the \
         accepted events on the same core; *sync* is the same request answered by the function. \
         Throughput: 1 client, then {CLIENTS} keep-alive clients, back to back for {secs} s each; \
         the queue is drained between phases. Latency: {LATENCY_RPS} requests/s from {LATENCY_CLIENTS} paced \
         clients for {secs} s; *submit → first attempt started* is the first attempt's \
         `started_at` (`GET /_nubo/api/v1/invocations/ID`, millisecond resolution) minus the \
         client's clock when it sent the request; *submit → 202* and *sync request* are send to \
         last byte at the client.",
        BODY.len()
    )
}

/// One request on a keep-alive connection: the status and the body.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    asynchronous: bool,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        BODY.len()
    );
    if asynchronous {
        req.push_str("nubo-invocation-type: event\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(BODY);
    let r = http::keep_alive(conn, addr, &bytes, IO_TIMEOUT)?;
    Ok((r.status, r.body))
}

fn invocation_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("invocation_id")?
        .as_str()
        .map(str::to_string)
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Milliseconds since the epoch of a UTC RFC 3339 time like `2026-11-24T07:12:00.123Z`.
fn parse_rfc3339_ms(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + min * 60 + sec;
    Some(secs as f64 * 1e3 + frac * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_epoch_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:01.250Z"),
            Some(951_868_801_250.0)
        );
        assert_eq!(parse_rfc3339_ms("2000-03-01"), None);
    }

    #[test]
    fn percentiles_pick_from_the_sorted_values() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 1.0), Some(5.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
