//! The process scenario: cold start (a worker spawned for the request, to its first response)
//! and warm latency of process functions speaking the Lambda Runtime API, Python with
//! awslambdaric and Rust with lambda_runtime, next to the wasm hello on the same server. The
//! functions are the end-to-end tests' (`tests/process/`). Figures only, no pass/fail.

use crate::asynchronous::percentile;
use crate::http;
use crate::report::{median, micros};
use anyhow::{Context as _, bail, ensure};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The app holding the process functions.
const APP: &str = "pbench";
/// Bounds each request of the scenario (a cold Python worker starts in well under this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds the build of the test functions (pip, npm and cargo; minutes on a first run).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// Bounds the deploy.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

/// Column headers of the scenario's table.
pub const HEADERS: [&str; 7] = [
    "function",
    "cold: first response (min / median)",
    "cold: worker init (median)",
    "warm p50",
    "warm p99",
    "warm p50 vs wasm",
    "requests",
];

/// One runtime measured: how it is deployed.
struct Runtime {
    /// Label in the report.
    label: &'static str,
    /// Function name prefix (one function per cold sample).
    prefix: &'static str,
    /// Folder under `tests/process/`.
    source: &'static str,
    /// `command = …` line, if not the folder's `bootstrap`.
    command: Option<&'static str>,
}

const RUNTIMES: [Runtime; 2] = [
    Runtime {
        label: "process: Python 3.11, awslambdaric",
        prefix: "py",
        source: "python/app",
        command: Some(r#"["python3", "-m", "awslambdaric", "app.handler"]"#),
    },
    Runtime {
        label: "process: Rust, lambda_runtime",
        prefix: "rs",
        source: "rust/dist/echo",
        command: None,
    },
];

/// What the scenario does, for the report.
pub fn describe(cold_samples: usize, warm_requests: usize) -> String {
    format!(
        "Each process runtime is deployed as {cold_samples} identical functions with \
         `min_instances = 0`, each with a route; the first request to each finds no worker, so \
         a sandboxed worker is spawned for it: *cold: first response* is the driver's time from \
         sending that request to the last byte of the answer (spawn, runtime start-up, the \
         handler, the API Gateway 2.0 event and its response), *worker init* is what Nubo \
         recorded for it (spawn to the worker's first `/next`). Then {warm_requests} sequential \
         requests on one keep-alive connection go to a warm worker (*warm p50/p99*), and as many \
         `GET /hello/world` to the wasm hello (a fresh instance per request, as always). The \
         workers run on the server's core. The Python handler echoes the event it got; the Rust \
         one wraps it with its request id."
    )
}

/// Builds the test functions (`tests/process/build.sh`).
pub fn build(root: &Path, log: &Path) -> anyhow::Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new("bash")
        .arg(root.join("tests/process/build.sh"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("running tests/process/build.sh")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(
                status.success(),
                "tests/process/build.sh failed ({status}); see {}",
                log.display()
            );
            return Ok(());
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "tests/process/build.sh did not finish within {} s",
                BUILD_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the app (one function and route per cold sample and runtime) into `dir` and
/// deploys it with `nubo deploy`.
pub fn deploy(
    root: &Path,
    nubo: &Path,
    addr: SocketAddr,
    dir: &Path,
    cold_samples: usize,
) -> anyhow::Result<()> {
    let mut m = format!("[app]\nname = \"{APP}\"\n");
    for rt in &RUNTIMES {
        let source = root.join("tests/process").join(rt.source);
        for i in 0..cold_samples {
            m.push_str(&format!(
                "\n[function.{}{i}]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"256MiB\"\ntimeout = \"10s\"\nmin_instances = 0\n",
                rt.prefix,
                source.display()
            ));
            if let Some(c) = rt.command {
                m.push_str(&format!("command = {c}\n"));
            }
            m.push_str(&format!(
                "\n[[route]]\npath = \"/{APP}/{p}{i}\"\nfunction = \"{p}{i}\"\n",
                p = rt.prefix
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("nubo.toml"), m)?;
    let mut child = Command::new(nubo)
        .arg("deploy")
        .arg(dir)
        .env("NUBO_URL", format!("http://{addr}"))
        .env_remove("NUBO_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nubo deploy")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("deploying the process functions failed ({status}): {err}");
            }
            return Ok(());
        }
        if started.elapsed() > DEPLOY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "deploying the process functions took over {} s",
                DEPLOY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Figures of one function kind.
pub struct Figures {
    /// Label in the report.
    pub label: String,
    /// Cold first responses, µs (empty for the wasm hello).
    pub cold_us: Vec<f64>,
    /// Worker init times Nubo recorded, ms.
    pub init_ms: Vec<f64>,
    /// Warm request latencies, µs.
    pub warm_us: Vec<f64>,
}

impl Figures {
    /// The report row; `wasm_p50` is the wasm hello's warm p50 in µs.
    pub fn row(&self, wasm_p50: Option<f64>) -> Vec<String> {
        let cold = if self.cold_us.is_empty() {
            "— (no workers)".to_string()
        } else {
            let min = self.cold_us.iter().copied().fold(f64::INFINITY, f64::min);
            format!(
                "{} / {} ({} runs)",
                micros(min),
                micros(median(self.cold_us.clone())),
                self.cold_us.len()
            )
        };
        let init = if self.init_ms.is_empty() {
            "—".to_string()
        } else {
            micros(median(self.init_ms.clone()) * 1e3)
        };
        let p50 = percentile(&self.warm_us, 0.5);
        let p99 = percentile(&self.warm_us, 0.99);
        let ratio = match (p50, wasm_p50) {
            (Some(p), Some(w)) if w > 0.0 => format!("{:.1}×", p / w),
            _ => "—".to_string(),
        };
        vec![
            self.label.clone(),
            cold,
            init,
            p50.map_or("—".to_string(), micros),
            p99.map_or("—".to_string(), micros),
            ratio,
            self.warm_us.len().to_string(),
        ]
    }
}

/// Measures both process runtimes; the app must be deployed.
pub fn measure_process(
    addr: SocketAddr,
    cold_samples: usize,
    warm_requests: usize,
) -> anyhow::Result<Vec<Figures>> {
    let mut all = Vec::new();
    for rt in &RUNTIMES {
        let mut cold_us = Vec::new();
        for i in 0..cold_samples {
            let path = format!("/{APP}/{}{i}", rt.prefix);
            let t = Instant::now();
            let r = http::get(addr, &path, REQUEST_TIMEOUT)?;
            let took = t.elapsed();
            ensure!(
                r.status == 200,
                "GET {path} (cold) answered {}: {}",
                r.status,
                r.text()
            );
            cold_us.push(took.as_secs_f64() * 1e6);
        }
        let init_ms = recorded_init_ms(addr, rt.prefix, cold_samples)?;
        let warm_us = warm(addr, &format!("/{APP}/{}0", rt.prefix), warm_requests)?;
        all.push(Figures {
            label: rt.label.to_string(),
            cold_us,
            init_ms,
            warm_us,
        });
    }
    Ok(all)
}

/// Measures the wasm hello at `path` the same way as the warm process requests.
pub fn measure_wasm(addr: SocketAddr, path: &str, requests: usize) -> anyhow::Result<Figures> {
    Ok(Figures {
        label: "wasm: examples/hello".to_string(),
        cold_us: Vec::new(),
        init_ms: Vec::new(),
        warm_us: warm(addr, path, requests)?,
    })
}

/// The worker init times Nubo recorded for the cold invocations of `prefix0..prefixN`.
fn recorded_init_ms(addr: SocketAddr, prefix: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..n {
        // Records are written in batches: wait (bounded) for this one.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = http::get(
                addr,
                &format!("/_nubo/api/v1/apps/{APP}/invocations?function={prefix}{i}&limit=10"),
                REQUEST_TIMEOUT,
            )?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let found = v.as_array().and_then(|records| {
                records
                    .iter()
                    .filter(|rec| rec["cold"] == true)
                    .find_map(|rec| rec["init_ms"].as_f64())
            });
            if let Some(ms) = found {
                out.push(ms);
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(out)
}

/// `requests` sequential GETs of `path` on one keep-alive connection after one unmeasured
/// request; their latencies in µs.
fn warm(addr: SocketAddr, path: &str, requests: usize) -> anyhow::Result<Vec<f64>> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut conn = None;
    let mut out = Vec::with_capacity(requests);
    for i in 0..=requests {
        let t = Instant::now();
        let r = http::keep_alive(&mut conn, addr, request.as_bytes(), REQUEST_TIMEOUT)
            .with_context(|| format!("GET {path}"))?;
        let took = t.elapsed();
        ensure!(
            r.status == 200,
            "GET {path} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if i > 0 {
            out.push(took.as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}
