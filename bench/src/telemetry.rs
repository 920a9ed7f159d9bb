//! What observability costs on the request path: the hello function's throughput with
//! metrics, CPU metering and OTLP trace export all on, against a server started with
//! `--no-telemetry`, measured back to back in the same run.
//!
//! "On" is what an operator who wants everything runs: traces go to a local OTLP sink (a
//! small HTTP server here that reads and acknowledges every export, so the exporter does its
//! full work), and `/_nubo/metrics` is scraped every second during the measurement, as
//! Prometheus would. Records, logs and usage aggregation run in both servers: they are not
//! switchable, and they live on the record writer's thread, off the request path.

use crate::report::{self, micros, progress};
use crate::{Bench, CONNS, HELLO_PATH, LOAD_CORE, Measured, Rows, Target, check_hello, wrk};
use anyhow::Context as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest export body the sink reads; a bigger one ends the connection. Bounds the sink's
/// memory.
const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;

/// How often `/_nubo/metrics` is scraped while the "on" server is measured.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the OTLP sink received.
#[derive(Debug, Default)]
struct SinkCounts {
    exports: AtomicU64,
    bytes: AtomicU64,
}

/// An HTTP server that answers every request with an empty 200 after reading its body: the
/// cheapest collector an exporter can talk to. One thread per connection; the exporter keeps
/// one or two alive.
struct OtlpSink {
    addr: SocketAddr,
    counts: Arc<SinkCounts>,
    stop: Arc<AtomicBool>,
}

impl OtlpSink {
    fn start() -> anyhow::Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP sink")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(SinkCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let c = c.clone();
                    std::thread::spawn(move || serve(conn, &c));
                }
            }
        });
        Ok(OtlpSink { addr, counts, stop })
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Serves one keep-alive connection until the peer closes it or sends something unreadable.
fn serve(conn: TcpStream, counts: &SinkCounts) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(usize::MAX);
            }
        }
        if length > MAX_EXPORT_BYTES {
            return;
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        counts.exports.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(length as u64, Ordering::Relaxed);
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Scrapes `/_nubo/metrics` every [`SCRAPE_EVERY`] until dropped; counts the scrapes that
/// answered 200.
struct Scraper {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                if crate::http::get(addr, "/_nubo/metrics", Duration::from_secs(5))
                    .is_ok_and(|r| r.status == 200)
                {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                while at.elapsed() < SCRAPE_EVERY && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Scraper {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    /// Stops scraping; returns how many scrapes succeeded.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Bench {
    /// The "Observability cost" section.
    pub(crate) fn telemetry(&mut self, nubo_measured: bool) {
        self.rep
            .heading("Observability cost: metrics, CPU metering and traces on vs off");
        if !nubo_measured {
            self.rep
                .block("Not measured: Nubo was not measured in this run.");
            return;
        }
        match self.telemetry_rows() {
            Ok((rows, summary, note)) => {
                self.rep.table(
                    &[
                        "round",
                        "server",
                        "requests/s",
                        "p50",
                        "p99",
                        "server CPU per request",
                        "errors",
                    ],
                    &rows,
                );
                self.rep.block(&summary);
                self.rep.block(&note);
            }
            Err(e) => self.rep.block(&format!("Not measured: {e:#}.")),
        }
    }

    fn telemetry_rows(&mut self) -> anyhow::Result<(Rows, String, String)> {
        let sink = OtlpSink::start()?;
        let endpoint = format!("http://{}", sink.addr);
        let off = self.start_variant("telemetry off", &["--no-telemetry"])?;
        let on = self.start_variant("telemetry on", &["--otlp-endpoint", &endpoint])?;
        let (rounds, warm, secs) = (
            self.plan.rounds,
            self.plan.warmup_secs,
            self.plan.measure_secs,
        );
        let mut rows = Vec::new();
        let mut results: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
        let mut scrapes = 0;
        for round in 1..=rounds {
            for (i, t) in [&off, &on].into_iter().enumerate() {
                progress(&format!(
                    "observability round {round}/{rounds}: {} -- warm-up {warm} s, then {secs} s",
                    t.label
                ));
                let url = format!("http://{}{HELLO_PATH}", t.addr);
                wrk::run(LOAD_CORE, &url, CONNS, warm)
                    .with_context(|| format!("warm-up of {}", t.label))?;
                let scraper = (i == 1).then(|| Scraper::start(t.addr));
                let m = self.measure(t, CONNS, secs)?;
                if let Some(s) = scraper {
                    scrapes += s.finish();
                }
                rows.push(vec![
                    round.to_string(),
                    t.label.clone(),
                    report::rps(m.w.rps),
                    micros(m.w.p50_us),
                    micros(m.w.p99_us),
                    format!("{:.1} µs", m.cpu_us_per_req),
                    m.w.errors.to_string(),
                ]);
                results[i].push(m);
            }
        }
        // The exporter batches; give it a moment to send what the last round left.
        std::thread::sleep(Duration::from_secs(2));
        let per_round = |f: fn(&Measured) -> f64| {
            report::median(
                results[1]
                    .iter()
                    .zip(&results[0])
                    .map(|(on, off)| f(on) / f(off))
                    .collect(),
            )
        };
        let rps_ratio = per_round(|m| m.w.rps);
        let cpu_ratio = per_round(|m| m.cpu_us_per_req);
        let summary = format!(
            "With everything on, the hello function served **{:.3}×** the requests/s of the \
             server started with `--no-telemetry` ({:+.1}%; the aim is within 5%) and used \
             {:.3}× the server CPU per request. Medians of per-round ratios over {rounds} \
             round(s), the two servers measured back to back.",
            rps_ratio,
            (rps_ratio - 1.0) * 100.0,
            cpu_ratio
        );
        let note = format!(
            "The OTLP sink received {} exports ({} KiB of protobuf spans) and {} scrapes of \
             `/_nubo/metrics` answered 200 during the \"on\" rounds, so both paths were \
             exercised. Both servers keep records, logs and usage aggregates (the record \
             writer's thread, off the request path).",
            sink.counts.exports.load(Ordering::Relaxed),
            sink.counts.bytes.load(Ordering::Relaxed) / 1024,
            scrapes
        );
        for t in [off, on] {
            let mut p = t.proc;
            let _ = p.terminate(Duration::from_secs(15));
        }
        Ok((rows, summary, note))
    }

    /// A Nubo server with `flags`, pinned to the server core, with examples/hello deployed.
    fn start_variant(&self, label: &str, flags: &[&str]) -> anyhow::Result<Target> {
        let data = self
            .tmp
            .path()
            .join(format!("data-{}", label.replace(' ', "-")));
        progress(&format!("starting nubo server ({label})"));
        let mut cmd = self.nubo_command(&data, Some(crate::SERVER_CORE));
        cmd.args(flags);
        let (proc, addr) = crate::Proc::spawn_server(
            "nubo server",
            cmd,
            "nubo listening on ",
            &self.log(&format!("nubo-{}", label.replace(' ', "-"))),
            crate::START_BOUND,
        )
        .with_context(|| format!("the nubo server ({label}) did not start"))?;
        self.deploy_example(addr)?;
        check_hello(addr, label)?;
        Ok(Target {
            label: label.into(),
            proc,
            addr,
        })
    }
}
