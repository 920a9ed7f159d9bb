//! Compilation in a separate, bounded process, so hostile code can exhaust only a worker's
//! time and memory, never the server's.
//!
//! Protocol between the server (parent) and [`compile_worker_main`] (child):
//! - the parent spawns the configured [`CompileWorker`] command with `RLIMIT_DATA` set to
//!   `compile_memory_limit` and core dumps off, writes the component to its stdin and closes it;
//! - on success the child writes the serialized artifact to stdout and exits 0;
//! - when it refuses the code it writes one JSON line to stdout,
//!   `{"code":"invalid_component"|"compile_failed"|"internal","message":"..."}`, and exits
//!   with [`EXIT_REFUSED`];
//! - anything else (a signal, another exit code) is a crash; "memory allocation ... failed" on
//!   stderr or an `ENOMEM` means the memory limit was hit;
//! - the parent kills the child (SIGKILL) at `compile_timeout`.
//!
//! The child builds its engine from the same `config::base_config` as the server, so the
//! artifact passes the server's compatibility check; the parent still refuses to load anything
//! whose header does not match (see `WasmRuntime::load`).

use crate::check::{self, code_error};
use crate::config::{CompileWorker, RuntimeConfig};
use nubo_core::ErrorCode;
use nubo_core::engine::CodeError;
use std::io::{Read, Write};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a worker that refused the code (the reason is on stdout as JSON).
pub const EXIT_REFUSED: u8 = 3;

/// Cap on an artifact read back from the worker. Bounds the parent's memory if a worker
/// misbehaves; real artifacts are a small multiple of the component's size.
const MAX_ARTIFACT_BYTES: u64 = 8 * nubo_core::limits::MAX_COMPONENT_BYTES;

/// Cap on the worker's stderr kept for diagnosis.
const MAX_WORKER_STDERR: u64 = 64 * 1024;

/// How often the parent checks whether the worker has finished.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The refusal a worker reports on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct Refusal {
    code: String,
    message: String,
}

/// Runs the compile worker: component on stdin, artifact (or a JSON refusal) on stdout. The
/// `nubo` binary calls this from a hidden subcommand; see the module docs for the protocol.
pub fn compile_worker_main() -> ExitCode {
    let mut code = Vec::new();
    let limit = nubo_core::limits::MAX_COMPONENT_BYTES + 1;
    if let Err(e) = std::io::stdin().lock().take(limit).read_to_end(&mut code) {
        return refuse(
            ErrorCode::Internal,
            format!("cannot read the component: {e}"),
        );
    }
    match compile_here(&code) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&artifact).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // The parent went away; nobody is left to tell.
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => refuse(e.code, e.message),
    }
}

fn compile_here(code: &[u8]) -> Result<Vec<u8>, CodeError> {
    // The name is the parent's to add; the worker only reports what is wrong.
    const NAME: &str = "";
    let internal = |what: &str, e: wasmtime::Error| {
        code_error(NAME, ErrorCode::Internal, format!("{what}: {e:#}"))
    };
    let engine = wasmtime::Engine::new(&crate::config::base_config())
        .map_err(|e| internal("cannot create the compile engine", e))?;
    let linker = check::linker(&engine).map_err(|e| internal("cannot set up the linker", e))?;
    let component = check::compile(&engine, NAME, code)?;
    check::pre_instantiate(&linker, NAME, &component)?;
    component
        .serialize()
        .map_err(|e| internal("cannot serialize the artifact", e))
}

fn refuse(code: ErrorCode, message: String) -> ExitCode {
    let line = serde_json::to_string(&Refusal {
        code: code.as_str().to_owned(),
        message,
    })
    .unwrap_or_else(|_| r#"{"code":"internal","message":"cannot encode the error"}"#.into());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    ExitCode::from(EXIT_REFUSED)
}

/// Compiles `code` in a worker process bounded by `config`'s timeout and memory limit.
pub(crate) fn compile(
    worker: &CompileWorker,
    config: &RuntimeConfig,
    function: &str,
    code: &[u8],
) -> Result<Vec<u8>, CodeError> {
    // Cheap checks first: no process for a file that is not even a component.
    check::check_header(function, code)?;
    let internal = |message: String| code_error(function, ErrorCode::Internal, message);
    let mut command = Command::new(&worker.program);
    command
        .args(&worker.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_child(&mut command, config.compile_memory_limit);
    let mut child = command
        .spawn()
        .map_err(|e| internal(format!("cannot start the compile worker: {e}")))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(internal("the compile worker has no pipes".into()));
    };

    let deadline = Instant::now() + config.compile_timeout;
    let (status, out, err) = std::thread::scope(|scope| {
        // Separate threads so neither side blocks on a full pipe.
        scope.spawn(move || {
            // A worker that refuses early closes its stdin; the error is in its answer.
            let _ = stdin.write_all(code);
        });
        let out = scope.spawn(move || read_bounded(&mut stdout, MAX_ARTIFACT_BYTES));
        let err = scope.spawn(move || read_bounded(&mut stderr, MAX_WORKER_STDERR));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(Some(status)),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Ok(None);
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(e);
                }
            }
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        (status, out, err)
    });

    let status =
        status.map_err(|e| internal(format!("cannot wait for the compile worker: {e}")))?;
    let Some(status) = status else {
        return Err(code_error(
            function,
            ErrorCode::CompileFailed,
            format!(
                "compilation took longer than {}s and was stopped: the component is too large \
                 or too complex to compile",
                config.compile_timeout.as_secs_f64()
            ),
        ));
    };
    interpret(function, config.compile_memory_limit, status, out, &err)
}

/// Turns the worker's exit status and output into the artifact or an error.
fn interpret(
    function: &str,
    memory_limit: u64,
    status: ExitStatus,
    out: Bounded,
    err: &Bounded,
) -> Result<Vec<u8>, CodeError> {
    let stderr = String::from_utf8_lossy(&err.bytes);
    let out_of_memory = || {
        code_error(
            function,
            ErrorCode::CompileFailed,
            format!(
                "compilation needed more than the compile memory limit of {} MiB: the component \
                 is too large or too complex to compile",
                memory_limit / (1024 * 1024)
            ),
        )
    };
    if status.success() {
        if out.truncated {
            return Err(code_error(
                function,
                ErrorCode::CompileFailed,
                format!("the compiled artifact is larger than {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        // Only the header is checked here; `load` checks engine compatibility.
        if wasmtime::Engine::detect_precompiled(&out.bytes)
            != Some(wasmtime::Precompiled::Component)
        {
            return Err(code_error(
                function,
                ErrorCode::Internal,
                "the compile worker answered with something that is not a compiled component; \
                 is `compile_worker` pointing at `nubo`?",
            ));
        }
        return Ok(out.bytes);
    }
    if status.code() == Some(i32::from(EXIT_REFUSED)) {
        let refusal: Refusal = serde_json::from_slice(out.bytes.trim_ascii()).map_err(|_| {
            code_error(
                function,
                ErrorCode::Internal,
                "the compile worker gave an unreadable answer",
            )
        })?;
        let code = ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == refusal.code)
            .unwrap_or(ErrorCode::Internal);
        if code == ErrorCode::CompileFailed && is_enomem(&refusal.message) {
            return Err(out_of_memory());
        }
        return Err(code_error(function, code, refusal.message));
    }
    if stderr.contains("memory allocation of") || is_enomem(&stderr) || killed_by_kernel(status) {
        return Err(out_of_memory());
    }
    tracing::warn!(
        function,
        %status,
        stderr = %stderr.trim_end(),
        "the compile worker crashed"
    );
    Err(code_error(
        function,
        ErrorCode::CompileFailed,
        format!("the compiler stopped unexpectedly ({status}); the server log has details"),
    ))
}

fn is_enomem(text: &str) -> bool {
    text.contains("os error 12") || text.contains("Cannot allocate memory")
}

/// SIGKILL we did not send comes from the kernel's OOM killer.
fn killed_by_kernel(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGKILL)
}

#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads up to `limit` bytes, then drains the rest so the writer never blocks.
fn read_bounded(reader: &mut impl Read, limit: u64) -> Bounded {
    let mut bytes = Vec::new();
    let _ = reader.take(limit).read_to_end(&mut bytes);
    let rest = std::io::copy(reader, &mut std::io::sink()).unwrap_or(0);
    Bounded {
        bytes,
        truncated: rest > 0,
    }
}

/// Applies the worker's resource limits in the child between `fork` and `exec`.
fn limit_child(command: &mut Command, memory_limit: u64) {
    use std::os::unix::process::CommandExt;
    let memory = memory_limit as libc::rlim_t;
    // SAFETY: the closure runs in the forked child before `exec`; it only calls `setrlimit`
    // and `prctl`, which are async-signal-safe, and allocates nothing.
    #[allow(unsafe_code, reason = "pre_exec hook for the compile worker's rlimits")]
    unsafe {
        command.pre_exec(move || {
            set_limit(libc::RLIMIT_DATA, memory)?;
            // A worker killed for memory must not leave a multi-GiB core file.
            set_limit(libc::RLIMIT_CORE, 0)?;
            #[cfg(target_os = "linux")]
            {
                // Die with the server instead of compiling for nobody.
                // SAFETY: `prctl(PR_SET_PDEATHSIG)` takes plain integers.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The type `setrlimit` takes its resource as, which differs between C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

#[allow(
    unsafe_code,
    reason = "setrlimit in the compile worker's pre_exec hook"
)]
fn set_limit(resource: Resource, value: libc::rlim_t) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid, initialised `rlimit` that outlives the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
