//! The developer-owned app manifest, `nubo.toml`: parsing and validation.
//!
//! Every error names the key, its line and the fix. Parsing is pure (no file access); the CLI
//! checks that `source` files exist and the server checks the code itself.

use crate::limits;
use crate::route::{MethodSet, RoutePattern, RouteTableBuilder};
use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

mod triggers;

pub use triggers::{
    Credential, CronSpec, MAX_CATCH_UP, Missed, MqttSpec, NatsSpec, ObjectEventKind,
    ObjectTriggerSpec, QueueTriggerSpec, Schedule, TriggerSource, TriggerSpec,
};

/// The file name the CLI looks for.
pub const FILE_NAME: &str = "nubo.toml";

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The app's name.
    pub app: String,
    /// Functions by name.
    pub functions: BTreeMap<String, FunctionSpec>,
    /// Routes, in manifest order.
    pub routes: Vec<RouteSpec>,
    /// Triggers, in manifest order by kind. Revisions stored before triggers existed have none.
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
}

/// How a destination names a queue: `on_failure = "queue:failed-orders"`.
pub const QUEUE_DESTINATION: &str = "queue:";

/// How a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// A WebAssembly component exporting `wasi:http/incoming-handler`.
    Wasm,
    /// A native program speaking the AWS Lambda Runtime API, run in sandboxed worker processes.
    Process,
}

impl Runtime {
    /// The name used in manifests and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Process => "process",
        }
    }
}

/// One function's code and configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// How it runs.
    pub runtime: Runtime,
    /// Path of the code, relative to the manifest's directory: the component (`wasm`), or a
    /// directory or zip archive (`process`).
    pub source: String,
    /// Shell command that produces `source`, run in `workdir` by `nubo deploy`.
    pub build: Option<String>,
    /// Directory the build command runs in, relative to the manifest's directory.
    pub workdir: Option<String>,
    /// Linear memory limit in bytes.
    pub memory: u64,
    /// Wall-clock limit per invocation, in milliseconds.
    pub timeout_ms: u64,
    /// Largest request body delivered to the function, in bytes.
    pub max_request_body: u64,
    /// Environment variables the guest sees.
    pub env: BTreeMap<String, String>,
    /// How many invocations may run at once and how many may wait. Revisions stored before
    /// these settings existed read as the defaults.
    #[serde(default)]
    pub concurrency: ConcurrencySpec,
    /// How async invocations of it are retried. Revisions stored before this setting existed
    /// read as the defaults.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Where the outcome of an async invocation of it is sent.
    #[serde(default)]
    pub destinations: DestinationSpec,
    /// How a `process` function's workers run. Defaults for `wasm` functions.
    #[serde(default)]
    pub process: ProcessSpec,
    /// Key-value stores the function may use, by name; it can reach no other.
    #[serde(default)]
    pub kv: Vec<String>,
    /// Object storage buckets the function may use, by name; it can reach no other.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Queues the function may publish to, by name; it can reach no other.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Where the function may connect (`allowed_hosts`), as written; checked with
    /// [`crate::egress::Allowlist::parse`] when the manifest is parsed. Empty: nowhere.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Environment variables whose values are the app's secrets: variable → secret name
    /// (`env = { DB_URL = { secret = "db_url" } }`). Only names are stored with the revision.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
}

/// Network access of a process function's workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Only loopback inside the worker's own network namespace (the Runtime API is there).
    #[default]
    None,
    /// The host's network, when the server allows it (`nubo server --allow-host-network`).
    Host,
}

/// How a `process` function's workers are started, kept and confined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessSpec {
    /// The program and its arguments; `None` runs the `bootstrap` executable at the code's root.
    pub command: Option<Vec<String>>,
    /// The handler name the runtime reads from `_HANDLER`.
    pub handler: Option<String>,
    /// Workers kept running even when idle (provisioned concurrency).
    pub min_instances: u32,
    /// How long a worker may stay idle before it is stopped, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Network access.
    pub network: Network,
    /// Size of the worker's private `/tmp`, in bytes.
    pub tmp_bytes: u64,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        ProcessSpec {
            command: None,
            handler: None,
            min_instances: 0,
            idle_timeout_ms: limits::DEFAULT_IDLE_TIMEOUT_MS,
            network: Network::None,
            tmp_bytes: limits::DEFAULT_TMP_BYTES,
        }
    }
}

impl ProcessSpec {
    /// The argv a worker runs: `command`, or the `bootstrap` at the code's root.
    pub fn argv(&self) -> Vec<String> {
        self.command
            .clone()
            .unwrap_or_else(|| vec!["./bootstrap".to_string()])
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Functions of the same app that get a record of each finished async invocation: on success,
/// and when every attempt failed. Invocations sent to a destination do not trigger
/// destinations themselves, so destinations cannot loop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DestinationSpec {
    /// Where the record of a successful invocation goes: another function of the app (its
    /// name, invoked async), or a queue (`queue:NAME`, see [`QUEUE_DESTINATION`]).
    pub on_success: Option<String>,
    /// Where the record of an invocation whose attempts ran out goes, as for `on_success`.
    pub on_failure: Option<String>,
}

/// How async invocations of a function are retried before they go to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrySpec {
    /// Most attempts (the first included).
    pub max_attempts: u32,
    /// How long after it was accepted an invocation may still be attempted, in milliseconds.
    pub max_age_ms: u64,
    /// Delay before the first retry, in milliseconds; each later one doubles it (with jitter).
    pub backoff_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: limits::DEFAULT_MAX_ATTEMPTS,
            max_age_ms: limits::DEFAULT_MAX_EVENT_AGE_MS,
            backoff_ms: limits::DEFAULT_RETRY_BACKOFF_MS,
        }
    }
}

/// A function's concurrency settings: its limit, whether that capacity is reserved, and its
/// bounded queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConcurrencySpec {
    /// Most invocations of the function running at once (across all its loaded revisions).
    pub max_concurrency: u32,
    /// Whether `max_concurrency` is reserved: guaranteed to this function and taken out of
    /// the capacity the other functions share.
    pub reserve: bool,
    /// Requests that may wait for a slot when the function is at its limit; more are
    /// answered 429 `throttled` at once.
    pub queue_depth: u32,
    /// How long a request may wait for a slot before it is answered 429, in milliseconds.
    pub queue_timeout_ms: u64,
}

impl Default for ConcurrencySpec {
    fn default() -> Self {
        ConcurrencySpec {
            max_concurrency: limits::DEFAULT_MAX_CONCURRENCY,
            reserve: false,
            queue_depth: limits::DEFAULT_QUEUE_DEPTH,
            queue_timeout_ms: limits::DEFAULT_QUEUE_TIMEOUT_MS,
        }
    }
}

impl ConcurrencySpec {
    /// The queue timeout as a duration.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
}

impl FunctionSpec {
    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A route from `(methods, path)` to a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The path pattern.
    pub path: String,
    /// Methods; empty means any.
    pub methods: Vec<String>,
    /// The target function.
    pub function: String,
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{FILE_NAME}:{line}: {}", self.message),
            None => write!(f, "{FILE_NAME}: {}", self.message),
        }
    }
}

/// All problems found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    app: Option<Spanned<RawApp>>,
    #[serde(default)]
    function: BTreeMap<Spanned<String>, Spanned<RawFunction>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    trigger: Option<triggers::RawTriggers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    runtime: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    build: Option<String>,
    workdir: Option<String>,
    memory: Option<Spanned<ByteSize>>,
    timeout: Option<Spanned<HumanDuration>>,
    max_request_body: Option<Spanned<ByteSize>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<RawEnvValue>>,
    #[serde(default)]
    allowed_hosts: Option<Spanned<Vec<String>>>,
    max_concurrency: Option<Spanned<i64>>,
    reserve: Option<bool>,
    queue_depth: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<HumanDuration>>,
    retry: Option<Spanned<RawRetry>>,
    on_success: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    handler: Option<Spanned<String>>,
    min_instances: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<HumanDuration>>,
    network: Option<Spanned<String>>,
    tmp: Option<Spanned<ByteSize>>,
    kv: Option<Spanned<Vec<String>>>,
    buckets: Option<Spanned<Vec<String>>>,
    queues: Option<Spanned<Vec<String>>>,
}

/// An `env` value: text, or a reference to a secret (`{ secret = "db_url" }`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnvValue {
    Text(String),
    Secret { secret: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    max_age: Option<Spanned<HumanDuration>>,
    backoff: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    function: Spanned<String>,
    #[serde(default)]
    methods: Option<Spanned<Vec<String>>>,
}

/// Keys accepted in each table, for "did you mean" hints.
const APP_KEYS: &[&str] = &["name"];
const FUNCTION_KEYS: &[&str] = &[
    "runtime",
    "source",
    "build",
    "workdir",
    "memory",
    "timeout",
    "max_request_body",
    "env",
    "allowed_hosts",
    "max_concurrency",
    "reserve",
    "queue_depth",
    "queue_timeout",
    "retry",
    "on_success",
    "on_failure",
    "command",
    "handler",
    "min_instances",
    "idle_timeout",
    "network",
    "tmp",
    "kv",
    "buckets",
    "queues",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "max_age", "backoff"];
const ROUTE_KEYS: &[&str] = &["path", "function", "methods"];
const TOP_KEYS: &[&str] = &["app", "function", "route", "trigger"];

struct Src<'a> {
    text: &'a str,
}

impl Src<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err<T>(&self, s: &Spanned<T>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            line: Some(self.line(s.span().start)),
            message: message.into(),
        }
    }

    /// The table header (`[function.api]`, `[[route]]`, …) in force at `offset`.
    fn table_at(&self, offset: usize) -> Option<&str> {
        let before = &self.text[..offset.min(self.text.len())];
        before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.split('#').next().unwrap_or(l).trim())
    }
}

/// Parses and validates manifest text.
pub fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
    if text.len() > limits::MAX_MANIFEST_BYTES {
        return Err(ManifestErrors(vec![ManifestError {
            line: None,
            message: format!(
                "the manifest is larger than {} bytes",
                limits::MAX_MANIFEST_BYTES
            ),
        }]));
    }
    let src = Src { text };
    let raw: RawManifest =
        toml::from_str(text).map_err(|e| ManifestErrors(vec![de_error(&src, &e)]))?;
    validate(&src, &raw)
}

fn de_error(src: &Src<'_>, e: &toml::de::Error) -> ManifestError {
    let line = e.span().map(|s| src.line(s.start));
    let msg = e.message().trim().to_string();
    let table = e
        .span()
        .and_then(|s| src.table_at(s.start))
        .map(str::to_string);
    // serde's "unknown field `x`, expected one of ..." → our wording with a suggestion.
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some(key) = rest.split('`').next()
    {
        let (where_, keys) = match table.as_deref() {
            Some(t) if t.starts_with("[function.") && t.ends_with(".retry]") => {
                (format!(" in {t}"), RETRY_KEYS)
            }
            Some(t) if t.starts_with("[function.") => (format!(" in {t}"), FUNCTION_KEYS),
            Some("[[route]]") => (" in [[route]]".to_string(), ROUTE_KEYS),
            Some(t) if triggers::keys_of(t).is_some() => {
                (format!(" in {t}"), triggers::keys_of(t).unwrap_or(TOP_KEYS))
            }
            // The error points into a `[[trigger.KIND]]` header of an unknown kind.
            Some(t) if t.starts_with("[[trigger") || t.starts_with("[trigger") => (
                " as a trigger kind".to_string(),
                triggers::keys_of("[trigger]").unwrap_or(TOP_KEYS),
            ),
            Some("[app]") => (" in [app]".to_string(), APP_KEYS),
            Some(t) if t.starts_with("[[") || t.starts_with('[') => (format!(" in {t}"), TOP_KEYS),
            _ => (" at the top level".to_string(), TOP_KEYS),
        };
        let hint = match suggest(key, keys) {
            Some(s) => format!("; did you mean \"{s}\"?"),
            None => format!("; the keys allowed here are: {}", keys.join(", ")),
        };
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        return ManifestError {
            line,
            message: format!("unknown key \"{key}\"{where_}{at}{hint}"),
        };
    }
    if msg.contains("untagged enum RawEnvValue") {
        let at = table.map(|t| format!(" in {t}")).unwrap_or_default();
        return ManifestError {
            line,
            message: format!(
                "an env value{at} must be a string or {{ secret = \"NAME\" }} (a secret set with `nubo secrets set`), like env = {{ MODE = \"prod\", DB_URL = {{ secret = \"db_url\" }} }}"
            ),
        };
    }
    if msg.starts_with("duplicate key") {
        return ManifestError {
            line,
            message: format!(
                "{msg}: each function and key may be defined only once; rename or remove the duplicate"
            ),
        };
    }
    let message = match &table {
        Some(t) => format!("{msg} (in {t})"),
        None => msg,
    };
    ManifestError { line, message }
}

/// The accepted key closest to `key`, when it is a plausible typo.
fn suggest<'a>(key: &str, keys: &[&'a str]) -> Option<&'a str> {
    keys.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn validate(src: &Src<'_>, raw: &RawManifest) -> Result<Manifest, ManifestErrors> {
    let mut errs = Vec::new();
    let app = match &raw.app {
        Some(app) => {
            let name = app.get_ref().name.get_ref().clone();
            if let Err(e) = crate::validate_name("app", &name) {
                errs.push(src.err(&app.get_ref().name, format!("[app] name: {e}")));
            }
            name
        }
        None => {
            errs.push(ManifestError {
                line: None,
                message: "missing [app] table: add `[app]` with `name = \"my-app\"`".into(),
            });
            String::new()
        }
    };
    if raw.function.len() > limits::MAX_FUNCTIONS_PER_APP {
        errs.push(ManifestError {
            line: None,
            message: format!(
                "an app may have at most {} functions",
                limits::MAX_FUNCTIONS_PER_APP
            ),
        });
    }
    if raw.function.is_empty() {
        errs.push(ManifestError {
            line: None,
            message: "the app has no functions: add a [function.NAME] table with a `source`".into(),
        });
    }

    let mut functions = BTreeMap::new();
    for (name, f) in &raw.function {
        let fname = name.get_ref().clone();
        let at = format!("[function.{fname}]");
        if let Err(e) = crate::validate_name("function", &fname) {
            errs.push(src.err(name, e.to_string()));
        }
        let f_span = f;
        let f = f.get_ref();
        let runtime = match f.runtime.as_ref().map(|rt| (rt, rt.get_ref().as_str())) {
            None | Some((_, "wasm")) => Runtime::Wasm,
            Some((_, "process")) => Runtime::Process,
            Some((rt, other)) => {
                errs.push(src.err(
                    rt,
                    format!("{at} unknown runtime {other:?}: use \"wasm\" (a wasi:http component) or \"process\" (a program speaking the Lambda Runtime API)"),
                ));
                Runtime::Wasm
            }
        };
        let example = match runtime {
            Runtime::Wasm => format!(
                "the component's path, like source = \"target/wasm32-wasip2/release/{fname}.wasm\""
            ),
            Runtime::Process => {
                format!("the folder or .zip holding the function's code, like source = \"{fname}\"")
            }
        };
        let source = match &f.source {
            Some(s) if !s.get_ref().trim().is_empty() => s.get_ref().clone(),
            Some(s) => {
                errs.push(src.err(s, format!("{at} source is empty: set it to {example}")));
                String::new()
            }
            None => {
                errs.push(src.err(
                    f_span,
                    format!("{at} is missing `source`: set it to {example}"),
                ));
                String::new()
            }
        };
        let memory = match &f.memory {
            Some(m) => {
                let v = m.get_ref().0;
                let (range, words) = match runtime {
                    Runtime::Wasm => (
                        limits::MIN_FUNCTION_MEMORY..=limits::MAX_FUNCTION_MEMORY,
                        "64KiB to 4GiB",
                    ),
                    Runtime::Process => (
                        limits::MIN_PROCESS_MEMORY..=limits::MAX_PROCESS_MEMORY,
                        "32MiB to 10GiB",
                    ),
                };
                if !range.contains(&v) {
                    errs.push(src.err(m, format!(
                        "{at} memory {} is out of range: use a value from {words}, like \"128MiB\"",
                        m.get_ref()
                    )));
                }
                v
            }
            None => limits::DEFAULT_FUNCTION_MEMORY,
        };
        let timeout_ms = match &f.timeout {
            Some(t) => {
                let ms = u64::try_from(t.get_ref().0.as_millis()).unwrap_or(u64::MAX);
                if ms == 0 || ms > limits::MAX_FUNCTION_TIMEOUT_MS {
                    errs.push(src.err(t, format!(
                        "{at} timeout {} is out of range: use a value from 1ms to 15m, like \"10s\"",
                        t.get_ref()
                    )));
                }
                ms
            }
            None => limits::DEFAULT_FUNCTION_TIMEOUT_MS,
        };
        let max_request_body = match &f.max_request_body {
            Some(b) => {
                let v = b.get_ref().0;
                if v > limits::MAX_DEPLOY_BYTES {
                    errs.push(src.err(
                        b,
                        format!(
                            "{at} max_request_body {} is too large: use at most 256MiB",
                            b.get_ref()
                        ),
                    ));
                }
                v
            }
            None => limits::DEFAULT_MAX_REQUEST_BODY,
        };
        let allowed_hosts = match &f.allowed_hosts {
            Some(hosts) => match crate::egress::Allowlist::parse(hosts.get_ref()) {
                Ok(_) => hosts.get_ref().clone(),
                Err(e) => {
                    errs.push(src.err(hosts, format!("{at} {e}")));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let concurrency = concurrency(src, &at, f, &mut errs);
        let retry = retry(src, &at, f, &mut errs);
        let process = process(src, &at, runtime, f, concurrency, &mut errs);
        let kv = kv_bindings(src, &at, f, &mut errs);
        let buckets = bucket_bindings(src, &at, f, &mut errs);
        let queues = queue_bindings(src, &at, f, &mut errs);
        let mut env = BTreeMap::new();
        let mut secret_env = BTreeMap::new();
        let mut env_bytes = 0;
        for (k, v) in &f.env {
            let key = k.get_ref();
            let valid = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                errs.push(src.err(k, format!("{at} env key {key:?} is not a valid variable name: use letters, digits and '_', not starting with a digit")));
            }
            match v.get_ref() {
                RawEnvValue::Text(text) => {
                    env_bytes += key.len() + text.len();
                    env.insert(key.clone(), text.clone());
                }
                RawEnvValue::Secret { secret } => {
                    if let Err(e) = crate::validate_name("secret", secret) {
                        errs.push(src.err(v, format!("{at} env {key}: {e}")));
                    }
                    env_bytes += key.len() + secret.len();
                    secret_env.insert(key.clone(), secret.clone());
                }
            }
        }
        if env.len() + secret_env.len() > limits::MAX_ENV_VARS || env_bytes > limits::MAX_ENV_BYTES
        {
            errs.push(src.err(
                f_span,
                format!(
                    "{at} env is too large: at most {} variables and {} bytes",
                    limits::MAX_ENV_VARS,
                    limits::MAX_ENV_BYTES
                ),
            ));
        }
        functions.insert(
            fname,
            FunctionSpec {
                runtime,
                source,
                build: f.build.clone(),
                workdir: f.workdir.clone(),
                memory,
                timeout_ms,
                max_request_body,
                env,
                concurrency,
                retry,
                destinations: DestinationSpec::default(),
                process,
                kv,
                buckets,
                queues,
                secret_env,
                allowed_hosts,
            },
        );
    }

    if raw.route.len() > limits::MAX_ROUTES_PER_APP {
        errs.push(ManifestError {
            line: None,
            message: format!(
                "an app may have at most {} routes",
                limits::MAX_ROUTES_PER_APP
            ),
        });
    }
    for (fname, f) in &raw.function {
        let name = fname.get_ref();
        let f = f.get_ref();
        let on_success = destination(
            src,
            name,
            "on_success",
            f.on_success.as_ref(),
            &functions,
            &mut errs,
        );
        let on_failure = destination(
            src,
            name,
            "on_failure",
            f.on_failure.as_ref(),
            &functions,
            &mut errs,
        );
        if let Some(spec) = functions.get_mut(name) {
            spec.destinations = DestinationSpec {
                on_success,
                on_failure,
            };
        }
    }
    let mut routes = Vec::new();
    let mut table = RouteTableBuilder::new();
    for r in &raw.route {
        let r = r.get_ref();
        let line = src.line(r.path.span().start);
        let function = r.function.get_ref().clone();
        if !functions.contains_key(&function) {
            let known: Vec<&str> = functions.keys().map(String::as_str).collect();
            errs.push(src.err(&r.function, format!(
                "[[route]] {} points to unknown function {function:?}: define [function.{function}] or use one of: {}",
                r.path.get_ref(),
                known.join(", ")
            )));
        }
        let methods: Vec<String> = r
            .methods
            .as_ref()
            .map(|m| m.get_ref().clone())
            .unwrap_or_default();
        let ms = match MethodSet::parse(&methods) {
            Ok(ms) => ms,
            Err(e) => {
                let at = r.methods.as_ref().map(|m| src.line(m.span().start));
                errs.push(ManifestError {
                    line: at,
                    message: format!("[[route]] methods: {e}"),
                });
                continue;
            }
        };
        let pattern = match RoutePattern::parse(r.path.get_ref()) {
            Ok(p) => p,
            Err(e) => {
                errs.push(src.err(&r.path, format!("[[route]] path: {e}")));
                continue;
            }
        };
        let label = match &ms {
            MethodSet::Any => format!("\"{pattern}\" (line {line})"),
            only => format!("{only} \"{pattern}\" (line {line})"),
        };
        if let Err(e) = table.add(ms, pattern, (), label) {
            errs.push(src.err(&r.path, e.to_string()));
        }
        routes.push(RouteSpec {
            path: r.path.get_ref().clone(),
            methods,
            function,
        });
    }

    let triggers = triggers::validate(src, &app, raw.trigger.as_ref(), &functions, &mut errs);

    if errs.is_empty() {
        Ok(Manifest {
            app,
            functions,
            routes,
            triggers,
        })
    } else {
        errs.sort_by_key(|e| e.line.unwrap_or(0));
        Err(ManifestErrors(errs))
    }
}

/// The key-value stores a function binds, checked and without repeats.
fn kv_bindings(
    src: &Src<'_>,
    at: &str,
    f: &RawFunction,
    errs: &mut Vec<ManifestError>,
) -> Vec<String> {
    let Some(list) = &f.kv else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for name in list.get_ref() {
        if let Err(e) = crate::validate_name("key-value store", name) {
            errs.push(src.err(list, format!("{at} kv: {e}")));
        } else if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.len() > limits::MAX_KV_BINDINGS {
        errs.push(src.err(
            list,
            format!(
                "{at} kv names {} stores; a function may bind at most {}",
                names.len(),
                limits::MAX_KV_BINDINGS
            ),
        ));
    }
    names
}

/// The queues a function binds (to publish to), checked and without repeats.
fn queue_bindings(
    src: &Src<'_>,
    at: &str,
    f: &RawFunction,
    errs: &mut Vec<ManifestError>,
) -> Vec<String> {
    let Some(list) = &f.queues else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for name in list.get_ref() {
        if let Err(e) = crate::validate_name("queue", name) {
            errs.push(src.err(list, format!("{at} queues: {e}")));
        } else if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.len() > limits::MAX_QUEUE_BINDINGS {
        errs.push(src.err(
            list,
            format!(
                "{at} queues names {} queues; a function may bind at most {}",
                names.len(),
                limits::MAX_QUEUE_BINDINGS
            ),
        ));
    }
    names
}

/// The object storage buckets a function binds, checked and without repeats.
fn bucket_bindings(
    src: &Src<'_>,
    at: &str,
    f: &RawFunction,
    errs: &mut Vec<ManifestError>,
) -> Vec<String> {
    let Some(list) = &f.buckets else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for name in list.get_ref() {
        if let Err(e) = crate::validate_bucket_name(name) {
            errs.push(src.err(list, format!("{at} buckets: {e}")));
        } else if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.len() > limits::MAX_BUCKET_BINDINGS {
        errs.push(src.err(
            list,
            format!(
                "{at} buckets names {} buckets; a function may bind at most {}",
                names.len(),
                limits::MAX_BUCKET_BINDINGS
            ),
        ));
    }
    names
}

/// The process settings of one `[function.*]` table, defaults filled in; refused on a `wasm`
/// function, where they would silently mean nothing.
fn process(
    src: &Src<'_>,
    at: &str,
    runtime: Runtime,
    f: &RawFunction,
    concurrency: ConcurrencySpec,
    errs: &mut Vec<ManifestError>,
) -> ProcessSpec {
    let mut spec = ProcessSpec::default();
    if runtime == Runtime::Wasm {
        let given = [
            ("command", f.command.as_ref().map(|s| s.span())),
            ("handler", f.handler.as_ref().map(|s| s.span())),
            ("min_instances", f.min_instances.as_ref().map(|s| s.span())),
            ("idle_timeout", f.idle_timeout.as_ref().map(|s| s.span())),
            ("network", f.network.as_ref().map(|s| s.span())),
            ("tmp", f.tmp.as_ref().map(|s| s.span())),
        ];
        for (key, span) in given {
            if let Some(span) = span {
                errs.push(ManifestError {
                    line: Some(src.line(span.start)),
                    message: format!("{at} {key} applies only to runtime \"process\": remove it, or set runtime = \"process\" if this function is a native program"),
                });
            }
        }
        return spec;
    }
    if let Some(c) = &f.command {
        let argv = c.get_ref();
        if argv.is_empty() || argv[0].trim().is_empty() {
            errs.push(src.err(c, format!("{at} command is empty: give the program and its arguments, like [\"python3\", \"-m\", \"awslambdaric\", \"app.handler\"], or remove it to run ./bootstrap")));
        } else if argv.len() > limits::MAX_COMMAND_ARGS
            || argv
                .iter()
                .any(|a| a.len() > limits::MAX_COMMAND_ARG_BYTES || a.contains('\0'))
        {
            errs.push(src.err(c, format!("{at} command is too long or holds a NUL byte: at most {} arguments of {} bytes", limits::MAX_COMMAND_ARGS, limits::MAX_COMMAND_ARG_BYTES)));
        } else {
            spec.command = Some(argv.clone());
        }
    }
    if let Some(h) = &f.handler {
        let v = h.get_ref();
        if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
            errs.push(src.err(
                h,
                format!("{at} handler must be 1 to 128 printable characters, like \"app.handler\""),
            ));
        } else {
            spec.handler = Some(v.clone());
        }
    }
    if let Some(n) = &f.min_instances {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if v <= concurrency.max_concurrency => spec.min_instances = v,
            _ => errs.push(src.err(n, format!(
                "{at} min_instances {} is out of range: use a whole number from 0 to max_concurrency ({})",
                n.get_ref(),
                concurrency.max_concurrency
            ))),
        }
    }
    if let Some(t) = &f.idle_timeout {
        let ms = u64::try_from(t.get_ref().0.as_millis()).unwrap_or(u64::MAX);
        if !(1_000..=limits::MAX_IDLE_TIMEOUT_MS).contains(&ms) {
            errs.push(src.err(t, format!(
                "{at} idle_timeout {} is out of range: use a value from 1s to 24h, like \"60s\"",
                t.get_ref()
            )));
        } else {
            spec.idle_timeout_ms = ms;
        }
    }
    if let Some(n) = &f.network {
        match n.get_ref().as_str() {
            "none" => spec.network = Network::None,
            "host" => spec.network = Network::Host,
            other => errs.push(src.err(n, format!(
                "{at} network {other:?} is not known: use \"none\" (loopback only, the default) or \"host\" (needs `nubo server --allow-host-network`)"
            ))),
        }
    }
    if let Some(t) = &f.tmp {
        let v = t.get_ref().0;
        if !(1024 * 1024..=limits::MAX_TMP_BYTES).contains(&v) {
            errs.push(src.err(
                t,
                format!(
                    "{at} tmp {} is out of range: use a value from 1MiB to 10GiB, like \"64MiB\"",
                    t.get_ref()
                ),
            ));
        } else {
            spec.tmp_bytes = v;
        }
    }
    spec
}

/// The concurrency settings of one `[function.*]` table, defaults filled in.
fn concurrency(
    src: &Src<'_>,
    at: &str,
    f: &RawFunction,
    errs: &mut Vec<ManifestError>,
) -> ConcurrencySpec {
    let mut spec = ConcurrencySpec {
        reserve: f.reserve.unwrap_or(false),
        ..ConcurrencySpec::default()
    };
    if let Some(n) = &f.max_concurrency {
        let max = limits::MAX_FUNCTION_CONCURRENCY;
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=max).contains(&v) => spec.max_concurrency = v,
            _ => errs.push(src.err(
                n,
                format!(
                    "{at} max_concurrency {} is out of range: use a whole number from 1 to {max}, like 100",
                    n.get_ref()
                ),
            )),
        }
    }
    if let Some(n) = &f.queue_depth {
        let max = limits::MAX_QUEUE_DEPTH;
        match u32::try_from(*n.get_ref()) {
            Ok(v) if v <= max => spec.queue_depth = v,
            _ => errs.push(src.err(
                n,
                format!(
                    "{at} queue_depth {} is out of range: use a whole number from 0 (no waiting) to {max}, like 100",
                    n.get_ref()
                ),
            )),
        }
    }
    if let Some(t) = &f.queue_timeout {
        let ms = u64::try_from(t.get_ref().0.as_millis()).unwrap_or(u64::MAX);
        if ms > limits::MAX_QUEUE_TIMEOUT_MS {
            errs.push(src.err(
                t,
                format!(
                    "{at} queue_timeout {} is out of range: use a value from 0s (no waiting) to 60s, like \"10s\"",
                    t.get_ref()
                ),
            ));
        }
        spec.queue_timeout_ms = ms;
    }
    spec
}

/// A destination of `[function.NAME]`: `"fn"` or `"function:fn"`, another function of the app.
fn destination(
    src: &Src<'_>,
    name: &str,
    key: &str,
    value: Option<&Spanned<String>>,
    functions: &BTreeMap<String, FunctionSpec>,
    errs: &mut Vec<ManifestError>,
) -> Option<String> {
    let v = value?;
    let text = v.get_ref().trim();
    let at = format!("[function.{name}] {key}");
    if let Some(queue) = text.strip_prefix(QUEUE_DESTINATION) {
        if let Err(e) = crate::validate_name("queue", queue) {
            errs.push(src.err(v, format!("{at}: {e}")));
            return None;
        }
        return Some(format!("{QUEUE_DESTINATION}{queue}"));
    }
    let target = text.strip_prefix("function:").unwrap_or(text);
    if target == name {
        errs.push(src.err(
            v,
            format!(
                "{at} names the function itself; a destination must be another function of the app"
            ),
        ));
        return None;
    }
    if !functions.contains_key(target) {
        let known: Vec<&str> = functions
            .keys()
            .map(String::as_str)
            .filter(|k| *k != name)
            .collect();
        errs.push(src.err(v, format!(
            "{at} points to unknown function {target:?}: define [function.{target}] or use one of: {}",
            if known.is_empty() { "(no other function)".to_string() } else { known.join(", ") }
        )));
        return None;
    }
    Some(target.to_string())
}

/// The retry settings of one `[function.*]` table, defaults filled in.
fn retry(src: &Src<'_>, at: &str, f: &RawFunction, errs: &mut Vec<ManifestError>) -> RetrySpec {
    let mut spec = RetrySpec::default();
    let Some(r) = &f.retry else {
        return spec;
    };
    let r = r.get_ref();
    if let Some(n) = &r.max_attempts {
        let max = limits::MAX_MAX_ATTEMPTS;
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=max).contains(&v) => spec.max_attempts = v,
            _ => errs.push(src.err(
                n,
                format!(
                    "{at} retry.max_attempts {} is out of range: use a whole number from 1 (no retries) to {max}, like 3",
                    n.get_ref()
                ),
            )),
        }
    }
    let mut duration = |d: &Option<Spanned<HumanDuration>>,
                        key: &str,
                        min: u64,
                        max: u64,
                        max_text: &str,
                        example: &str| {
        let Some(d) = d else { return None };
        let ms = u64::try_from(d.get_ref().0.as_millis()).unwrap_or(u64::MAX);
        if !(min..=max).contains(&ms) {
            errs.push(src.err(
                d,
                format!(
                    "{at} retry.{key} {} is out of range: use a value from {min} ms to {max_text}, like \"{example}\"",
                    d.get_ref()
                ),
            ));
            return None;
        }
        Some(ms)
    };
    if let Some(ms) = duration(
        &r.max_age,
        "max_age",
        1_000,
        limits::MAX_MAX_EVENT_AGE_MS,
        "14d",
        "6h",
    ) {
        spec.max_age_ms = ms;
    }
    if let Some(ms) = duration(
        &r.backoff,
        "backoff",
        10,
        limits::MAX_RETRY_BACKOFF_MS,
        "1h",
        "1s",
    ) {
        spec.backoff_ms = ms;
    }
    spec
}

#[cfg(test)]
mod tests;
