//! The embedded server: store, runtime, control plane, gateway and triggers wired together.

use anyhow::Context as _;
use nubo_control::Control;
use nubo_core::api::v1::TriggerInfo;
use nubo_core::rfc3339;
use nubo_gateway::{AdminAuth, Gateway, GatewayConfig};
use nubo_runtime::sandbox::SandboxPolicy;
use nubo_runtime::{CompileWorker, RuntimeConfig, WasmRuntime};
use nubo_store::{Accepted, NewEvent, Store, SubmitError};
use nubo_triggers::{AppTriggers, Triggers};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How many finished invocations may wait for the record writer before new ones are counted
/// as dropped. Bounds memory when the disk is slow.
const RECORD_QUEUE: usize = 16 * 1024;
/// Longest wait at shutdown for the collector to take the last spans: a collector that is
/// down must not hold the server's exit.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A secret setting: its `Debug` form never shows the value, so a logged or printed
/// configuration cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// Operator settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// State directory.
    pub data_dir: PathBuf,
    /// Admin key; without one the admin API answers loopback clients only.
    pub admin_key: Option<Hidden>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Revisions kept per app (newest first; revisions with traffic are always kept).
    pub keep_revisions: usize,
    /// How many invocation records and log lines are kept, and for how long.
    pub retention: nubo_store::Retention,
    /// Server-wide cap on invocations running at once; functions with `reserve = true` take
    /// their `max_concurrency` out of it, the others share the rest.
    pub max_concurrency: u32,
    /// Most async invocations waiting or running; past it, async submissions get 429.
    pub max_async_queue: u64,
    /// Whether process function workers are sandboxed.
    pub sandbox: bool,
    /// Whether process functions may share the host's network.
    pub allow_host_network: bool,
    /// Host paths mounted read-only inside every process sandbox.
    pub sandbox_readonly: Vec<PathBuf>,
    /// Address of the S3-compatible endpoint (port 0 picks one); `None` turns it off.
    pub s3_listen: Option<SocketAddr>,
    /// The S3 access key id from the operator (`NUBO_S3_ACCESS_KEY`); without it and the
    /// secret, a pair is generated once and kept in the data dir.
    pub s3_access_key: Option<String>,
    /// The S3 secret from the operator (`NUBO_S3_SECRET_KEY`).
    pub s3_secret_key: Option<Hidden>,
    /// How far `/_nubo/metrics` breaks figures down: by app, function (the default) and
    /// revision, or not at all. Each step multiplies the series a scraper stores.
    pub metrics_labels: nubo_telemetry::MetricsLabels,
    /// How invocations are metered and priced, and how long usage aggregates are kept.
    pub usage: nubo_store::UsageSettings,
    /// Where traces go (an OTLP/HTTP collector's base URL); `None` exports none.
    pub otlp_endpoint: Option<String>,
    /// Whether invocation metrics (and `/_nubo/metrics`) and wasm CPU-time measurement are on
    /// (`--no-telemetry` turns them off).
    pub telemetry: bool,
}

/// The default state directory: `$XDG_DATA_HOME/nubo`, else `~/.local/share/nubo`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("nubo");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/nubo"),
        None => PathBuf::from(".nubo"),
    }
}

/// A built server, bound and ready to serve.
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    gateway: Arc<Gateway>,
    writer: nubo_store::RecordWriter,
    /// The trace exporter, when traces are exported.
    traces: Option<nubo_telemetry::TraceExporter>,
    /// The S3 endpoint's listener and service, when it runs.
    s3: Option<(TcpListener, nubo_gateway::s3::S3Service)>,
    s3_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    /// The apps' triggers, and the task that keeps them in step with the serving revisions.
    triggers: Triggers,
    follower: tokio::task::JoinHandle<()>,
    /// Counts deploys for `/_nubo/metrics`.
    deploy_counter: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Opens the store, starts the runtime, loads every deployed app from the compiled cache,
    /// and binds the listener.
    pub async fn build(config: ServerConfig) -> anyhow::Result<Server> {
        if !config.listen.ip().is_loopback() && config.admin_key.is_none() {
            anyhow::bail!(
                "refusing to listen on {} without an admin key: the admin API would be open to the network; set NUBO_ADMIN_KEY to a long random secret (e.g. `export NUBO_ADMIN_KEY=$(openssl rand -hex 32)`) and give clients the same value as NUBO_TOKEN",
                config.listen
            );
        }
        config
            .usage
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid usage settings: {e}"))?;
        let started = Instant::now();
        let store = Arc::new(
            Store::open(&config.data_dir)
                .with_context(|| format!("opening the data dir {}", config.data_dir.display()))?,
        );
        let exe =
            std::env::current_exe().context("finding the nubo executable for compile workers")?;
        let sandbox = SandboxPolicy {
            enabled: config.sandbox,
            launcher: exe.clone(),
            allow_host_network: config.allow_host_network,
            readonly_paths: config.sandbox_readonly.clone(),
            ..SandboxPolicy::new(config.data_dir.join("sandbox"))
                .context("finding the nubo executable for process workers")?
        };
        std::fs::create_dir_all(&sandbox.scratch_dir).with_context(|| {
            format!(
                "creating the sandbox directory {}",
                sandbox.scratch_dir.display()
            )
        })?;
        // Checked once so a host that cannot sandbox says so at start, not at the first
        // request; wasm functions run either way.
        let probe_policy = sandbox.clone();
        match tokio::task::spawn_blocking(move || nubo_runtime::sandbox::probe(&probe_policy))
            .await
            .context("probing the process sandbox")?
        {
            Ok(support) if support.enabled => tracing::info!("process functions: {support}"),
            Ok(support) => tracing::warn!("process functions: {support}"),
            Err(e) => tracing::warn!(
                "process functions cannot run on this host: {e}; run nubo as root for the sandbox, or start it with --sandbox off (development only)"
            ),
        }
        let runtime = Arc::new(
            WasmRuntime::new(RuntimeConfig {
                compile_worker: Some(CompileWorker {
                    program: exe,
                    args: vec!["__compile-worker".into()],
                }),
                max_concurrency: config.max_concurrency,
                code_dir: config.data_dir.join("code"),
                sandbox,
                kv: Some(store.kv()),
                objects: Some(store.objects()),
                queues: Some(store.queues()),
                secrets: Some(store.secrets()?),
                measure_cpu: config.telemetry,
                ..RuntimeConfig::default()
            })
            .context("starting the wasm runtime")?,
        );
        // Invocations are counted as their records are emitted, through pre-built metric
        // families (no lock held across an await, nothing allocated once a series exists).
        let metrics = nubo_telemetry::Metrics::new(config.metrics_labels);
        metrics.track_wasm_memory(runtime.linear_memory());
        let (sink, rx) = nubo_telemetry::record_channel(RECORD_QUEUE);
        let sink = if config.telemetry {
            sink.with_metrics(metrics.clone())
        } else {
            sink
        };
        // Spans leave through their own bounded queue to a batching exporter task.
        let (sink, traces) = match &config.otlp_endpoint {
            Some(endpoint) => {
                let (tracer, exporter) =
                    nubo_telemetry::trace_exporter(endpoint).map_err(anyhow::Error::msg)?;
                metrics.track_traces(tracer.stats().clone());
                (sink.with_tracer(tracer), Some(exporter))
            }
            None => (sink, None),
        };
        // Records the sink drops are marked in the usage data, so the loss shows in reports.
        store.configure_usage(config.usage);
        // The record and async-invocation writers time each batch's commit (not each record).
        if config.telemetry {
            store.time_commits(metrics.clone());
        }
        let writer = store
            .spawn_metered_record_writer(rx, config.retention, Some(sink.stats().clone()))
            .context("starting the record writer")?;
        let control = Arc::new(Control::with_retention(
            store,
            runtime.clone(),
            config.keep_revisions,
        ));
        let report = control.restore().await;
        // Timed rollouts move on their own; the task ends with the control plane.
        control.spawn_rollout_driver();
        // Expired key-value keys are purged every minute (reads never see them either way).
        control.store().kv().spawn_sweeper();
        tracing::info!(
            apps = report.apps,
            functions = report.functions,
            recompiled = report.recompiled,
            failed = report.failed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "loaded {} apps in {} ms",
            report.apps,
            report.elapsed.as_millis()
        );
        // Async invocations cut short by a crash run again; then the writer takes new ones.
        let store = control.store().clone();
        let (recovered, pending) = tokio::task::spawn_blocking(move || {
            Ok::<_, nubo_store::StoreError>((store.recover_events()?, store.pending_events()?))
        })
        .await?
        .context("reading the async invocation queue")?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "async invocations interrupted by a stop will run again"
            );
        }
        let event_writer = control
            .store()
            .spawn_event_writer()
            .context("starting the async invocation writer")?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "listening on {} (is another server running there? use --listen)",
                config.listen
            )
        })?;
        let addr = listener.local_addr()?;
        let (s3, s3_endpoint, s3_addr) = match config.s3_listen {
            None => (None, None, None),
            Some(at) => {
                let credentials = nubo_gateway::s3::S3Credentials::resolve(
                    &config.data_dir,
                    config.s3_access_key.clone(),
                    config.s3_secret_key.as_ref().map(|k| k.0.clone()),
                )
                .context("setting up the S3 endpoint's key pair")?;
                let s3_listener = TcpListener::bind(at).await.with_context(|| {
                    format!(
                        "listening for S3 on {at} (is another server running there? use --s3-listen ADDR, or --s3-listen off)"
                    )
                })?;
                let s3_addr = s3_listener.local_addr()?;
                let service = nubo_gateway::s3::service(control.store().objects(), &credentials);
                let endpoint = nubo_gateway::s3::S3Endpoint {
                    url: format!("http://{s3_addr}"),
                    credentials,
                };
                (Some((s3_listener, service)), Some(endpoint), Some(s3_addr))
            }
        };
        let gateway = Gateway::new(
            control.clone(),
            runtime,
            sink,
            GatewayConfig {
                admin: config
                    .admin_key
                    .map_or(AdminAuth::LoopbackOnly, |k| AdminAuth::Key(k.0)),
                drain_timeout: config.drain_timeout,
                max_async_queue: config.max_async_queue,
                s3: s3_endpoint,
                ..GatewayConfig::default()
            },
            Some((event_writer, pending)),
        );
        gateway.start_deliverer();
        if config.telemetry {
            gateway.set_metrics(metrics.clone());
        }
        // Triggers deliver through the gateway's async machinery, and follow each app's
        // serving revision from now on.
        let triggers = Triggers::start(
            control.store().clone(),
            Arc::new(GatewaySink(Arc::downgrade(&gateway))),
        );
        gateway.set_trigger_statuses(Arc::new(TriggerView(triggers.clone())));
        let deploy_counter = count_deploys(control.clone(), metrics);
        let follower = follow_apps(control, triggers.clone());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "server built"
        );
        Ok(Server {
            addr,
            listener,
            gateway,
            writer,
            traces,
            s3,
            s3_addr,
            drain_timeout: config.drain_timeout,
            triggers,
            follower,
            deploy_counter,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The S3 endpoint's bound address, when it runs.
    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3_addr
    }

    /// Serves until `shutdown` completes, drains in-flight requests, and flushes records.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        use futures::FutureExt as _;
        let Server {
            listener,
            gateway,
            writer,
            traces,
            s3,
            drain_timeout,
            triggers,
            follower,
            deploy_counter,
            ..
        } = self;
        // Both listeners stop on the same signal and drain side by side.
        let shutdown = Box::pin(shutdown).shared();
        // Triggers stop first, so no new delivery arrives while the gateway drains; the
        // follower first of all, so it cannot start them again.
        let gateway_shutdown = {
            let signal = shutdown.clone();
            async move {
                signal.await;
                deploy_counter.abort();
                follower.abort();
                let _ = follower.await;
                triggers.shutdown().await;
            }
        };
        let s3 = async {
            match s3 {
                Some((l, service)) => {
                    nubo_gateway::s3::serve(l, service, shutdown.clone(), drain_timeout)
                        .await
                        .context("serving the S3 endpoint")
                }
                None => Ok(()),
            }
        };
        let (main, s3) = tokio::join!(gateway.serve(listener, gateway_shutdown), s3);
        main?;
        s3?;
        // Give finished responses a moment to release their records, then flush them all.
        tokio::task::spawn_blocking(move || writer.shutdown()).await?;
        // Every invocation has ended by now: its spans are queued, and go out last.
        if let Some(traces) = traces {
            traces.shutdown(TRACE_FLUSH_TIMEOUT).await;
        }
        Ok(())
    }
}

/// Trigger deliveries go through the gateway's async machinery, under its bound. Holds the
/// gateway weakly: the gateway holds the triggers (for their status), not the other way.
struct GatewaySink(Weak<Gateway>);

impl nubo_triggers::Sink for GatewaySink {
    fn submit(
        &self,
        event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = Result<Accepted, SubmitError>> + Send + '_>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(gateway) => gateway.submit_stored(event).await,
                None => Err(SubmitError::Stopped),
            }
        })
    }
}

/// The triggers' status in the admin API's wire form.
struct TriggerView(Triggers);

impl nubo_gateway::TriggerStatuses for TriggerView {
    fn statuses<'a>(
        &'a self,
        app: &'a str,
    ) -> Pin<Box<dyn Future<Output = Vec<TriggerInfo>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .status(app)
                .await
                .into_iter()
                .map(|t| TriggerInfo {
                    name: t.name,
                    kind: t.kind,
                    function: t.function,
                    revision: t.revision,
                    source: t.source,
                    state: t.state,
                    last_fire: t.last_fire.map(rfc3339),
                    next_fire: t.next_fire.map(rfc3339),
                    backlog: t.backlog,
                    lag_ms: t.lag_ms,
                    fires: t.fires,
                    errors: t.errors,
                    last_error: t.last_error,
                    loops_stopped: t.loops_stopped,
                    skipped: t.skipped,
                })
                .collect()
        })
    }
}

/// Keeps every app's triggers as declared by its primary (highest-weight) revision: applies
/// them now, then again after each change the control plane reports. Apps whose primary
/// revision did not change are left alone; apps that are gone have their triggers stopped.
fn follow_apps(control: Arc<Control>, triggers: Triggers) -> tokio::task::JoinHandle<()> {
    let mut changes = control.subscribe_changes();
    tokio::spawn(async move {
        let mut applied: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            changes.mark_unchanged();
            let serving: BTreeMap<String, Arc<nubo_control::LiveRevision>> = control
                .apps()
                .into_iter()
                .filter_map(|a| {
                    let primary = a.state().primary().cloned();
                    primary.map(|r| (a.name.to_string(), r))
                })
                .collect();
            let gone: Vec<String> = applied
                .keys()
                .filter(|a| !serving.contains_key(*a))
                .cloned()
                .collect();
            for app in gone {
                triggers.apply(&app, None).await;
                applied.remove(&app);
            }
            for (app, r) in serving {
                if applied.get(&app) == Some(&r.revision) {
                    continue;
                }
                let set = AppTriggers {
                    revision: r.revision,
                    manifest: Arc::new(r.manifest.clone()),
                };
                triggers.apply(&app, Some(set)).await;
                applied.insert(app, r.revision);
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Counts deploys in `metrics`: revision numbers only grow with deploys, so each rise of an
/// app's newest loaded revision after a change is that many deploys (an app seen for the first
/// time counts one). What was loaded at start is not counted.
fn count_deploys(
    control: Arc<Control>,
    metrics: Arc<nubo_telemetry::Metrics>,
) -> tokio::task::JoinHandle<()> {
    fn newest(control: &Control) -> BTreeMap<String, u64> {
        control
            .apps()
            .into_iter()
            .map(|a| {
                let state = a.state();
                let split = state.split.iter().map(|(r, _)| r.revision);
                let staged = state.staged.keys().copied();
                (a.name.to_string(), split.chain(staged).max().unwrap_or(0))
            })
            .collect()
    }
    let mut changes = control.subscribe_changes();
    tokio::spawn(async move {
        changes.mark_unchanged();
        let mut known = newest(&control);
        while changes.changed().await.is_ok() {
            let now = newest(&control);
            for (app, revision) in &now {
                match known.get(app) {
                    Some(before) if revision > before => metrics.deployed(app, revision - before),
                    Some(_) => {}
                    None => metrics.deployed(app, 1),
                }
            }
            known = now;
        }
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod hidden_tests {
    use super::Hidden;

    #[test]
    fn debug_output_never_shows_a_hidden_value() {
        let key = Some(Hidden("s3cr3t-admin-key".into()));
        let shown = format!("{key:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(shown, "Some(<hidden>)");
    }
}
