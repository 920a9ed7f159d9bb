//! Running wrk (pinned to the load core) and reading its report.

use anyhow::{Context as _, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one wrk run reported.
#[derive(Debug, Clone)]
pub struct WrkResult {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// Runs `taskset -c CORE wrk -t1 -cCONNS -dSECSs --latency URL` and parses its report.
pub fn run(core: &str, url: &str, conns: u32, secs: u64) -> anyhow::Result<WrkResult> {
    let mut child = Command::new("taskset")
        .args(["-c", core, "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "--latency", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start wrk")?;
    // wrk stops by itself after `secs`; the deadline only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {} s", secs + 30);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !status.success() {
        bail!(
            "wrk failed ({status}): {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&stdout).with_context(|| format!("unexpected wrk output:\n{stdout}"))
}

/// Parses wrk's `--latency` report.
pub fn parse(out: &str) -> anyhow::Result<WrkResult> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    let mut in_distribution = false;
    for line in out.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            match words.as_slice() {
                ["50%", v] => p50 = Some(duration_us(v)?),
                ["99%", v] => p99 = Some(duration_us(v)?),
                [pct, _] if pct.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            requests = words[0].parse::<u64>().ok();
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(WrkResult {
        requests: requests.context("no \"N requests in\" line")?,
        rps: rps.context("no Requests/sec line")?,
        p50_us: p50.context("no 50% line in the latency distribution")?,
        p99_us: p99.context("no 99% line in the latency distribution")?,
        errors,
    })
}

/// `850.00us`, `1.20ms`, `2.00s`, `1.00m` → µs.
fn duration_us(v: &str) -> anyhow::Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600e6)
    } else {
        bail!("unknown duration unit in {v:?}");
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("bad duration {v:?}"))?
        * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/hello/world
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   220.12us  100.00us   5.00ms   90.00%
    Req/Sec   140.00k    10.00k  150.00k    70.00%
  Latency Distribution
     50%  200.00us
     75%  250.00us
     90%  300.00us
     99%    1.86ms
  1400123 requests in 10.00s, 120.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec: 140012.30
Transfer/sec:     12.00MB
";

    #[test]
    fn parses_a_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 1_400_123);
        assert!((r.rps - 140_012.3).abs() < 1e-6);
        assert!((r.p50_us - 200.0).abs() < 1e-9);
        assert!((r.p99_us - 1860.0).abs() < 1e-9);
        assert_eq!(r.errors, 7);
    }

    #[test]
    fn units() {
        assert!((duration_us("1.50s").unwrap() - 1.5e6).abs() < 1e-6);
        assert!((duration_us("2.00m").unwrap() - 120e6).abs() < 1e-3);
        assert!(duration_us("3x").is_err());
    }
}
