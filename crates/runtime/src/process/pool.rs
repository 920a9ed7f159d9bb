//! Warm workers of one process function revision: spawned on demand (or at load for
//! `min_instances`), one invocation in flight each, reused most-recently-idle first, reaped
//! after `idle_timeout`, killed when dropped.
//!
//! A [`Worker`] owns the only handle that keeps its sandbox alive: dropping it (a crash, a
//! timeout, reaping, the pool or the server going away) makes its supervisor kill every
//! process of it.

use super::api::{self, Channel, Job, Status};
use super::egress;
use super::kv::KvScope;
use super::objects::ObjScope;
use super::queues::QueueScope;
use crate::limits::{FunctionLimit, InstanceGuard};
use crate::sandbox::{Exit, Meter, SandboxPolicy, Sandboxed, WorkerSpec};
use nubo_core::{FunctionTarget, InvokeError};
use nubo_telemetry::{Invocation, LogMask, Stream};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

/// Lines of a worker's recent output kept for crash and init-failure messages.
const RECENT_LINES: usize = 10;
/// Bytes of recent output kept (see [`RECENT_LINES`]): bounds the size of error messages.
const RECENT_BYTES: usize = 2048;
/// Longest log line; longer output is split. Bounds memory per worker when a program prints
/// without newlines.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long output keeps going to an invocation after its worker answered: lines the program
/// wrote before answering may still sit in the pipe.
const LOG_GRACE: Duration = Duration::from_millis(50);
/// How long a worker's exit waits for its output pipes to drain, so a crash message carries
/// the last lines (descendants may hold the pipes open longer).
const DRAIN_ON_EXIT: Duration = Duration::from_millis(200);
/// Longest a runtime may take from spawn to its first `/next` (Lambda's init phase limit).
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How one loaded process function's workers are started.
pub(crate) struct WorkerConfig {
    pub(crate) target: FunctionTarget,
    /// Unpacked code, read-only in the worker.
    pub(crate) code_dir: PathBuf,
    pub(crate) argv: Vec<String>,
    /// The environment common to all its workers (see `env::base`).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) memory_bytes: u64,
    pub(crate) tmp_bytes: u64,
    pub(crate) host_network: bool,
    /// The function's `allowed_hosts`; `Some` (never empty) gives each worker an egress proxy.
    pub(crate) egress: Option<Arc<nubo_core::egress::Allowlist>>,
    pub(crate) idle_timeout: Duration,
    pub(crate) min_instances: u32,
    /// The key-value stores its workers may reach (the function's `kv` bindings).
    pub(crate) kv: Arc<KvScope>,
    /// The buckets its workers may reach (the function's `buckets` bindings).
    pub(crate) objects: Arc<ObjScope>,
    /// The queues its workers may publish to (the function's `queues` bindings).
    pub(crate) queues: Arc<QueueScope>,
    /// The secrets its `env` names, put in each worker's environment at spawn.
    pub(crate) secrets: Option<Arc<crate::secrets::SecretEnv>>,
}

/// The workers of one (app, function, revision).
pub(crate) struct Pool {
    pub(crate) config: WorkerConfig,
    policy: Arc<SandboxPolicy>,
    /// Idle workers, the most recently used last (taken first: its caches are warmest, and
    /// the oldest ones age out).
    idle: Mutex<Vec<Idle>>,
    /// Workers alive (idle or busy).
    live: Arc<AtomicUsize>,
    /// The function's limit, whose figures count live workers as its instances.
    limit: Arc<FunctionLimit>,
    /// Prewarmed workers being started.
    starting: AtomicUsize,
    /// The last prewarmed worker failed to start; set until one starts fine.
    prewarm_failed: AtomicBool,
    next_worker: AtomicU64,
}

struct Idle {
    worker: Worker,
    since: Instant,
}

impl Pool {
    /// A pool with no workers; call [`Pool::start`] to prewarm and reap.
    pub(crate) fn new(
        config: WorkerConfig,
        policy: Arc<SandboxPolicy>,
        limit: Arc<FunctionLimit>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            policy,
            limit,
            starting: AtomicUsize::new(0),
            prewarm_failed: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            next_worker: AtomicU64::new(0),
        })
    }

    /// Starts the reaper, which also keeps `min_instances` workers started, on `handle`.
    pub(crate) fn start(self: &Arc<Pool>, handle: &tokio::runtime::Handle) {
        self.top_up(handle);
        handle.spawn(reap(Arc::downgrade(self), handle.clone()));
    }

    /// Starts workers until `min_instances` are alive or starting. Stops trying after a
    /// prewarmed worker failed to start, until a worker starts fine again (a broken function
    /// must not be respawned in a loop).
    fn top_up(self: &Arc<Pool>, handle: &tokio::runtime::Handle) {
        if self.prewarm_failed.load(Ordering::Relaxed) {
            return;
        }
        let min = self.config.min_instances as usize;
        let have = self.live.load(Ordering::Relaxed) + self.starting.load(Ordering::Relaxed);
        for _ in have..min {
            self.starting.fetch_add(1, Ordering::Relaxed);
            let pool = Arc::downgrade(self);
            handle.spawn(async move {
                let Some(p) = pool.upgrade() else { return };
                let target = p.config.target.clone();
                let spawned = p.spawn(true).await;
                p.starting.fetch_sub(1, Ordering::Relaxed);
                let worker = match spawned {
                    Ok(worker) => worker,
                    Err(e) => {
                        p.prewarm_failed.store(true, Ordering::Relaxed);
                        tracing::warn!(app = %target.app, function = %target.function, revision = target.revision, error = %e, "cannot prewarm a worker");
                        return;
                    }
                };
                drop(p);
                let ready = worker.ready(INIT_TIMEOUT).await;
                let Some(p) = pool.upgrade() else { return };
                match ready {
                    Ok(_) => p.put_idle(worker),
                    Err(e) => {
                        p.prewarm_failed.store(true, Ordering::Relaxed);
                        tracing::warn!(app = %target.app, function = %target.function, revision = target.revision, error = %e, "a prewarmed worker failed to start");
                    }
                }
            });
        }
    }

    /// A worker started fine: prewarming may try again.
    pub(crate) fn started_fine(&self) {
        self.prewarm_failed.store(false, Ordering::Relaxed);
    }

    /// Workers alive, idle or busy.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Idle workers.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The most recently idle worker that is still running and was started with the app's
    /// current secrets (one started before a secret changed is stopped: its environment holds
    /// the old value).
    pub(crate) fn take_idle(&self) -> Option<Worker> {
        let secrets = self.secret_generation();
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match idle.pop() {
                    Some(i) if i.worker.is_running() && i.worker.secrets == secrets => {
                        break Some(i.worker);
                    }
                    Some(i) => dead.push(i.worker),
                    None => break None,
                }
            }
        };
        drop(dead);
        found
    }

    /// The generation of the secrets the function's workers must have been started with.
    fn secret_generation(&self) -> u64 {
        self.config.secrets.as_ref().map_or(0, |s| s.generation())
    }

    fn put_idle(&self, worker: Worker) {
        if worker.is_running() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Idle {
                    worker,
                    since: Instant::now(),
                });
        }
    }

    /// Stops idle workers idle past `idle_timeout` (oldest first), keeping `min_instances`
    /// alive, and drops dead ones.
    fn reap_idle(&self) {
        let now = Instant::now();
        let min = self.config.min_instances as usize;
        let removed: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut excess = self.live.load(Ordering::Relaxed).saturating_sub(min);
            let mut removed = Vec::new();
            let mut kept = Vec::with_capacity(idle.len());
            for i in idle.drain(..) {
                if !i.worker.is_running() {
                    removed.push(i);
                } else if excess > 0 && now.duration_since(i.since) >= self.config.idle_timeout {
                    excess -= 1;
                    removed.push(i);
                } else {
                    kept.push(i);
                }
            }
            *idle = kept;
            removed
        };
        for i in &removed {
            tracing::debug!(worker = %i.worker.id, "stopping an idle worker");
        }
        drop(removed);
    }

    /// Starts a new worker. `provisioned`: started ahead of demand (`min_instances`).
    pub(crate) async fn spawn(self: &Arc<Pool>, provisioned: bool) -> Result<Worker, InvokeError> {
        let n = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let id = worker_id(n);
        let config = &self.config;
        let mut env = config.env.clone();
        // Read once: the generation the worker is tagged with is the one its values came from.
        let secrets = config.secrets.as_ref().and_then(|s| s.current());
        let secret_generation = secrets.as_ref().map_or(0, |s| s.generation());
        if let Some(secret_env) = &config.secrets {
            secret_env.extend(secrets.as_deref(), &mut env);
        }
        env.push((
            "AWS_LAMBDA_LOG_STREAM_NAME".into(),
            format!(
                "{}/[{}]{id}",
                super::env::date_path(std::time::SystemTime::now()),
                config.target.revision
            ),
        ));
        env.push((
            "AWS_LAMBDA_INITIALIZATION_TYPE".into(),
            if provisioned {
                "provisioned-concurrency"
            } else {
                "on-demand"
            }
            .into(),
        ));
        let spec = WorkerSpec {
            name: id.clone(),
            code_dir: config.code_dir.clone(),
            argv: config.argv.clone(),
            env,
            memory_bytes: config.memory_bytes,
            tmp_bytes: config.tmp_bytes,
            host_network: config.host_network,
            egress_proxy: config.egress.is_some(),
        };
        let spawned = Instant::now();
        let mut sandboxed =
            Sandboxed::spawn(&self.policy, spec)
                .await
                .map_err(|e| InvokeError::InitFailed {
                    message: format!("cannot start a worker: {e}"),
                })?;
        let listener = sandboxed.listener().ok_or_else(|| {
            InvokeError::Internal("the sandbox handed out no Runtime API listener".into())
        })?;
        let (jobs, receiver) = mpsc::channel(1);
        let channel = Arc::new(
            Channel::new(receiver, spawned)
                .with_kv(Arc::clone(&config.kv))
                .with_objects(Arc::clone(&config.objects))
                .with_queues(Arc::clone(&config.queues)),
        );
        let mut logs = LogSink::new(&config.target, &id);
        logs.mask = secrets
            .as_ref()
            .map(|s| Arc::clone(s.log_mask()))
            .filter(|m| !m.is_empty());
        let logs = Arc::new(logs);
        let mut readers = Vec::new();
        if let Some(out) = sandboxed.stdout() {
            readers.push(tokio::spawn(read_lines(
                out,
                Stream::Stdout,
                Arc::clone(&logs),
            )));
        }
        if let Some(err) = sandboxed.stderr() {
            readers.push(tokio::spawn(read_lines(
                err,
                Stream::Stderr,
                Arc::clone(&logs),
            )));
        }
        let api = api::serve(listener, Arc::clone(&channel));
        // One task serves both, so aborting it when the worker ends closes the proxy's
        // connections and tunnels too.
        let server = match (&config.egress, sandboxed.proxy_listener()) {
            (Some(allowlist), Some(proxy)) => {
                let sink = Arc::clone(&logs);
                let current: egress::CurrentInvocation = Arc::new(move || sink.current());
                let egress = Arc::new(egress::Egress::new(
                    Arc::clone(allowlist),
                    &config.target,
                    current,
                ));
                tokio::spawn(async move {
                    tokio::join!(api, egress::serve(proxy, egress));
                })
            }
            (Some(_), None) => {
                return Err(InvokeError::Internal(
                    "the sandbox handed out no egress proxy listener".into(),
                ));
            }
            _ => tokio::spawn(api),
        };
        let meter = sandboxed.meter();
        let (kill, killed) = oneshot::channel();
        tokio::spawn(supervise(
            sandboxed,
            killed,
            server,
            readers,
            Arc::clone(&channel),
            Arc::clone(&logs),
        ));
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(Worker {
            id,
            channel,
            jobs,
            logs,
            meter,
            secrets: secret_generation,
            _kill: kill,
            _live: LiveGuard(Arc::clone(&self.live)),
            _instance: self.limit.instance(),
        })
    }
}

/// Short, unique within this server run, `[a-z0-9-]` (it names the worker's cgroup).
fn worker_id(n: u64) -> String {
    static RUN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        // Distinguishes this server run's workers from leftovers of an earlier one.
        let random = ulid::Ulid::new().0 as u32;
        random ^ std::process::id()
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let global = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("w{run:08x}-{global:x}-{n:x}")
}

/// Waits for the worker's program to end or for its owner to drop it, then kills the rest,
/// drains its output, and publishes how it ended.
async fn supervise(
    mut sandboxed: Sandboxed,
    killed: oneshot::Receiver<()>,
    server: tokio::task::JoinHandle<()>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    channel: Arc<Channel>,
    logs: Arc<LogSink>,
) {
    let exited = tokio::select! {
        exit = sandboxed.wait() => Some(exit),
        _ = killed => None,
    };
    let exit = match exited {
        Some(exit) => {
            sandboxed.kill();
            exit
        }
        None => {
            sandboxed.kill();
            sandboxed.wait().await
        }
    };
    let _ = tokio::time::timeout(DRAIN_ON_EXIT, futures_join(readers)).await;
    let description = describe_exit(&exit);
    let last_output = logs.recent_suffix();
    channel.status.send_modify(|s: &mut Status| {
        s.exit = Some(description);
        s.last_output = last_output;
        s.oom_killed = exit.oom_killed;
    });
    // After the status: a caller whose reply channel closes finds the exit already there.
    server.abort();
    drop(sandboxed);
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

fn describe_exit(exit: &Exit) -> String {
    match (exit.code, exit.signal, exit.oom_killed) {
        (_, _, true) => "the worker was killed by its memory cap".to_owned(),
        (Some(code), _, _) => format!("the worker exited with status {code}"),
        (None, Some(signal), _) => format!("the worker was killed by signal {signal}"),
        (None, None, false) => "the worker ended".to_owned(),
    }
}

/// A running worker. Dropping it stops it.
pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) channel: Arc<Channel>,
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) logs: Arc<LogSink>,
    /// Reads its peak memory and CPU time around each invocation.
    pub(crate) meter: Meter,
    /// The generation of the app's secrets in its environment.
    secrets: u64,
    /// Dropped with the worker: its supervisor then kills the sandbox.
    _kill: oneshot::Sender<()>,
    _live: LiveGuard,
    _instance: InstanceGuard,
}

impl Worker {
    /// Whether its program is still running.
    pub(crate) fn is_running(&self) -> bool {
        let status = self.channel.status.borrow();
        status.exit.is_none() && status.init_error.is_none()
    }

    /// Waits for its first `/next`; returns the time from spawn to it, or why it never came.
    pub(crate) async fn ready(&self, limit: Duration) -> Result<Duration, InvokeError> {
        let mut status = self.channel.status.subscribe();
        let waited = tokio::time::timeout(limit, async {
            loop {
                {
                    let s = status.borrow_and_update();
                    if let Some(message) = &s.init_error {
                        return Err(InvokeError::InitFailed {
                            message: message.clone(),
                        });
                    }
                    if let Some(ready) = s.ready {
                        return Ok(ready);
                    }
                    if let Some(exit) = &s.exit {
                        return Err(InvokeError::InitFailed {
                            message: format!(
                                "{exit} before it asked for its first invocation{}",
                                s.last_output
                            ),
                        });
                    }
                }
                if status.changed().await.is_err() {
                    return Err(InvokeError::Internal("the worker's status was lost".into()));
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(InvokeError::InitFailed {
                message: format!(
                    "the runtime did not ask for an invocation (GET /2018-06-01/runtime/invocation/next) within {} s of starting{}",
                    limit.as_secs(),
                    self.logs.recent_suffix()
                ),
            })
        })
    }
}

struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker lent to one invocation; gives it back to its pool when dropped unless it was
/// marked broken (then it is stopped).
pub(crate) struct Lease {
    worker: Option<Worker>,
    pool: Weak<Pool>,
    broken: bool,
}

impl Lease {
    /// Lends `worker` of `pool`.
    pub(crate) fn new(worker: Worker, pool: &Arc<Pool>) -> Lease {
        Lease {
            worker: Some(worker),
            pool: Arc::downgrade(pool),
            broken: false,
        }
    }

    /// The worker.
    pub(crate) fn worker(&self) -> &Worker {
        self.worker
            .as_ref()
            .expect("a lease holds its worker until dropped")
    }

    /// Stops the worker instead of returning it.
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        worker.logs.release();
        if self.broken {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put_idle(worker);
        }
    }
}

/// Where a worker's output goes: the invocation it serves, else `tracing`; plus the last few
/// lines for error messages.
pub(crate) struct LogSink {
    app: Arc<str>,
    function: Arc<str>,
    worker: String,
    state: Mutex<LogState>,
    /// The function's secret values, replaced by `[secret]` in every line: in the
    /// invocation's logs, the server log and crash messages alike.
    mask: Option<Arc<LogMask>>,
}

#[derive(Default)]
struct LogState {
    target: Option<Invocation>,
    /// Bumped on every attach, so a late release does not detach a newer invocation.
    generation: u64,
    recent: VecDeque<String>,
    recent_bytes: usize,
}

impl LogSink {
    fn new(target: &FunctionTarget, worker: &str) -> LogSink {
        LogSink {
            app: Arc::clone(&target.app),
            function: Arc::clone(&target.function),
            worker: worker.to_owned(),
            state: Mutex::new(LogState::default()),
            mask: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the worker's output to `invocation` from now on, and starts a fresh ring of
    /// recent lines: a crash message goes to this invocation's caller and must not carry
    /// what the worker printed for earlier callers.
    pub(crate) fn attach(&self, invocation: Option<Invocation>) {
        let mut state = self.lock();
        state.generation += 1;
        state.target = invocation;
        state.recent.clear();
        state.recent_bytes = 0;
    }

    /// The invocation the worker's output goes to: the one it is serving, if any (outbound
    /// calls are counted on it).
    pub(crate) fn current(&self) -> Option<Invocation> {
        self.lock().target.clone()
    }

    /// Stops sending output to the current invocation after a short grace period (lines it
    /// printed before answering may still be in the pipe).
    fn release(self: &Arc<Self>) {
        let generation = self.lock().generation;
        let sink = Arc::clone(self);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.lock().target = None;
            return;
        };
        handle.spawn(async move {
            tokio::time::sleep(LOG_GRACE).await;
            let mut state = sink.lock();
            if state.generation == generation {
                state.target = None;
            }
        });
    }

    fn line(&self, stream: Stream, line: &[u8]) {
        let line = match &self.mask {
            Some(mask) => mask.apply(line),
            None => std::borrow::Cow::Borrowed(line),
        };
        let line = &*line;
        let text = String::from_utf8_lossy(line);
        let mut state = self.lock();
        state.recent_bytes += text.len();
        state.recent.push_back(text.clone().into_owned());
        while state.recent.len() > RECENT_LINES
            || (state.recent_bytes > RECENT_BYTES && state.recent.len() > 1)
        {
            if let Some(old) = state.recent.pop_front() {
                state.recent_bytes -= old.len();
            }
        }
        match &state.target {
            Some(invocation) => {
                let mut data = Vec::with_capacity(line.len() + 1);
                data.extend_from_slice(line);
                data.push(b'\n');
                invocation.write_log(stream, &data);
            }
            None => {
                tracing::info!(app = %self.app, function = %self.function, worker = %self.worker, stream = stream.as_str(), line = %text, "idle worker output");
            }
        }
    }

    /// `; last output:\n…` with the recent lines (at most [`RECENT_BYTES`]), or nothing.
    pub(crate) fn recent_suffix(&self) -> String {
        let state = self.lock();
        if state.recent.is_empty() {
            return String::new();
        }
        let mut text = String::from("; last output:");
        for line in &state.recent {
            text.push('\n');
            text.push_str(line);
        }
        if text.len() > RECENT_BYTES + 64 {
            let mut cut = text.len() - RECENT_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = format!("; last output: …{}", &text[cut..]);
        }
        text
    }
}

/// Splits a worker's output into lines for its [`LogSink`], until the pipe closes.
async fn read_lines(mut pipe: impl AsyncRead + Unpin, stream: Stream, sink: Arc<LogSink>) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&rest[..pos]);
            if pending.last() == Some(&b'\r') {
                pending.pop();
            }
            sink.line(stream, &pending);
            pending.clear();
            rest = &rest[pos + 1..];
        }
        pending.extend_from_slice(rest);
        while pending.len() >= MAX_LINE_BYTES {
            let tail = pending.split_off(MAX_LINE_BYTES);
            sink.line(stream, &pending);
            pending = tail;
        }
    }
    if !pending.is_empty() {
        sink.line(stream, &pending);
    }
}

/// Reaps idle workers of `pool` and keeps its `min_instances` started, until the pool is gone.
async fn reap(pool: Weak<Pool>, handle: tokio::runtime::Handle) {
    let every = match pool.upgrade() {
        Some(p) => {
            (p.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => {
                p.reap_idle();
                p.top_up(&handle);
            }
            None => return,
        }
    }
}
