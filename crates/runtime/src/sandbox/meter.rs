//! What a worker used over one invocation: its peak memory and CPU time, from its cgroup when
//! it runs in one (every process of the worker counted), else from `/proc` for its program's
//! process alone.
//!
//! The files read are kernel pseudo-files (cgroupfs, procfs): reading one is a few
//! microseconds of memory access, not disk IO. A worker serves one invocation at a time, so
//! what changed between [`Meter::start`] and [`Meter::finish`] belongs to that invocation.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A worker's cgroup directory and the cgroup version that decides its file names.
#[derive(Debug, Clone)]
pub(crate) enum CgroupFile {
    /// v1: `cpuacct.usage` (ns) and `memory.max_usage_in_bytes` (reset by writing 0).
    V1(PathBuf),
    /// v2: `cpu.stat`'s `usage_usec`, and `memory.peak` (reset per open file by writing to
    /// it, Linux 6.12+).
    V2(PathBuf),
}

/// How to measure one worker; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// Its cgroup's memory accounting, when it has a cgroup with the memory controller.
    memory: Option<CgroupFile>,
    /// Its cgroup's CPU accounting, when it has a cgroup that keeps one.
    cpu: Option<CgroupFile>,
    /// Its program's host pid, when it runs without a cgroup.
    pid: Option<u32>,
}

/// The state at the start of an invocation, for [`Meter::finish`].
#[derive(Debug)]
pub struct Reading {
    cpu: Option<Duration>,
    /// v2 only: the `memory.peak` file whose peak was reset; its own reads see that reset.
    peak: Option<fs::File>,
}

/// What a worker used between [`Meter::start`] and [`Meter::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Peak memory in bytes: the cgroup's high-water mark, else the program's `VmHWM`.
    pub peak_memory: Option<u64>,
    /// CPU time spent.
    pub cpu_time: Option<Duration>,
}

impl Meter {
    /// Measures a worker through its cgroup's files.
    pub(crate) fn cgroup(memory: Option<CgroupFile>, cpu: Option<CgroupFile>) -> Meter {
        Meter {
            memory,
            cpu,
            pid: None,
        }
    }

    /// Measures a worker without a cgroup through its program's `/proc/<pid>` files. Only that
    /// process is counted: processes it starts are not (their memory and CPU time are
    /// theirs), and a bootstrap that runs the real program as a child instead of `exec`ing it
    /// is measured as itself.
    pub(crate) fn process(pid: u32) -> Meter {
        Meter {
            memory: None,
            cpu: None,
            pid: Some(pid),
        }
    }

    /// Resets the peak memory and reads the CPU clock, at the start of an invocation.
    pub fn start(&self) -> Reading {
        let mut reading = Reading {
            cpu: self.cpu_time(),
            peak: None,
        };
        // A peak that cannot be reset covers the worker's whole life: still reported, as it
        // bounds this invocation's from above (Lambda's "Max Memory Used" is the same).
        match (&self.memory, self.pid) {
            (Some(CgroupFile::V1(dir)), _) => {
                let _ = fs::write(dir.join("memory.max_usage_in_bytes"), "0");
            }
            (Some(CgroupFile::V2(dir)), _) => {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join("memory.peak"));
                if let Ok(mut file) = file {
                    // Kernels before 6.12 refuse the write.
                    let _ = file.write_all(b"reset\n");
                    reading.peak = Some(file);
                }
            }
            (None, Some(pid)) => {
                // `5` resets the peak resident set size (`VmHWM`) to the current one.
                let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
            }
            (None, None) => {}
        }
        reading
    }

    /// What the worker used since `start`. Call it before the worker is handed to another
    /// invocation.
    pub fn finish(&self, start: Reading) -> Usage {
        let peak_memory = match (&self.memory, self.pid) {
            (Some(CgroupFile::V1(dir)), _) => read_number(&dir.join("memory.max_usage_in_bytes")),
            (Some(CgroupFile::V2(dir)), _) => match start.peak {
                Some(mut file) => read_open(&mut file),
                None => read_number(&dir.join("memory.peak")),
            },
            (None, Some(pid)) => vm_hwm(pid),
            (None, None) => None,
        };
        let cpu_time = match (start.cpu, self.cpu_time()) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        Usage {
            peak_memory,
            cpu_time,
        }
    }

    /// CPU time the worker has used since it started.
    fn cpu_time(&self) -> Option<Duration> {
        match (&self.cpu, self.pid) {
            (Some(CgroupFile::V1(dir)), _) => {
                read_number(&dir.join("cpuacct.usage")).map(Duration::from_nanos)
            }
            (Some(CgroupFile::V2(dir)), _) => {
                let stat = fs::read_to_string(dir.join("cpu.stat")).ok()?;
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_micros)
            }
            (None, Some(pid)) => process_cpu_time(pid),
            (None, None) => None,
        }
    }
}

/// CPU time of the threads of process `pid` alive now: the sum of the first fields of their
/// `schedstat` (nanoseconds on the CPU; `/proc/<pid>/stat` has only clock ticks, 10 ms). A
/// thread that ends between two readings takes its time with it, so a delta can come out low,
/// never high.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("schedstat")) else {
            // The thread ended while we looked.
            continue;
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        total = total.saturating_add(ns);
    }
    Some(Duration::from_nanos(total))
}

/// The peak resident set size of process `pid` in bytes (`VmHWM`, in kB in the file).
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// A file holding one decimal number.
fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The number in an already open file, read from its start.
fn read_open(file: &mut fs::File) -> Option<u64> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_measured_through_proc() {
        let meter = Meter::process(std::process::id());
        let start = meter.start();
        // Touch 16 MiB so the resident set grows past it, and burn some CPU.
        let mut block = vec![0u8; 16 << 20];
        for (i, b) in block.iter_mut().enumerate().step_by(4096) {
            *b = i as u8;
        }
        std::hint::black_box(&block);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let usage = meter.finish(start);
        let peak = usage.peak_memory.expect("VmHWM is readable");
        assert!(peak >= 16 << 20, "peak {peak}");
        let cpu = usage.cpu_time.expect("schedstat is readable");
        assert!(cpu > Duration::ZERO, "{cpu:?}");
    }

    /// Runs a child in a fresh worker cgroup (needs root and a memory cgroup; skipped with a
    /// note elsewhere): the memory and CPU of its own children count too.
    #[test]
    fn a_cgroup_is_measured_as_a_whole() {
        use super::super::cgroup::{Layout, WorkerCgroup};
        use std::process::{Command, Stdio};
        let Some(layout) = Layout::detect().filter(Layout::has_memory) else {
            eprintln!("skipped: no memory cgroup controller on this host");
            return;
        };
        let name = format!("meter-test-{}", std::process::id());
        let cgroup = match WorkerCgroup::create(&layout, &name, 256 << 20, 64) {
            Ok(cgroup) => cgroup,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: cannot create a cgroup ({e}); run as root");
                return;
            }
            Err(e) => panic!("creating a cgroup: {e}"),
        };
        let meter = Meter::cgroup(cgroup.memory_source(), cgroup.cpu_source());
        // Waits for a line, then holds 16 MiB (read through two child processes) and counts.
        let script = "read go; held=$(head -c 16777216 /dev/zero | tr '\\000' a); \
                      i=0; while [ \"$i\" -lt 100000 ]; do i=$((i + 1)); done; echo ${#held}";
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sh");
        cgroup.join(child.id()).expect("join the cgroup");
        let start = meter.start();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                cgroup.kill_all();
                panic!("the measured child did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let usage = meter.finish(start);
        for _ in 0..100 {
            if cgroup.remove().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.trim(), "16777216");
        let peak = usage.peak_memory.expect("the cgroup's peak is readable");
        assert!(peak >= 16 << 20, "peak {peak}");
        if layout_keeps_cpu(&layout) {
            let cpu = usage.cpu_time.expect("the cgroup's CPU time is readable");
            assert!(cpu > Duration::from_millis(5), "{cpu:?}");
        }
    }

    /// Whether worker cgroups of `layout` account CPU time (v2 always; v1 with cpuacct).
    fn layout_keeps_cpu(layout: &super::super::cgroup::Layout) -> bool {
        !matches!(
            layout,
            super::super::cgroup::Layout::V1 { cpuacct: None, .. }
        )
    }

    #[test]
    fn nothing_to_measure_reports_nothing() {
        let meter = Meter::default();
        assert_eq!(meter.finish(meter.start()), Usage::default());
    }
}
