//! Process functions: native programs that speak the AWS Lambda Runtime API, run in sandboxed
//! worker processes kept warm in a pool per (app, function, revision).
//!
//! `code` checks and unpacks their zip archives; `event` shapes API Gateway events and turns
//! results into HTTP responses; `api` is the Runtime API each worker talks to; `pool` starts,
//! lends, reaps and stops workers; `invoke` runs one invocation; `kv` is the key-value HTTP
//! API, `objects` the object storage HTTP API and `queues` the queue publish API, all served
//! beside the Runtime API; `egress` is the HTTP proxy through which workers of functions with
//! `allowed_hosts` reach the network.

mod api;
pub(crate) mod code;
mod egress;
mod env;
pub(crate) mod event;
mod invoke;
mod kv;
mod objects;
mod pool;
mod queues;

use crate::limits::FunctionLimit;
use crate::sandbox::SandboxPolicy;
use arc_swap::ArcSwap;
use nubo_core::engine::{Artifact, CodeError, LoadFunction};
use nubo_core::manifest::Network;
use nubo_core::{ErrorCode, FunctionTarget};
use pool::{Pool, WorkerConfig};
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use invoke::invoke;

/// A loaded process function revision.
pub(crate) struct ProcessFunction {
    pool: Arc<Pool>,
    /// The function's concurrency limit, shared with its other revisions.
    pub(crate) limit: Arc<FunctionLimit>,
    timeout: Duration,
    memory: u64,
    arn: Arc<str>,
}

type ProcessMap = HashMap<FunctionTarget, Arc<ProcessFunction>>;

/// The loaded process functions. Read on every request without locking; replaced whole on
/// load and retain. Dropping it (or a function) stops their workers.
pub(crate) struct Functions {
    map: ArcSwap<ProcessMap>,
    publish: Mutex<()>,
    policy: Arc<SandboxPolicy>,
    code_dir: PathBuf,
    region: String,
    /// The server's key-value stores, reached by workers of functions that bind them.
    kv: Option<nubo_store::kv::Kv>,
    /// The server's object storage, reached by workers of functions that bind buckets.
    objects: Option<nubo_store::objects::Objects>,
    /// The apps' secrets, put in the environment of workers whose function names them.
    secrets: Option<nubo_store::secrets::Secrets>,
    /// The server's queues, published to by workers of functions that bind them.
    queues: Option<nubo_store::Queues>,
}

impl Functions {
    /// Workers get the secrets their function's `env` names from `secrets`.
    pub(crate) fn with_secrets(mut self, secrets: Option<nubo_store::secrets::Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Workers publish to the queues of `queues` their function binds.
    pub(crate) fn with_queues(mut self, queues: Option<nubo_store::Queues>) -> Self {
        self.queues = queues;
        self
    }

    /// No functions yet; workers will run under `policy`, code is unpacked under `code_dir`,
    /// and workers reach the stores of `kv` and the buckets of `objects` their function binds.
    pub(crate) fn new(
        policy: SandboxPolicy,
        code_dir: PathBuf,
        region: String,
        kv: Option<nubo_store::kv::Kv>,
        objects: Option<nubo_store::objects::Objects>,
    ) -> Functions {
        Functions {
            map: ArcSwap::from_pointee(HashMap::new()),
            publish: Mutex::new(()),
            policy: Arc::new(policy),
            code_dir,
            region,
            kv,
            objects,
            secrets: None,
            queues: None,
        }
    }

    /// The loaded function `target`, if any.
    pub(crate) fn get(&self, target: &FunctionTarget) -> Option<Arc<ProcessFunction>> {
        self.map.load().get(target).cloned()
    }

    /// How many process functions are loaded.
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Unpacks the function's code (once per digest) and checks it can be started. Nothing
    /// runs until [`Functions::publish`]. Blocking.
    pub(crate) fn prepare(
        &self,
        function: LoadFunction,
        limit: Arc<FunctionLimit>,
    ) -> Result<(FunctionTarget, Arc<ProcessFunction>), CodeError> {
        let name = function.target.function.to_string();
        let internal = |what: String| CodeError {
            function: name.clone(),
            code: ErrorCode::Internal,
            message: what,
        };
        let zip = match &function.artifact {
            Artifact::Bytes(bytes) => bytes.as_slice().to_vec(),
            Artifact::File(path) => std::fs::read(path).map_err(|e| {
                internal(format!(
                    "cannot read its code archive {}: {e}; redeploy it",
                    path.display()
                ))
            })?,
        };
        let digest: String = sha2::Sha256::digest(&zip)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = self.code_dir.join(&digest);
        std::fs::create_dir_all(&self.code_dir).map_err(|e| {
            internal(format!(
                "cannot create the code directory {}: {e}; check the data directory's permissions",
                self.code_dir.display()
            ))
        })?;
        code::unpack(&zip, &dir).map_err(|e| {
            internal(format!(
                "cannot unpack its code into {}: {e}; check free space and permissions",
                dir.display()
            ))
        })?;
        let spec = &function.spec;
        if spec.process.command.is_none() && !is_executable(&dir.join("bootstrap")) {
            return Err(CodeError {
                function: name,
                code: ErrorCode::InvalidComponent,
                message: "has no executable `bootstrap` at the root of its source: add one \
                          (chmod +x) or set `command`"
                    .into(),
            });
        }
        let host_network = spec.process.network == Network::Host;
        if host_network && !self.policy.allow_host_network {
            return Err(CodeError {
                function: name,
                code: ErrorCode::InvalidManifest,
                message: "asks for network = \"host\"; start the server with \
                          --allow-host-network to permit it"
                    .into(),
            });
        }
        let egress = if spec.allowed_hosts.is_empty() {
            None
        } else {
            let allowlist =
                nubo_core::egress::Allowlist::parse(&spec.allowed_hosts).map_err(|e| {
                    CodeError {
                        function: name.clone(),
                        code: ErrorCode::InvalidManifest,
                        message: e,
                    }
                })?;
            Some(Arc::new(allowlist))
        };
        let target = function.target;
        let config = WorkerConfig {
            target: target.clone(),
            code_dir: dir,
            argv: spec.process.argv(),
            env: env::base(&target, spec, &self.region),
            memory_bytes: spec.memory,
            tmp_bytes: spec.process.tmp_bytes,
            host_network,
            egress,
            idle_timeout: spec.process.idle_timeout(),
            min_instances: spec.process.min_instances,
            kv: Arc::new(kv::KvScope::new(
                self.kv.clone(),
                &target.function,
                spec.kv.clone(),
            )),
            objects: Arc::new(objects::ObjScope::new(
                self.objects.clone(),
                &target.function,
                spec.buckets.clone(),
            )),
            queues: Arc::new(queues::QueueScope::new(
                self.queues.clone(),
                &target.function,
                spec.queues.clone(),
            )),
            secrets: crate::secrets::SecretEnv::new(
                self.secrets.as_ref(),
                &target.app,
                &spec.secret_env,
            ),
        };
        let loaded = ProcessFunction {
            pool: Pool::new(config, Arc::clone(&self.policy), Arc::clone(&limit)),
            limit,
            timeout: spec.timeout(),
            memory: spec.memory,
            arn: env::arn(&self.region, &target).into(),
        };
        Ok((target, Arc::new(loaded)))
    }

    /// Makes prepared functions runnable: starts their reapers and prewarmed workers on
    /// `handle` and publishes them. A revision that is already loaded keeps its pool and warm
    /// workers (same revision, same code and settings).
    pub(crate) fn publish(
        &self,
        loaded: Vec<(FunctionTarget, Arc<ProcessFunction>)>,
        handle: &tokio::runtime::Handle,
    ) {
        self.update(|map| {
            for (target, function) in loaded {
                if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(target) {
                    function.pool.start(handle);
                    slot.insert(function);
                }
            }
        });
    }

    /// Forgets the functions of `app` whose revision is not in `keep`; their idle workers stop
    /// now, busy ones when their invocation ends.
    pub(crate) fn retain(&self, app: &str, keep: &[u64]) {
        self.update(|map| {
            map.retain(|target, _| &*target.app != app || keep.contains(&target.revision));
        });
    }

    fn update(&self, change: impl FnOnce(&mut ProcessMap)) {
        let _writer = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = ProcessMap::clone(&self.map.load());
        change(&mut next);
        self.map.store(Arc::new(next));
    }
}

/// Checks a process archive at deploy time. The `bootstrap` requirement depends on the
/// function's `command`, which only load knows, so it is checked there.
pub(crate) fn check(function: &str, zip: &[u8]) -> Result<(), CodeError> {
    code::check_zip(function, zip, false)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
