//! `WasmRuntime`: the one wasmtime engine of the server, its epoch ticker, and the table of
//! loaded functions; implements `nubo_core::engine::Engine` (check, compile, load, retain).

use crate::check::{self, code_error};
use crate::config::{self, RuntimeConfig};
use crate::host::{Bindings, Host};
use crate::keyvalue::KvBindings;
use crate::limits::{FunctionLimit, Limiter};
use crate::objects_host::ObjBindings;
use crate::queues_host::QueueBindings;
use crate::worker;
use arc_swap::ArcSwap;
use nubo_core::egress::Allowlist;
use nubo_core::engine::{Artifact, CodeError, Engine, LoadFunction};
use nubo_core::manifest::Runtime;
use nubo_core::{ErrorCode, FunctionTarget};
use sha2::Digest;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The wasmtime release this crate is pinned to; part of [`Engine::artifact_key`].
const WASMTIME_VERSION: &str = "48.0.8";

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Wasmtime refused the engine configuration.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// The WASI and wasi:http host functions could not be linked.
    #[error("cannot set up the wasm host functions: {0}")]
    Linker(String),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
}

/// A function ready to run: its pre-instantiated component and its limits.
pub(crate) struct Loaded {
    pub(crate) pre: ProxyPre<Host>,
    pub(crate) env: Box<[(String, String)]>,
    pub(crate) memory_limit: u64,
    pub(crate) timeout: Duration,
    /// Whether its invocations measure their CPU time ([`RuntimeConfig::measure_cpu`]).
    pub(crate) measure_cpu: bool,
    /// Epoch ticks covering `timeout`.
    pub(crate) ticks: u64,
    /// Set by the first invocation, which is the cold one.
    pub(crate) warm: AtomicBool,
    /// The function's concurrency limit, shared by all its loaded revisions.
    pub(crate) limit: Arc<FunctionLimit>,
    /// The key-value stores, buckets, queues and hosts it may reach.
    pub(crate) bindings: Bindings,
    /// `wasi:config/store`'s variables: `env` (a function with secrets gets its own per
    /// invocation).
    pub(crate) config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    /// The secrets its `env` names; `None` when it names none.
    pub(crate) secret_env: Option<Arc<crate::secrets::SecretEnv>>,
    /// The runtime's count of linear memory held by live instances (see
    /// [`WasmRuntime::linear_memory`]).
    pub(crate) linear_memory: Arc<AtomicU64>,
    /// The cached artifact the code came from, if it came from the cache.
    artifact: Option<PathBuf>,
}

type FunctionMap = HashMap<FunctionTarget, Arc<Loaded>>;

/// Runs wasi:http components: compiles them (optionally in a bounded worker process), loads
/// them, and serves requests with a fresh instance each.
pub struct WasmRuntime {
    engine: wasmtime::Engine,
    linker: Linker<Host>,
    /// Read on every request without locking; replaced whole on load and retain.
    pub(crate) functions: ArcSwap<FunctionMap>,
    /// Serialises writers of `functions` so concurrent loads do not lose each other's entries.
    publish: Mutex<()>,
    /// Components loaded from the artifact cache, by path. Functions (and revisions) running
    /// the same code share one `Component`: its code mapping and copy-on-write memory image
    /// exist once, not once per function. Only touched on load and retain.
    components: Mutex<HashMap<PathBuf, Component>>,
    /// Loaded process functions (native programs speaking the Lambda Runtime API).
    pub(crate) process: crate::process::Functions,
    /// Concurrency limits per function and server-wide; wasm and process functions alike.
    pub(crate) limits: Limiter,
    /// Bytes of wasm linear memory held by live instances: each instance's memory limiter
    /// adds what it grows and takes it back when the instance is dropped.
    linear_memory: Arc<AtomicU64>,
    artifact_key: String,
    config: RuntimeConfig,
    pooling: bool,
    _ticker: Ticker,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("artifact_key", &self.artifact_key)
            .field("pooling", &self.pooling)
            .field("functions", &self.functions.load().len())
            .field("process_functions", &self.process.len())
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// Creates the engine (pooling allocator sized from `config.max_instances`, falling back
    /// to on-demand allocation when the address space cannot be reserved), the linker and the
    /// epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<WasmRuntime, RuntimeError> {
        let (engine, pooling) =
            match wasmtime::Engine::new(&config::pooled_config(config.max_instances)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        max_instances = config.max_instances,
                        "cannot reserve the pooling allocator's address space; falling back to \
                         on-demand allocation (slower per request; check `ulimit -v`)"
                    );
                    let engine = wasmtime::Engine::new(&config::on_demand_config())
                        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                    (engine, false)
                }
            };
        let linker = check::linker(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        let artifact_key = artifact_key(&engine);
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(WasmRuntime {
            engine,
            linker,
            functions: ArcSwap::from_pointee(HashMap::new()),
            publish: Mutex::new(()),
            components: Mutex::new(HashMap::new()),
            process: crate::process::Functions::new(
                config.sandbox.clone(),
                config.code_dir.clone(),
                config.region.clone(),
                config.kv.clone(),
                config.objects.clone(),
            )
            .with_secrets(config.secrets.clone())
            .with_queues(config.queues.clone()),
            limits: Limiter::new(config.max_concurrency),
            linear_memory: Arc::default(),
            artifact_key,
            config,
            pooling,
            _ticker: ticker,
        })
    }

    /// Whether the pooling allocator is in use (false after the on-demand fallback).
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// The count of bytes of wasm linear memory held by live instances now, shared: it moves
    /// as instances grow their memories and end. For the metrics registry to read at scrape
    /// time.
    pub fn linear_memory(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.linear_memory)
    }

    /// Bytes of wasm linear memory held by live instances now.
    pub fn linear_memory_bytes(&self) -> u64 {
        self.linear_memory.load(Ordering::Relaxed)
    }

    /// Whether `target` is loaded.
    pub fn is_loaded(&self, target: &FunctionTarget) -> bool {
        self.functions.load().contains_key(target) || self.process.get(target).is_some()
    }

    fn load_one(
        &self,
        function: LoadFunction,
        limit: Arc<FunctionLimit>,
    ) -> Result<(FunctionTarget, Arc<Loaded>), CodeError> {
        let name = &*function.target.function;
        let component = match &function.artifact {
            // SAFETY: artifacts come only from `Engine::compile` (this process or the compile
            // worker, both built from `config::base_config`) and from Nubo's own artifact
            // cache, keyed by `artifact_key`; never from users. Wasmtime still checks the
            // header and engine compatibility before using the code.
            #[allow(unsafe_code, reason = "loading our own compiled artifacts")]
            Artifact::Bytes(bytes) => unsafe { Component::deserialize(&self.engine, &bytes[..]) },
            Artifact::File(path) => self.cached_component(path),
        }
        .map_err(|e| {
            code_error(
                name,
                ErrorCode::Internal,
                format!("its compiled artifact cannot be loaded ({e:#}); redeploy to recompile"),
            )
        })?;
        let pre = check::pre_instantiate(&self.linker, name, &component)?;
        let spec = &function.spec;
        // Validated when the manifest was parsed; a revision stored before then has none.
        let allowlist = Allowlist::parse(&spec.allowed_hosts)
            .map_err(|e| code_error(name, ErrorCode::InvalidManifest, e))?;
        let timeout = spec.timeout();
        let loaded = Loaded {
            pre,
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            memory_limit: spec.memory,
            timeout,
            measure_cpu: self.config.measure_cpu,
            ticks: ticks_for(timeout, self.config.epoch_tick),
            warm: AtomicBool::new(false),
            limit,
            bindings: Bindings {
                kv: (!spec.kv.is_empty())
                    .then(|| Arc::new(KvBindings::new(self.config.kv.clone(), &spec.kv))),
                objects: (!spec.buckets.is_empty()).then(|| {
                    Arc::new(ObjBindings::new(self.config.objects.clone(), &spec.buckets))
                }),
                queues: (!spec.queues.is_empty()).then(|| {
                    Arc::new(QueueBindings::new(self.config.queues.clone(), &spec.queues))
                }),
                egress: crate::outbound::Egress::new(allowlist),
            },
            config: Arc::new(
                spec.env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            ),
            secret_env: crate::secrets::SecretEnv::new(
                self.config.secrets.as_ref(),
                &function.target.app,
                &spec.secret_env,
            ),
            linear_memory: Arc::clone(&self.linear_memory),
            artifact: match &function.artifact {
                Artifact::File(path) => Some(path.clone()),
                Artifact::Bytes(_) => None,
            },
        };
        Ok((function.target, Arc::new(loaded)))
    }

    /// The component of a cached artifact, deserialized once and shared.
    fn cached_component(&self, path: &Path) -> wasmtime::Result<Component> {
        let mut cache = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(path) {
            return Ok(c.clone());
        }
        // SAFETY: artifacts come only from `Engine::compile` (this process or the compile
        // worker, both built from `config::base_config`) and from Nubo's own artifact cache,
        // keyed by `artifact_key`; never from users. The file is not modified while mapped
        // (cache entries are written once, then renamed into place). Wasmtime still checks the
        // header and engine compatibility before using the code.
        #[allow(unsafe_code, reason = "loading our own compiled artifacts")]
        let component = unsafe { Component::deserialize_file(&self.engine, path) }?;
        cache.insert(path.to_path_buf(), component.clone());
        Ok(component)
    }

    /// Forgets cached components no loaded function uses any more.
    fn prune_components(&self) {
        let used: std::collections::HashSet<PathBuf> = self
            .functions
            .load()
            .values()
            .filter_map(|l| l.artifact.clone())
            .collect();
        let mut cache = self.components.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|path, _| used.contains(path));
    }

    fn update(&self, change: impl FnOnce(&mut FunctionMap)) {
        let _writer = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = FunctionMap::clone(&self.functions.load());
        change(&mut next);
        self.functions.store(Arc::new(next));
    }
}

impl Engine for WasmRuntime {
    fn artifact_key(&self) -> &str {
        &self.artifact_key
    }

    fn compile(&self, function: &str, runtime: Runtime, code: &[u8]) -> Result<Vec<u8>, CodeError> {
        if runtime == Runtime::Process {
            // The archive itself is the artifact: checked now, unpacked at load.
            crate::process::check(function, code)?;
            return Ok(code.to_vec());
        }
        match &self.config.compile_worker {
            Some(command) => worker::compile(command, &self.config, function, code),
            None => {
                let component = check::compile(&self.engine, function, code)?;
                check::pre_instantiate(&self.linker, function, &component)?;
                component.serialize().map_err(|e| {
                    code_error(
                        function,
                        ErrorCode::Internal,
                        format!("cannot serialize: {e:#}"),
                    )
                })
            }
        }
    }

    fn load(&self, functions: Vec<LoadFunction>) -> Result<(), CodeError> {
        // Everything is checked before anything is published: all or nothing. Reservations
        // are checked (and the new settings registered) first, and forgotten on failure.
        let settings: Vec<_> = functions
            .iter()
            .map(|f| (f.target.clone(), f.spec.concurrency))
            .collect();
        let registration = self.limits.register(&settings)?;
        let handle = tokio::runtime::Handle::try_current();
        let mut wasm = Vec::new();
        let mut process = Vec::new();
        let mut failed = None;
        for (f, limit) in functions.into_iter().zip(registration.limits) {
            let loaded = match f.spec.runtime {
                Runtime::Wasm => self.load_one(f, limit).map(|l| wasm.push(l)),
                Runtime::Process => match &handle {
                    Ok(_) => self.process.prepare(f, limit).map(|l| process.push(l)),
                    Err(_) => Err(code_error(
                        &f.target.function,
                        ErrorCode::Internal,
                        "process functions can only be loaded inside the server's async runtime",
                    )),
                },
            };
            if let Err(e) = loaded {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.limits.unregister(registration.previous);
            self.prune_components();
            return Err(e);
        }
        if let (Ok(handle), false) = (&handle, process.is_empty()) {
            self.process.publish(process, handle);
        }
        self.update(|map| map.extend(wasm));
        Ok(())
    }

    fn retain(&self, app: &str, keep: &[u64]) {
        self.update(|map| {
            map.retain(|target, _| &*target.app != app || keep.contains(&target.revision));
        });
        self.process.retain(app, keep);
        self.limits.retain(app, keep);
        self.prune_components();
    }
}

/// Epoch ticks that cover `timeout`: never fewer than one.
fn ticks_for(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(timeout.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `wasmtime-48.0.8-<hash>`, where the hash covers everything wasmtime checks when loading an
/// artifact (version, target, compiler flags, tunables, features).
pub(crate) fn artifact_key(engine: &wasmtime::Engine) -> String {
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut hasher = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("wasmtime-{WASMTIME_VERSION}-{short}")
}

/// The single epoch ticker thread of the engine; stops when dropped.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Ticker, RuntimeError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = tick.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("nubo-epoch".into())
            .spawn(move || {
                // Ends when the sender is dropped (`Disconnected`).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(RuntimeError::Ticker)?;
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_timeout() {
        let tick = Duration::from_millis(10);
        assert_eq!(ticks_for(Duration::from_millis(1), tick), 1);
        assert_eq!(ticks_for(Duration::from_millis(10), tick), 1);
        assert_eq!(ticks_for(Duration::from_millis(11), tick), 2);
        assert_eq!(ticks_for(Duration::from_secs(30), tick), 3_000);
        assert_eq!(ticks_for(Duration::ZERO, tick), 1);
    }
}
