//! Per-worker cgroups: a memory cap and a process cap, on cgroup v1 (one hierarchy per
//! controller) or v2 (one unified hierarchy), and the worker's CPU time and peak memory. Workers live under
//! `<hierarchy>/nubo/<server>/<worker>`, where `<server>` names this Nubo process by pid and
//! start time, so a restarted server can tell its own cgroups from those a crashed one left.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The cgroup filesystem root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directory under each hierarchy that holds Nubo's cgroups.
const PARENT: &str = "nubo";

/// Which cgroup hierarchies carry the memory and pids controllers on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Unified hierarchy; the flags say whether memory and pids are available in it.
    V2 {
        root: PathBuf,
        memory: bool,
        pids: bool,
    },
    /// One hierarchy per controller. `cpuacct` only measures (a worker's CPU time); v2 has
    /// that in every cgroup (`cpu.stat`).
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
}

impl Layout {
    /// Looks at `/sys/fs/cgroup` once.
    pub(crate) fn detect() -> Option<Layout> {
        let root = Path::new(CGROUP_ROOT);
        if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
            return Some(Layout::V2 {
                root: root.to_path_buf(),
                memory: has("memory"),
                pids: has("pids"),
            });
        }
        let dir = |name: &str| {
            let path = root.join(name);
            path.join("cgroup.procs").exists().then_some(path)
        };
        let (memory, pids, cpuacct) = (dir("memory"), dir("pids"), dir("cpuacct"));
        (memory.is_some() || pids.is_some()).then_some(Layout::V1 {
            memory,
            pids,
            cpuacct,
        })
    }

    pub(crate) fn has_memory(&self) -> bool {
        match self {
            Layout::V2 { memory, .. } => *memory,
            Layout::V1 { memory, .. } => memory.is_some(),
        }
    }

    pub(crate) fn has_pids(&self) -> bool {
        match self {
            Layout::V2 { pids, .. } => *pids,
            Layout::V1 { pids, .. } => pids.is_some(),
        }
    }

    /// The hierarchy roots this layout uses (one for v2, up to three for v1).
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2 { root, .. } => vec![root.clone()],
            Layout::V1 {
                memory,
                pids,
                cpuacct,
            } => memory
                .iter()
                .chain(pids.iter())
                .chain(cpuacct.iter())
                .cloned()
                .collect(),
        }
    }
}

/// This server's cgroup directory name: `<pid>-<start time in clock ticks>`.
fn server_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or(0))
    })
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, which tells a live server from
/// an unrelated process that reused its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One worker's cgroup (a directory per hierarchy in v1).
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    layout: Layout,
    /// The worker's name: its directory's name in each hierarchy.
    name: String,
    /// Directories in the order memory, pids, cpuacct (v1) or the single v2 directory.
    dirs: Vec<PathBuf>,
}

impl WorkerCgroup {
    /// Creates the worker's cgroup with its caps. A leftover of the same name is emptied and
    /// replaced.
    pub(crate) fn create(
        layout: &Layout,
        name: &str,
        memory_bytes: u64,
        max_processes: u64,
    ) -> io::Result<WorkerCgroup> {
        let mut dirs = Vec::new();
        for root in layout.roots() {
            let server = root.join(PARENT).join(server_name());
            if let Layout::V2 { .. } = layout {
                // v2 only hands a controller to children whose parent enabled it.
                let wanted = [("memory", layout.has_memory()), ("pids", layout.has_pids())];
                for dir in [root.clone(), root.join(PARENT), server.clone()] {
                    fs::create_dir_all(&dir)?;
                    for (controller, present) in wanted {
                        if present {
                            write(
                                &dir.join("cgroup.subtree_control"),
                                &format!("+{controller}"),
                            )?;
                        }
                    }
                }
            }
            let dir = server.join(name);
            if dir.exists() {
                kill_members(&dir);
                remove_dir(&dir)?;
            }
            fs::create_dir_all(&dir)?;
            dirs.push(dir);
        }
        let cgroup = WorkerCgroup {
            layout: layout.clone(),
            name: name.to_owned(),
            dirs,
        };
        if let Some(dir) = cgroup.memory_dir() {
            match &cgroup.layout {
                Layout::V2 { .. } => {
                    write(&dir.join("memory.max"), &memory_bytes.to_string())?;
                    // Swap would let a worker exceed its cap without ever being killed.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                Layout::V1 { .. } => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &memory_bytes.to_string(),
                    )?;
                    let _ = write(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &memory_bytes.to_string(),
                    );
                }
            }
        }
        if let Some(dir) = cgroup.pids_dir() {
            write(&dir.join("pids.max"), &max_processes.to_string())?;
        }
        Ok(cgroup)
    }

    /// The worker's directory under hierarchy `root`.
    fn dir_under(&self, root: &Path) -> PathBuf {
        root.join(PARENT).join(server_name()).join(&self.name)
    }

    fn memory_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 {
                root, memory: true, ..
            } => Some(self.dir_under(root)),
            Layout::V1 {
                memory: Some(root), ..
            } => Some(self.dir_under(root)),
            _ => None,
        }
    }

    fn pids_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 {
                root, pids: true, ..
            } => Some(self.dir_under(root)),
            Layout::V1 {
                pids: Some(root), ..
            } => Some(self.dir_under(root)),
            _ => None,
        }
    }

    /// Where the worker's CPU time is read, with how: v2's `cpu.stat` exists in every
    /// cgroup, v1 needs the cpuacct hierarchy.
    pub(crate) fn cpu_source(&self) -> Option<super::meter::CgroupFile> {
        match &self.layout {
            Layout::V2 { root, .. } => Some(super::meter::CgroupFile::V2(self.dir_under(root))),
            Layout::V1 {
                cpuacct: Some(root),
                ..
            } => Some(super::meter::CgroupFile::V1(self.dir_under(root))),
            Layout::V1 { cpuacct: None, .. } => None,
        }
    }

    /// Where the worker's peak memory is read (and reset), with how.
    pub(crate) fn memory_source(&self) -> Option<super::meter::CgroupFile> {
        let dir = self.memory_dir()?;
        Some(match self.layout {
            Layout::V2 { .. } => super::meter::CgroupFile::V2(dir),
            Layout::V1 { .. } => super::meter::CgroupFile::V1(dir),
        })
    }

    /// Moves a process (and so everything it later forks) into the cgroup.
    pub(crate) fn join(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes currently in the cgroup.
    pub(crate) fn members(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs.iter().flat_map(|dir| read_members(dir)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every member; does not wait for them to die.
    pub(crate) fn kill_all(&self) {
        for dir in &self.dirs {
            kill_members(dir);
        }
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = self.memory_dir() else {
            return false;
        };
        let file = match self.layout {
            Layout::V2 { .. } => "memory.events",
            Layout::V1 { .. } => "memory.oom_control",
        };
        let Ok(text) = fs::read_to_string(dir.join(file)) else {
            return false;
        };
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .any(|(key, value)| {
                key == "oom_kill" && value.trim().parse::<u64>().is_ok_and(|n| n > 0)
            })
    }

    /// Peak memory use in bytes.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        let file = match self.layout {
            Layout::V2 { .. } => "memory.peak",
            Layout::V1 { .. } => "memory.max_usage_in_bytes",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Removes the cgroup directories; fails while members are still exiting.
    pub(crate) fn remove(&self) -> io::Result<()> {
        let mut result = Ok(());
        for dir in &self.dirs {
            if let Err(e) = remove_dir(dir) {
                result = Err(e);
            }
        }
        result
    }

    /// Host paths of the cgroup directories (for diagnostics and tests).
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// Kills the members of and removes the cgroups that servers no longer running left behind.
/// Returns how many worker cgroups were removed.
pub(crate) fn remove_stale(layout: &Layout) -> usize {
    let mut removed = 0;
    for root in layout.roots() {
        let Ok(servers) = fs::read_dir(root.join(PARENT)) else {
            continue;
        };
        for server in servers.flatten() {
            let name = server.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == server_name() || server_alive(name) {
                continue;
            }
            let Ok(workers) = fs::read_dir(server.path()) else {
                continue;
            };
            for worker in workers.flatten() {
                if worker.file_type().is_ok_and(|t| t.is_dir()) {
                    kill_members(&worker.path());
                    // Killed members take a moment to leave; try a few times.
                    for _ in 0..50 {
                        if remove_dir(&worker.path()).is_ok() {
                            removed += 1;
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
            let _ = remove_dir(&server.path());
        }
    }
    removed
}

/// Whether the server named `<pid>-<start>` is still running.
fn server_alive(name: &str) -> bool {
    let Some((pid, start)) = name.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

fn read_members(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| {
            text.lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_members(dir: &Path) {
    // cgroup.kill (v2, Linux 5.14+) kills atomically, even members forking at that moment.
    if write(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in read_members(dir) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_marks_this_server_alive() {
        let name = server_name();
        assert!(server_alive(name), "{name} should name this live process");
        assert!(!server_alive("999999999-1"));
        assert!(!server_alive("garbage"));
    }
}
