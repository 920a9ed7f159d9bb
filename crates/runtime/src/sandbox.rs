//! The worker sandbox: runs one process function worker (a program speaking the AWS Lambda
//! Runtime API) in its own PID, mount, IPC, UTS and network namespaces, under a memory and
//! process cap (cgroups v1 or v2), as an unprivileged user with rlimits, on a filesystem that
//! shows only system directories, the function's code (read-only at `/var/task`) and a private
//! size-capped `/tmp`.
//!
//! Nubo re-executes its own binary as `nubo __sandbox` (the launcher, see `launcher`), passes
//! it a `SOCK_SEQPACKET` control socket as stdin and receives back the Runtime API listener the
//! launcher bound on `127.0.0.1:9001` inside the worker's network namespace (SCM_RIGHTS) and,
//! when the function may reach the network, the egress proxy listener bound on
//! `127.0.0.1:9002` there: the worker's only way out, served by Nubo (`process::egress`).
//!
//! Invariants:
//! - A worker's processes are in its cgroup before its program starts (the launcher is moved
//!   there before it reads its settings), so the caps cover every process it ever forks.
//! - When the program exits, the worker is dropped, or Nubo dies, every process of the worker
//!   dies: the program's init is PID 1 of its namespace, the launcher kills it when the control
//!   socket ends, and `kill` / `Drop` also kill the whole cgroup.

mod cgroup;
mod launcher;
mod meter;
mod protocol;

use cgroup::{Layout, WorkerCgroup};
pub use meter::{Meter, Reading, Usage};
use protocol::{LaunchConfig, Report};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// Default unprivileged user and group of workers (`nobody`/`nogroup`).
pub const DEFAULT_UID: u32 = 65534;
/// Default group of workers, see [`DEFAULT_UID`].
pub const DEFAULT_GID: u32 = 65534;

/// Process cap per worker (`pids.max`): bounds fork and thread bombs to the worker.
pub const MAX_PROCESSES_PER_WORKER: u64 = 256;

/// `RLIMIT_NPROC` of workers. The kernel counts it per user across the whole host, and all
/// workers share one uid, so it is a host-wide backstop against fork bombs where no pids cgroup
/// exists, not the per-worker cap (that is [`MAX_PROCESSES_PER_WORKER`]).
pub const MAX_PROCESSES_PER_USER: u64 = 16_384;

/// `RLIMIT_NOFILE` of workers: bounds descriptor exhaustion (kernel memory) per process.
pub const MAX_OPEN_FILES: u64 = 1024;

/// How long the launcher may take to build the sandbox and start the program: a hung mount
/// or a stuck host must fail the spawn, not hang the caller forever.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `PATH` used to find a bare command name when the worker's environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables that point HTTP clients at the egress proxy (both spellings: libcurl reads only
/// the lowercase `http_proxy`, other clients prefer the uppercase ones).
const PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];

/// Variables that keep the Runtime API (and the worker's own loopback) off the proxy.
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// What `NO_PROXY` holds: the Runtime API is on loopback and must not go through the proxy.
const NO_PROXY: &str = "127.0.0.1,localhost";

/// Longest worker name: it becomes the hostname (at most 64 bytes) and a cgroup directory.
const MAX_NAME_LEN: usize = 63;

/// Server-wide sandbox settings (from `nubo server` flags).
#[derive(Debug, Clone)]
pub struct SandboxPolicy {
    /// false = run workers as plain child processes on the host (development only; logged loudly).
    pub enabled: bool,
    /// The binary re-executed as `<launcher> __sandbox`; default `std::env::current_exe()`.
    pub launcher: PathBuf,
    /// Unprivileged uid workers run as (default 65534).
    pub uid: u32,
    /// Unprivileged gid workers run as (default 65534).
    pub gid: u32,
    /// Whether functions may ask for `network = "host"`.
    pub allow_host_network: bool,
    /// Extra host paths mounted read-only at the same path inside the sandbox.
    pub readonly_paths: Vec<PathBuf>,
    /// Where state lives: the empty directory each sandbox mounts its new root on.
    pub scratch_dir: PathBuf,
}

impl SandboxPolicy {
    /// A policy with the sandbox on, the defaults above, and state under `scratch_dir`.
    pub fn new(scratch_dir: PathBuf) -> io::Result<SandboxPolicy> {
        Ok(SandboxPolicy {
            enabled: true,
            launcher: std::env::current_exe()?,
            uid: DEFAULT_UID,
            gid: DEFAULT_GID,
            allow_host_network: false,
            readonly_paths: Vec::new(),
            scratch_dir,
        })
    }
}

/// One worker to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Unique, short, `[a-z0-9-]` name: used for the cgroup and hostname.
    pub name: String,
    /// Host directory holding the function's unpacked code; read-only at /var/task in the
    /// sandbox. The worker's uid must be able to read it (and execute what it runs from it).
    pub code_dir: PathBuf,
    /// argv; argv[0] without '/' is looked up in PATH inside the sandbox, "./x" is relative to
    /// the task root (the working directory).
    pub argv: Vec<String>,
    /// The whole environment except `AWS_LAMBDA_RUNTIME_API` and `LAMBDA_TASK_ROOT`, which the
    /// sandbox sets (sandboxed: `127.0.0.1:9001` and `/var/task`; unsandboxed:
    /// `127.0.0.1:<port of the listener>` and the host `code_dir`).
    pub env: Vec<(String, String)>,
    /// cgroup memory cap (tmpfs pages written to /tmp are charged to it too).
    pub memory_bytes: u64,
    /// Size of the private tmpfs at /tmp (and the largest file the worker may write).
    pub tmp_bytes: u64,
    /// Share the host network namespace (only if the policy allows; else an error).
    pub host_network: bool,
    /// Hand out an egress proxy listener too ([`Sandboxed::proxy_listener`]) and point the
    /// program's `HTTP_PROXY`, `HTTPS_PROXY` (and lowercase forms) at it, with `NO_PROXY`
    /// covering loopback. Sandboxed, it is `127.0.0.1:9002` inside the worker's network
    /// namespace, the worker's only way out; with the host network or the sandbox off it is a
    /// host loopback port, and only advisory (the program can connect directly).
    pub egress_proxy: bool,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The function asks for host networking and the policy forbids it.
    #[error(
        "function asks for network = \"host\"; start the server with --allow-host-network to permit it"
    )]
    HostNetworkNotAllowed,
    /// The worker name is not usable as a hostname and cgroup name.
    #[error("worker name {0:?} is invalid: use 1 to 63 characters of a-z, 0-9 and '-'")]
    InvalidName(String),
    /// The worker's command is empty.
    #[error("the worker's command is empty; give the function a `command` or a `bootstrap` file")]
    EmptyCommand,
    /// This host cannot create the worker's namespaces.
    #[error(
        "cannot create sandbox namespaces ({0}); run the server as root, or with --sandbox off for development"
    )]
    Namespaces(String),
    /// The worker's cgroup could not be created or configured.
    #[error(
        "cannot set up the worker's cgroup: {0}; run the server as root with cgroups mounted at /sys/fs/cgroup, or with --sandbox off for development"
    )]
    Cgroup(io::Error),
    /// The launcher binary could not be started.
    #[error("cannot start the sandbox launcher {path}: {source}")]
    Launcher {
        /// The launcher that was run.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The sandbox reported a failure while building itself or starting the program.
    #[error("cannot start the worker: {0}")]
    Setup(String),
    /// Another operating system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What failed.
        source: io::Error,
    },
}

/// How the worker's program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the worker (it hit its memory cap).
    pub oom_killed: bool,
}

/// Which cgroup version carries the worker caps on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup/cgroup.controllers`).
    V2,
}

/// What this host supports, from [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    /// Whether workers are sandboxed at all (`enabled` in the policy).
    pub enabled: bool,
    /// Cgroup version in use, if any cgroup controller is available.
    pub cgroup: Option<CgroupVersion>,
    /// Whether memory caps are enforced.
    pub memory: bool,
    /// Whether per-worker process caps are enforced.
    pub pids: bool,
    /// Worker cgroups a previous, crashed server left behind and that were removed.
    pub stale_removed: usize,
}

impl fmt::Display for HostSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled {
            return f.write_str(
                "sandbox OFF: process workers run unconfined on the host (development only)",
            );
        }
        let version = match self.cgroup {
            Some(CgroupVersion::V1) => "cgroup v1",
            Some(CgroupVersion::V2) => "cgroup v2",
            None => "no cgroups",
        };
        write!(
            f,
            "sandbox on: namespaces usable, {version}, memory cap {}, process cap {}",
            if self.memory { "on" } else { "OFF" },
            if self.pids { "on" } else { "OFF" }
        )?;
        if self.stale_removed > 0 {
            write!(f, ", removed {} stale worker cgroups", self.stale_removed)?;
        }
        Ok(())
    }
}

/// Checks once, at server start, what this host supports, and removes worker cgroups a
/// crashed server left behind. Fails with an error telling the operator what to do when
/// namespaces cannot be created or no memory cgroup is available.
pub fn probe(policy: &SandboxPolicy) -> Result<HostSupport, SpawnError> {
    if !policy.enabled {
        return Ok(HostSupport {
            enabled: false,
            cgroup: None,
            memory: false,
            pids: false,
            stale_removed: 0,
        });
    }
    let output = std::process::Command::new(&policy.launcher)
        .args(["__sandbox", "probe"])
        .stdin(Stdio::null())
        .env_clear()
        .output()
        .map_err(|source| SpawnError::Launcher {
            path: policy.launcher.clone(),
            source,
        })?;
    if !output.status.success() {
        let reason = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(SpawnError::Namespaces(if reason.is_empty() {
            output.status.to_string()
        } else {
            reason
        }));
    }
    let layout = Layout::detect();
    let Some(layout) = layout.filter(Layout::has_memory) else {
        return Err(SpawnError::Cgroup(io::Error::new(
            io::ErrorKind::NotFound,
            "no memory cgroup controller found under /sys/fs/cgroup",
        )));
    };
    let stale_removed = cgroup::remove_stale(&layout);
    Ok(HostSupport {
        enabled: true,
        cgroup: Some(match layout {
            Layout::V1 { .. } => CgroupVersion::V1,
            Layout::V2 { .. } => CgroupVersion::V2,
        }),
        memory: layout.has_memory(),
        pids: layout.has_pids(),
        stale_removed,
    })
}

/// Entry point of `nubo __sandbox` (the launcher); the binary's `main` calls it before any
/// other setup, with no threads started.
pub fn launcher_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    launcher::main(&args)
}

/// A running worker.
pub struct Sandboxed {
    child: Child,
    listener: Option<TcpListener>,
    proxy_listener: Option<TcpListener>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// Control socket to the launcher (sandboxed workers only).
    control: Option<AsyncFd<OwnedFd>>,
    /// Process group of an unsandboxed worker (its program's pid). Kept after the program is
    /// reaped: the kernel never reuses the id while the group has members, so a later kill
    /// still reaches exactly the program's leftover descendants.
    process_group: Option<nix::unistd::Pid>,
    cgroup: Option<WorkerCgroup>,
    exit: Option<Exit>,
}

impl fmt::Debug for Sandboxed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandboxed")
            .field("pid", &self.child.id())
            .field("sandboxed", &self.control.is_some())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Sandboxed {
    /// Starts a worker. Returns once the worker's Runtime API listener exists; the program is
    /// starting. The caller serves HTTP on `listener`.
    pub async fn spawn(policy: &SandboxPolicy, spec: WorkerSpec) -> Result<Sandboxed, SpawnError> {
        validate_name(&spec.name)?;
        if spec.argv.is_empty() {
            return Err(SpawnError::EmptyCommand);
        }
        if spec.host_network && !policy.allow_host_network {
            return Err(SpawnError::HostNetworkNotAllowed);
        }
        if policy.enabled {
            spawn_sandboxed(policy, spec).await
        } else {
            spawn_unsandboxed(&spec)
        }
    }

    /// The Runtime API listener (taken once).
    pub fn listener(&mut self) -> Option<TcpListener> {
        self.listener.take()
    }

    /// The egress proxy listener (taken once); only when the spec asked for one.
    pub fn proxy_listener(&mut self) -> Option<TcpListener> {
        self.proxy_listener.take()
    }

    /// The program's standard output (taken once).
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The program's standard error (taken once).
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Resolves when the worker's program exited; says how (code, signal, killed by the
    /// memory cap). Cancel-safe.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let mut reported = None;
        if let Some(control) = &self.control {
            let mut buf = vec![0; protocol::MAX_MESSAGE_BYTES];
            while let Ok(Some((len, _))) = receive(control, &mut buf).await {
                match Report::decode(&buf[..len]) {
                    Some(Report::ExitCode(code)) => reported = Some((Some(code), None)),
                    Some(Report::ExitSignal(signal)) => reported = Some((None, Some(signal))),
                    _ => continue,
                }
                break;
            }
        }
        let (code, signal) = match reported {
            Some(reported) => reported,
            // No report: the launcher itself ended (killed, or unsandboxed worker).
            None => match self.child.wait().await {
                Ok(status) => (status.code(), status.signal()),
                Err(_) => (None, None),
            },
        };
        let oom_killed = self.cgroup.as_ref().is_some_and(WorkerCgroup::oom_killed);
        let exit = Exit {
            code,
            signal,
            oom_killed,
        };
        self.exit = Some(exit);
        exit
    }

    /// Kills every process of the worker (idempotent, non-blocking).
    pub fn kill(&mut self) {
        if let Some(group) = self.process_group {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
    }

    /// Peak memory of the worker's cgroup in bytes, where measurable.
    pub fn memory_peak(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_peak()
    }

    /// How to measure what the worker uses per invocation: through its cgroup (sandboxed),
    /// else through its program's process. Usable after the worker is handed elsewhere.
    pub fn meter(&self) -> Meter {
        match (&self.cgroup, self.child.id()) {
            (Some(cgroup), _) => Meter::cgroup(cgroup.memory_source(), cgroup.cpu_source()),
            (None, Some(pid)) => Meter::process(pid),
            (None, None) => Meter::default(),
        }
    }

    /// Host pids of the worker's processes still alive, from its cgroup (sandboxed workers).
    pub fn members(&self) -> Vec<u32> {
        self.cgroup
            .as_ref()
            .map(WorkerCgroup::members)
            .unwrap_or_default()
    }

    /// Host paths of the worker's cgroup directories (empty when unsandboxed).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(|c| c.dirs().to_vec())
            .unwrap_or_default()
    }

    /// Host pid of the launcher (sandboxed) or program (unsandboxed), until it was reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        self.kill();
        // Closing the control socket also tells the launcher to go.
        self.control = None;
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        if cgroup.remove().is_ok() {
            return;
        }
        // Killed processes take a moment to leave the cgroup; remove it once they have.
        let cleanup = move || {
            for _ in 0..250 {
                cgroup.kill_all();
                if cgroup.remove().is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(cgroup = ?cgroup.dirs(), "worker cgroup still busy after 5 s; the next server start removes it");
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn_blocking(cleanup));
        } else {
            std::thread::spawn(cleanup);
        }
    }
}

/// `RLIMIT_FSIZE` for a worker with `tmp_bytes` of /tmp: a little above the tmpfs size, so
/// filling /tmp fails with ENOSPC (which programs handle) before SIGXFSZ (which kills them).
fn file_size_limit(tmp_bytes: u64) -> u64 {
    tmp_bytes.saturating_add(1024 * 1024)
}

fn validate_name(name: &str) -> Result<(), SpawnError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpawnError::InvalidName(name.to_owned()))
    }
}

/// The environment the program gets: the caller's, minus the variables the sandbox owns (the
/// two Runtime API ones, and the proxy ones when `proxy` is the egress proxy's address).
fn program_env(
    spec_env: &[(String, String)],
    api: String,
    task_root: String,
    proxy: Option<String>,
) -> Vec<(String, String)> {
    let owned = |k: &str| {
        k == "AWS_LAMBDA_RUNTIME_API"
            || k == "LAMBDA_TASK_ROOT"
            || (proxy.is_some()
                && (PROXY_VARIABLES.contains(&k) || NO_PROXY_VARIABLES.contains(&k)))
    };
    let mut env: Vec<(String, String)> = spec_env
        .iter()
        .filter(|(k, _)| !owned(k))
        .cloned()
        .collect();
    env.push(("AWS_LAMBDA_RUNTIME_API".into(), api));
    env.push(("LAMBDA_TASK_ROOT".into(), task_root));
    if let Some(proxy) = proxy {
        let url = format!("http://{proxy}");
        for name in PROXY_VARIABLES {
            env.push((name.into(), url.clone()));
        }
        for name in NO_PROXY_VARIABLES {
            env.push((name.into(), NO_PROXY.into()));
        }
    }
    env
}

/// A listener on an ephemeral host loopback port (unsandboxed or host-network workers).
fn bind_host_loopback(what: &'static str) -> Result<(std::net::TcpListener, String), SpawnError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error(what))?;
    let addr = listener
        .local_addr()
        .map_err(io_error("reading the listener address"))?
        .to_string();
    Ok((listener, addr))
}

/// Registers a listener with tokio.
fn async_listener(
    listener: std::net::TcpListener,
    what: &'static str,
) -> Result<TcpListener, SpawnError> {
    listener.set_nonblocking(true).map_err(io_error(what))?;
    TcpListener::from_std(listener).map_err(io_error(what))
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Io { what, source }
}

async fn spawn_sandboxed(
    policy: &SandboxPolicy,
    spec: WorkerSpec,
) -> Result<Sandboxed, SpawnError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let layout = Layout::detect().filter(Layout::has_memory).ok_or_else(|| {
        SpawnError::Cgroup(io::Error::new(
            io::ErrorKind::NotFound,
            "no memory cgroup controller found under /sys/fs/cgroup",
        ))
    })?;
    let new_root = policy.scratch_dir.join("root");
    std::fs::create_dir_all(&new_root).map_err(io_error(
        "creating the sandbox mount point in the scratch directory",
    ))?;
    let code_dir =
        std::path::absolute(&spec.code_dir).map_err(io_error("resolving the code directory"))?;
    let host_listener = if spec.host_network {
        Some(bind_host_loopback("binding the Runtime API listener")?)
    } else {
        None
    };
    let api = match &host_listener {
        Some((_, addr)) => addr.clone(),
        None => launcher::RUNTIME_API_ADDR.to_owned(),
    };
    let host_proxy = if spec.host_network && spec.egress_proxy {
        Some(bind_host_loopback("binding the egress proxy listener")?)
    } else {
        None
    };
    let proxy = match &host_proxy {
        Some((_, addr)) => Some(addr.clone()),
        None => spec
            .egress_proxy
            .then(|| launcher::EGRESS_PROXY_ADDR.to_owned()),
    };
    let config = LaunchConfig {
        name: spec.name.clone(),
        code_dir,
        env: program_env(&spec.env, api, launcher::TASK_ROOT.to_owned(), proxy),
        argv: spec.argv,
        tmp_bytes: spec.tmp_bytes,
        uid: policy.uid,
        gid: policy.gid,
        host_network: spec.host_network,
        readonly_paths: policy.readonly_paths.clone(),
        new_root,
        max_processes: MAX_PROCESSES_PER_USER,
        max_open_files: MAX_OPEN_FILES,
        egress_proxy: spec.egress_proxy,
    };
    let config = serde_json::to_vec(&config)
        .map_err(|e| SpawnError::Setup(format!("encoding the launch settings: {e}")))?;
    if config.len() > protocol::MAX_CONFIG_BYTES {
        return Err(SpawnError::Setup(format!(
            "the worker's command and environment take {} bytes, more than the {} allowed",
            config.len(),
            protocol::MAX_CONFIG_BYTES
        )));
    }

    let cgroup = WorkerCgroup::create(
        &layout,
        &spec.name,
        spec.memory_bytes,
        MAX_PROCESSES_PER_WORKER,
    )
    .map_err(SpawnError::Cgroup)?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SpawnError::Io {
        what: "creating the control socket",
        source: e.into(),
    })?;
    let child = Command::new(&policy.launcher)
        .arg("__sandbox")
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(source) => {
            let _ = cgroup.remove();
            return Err(SpawnError::Launcher {
                path: policy.launcher.clone(),
                source,
            });
        }
    };
    let mut worker = Sandboxed {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        listener: None,
        proxy_listener: None,
        control: None,
        cgroup: Some(cgroup),
        process_group: None,
        exit: None,
    };
    // The launcher waits for its settings, so it joins the cgroup before it forks anything.
    if let (Some(pid), Some(cgroup)) = (worker.child.id(), &worker.cgroup) {
        cgroup.join(pid).map_err(SpawnError::Cgroup)?;
    }
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| SpawnError::Io {
        what: "configuring the control socket",
        source: e.into(),
    })?;
    // SAFETY: `ours` is an open descriptor owned by the `OwnedFd` that the `AsyncFd` takes;
    // it is closed only when the `AsyncFd` drops it, and its raw value never changes.
    #[allow(unsafe_code, reason = "registering an owned socket")]
    let control = unsafe { AsyncFd::register(ours) }.map_err(|e| SpawnError::Io {
        what: "registering the control socket",
        source: e.into(),
    })?;
    let handshake = async {
        send_config(&control, &config)
            .await
            .map_err(io_error("sending the launch settings"))?;
        let mut buf = vec![0; protocol::MAX_MESSAGE_BYTES];
        match receive(&control, &mut buf)
            .await
            .map_err(io_error("reading the sandbox's answer"))?
        {
            Some((len, fds)) => match Report::decode(&buf[..len]) {
                Some(Report::Ready) => Ok(fds),
                Some(Report::Error(message)) => Err(SpawnError::Setup(message)),
                other => Err(SpawnError::Setup(format!(
                    "unexpected answer from the sandbox launcher: {other:?}"
                ))),
            },
            None => Err(SpawnError::Setup(
                "the sandbox launcher exited before starting the program".into(),
            )),
        }
    };
    let passed = match tokio::time::timeout(SPAWN_TIMEOUT, handshake).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(SpawnError::Setup(format!(
                "the sandbox was not ready within {SPAWN_TIMEOUT:?}"
            )));
        }
    };
    let mut passed = passed.into_iter().map(std::net::TcpListener::from);
    let listener = match host_listener {
        Some((listener, _)) => listener,
        None => passed.next().ok_or_else(|| {
            SpawnError::Setup("the sandbox launcher sent no Runtime API listener".into())
        })?,
    };
    worker.listener = Some(async_listener(
        listener,
        "registering the Runtime API listener",
    )?);
    if spec.egress_proxy {
        let proxy = match host_proxy {
            Some((listener, _)) => listener,
            None => passed.next().ok_or_else(|| {
                SpawnError::Setup("the sandbox launcher sent no egress proxy listener".into())
            })?,
        };
        worker.proxy_listener = Some(async_listener(
            proxy,
            "registering the egress proxy listener",
        )?);
    }
    worker.control = Some(control);
    Ok(worker)
}

fn spawn_unsandboxed(spec: &WorkerSpec) -> Result<Sandboxed, SpawnError> {
    let (listener, api) = bind_host_loopback("binding the Runtime API listener")?;
    let proxy = if spec.egress_proxy {
        Some(bind_host_loopback("binding the egress proxy listener")?)
    } else {
        None
    };
    let code_dir =
        std::path::absolute(&spec.code_dir).map_err(io_error("resolving the code directory"))?;
    let env = program_env(
        &spec.env,
        api,
        code_dir.display().to_string(),
        proxy.as_ref().map(|(_, addr)| addr.clone()),
    );
    let program = &spec.argv[0];
    // "./x" means the code directory, whatever the server's own working directory is.
    let program = if program.contains('/') && !Path::new(program).is_absolute() {
        code_dir.join(program).into_os_string()
    } else {
        program.into()
    };
    let (open_files, file_size) = (MAX_OPEN_FILES, file_size_limit(spec.tmp_bytes));
    let mut command = Command::new(program);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&code_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec and only calls setrlimit, which is
    // async-signal-safe, on values computed before the fork; it allocates nothing. The process
    // cap is left out: unsandboxed workers share the server's uid, and RLIMIT_NPROC counts
    // every process of that user, the server's threads included.
    #[allow(unsafe_code, reason = "rlimits before exec")]
    unsafe {
        command.pre_exec(move || {
            use nix::sys::resource::{Resource, setrlimit};
            setrlimit(Resource::RLIMIT_NOFILE, open_files, open_files)?;
            setrlimit(Resource::RLIMIT_FSIZE, file_size, file_size)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| {
        SpawnError::Setup(format!("cannot execute {:?}: {source}", spec.argv[0]))
    })?;
    let process_group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    let proxy_listener = match proxy {
        Some((proxy, _)) => Some(async_listener(
            proxy,
            "registering the egress proxy listener",
        )?),
        None => None,
    };
    Ok(Sandboxed {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        listener: Some(async_listener(
            listener,
            "registering the Runtime API listener",
        )?),
        proxy_listener,
        control: None,
        cgroup: None,
        process_group,
        exit: None,
    })
}

/// Sends the settings in chunks: `C` + bytes for all but the last, `E` + bytes for the last.
async fn send_config(control: &AsyncFd<OwnedFd>, config: &[u8]) -> io::Result<()> {
    let mut chunks = config.chunks(protocol::CHUNK_BYTES).peekable();
    if chunks.peek().is_none() {
        return send(control, b"E").await;
    }
    while let Some(chunk) = chunks.next() {
        let mut message = Vec::with_capacity(chunk.len() + 1);
        message.push(if chunks.peek().is_some() { b'C' } else { b'E' });
        message.extend_from_slice(chunk);
        send(control, &message).await?;
    }
    Ok(())
}

async fn send(control: &AsyncFd<OwnedFd>, message: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = control.writable().await?;
        match guard.try_io(|fd| {
            protocol::send(fd.get_ref().as_raw_fd(), message, &[]).map_err(io::Error::from)
        }) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn receive(
    control: &AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    loop {
        let mut guard = control.readable().await?;
        match guard
            .try_io(|fd| protocol::receive(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from))
        {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("fn-1-abc").is_ok());
        for bad in ["", "Upper", "a_b", "a/b", &"x".repeat(64)] {
            assert!(
                matches!(validate_name(bad), Err(SpawnError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_egress_proxy_variables_point_at_the_proxy_and_spare_loopback() {
        let spec_env = [
            ("HTTP_PROXY".to_owned(), "http://elsewhere:3128".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ];
        let env = program_env(
            &spec_env,
            "127.0.0.1:9001".into(),
            "/var/task".into(),
            Some("127.0.0.1:9002".into()),
        );
        let get = |name: &str| {
            let values: Vec<&str> = env
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            values
        };
        for name in PROXY_VARIABLES {
            assert_eq!(get(name), ["http://127.0.0.1:9002"], "{name}");
        }
        assert_eq!(get("NO_PROXY"), ["127.0.0.1,localhost"]);
        assert_eq!(get("no_proxy"), ["127.0.0.1,localhost"]);
        assert_eq!(get("A"), ["1"]);
        // Without a proxy, the function's own proxy settings are left alone.
        let env = program_env(&spec_env, "127.0.0.1:9001".into(), "/t".into(), None);
        assert!(env.contains(&spec_env[0]));
        assert!(!env.iter().any(|(k, _)| k == "NO_PROXY"));
    }

    #[test]
    fn the_sandbox_owns_the_runtime_api_variables() {
        let env = program_env(
            &[
                ("AWS_LAMBDA_RUNTIME_API".into(), "evil:1".into()),
                ("A".into(), "1".into()),
            ],
            "127.0.0.1:9001".into(),
            "/var/task".into(),
            None,
        );
        assert_eq!(
            env,
            [
                ("A".to_owned(), "1".to_owned()),
                (
                    "AWS_LAMBDA_RUNTIME_API".to_owned(),
                    "127.0.0.1:9001".to_owned()
                ),
                ("LAMBDA_TASK_ROOT".to_owned(), "/var/task".to_owned()),
            ]
        );
    }
}
