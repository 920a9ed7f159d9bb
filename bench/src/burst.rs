//! The burst scenario: a function with a small concurrency limit and queue gets a steady
//! trickle, then about 100× that rate; the figures are how many requests were accepted and
//! throttled (429) and the latency of the accepted ones. Figures only, no pass/fail.

use crate::http;
use crate::report::{micros, rps};
use anyhow::{Context as _, bail};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the function works per request (a host timer, not CPU).
pub const SLEEP_MS: u64 = 20;
/// The function's limits: capacity is about `MAX_CONCURRENCY / SLEEP_MS` = 200 requests/s.
const MAX_CONCURRENCY: u32 = 4;
const QUEUE_DEPTH: u32 = 8;
const QUEUE_TIMEOUT: &str = "100ms";
/// The trickle's rate (10% of capacity) and the burst's (100× that, 10× capacity).
const TRICKLE_RPS: f64 = 20.0;
const BURST_RPS: f64 = TRICKLE_RPS * 100.0;
/// Clients sending the burst, each on its own keep-alive connection and paced to its share of
/// the rate.
const BURST_CLIENTS: usize = 32;
/// Bounds every read and write of the load clients.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The manifest of the burst app.
fn manifest() -> String {
    format!(
        "[app]\nname = \"burst\"\n\n[function.slow]\nsource = \"slow.wasm\"\n\
         max_concurrency = {MAX_CONCURRENCY}\nqueue_depth = {QUEUE_DEPTH}\n\
         queue_timeout = \"{QUEUE_TIMEOUT}\"\n\n[[route]]\npath = \"/burst/...\"\nfunction = \"slow\"\n"
    )
}

/// What the function's settings are, for the report.
pub fn describe() -> String {
    format!(
        "The function (`tests/guests/echo`, `GET /burst/sleep?ms={SLEEP_MS}`: waits {SLEEP_MS} ms on a \
         host timer) has `max_concurrency = {MAX_CONCURRENCY}`, `queue_depth = {QUEUE_DEPTH}`, \
         `queue_timeout = \"{QUEUE_TIMEOUT}\"`: it can accept about {} requests/s. The trickle is one \
         client at {TRICKLE_RPS} requests/s; the burst is {BURST_CLIENTS} keep-alive clients paced \
         to {BURST_RPS} requests/s together (100× the trickle). Latency is measured by the driver \
         (send to last byte), for accepted (200) requests only. Other = any status but 200 and 429 \
         (there should be none).",
        u64::from(MAX_CONCURRENCY) * 1000 / SLEEP_MS
    )
}

/// Builds the echo test guest (`tests/guests/build.sh echo`) and returns its bytes.
pub fn build_guest(root: &Path) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("bash")
        .arg(root.join("tests/guests/build.sh"))
        .arg("echo")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .context("running tests/guests/build.sh echo")?;
    if !out.status.success() {
        bail!(
            "tests/guests/build.sh echo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read(&path).with_context(|| format!("reading {path}"))
}

/// Deploys the burst app on `addr`.
pub fn deploy(addr: SocketAddr, wasm: &[u8]) -> anyhow::Result<()> {
    http::deploy(addr, "the burst app", &manifest(), &[("slow".into(), wasm)])
}

/// Figures of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    pub sent: usize,
    pub accepted: usize,
    pub throttled: usize,
    /// 429s without a `Retry-After` header (there should be none).
    pub throttled_without_retry_after: usize,
    pub other: usize,
    pub connection_errors: usize,
    pub accepted_latency_us: Vec<f64>,
    pub elapsed: Duration,
}

impl Phase {
    fn merge(&mut self, o: Phase) {
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.throttled += o.throttled;
        self.throttled_without_retry_after += o.throttled_without_retry_after;
        self.other += o.other;
        self.connection_errors += o.connection_errors;
        self.accepted_latency_us.extend(o.accepted_latency_us);
    }

    /// A report row: phase, sent, accepted, throttled, other, connection errors, p50, p99,
    /// offered rate.
    pub fn row(&self, label: &str) -> Vec<String> {
        let mut l = self.accepted_latency_us.clone();
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| -> String {
            if l.is_empty() {
                return "-".into();
            }
            let i = ((l.len() as f64 - 1.0) * p).round() as usize;
            micros(l[i.min(l.len() - 1)])
        };
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        vec![
            label.to_string(),
            self.sent.to_string(),
            self.accepted.to_string(),
            format!(
                "{}{}",
                self.throttled,
                if self.throttled_without_retry_after > 0 {
                    format!(
                        " ({} without Retry-After)",
                        self.throttled_without_retry_after
                    )
                } else {
                    String::new()
                }
            ),
            self.other.to_string(),
            self.connection_errors.to_string(),
            pct(0.50),
            pct(0.99),
            rps(self.sent as f64 / secs),
            rps(self.accepted as f64 / secs),
        ]
    }
}

/// The report's column headers for [`Phase::row`].
pub const HEADERS: [&str; 10] = [
    "phase",
    "sent",
    "accepted (200)",
    "throttled (429)",
    "other",
    "connection errors",
    "accepted p50",
    "accepted p99",
    "sent/s",
    "accepted/s",
];

/// Sends `rate` requests/s from `clients` paced keep-alive clients for `secs`.
pub fn phase(addr: SocketAddr, clients: usize, rate: f64, secs: u64) -> Phase {
    let per_client = Duration::from_secs_f64(clients as f64 / rate);
    let length = Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            std::thread::spawn(move || {
                let mut p = Phase::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                // Spread the clients' schedules over one interval.
                let mut next = started + per_client.mul_f64(i as f64 / clients as f64);
                let path = format!("/burst/sleep?ms={SLEEP_MS}");
                while next < started + length {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    next += per_client;
                    p.sent += 1;
                    let t = Instant::now();
                    match exchange(&mut conn, addr, &path) {
                        Ok((200, _)) => {
                            p.accepted += 1;
                            p.accepted_latency_us.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        Ok((429, retry_after)) => {
                            p.throttled += 1;
                            if !retry_after {
                                p.throttled_without_retry_after += 1;
                            }
                        }
                        Ok(_) => p.other += 1,
                        Err(_) => {
                            p.connection_errors += 1;
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

/// One request on a keep-alive connection: the status and whether a `Retry-After` header came
/// with it.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, bool)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let r = http::keep_alive(conn, addr, req.as_bytes(), IO_TIMEOUT)?;
    Ok((r.status, r.retry_after))
}

/// The trickle, then the burst.
pub fn run(addr: SocketAddr, trickle_secs: u64, burst_secs: u64) -> (Phase, Phase) {
    let trickle = phase(addr, 1, TRICKLE_RPS, trickle_secs);
    let burst = phase(addr, BURST_CLIENTS, BURST_RPS, burst_secs);
    (trickle, burst)
}
