//! The machine description written next to the figures.

use std::path::Path;
use std::process::Command;

/// The first output line of a command; `any_status` accepts a failing exit (`wrk -v` exits 1).
fn command_line(prog: &str, args: &[&str], dir: &Path, any_status: bool) -> String {
    Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| any_status || o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn proc_field(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Rows of (what, value).
pub fn describe(root: &Path) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_kib: f64 = proc_field("/proc/meminfo", "MemTotal")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string());
    let wrk = command_line("wrk", &["-v"], root, true);
    let wrk = wrk
        .split(" Copyright")
        .next()
        .unwrap_or_default()
        .to_string();
    vec![
        (
            "date (UTC)".into(),
            command_line("date", &["-u", "+%Y-%m-%d %H:%M"], root, false),
        ),
        ("CPUs (nproc)".into(), cores.to_string()),
        (
            "CPU model".into(),
            proc_field("/proc/cpuinfo", "model name"),
        ),
        ("kernel".into(), kernel),
        (
            "memory".into(),
            format!("{:.1} GiB", mem_kib / (1024.0 * 1024.0)),
        ),
        ("load average at start".into(), load),
        (
            "rustc".into(),
            command_line("rustc", &["--version"], root, false),
        ),
        ("wrk".into(), wrk),
        (
            "nubo commit".into(),
            command_line("git", &["rev-parse", "--short", "HEAD"], root, false),
        ),
    ]
}
