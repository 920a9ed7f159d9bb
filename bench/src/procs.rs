//! Child processes the benchmark starts (each owned by a guard that kills it on drop, also when
//! the driver panics) and what `/proc` says about them.

use anyhow::{Context as _, bail};
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A started child; killed (SIGKILL) and reaped when dropped unless it already exited.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts a server whose first stdout line is `<prefix>http://ADDR` and waits (at most
    /// `timeout`) for that line. Stderr goes to `log`; later stdout lines are discarded.
    pub fn spawn_server(
        name: &str,
        mut cmd: Command,
        prefix: &str,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep the pipe drained so the server never blocks on stdout.
            for _ in lines.map_while(Result::ok) {}
        });
        let mut p = Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        };
        let line = match rx.recv_timeout(timeout) {
            Ok(l) => l,
            Err(_) => {
                let status = p.child.try_wait().ok().flatten();
                bail!(
                    "{name} did not print its address within {timeout:?} ({}); its stderr ends with:\n{}",
                    status.map_or("still running".to_string(), |s| s.to_string()),
                    p.log_tail()
                );
            }
        };
        let addr = line
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("http://"))
            .and_then(|a| a.trim().trim_end_matches('/').parse::<SocketAddr>().ok())
            .with_context(|| {
                format!("{name}'s first line {line:?} is not \"{prefix}http://ADDR\"")
            })?;
        Ok((p, addr))
    }

    /// Starts a process that announces nothing (readiness is checked by the caller).
    pub fn spawn_quiet(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let stdout = stderr.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Ok(st);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "  ({} did not exit within {grace:?} of SIGTERM; killing it)",
            self.name
        );
        let _ = self.child.kill();
        Ok(self.child.wait()?)
    }

    /// Waits up to `timeout` for the exit (for commands that end by themselves).
    pub fn wait_for(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its stderr log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }

    /// utime + stime of all its threads, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("{} is gone", self.name))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime 15.
        let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
        let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
        Ok(utime + stime)
    }

    /// Context switches (voluntary + involuntary) of its live threads, from
    /// /proc/PID/task/*/status. Threads that already exited are not counted.
    pub fn context_switches(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        let dir = format!("/proc/{}/task", self.pid());
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{} is gone", self.name))? {
            let Ok(status) = std::fs::read_to_string(entry?.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            total += status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// VmRSS and VmSize from /proc/PID/status.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("{} is gone", self.name))?;
        let field = |k: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {k} in /proc/PID/status"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            size_kib: field("VmSize:")?,
            threads: field("Threads:")?,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Memory figures of a process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub size_kib: u64,
    pub threads: u64,
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// One CPU's counters from /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// Time the hypervisor ran something else.
    pub steal: u64,
    /// Everything, idle included.
    pub total: u64,
}

/// The counters of `cpuN`.
pub fn cpu_times(n: usize) -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let key = format!("cpu{n}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key.as_str()))
        .with_context(|| format!("no {key} line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    Ok(CpuTimes {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
        total: (0..8).map(at).sum(),
    })
}

impl CpuTimes {
    /// Counter deltas since `earlier`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            busy: self.busy.saturating_sub(earlier.busy),
            steal: self.steal.saturating_sub(earlier.steal),
            total: self.total.saturating_sub(earlier.total),
        }
    }
}

/// Whether `prog` is an executable on PATH.
pub fn on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}
