//! The sandbox launcher, `nubo __sandbox`: three processes per worker.
//!
//! - The *monitor* (the launcher itself, Nubo's child, already in the worker's cgroup) enters
//!   new mount, IPC, UTS, network and PID namespaces, forks the init, and watches two things:
//!   the control socket (end of stream means Nubo dropped the worker or died: kill the init) and
//!   the init's exit (report it).
//! - The *init* is PID 1 of the new PID namespace. It builds the filesystem, brings up
//!   loopback, binds the Runtime API listener (and the egress proxy listener), forks the
//!   program, reaps orphans and reports the program's exit. When it exits the kernel kills
//!   everything left in the namespace.
//! - The *program* drops to the unprivileged uid, applies rlimits and executes the function's
//!   command.
//!
//! The launcher is single-threaded, which is what makes `fork` sound here.

use super::protocol::{self, LaunchConfig, Report};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{
    AccessFlags, ForkResult, Gid, Pid, Uid, access, chdir, execve, fork, pipe2, pivot_root,
};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the function's code appears inside the sandbox.
pub(crate) const TASK_ROOT: &str = "/var/task";

/// The Runtime API address inside the sandbox's own network namespace.
pub(crate) const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";

/// The egress proxy address inside the sandbox's own network namespace: Nubo serves the proxy
/// on the listener bound there, so it is the worker's only way out.
pub(crate) const EGRESS_PROXY_ADDR: &str = "127.0.0.1:9002";

/// Host system directories visible (read-only) inside the sandbox, when they exist.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// Device nodes bind-mounted from the host into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "random", "urandom", "full", "tty"];

/// Size of the tmpfs that holds the new root's mount points: directories only, so small.
const ROOT_TMPFS_OPTIONS: &str = "size=1m,mode=0755";

/// Exit code of a program that could not be started (as shells use).
const EXIT_NOT_STARTED: u8 = 127;

/// Runs the launcher; `args` are the arguments after `__sandbox`.
pub(crate) fn main(args: &[String]) -> ExitCode {
    match args {
        [] => {}
        [probe] if probe == "probe" => return probe_main(),
        _ => {
            eprintln!(
                "error: `nubo __sandbox` is started by the server, not by hand (usage: nubo __sandbox [probe])"
            );
            return ExitCode::from(2);
        }
    }
    let control = match take_control_socket() {
        Ok(control) => control,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let config = match read_config(&control) {
        Ok(config) => config,
        Err(message) => {
            report(&control, &Report::Error(message), None);
            return ExitCode::FAILURE;
        }
    };
    monitor(&control, &config)
}

/// Checks that this host lets us create the worker namespaces (run in a throwaway process).
fn probe_main() -> ExitCode {
    match unshare(namespaces(false)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn namespaces(host_network: bool) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Nubo hands over the control socket as stdin; move it aside (close-on-exec) and give stdin
/// `/dev/null`, which the init and the program inherit.
fn take_control_socket() -> Result<OwnedFd, String> {
    let stdin = std::io::stdin();
    let stat =
        nix::sys::stat::fstat(stdin.as_fd()).map_err(|e| format!("cannot inspect stdin: {e}"))?;
    if nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT
        != nix::sys::stat::SFlag::S_IFSOCK
    {
        return Err("stdin is not the server's control socket".into());
    }
    let control = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate the control socket: {e}"))?;
    let null = fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    Ok(control)
}

fn read_config(control: &OwnedFd) -> Result<LaunchConfig, String> {
    let mut config = Vec::new();
    let mut buf = vec![0; protocol::CHUNK_BYTES + 1];
    loop {
        let (len, _) = protocol::receive(control.as_raw_fd(), &mut buf)
            .map_err(|e| format!("reading the launch settings: {e}"))?
            .ok_or("the server closed the control socket before sending the launch settings")?;
        let (last, chunk) = match buf[..len].split_first() {
            Some((b'E', chunk)) => (true, chunk),
            Some((b'C', chunk)) => (false, chunk),
            _ => return Err("malformed launch settings".into()),
        };
        if config.len() + chunk.len() > protocol::MAX_CONFIG_BYTES {
            return Err(format!(
                "launch settings exceed {} bytes",
                protocol::MAX_CONFIG_BYTES
            ));
        }
        config.extend_from_slice(chunk);
        if last {
            break;
        }
    }
    serde_json::from_slice(&config).map_err(|e| format!("malformed launch settings: {e}"))
}

fn report(control: &OwnedFd, report: &Report, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    // A failed send means Nubo is gone; the monitor notices the end of stream and cleans up.
    let _ = protocol::send(control.as_raw_fd(), &report.encode(), fd.as_slice());
}

/// The monitor: enter the namespaces, fork the init, wait for it or for Nubo to go away.
fn monitor(control: &OwnedFd, config: &LaunchConfig) -> ExitCode {
    if let Err(e) = unshare(namespaces(config.host_network)) {
        let message = format!(
            "cannot create the worker's namespaces ({e}); run the server as root, or with --sandbox off for development"
        );
        report(control, &Report::Error(message), None);
        return ExitCode::FAILURE;
    }
    // SIGCHLD is read through a signalfd, so it must not be delivered the ordinary way.
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sigchld), None) {
        report(
            control,
            &Report::Error(format!("blocking SIGCHLD: {e}")),
            None,
        );
        return ExitCode::FAILURE;
    }
    let signals =
        match SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                report(
                    control,
                    &Report::Error(format!("creating a signalfd: {e}")),
                    None,
                );
                return ExitCode::FAILURE;
            }
        };
    // SAFETY: the launcher is single-threaded (nothing in it starts a thread), so the child
    // gets a consistent copy of the whole process and may allocate and run ordinary code.
    #[allow(unsafe_code, reason = "fork in the single-threaded launcher")]
    let forked = unsafe { fork() };
    let init = match forked {
        Ok(ForkResult::Child) => {
            drop(signals);
            return init_main(control, config, &sigchld);
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            report(
                control,
                &Report::Error(format!("forking the sandbox init: {e}")),
                None,
            );
            return ExitCode::FAILURE;
        }
    };
    loop {
        let mut fds = [
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let control_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let child_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if child_ready {
            while let Ok(Some(_)) = signals.read_signal() {}
            match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    // The init reported the program's own exit first; this is a fallback.
                    report(control, &Report::ExitCode(code), None);
                    return ExitCode::SUCCESS;
                }
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    report(control, &Report::ExitSignal(signal as i32), None);
                    return ExitCode::SUCCESS;
                }
                _ => {}
            }
        }
        if control_ready {
            // Nubo never writes after the settings, so readable means end of stream.
            let mut buf = [0u8; 64];
            match protocol::receive(control.as_raw_fd(), &mut buf) {
                Ok(Some(_)) | Err(Errno::EINTR | Errno::EAGAIN) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    // Nubo is gone or dropped the worker: killing the init kills the whole PID namespace.
    let _ = kill(init, Signal::SIGKILL);
    let _ = waitpid(init, None);
    ExitCode::SUCCESS
}

/// PID 1 of the worker's namespace.
fn init_main(control: &OwnedFd, config: &LaunchConfig, sigchld: &SigSet) -> ExitCode {
    // The monitor blocked SIGCHLD for its signalfd; this process and the program want it back.
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(sigchld), None);
    // If the monitor dies (Nubo killed it), so does this init and with it the namespace.
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let listeners = match build_sandbox(config) {
        Ok(listeners) => listeners,
        Err(message) => {
            report(control, &Report::Error(message), None);
            return ExitCode::FAILURE;
        }
    };
    // The program reports a failed exec through this pipe; a successful exec closes it.
    let (exec_errors_read, exec_errors_write) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => {
            report(
                control,
                &Report::Error(format!("creating a pipe: {e}")),
                None,
            );
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: this process is a fork of the single-threaded launcher and started no threads.
    #[allow(unsafe_code, reason = "fork in the single-threaded sandbox init")]
    let forked = unsafe { fork() };
    let program = match forked {
        Ok(ForkResult::Child) => {
            drop(exec_errors_read);
            let error = exec_program(config);
            let _ = nix::unistd::write(&exec_errors_write, error.as_bytes());
            return ExitCode::from(EXIT_NOT_STARTED);
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            report(
                control,
                &Report::Error(format!("forking the program: {e}")),
                None,
            );
            return ExitCode::FAILURE;
        }
    };
    drop(exec_errors_write);
    let mut exec_error = String::new();
    let _ = fs::File::from(exec_errors_read).read_to_string(&mut exec_error);
    if !exec_error.is_empty() {
        report(control, &Report::Error(exec_error), None);
        let _ = waitpid(program, None);
        return ExitCode::FAILURE;
    }
    let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
    let _ = protocol::send(control.as_raw_fd(), &Report::Ready.encode(), &fds);
    drop(fds);
    drop(listeners);
    reap_until_exit(control, program)
}

/// Reaps every process that ends up orphaned to this init; returns when the program exits.
fn reap_until_exit(control: &OwnedFd, program: Pid) -> ExitCode {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => {
                report(control, &Report::ExitCode(code), None);
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == program => {
                report(control, &Report::ExitSignal(signal as i32), None);
                return ExitCode::from(128u8.saturating_add(signal as u8));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return ExitCode::FAILURE,
        }
    }
}

/// Builds the worker's world; returns the listeners bound in its network namespace: the
/// Runtime API's, then the egress proxy's if asked for (none with the host network).
fn build_sandbox(config: &LaunchConfig) -> Result<Vec<TcpListener>, String> {
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    let mut listeners = Vec::new();
    if !config.host_network {
        loopback_up().map_err(|e| format!("bringing up loopback: {e}"))?;
        let listener = TcpListener::bind(RUNTIME_API_ADDR)
            .map_err(|e| format!("binding the Runtime API at {RUNTIME_API_ADDR}: {e}"))?;
        listeners.push(listener);
        if config.egress_proxy {
            let proxy = TcpListener::bind(EGRESS_PROXY_ADDR)
                .map_err(|e| format!("binding the egress proxy at {EGRESS_PROXY_ADDR}: {e}"))?;
            listeners.push(proxy);
        }
    }
    let root = config.new_root.as_path();
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(ROOT_TMPFS_OPTIONS),
    )
    .map_err(|e| format!("mounting the sandbox root on {}: {e}", root.display()))?;
    for dir in SYSTEM_DIRS {
        expose_system_dir(root, Path::new(dir))?;
    }
    bind_read_only(
        &config.code_dir,
        &inside(root, Path::new(TASK_ROOT)),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    let tmp = root.join("tmp");
    make_dir(&tmp)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={},mode=1777", config.tmp_bytes.max(4096)).as_str()),
    )
    .map_err(|e| format!("mounting /tmp: {e}"))?;
    build_dev(&root.join("dev"))?;
    // Last, so a path under /tmp or /dev is not hidden by those mounts.
    for path in &config.readonly_paths {
        bind_read_only(path, &inside(root, path), MsFlags::empty())?;
    }
    make_dir(&root.join("proc"))?;
    nix::unistd::sethostname(&config.name).map_err(|e| format!("setting the hostname: {e}"))?;
    // Swap roots: the old root is stacked under the new one and then detached, so no path of
    // the host stays reachable.
    chdir(root).map_err(|e| format!("entering {}: {e}", root.display()))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root into {}: {e}", root.display()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host root: {e}"))?;
    chdir("/").map_err(|e| format!("entering the new root: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("making the sandbox root read-only: {e}"))?;
    Ok(listeners)
}

/// `/bin → usr/bin` style links are recreated as links; real directories are bound read-only.
fn expose_system_dir(root: &Path, dir: &Path) -> Result<(), String> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    let target = inside(root, dir);
    if meta.file_type().is_symlink() {
        let link =
            fs::read_link(dir).map_err(|e| format!("reading link {}: {e}", dir.display()))?;
        symlink(&link, &target).map_err(|e| format!("creating link {}: {e}", target.display()))
    } else {
        bind_read_only(dir, &target, MsFlags::empty())
    }
}

/// `path` (absolute on the host) under the new root.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn make_dir(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Bind-mounts `source` at `target` read-only, creating the mount point (a file or a
/// directory, like the source).
fn bind_read_only(source: &Path, target: &Path, extra: MsFlags) -> Result<(), String> {
    let meta =
        fs::metadata(source).map_err(|e| format!("read-only path {}: {e}", source.display()))?;
    if meta.is_dir() {
        make_dir(target)?;
    } else {
        if let Some(parent) = target.parent() {
            make_dir(parent)?;
        }
        fs::File::create(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    }
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("binding {}: {e}", source.display()))?;
    // A bind mount takes the read-only flag only on a second, remounting call.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
        None::<&str>,
    )
    .map_err(|e| format!("making {} read-only: {e}", source.display()))
}

/// A minimal `/dev`: a few harmless character devices and the usual links into `/proc`.
fn build_dev(dev: &Path) -> Result<(), String> {
    make_dir(dev)?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(|e| format!("mounting /dev: {e}"))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !fs::metadata(&host).is_ok_and(|m| m.file_type().is_char_device()) {
            continue;
        }
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        mount(
            Some(&host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding {}: {e}", host.display()))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| format!("creating /dev/{name}: {e}"))?;
    }
    Ok(())
}

/// Brings up `lo` in the new network namespace (it starts down, so 127.0.0.1 is unreachable).
fn loopback_up() -> Result<(), Errno> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    let request = libc::ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_flags: (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short,
        },
    };
    // SAFETY: `sock` is an open socket for the whole call and `request` is a fully initialized
    // `ifreq` that outlives it; SIOCSIFFLAGS only reads the name and flags from it.
    #[allow(unsafe_code, reason = "SIOCSIFFLAGS has no safe wrapper")]
    let result = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) };
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// In the forked program: drop privileges, set limits and execute the command. Returns only
/// on failure, with the reason.
fn exec_program(config: &LaunchConfig) -> String {
    match prepare_and_exec(config) {
        Ok(never) => match never {},
        Err(message) => message,
    }
}

fn prepare_and_exec(config: &LaunchConfig) -> Result<std::convert::Infallible, String> {
    let limits = [
        (Resource::RLIMIT_NPROC, config.max_processes, "processes"),
        (Resource::RLIMIT_NOFILE, config.max_open_files, "open files"),
        (
            Resource::RLIMIT_FSIZE,
            super::file_size_limit(config.tmp_bytes),
            "file size",
        ),
        (Resource::RLIMIT_CORE, 0, "core dumps"),
    ];
    for (resource, value, what) in limits {
        setrlimit(resource, value, value).map_err(|e| format!("limiting {what}: {e}"))?;
    }
    nix::unistd::setgroups(&[]).map_err(|e| format!("dropping supplementary groups: {e}"))?;
    let (uid, gid) = (Uid::from_raw(config.uid), Gid::from_raw(config.gid));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("switching to gid {gid}: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("switching to uid {uid}: {e}"))?;
    prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {e}"))?;
    chdir(TASK_ROOT).map_err(|e| format!("entering {TASK_ROOT}: {e}"))?;
    let program = config
        .argv
        .first()
        .ok_or("the function's command is empty")?;
    let path = resolve(program, &config.env)?;
    let cstring = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let path = cstring(&path)?;
    let argv = config
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = config
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let e = execve(&path, &argv, &env).unwrap_err();
    Err(format!("cannot execute {program:?}: {e}"))
}

/// A name without `/` is searched in the program's `PATH`, inside the sandbox.
fn resolve(program: &str, env: &[(String, String)]) -> Result<String, String> {
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(super::DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{dir}/{program}");
        if fs::metadata(&candidate).is_ok_and(|m| m.is_file())
            && access(candidate.as_str(), AccessFlags::X_OK).is_ok()
        {
            return Ok(candidate);
        }
    }
    Err(format!(
        "program {program:?} not found in PATH ({path}) inside the sandbox"
    ))
}
