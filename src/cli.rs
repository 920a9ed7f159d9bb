//! Command-line arguments.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Nubo: a self-hosted serverless platform. Deploy wasi:http components as apps; they run when
/// requests arrive, one fresh instance per request.
#[derive(Debug, Parser)]
#[command(name = "nubo", version, about, long_about = None)]
pub struct Cli {
    /// Log more (also: NUBO_LOG=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// How Nubo's own log lines on stderr are written: `text`, or `json` (one object per
    /// line, for log shippers).
    #[arg(long, global = true, env = "NUBO_LOG_FORMAT", default_value = "text", value_name = "FORMAT", value_parser = parse_log_format)]
    pub log_format: nubo_telemetry::LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of `nubo logs`. Every filter given must match; all are applied by the server.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// APP or APP/FUNCTION.
    pub target: String,
    /// Keep streaming new lines; a dropped connection is resumed from the last line printed.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this function's lines (same as APP/FUNCTION).
    #[arg(long, value_name = "F")]
    pub function: Option<String>,
    /// How far back, e.g. "10m", "1h".
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines containing TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Only this invocation's lines.
    #[arg(long, value_name = "ID")]
    pub invocation: Option<String>,
    /// Only lines at or above this level, from functions that write JSON lines with a
    /// `level` (or `severity`, `lvl`) field; lines without a level are left out.
    #[arg(long, value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub level: Option<String>,
    /// Print each line as the JSON object the admin API answers (with its `cursor`).
    #[arg(long)]
    pub json: bool,
}

/// Options of commands that start a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on; port 0 picks a free port (the first line printed names it).
    #[arg(long, env = "NUBO_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Directory for state (apps, code, compiled artifacts, records, logs).
    /// Default: $XDG_DATA_HOME/nubo or ~/.local/share/nubo.
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests, e.g. "30s".
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// How many revisions of each app to keep (newest first); older ones are pruned after a
    /// deploy, except revisions that take traffic. At least 1.
    #[arg(long, env = "NUBO_KEEP_REVISIONS", default_value_t = nubo_control::DEFAULT_KEEP_REVISIONS, value_parser = parse_keep)]
    pub keep_revisions: usize,
    /// Most invocation records kept (the newest); older ones are pruned in the background.
    #[arg(long, env = "NUBO_KEEP_RECORDS", default_value_t = nubo_store::MAX_INVOCATION_ROWS, value_parser = parse_at_least_one_u64)]
    pub keep_records: u64,
    /// Most function log lines kept (the newest); older ones are pruned in the background.
    #[arg(long, env = "NUBO_KEEP_LOG_LINES", default_value_t = nubo_store::MAX_LOG_ROWS, value_parser = parse_at_least_one_u64)]
    pub keep_log_lines: u64,
    /// Prune invocation records and log lines older than this, e.g. "168h" or "30m" (default:
    /// keep them until the counts above push them out).
    #[arg(long, env = "NUBO_KEEP_FOR", value_parser = parse_duration)]
    pub keep_for: Option<std::time::Duration>,
    /// Most invocations running at once on this server, all functions together; functions
    /// with `reserve = true` take their `max_concurrency` out of it, the others share the rest.
    #[arg(long, env = "NUBO_MAX_CONCURRENCY", default_value_t = nubo_core::limits::DEFAULT_SERVER_MAX_CONCURRENCY, value_parser = parse_at_least_one)]
    pub max_concurrency: u32,
    /// Most async invocations waiting or running on this server; past it, new async requests
    /// are answered 429 `throttled` with Retry-After.
    #[arg(long, env = "NUBO_MAX_ASYNC_QUEUE", default_value_t = nubo_gateway::DEFAULT_MAX_PENDING, value_parser = parse_at_least_one_u64)]
    pub max_async_queue: u64,
    /// Whether process functions' workers run in the sandbox (own namespaces, read-only code,
    /// private /tmp, unprivileged user, memory and process caps). `off` runs them as plain
    /// child processes: for development on machines where the sandbox cannot be set up.
    #[arg(long, env = "NUBO_SANDBOX", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub sandbox: bool,
    /// Let process functions that ask for `network = "host"` share the server's network.
    #[arg(long, env = "NUBO_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// Labels of per-function metrics at /_nubo/metrics: none, app, function (app and
    /// function) or revision (app, function and revision). Bounds how many series a scrape has.
    #[arg(long, env = "NUBO_METRICS_LABELS", default_value = "function", value_parser = ["none", "app", "function", "revision"])]
    pub metrics_labels: String,
    /// Send OpenTelemetry traces (a span per invocation, with its phases and outbound calls)
    /// over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (`/v1/traces` is added
    /// unless given). Off when unset.
    #[arg(long, env = "NUBO_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// Turn off the per-invocation telemetry that costs time on the request path: the
    /// Prometheus endpoint and its invocation metrics, and the CPU-time measurement of wasm
    /// invocations. Records, logs and usage (without CPU time) are still kept.
    #[arg(long, env = "NUBO_NO_TELEMETRY", conflicts_with = "otlp_endpoint")]
    pub no_telemetry: bool,
    /// A host path mounted read-only at the same place inside every process sandbox (for a
    /// language runtime installed outside /usr); repeat for more.
    #[arg(long = "sandbox-ro", value_name = "PATH")]
    pub sandbox_readonly: Vec<PathBuf>,
    /// Address of the S3-compatible endpoint (`aws s3`, boto3), or `off`; port 0 picks a free
    /// port (the second line printed names it). Clients sign with the key pair shown by
    /// `nubo s3 credentials` (NUBO_S3_ACCESS_KEY and NUBO_S3_SECRET_KEY set it).
    #[arg(long, env = "NUBO_S3_LISTEN", default_value = "127.0.0.1:7701", value_parser = parse_listen_or_off)]
    pub s3_listen: ListenOrOff,
    /// Usage metering and prices (`nubo usage`).
    #[command(flatten)]
    pub usage: UsageServerArgs,
}

/// Server options of metering: how wall time is billed, the price table `nubo usage` turns
/// usage into cost with (defaults: AWS Lambda x86 public prices), and how long aggregates are
/// kept. Cost is computed when a report is made, with the prices the server runs with then.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageServerArgs {
    /// Price of one million requests.
    #[arg(long, env = "NUBO_PRICE_PER_MILLION_REQUESTS", default_value_t = nubo_store::usage::DEFAULT_PRICE_PER_MILLION_REQUESTS, value_parser = nubo_store::usage::parse_price, value_name = "PRICE")]
    pub price_per_million_requests: f64,
    /// Price of one GB-second (billed seconds × memory limit in GB, 1 GB = 1024 MiB).
    #[arg(long, env = "NUBO_PRICE_PER_GB_SECOND", default_value_t = nubo_store::usage::DEFAULT_PRICE_PER_GB_SECOND, value_parser = nubo_store::usage::parse_price, value_name = "PRICE")]
    pub price_per_gb_second: f64,
    /// Price of one GB (2^30 bytes) sent out: response bodies and outbound request bodies.
    #[arg(long, env = "NUBO_PRICE_PER_GB_OUT", default_value_t = nubo_store::usage::DEFAULT_PRICE_PER_GB_OUT, value_parser = nubo_store::usage::parse_price, value_name = "PRICE")]
    pub price_per_gb_out: f64,
    /// Wall time is billed rounded up to a multiple of this: whole milliseconds from 1ms to
    /// 1m, like "1ms" or "100ms".
    #[arg(long, env = "NUBO_BILLING_GRANULARITY", default_value = "1ms", value_parser = parse_granularity, value_name = "DURATION")]
    pub billing_granularity: std::time::Duration,
    /// How long per-minute usage is kept, like "7d".
    #[arg(long, env = "NUBO_KEEP_USAGE_MINUTES", default_value = "7d", value_parser = nubo_store::usage::parse_span, value_name = "SPAN")]
    pub keep_usage_minutes: std::time::Duration,
    /// How long per-hour usage is kept, like "90d".
    #[arg(long, env = "NUBO_KEEP_USAGE_HOURS", default_value = "90d", value_parser = nubo_store::usage::parse_span, value_name = "SPAN")]
    pub keep_usage_hours: std::time::Duration,
    /// How long per-day usage is kept, like "730d" (default: forever).
    #[arg(long, env = "NUBO_KEEP_USAGE_DAYS", value_parser = nubo_store::usage::parse_span, value_name = "SPAN")]
    pub keep_usage_days: Option<std::time::Duration>,
    /// Most per-minute, per-hour and per-day rows kept, each; past it the oldest buckets are
    /// pruned first. From 1 to 1000000000.
    #[arg(long, env = "NUBO_KEEP_USAGE_ROWS", default_value_t = nubo_store::usage::DEFAULT_KEEP_USAGE_ROWS, value_parser = nubo_store::usage::parse_keep_rows, value_name = "N")]
    pub keep_usage_rows: u64,
}

fn parse_granularity(s: &str) -> Result<std::time::Duration, String> {
    let g = nubo_core::parse_duration(s)?;
    nubo_store::usage::check_granularity(g)?;
    Ok(g)
}

/// Options of `nubo usage`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    /// Export per-invocation usage records instead of a report.
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    /// Only this tenant's apps (every app belongs to "default" until tenants land).
    #[arg(long, value_name = "T")]
    pub tenant: Option<String>,
    /// Only this app.
    #[arg(long, value_name = "A")]
    pub app: Option<String>,
    /// Only this function.
    #[arg(long, value_name = "F")]
    pub function: Option<String>,
    /// Start: a span back from now (30m, 12h, 7d, 2w) or an RFC 3339 time or date [default: 7d].
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// End, in the same forms as --since [default: now].
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Grouping: per function, per tenant, per revision (with cost per 1,000 invocations side
    /// by side), per UTC day or hour.
    #[arg(long, default_value = "function", value_parser = nubo_store::usage::UsageBy::NAMES)]
    pub by: String,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
}

/// `nubo usage` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum UsageCommand {
    /// Print per-invocation usage records as JSON lines, oldest first; each `id` is the
    /// invocation id, unique per record, for deduplication.
    Export {
        /// Start: a span back from now (30m, 12h, 7d) or an RFC 3339 time or date.
        #[arg(long, value_name = "WHEN")]
        since: String,
        /// End, in the same forms as --since [default: now].
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only this tenant's apps.
        #[arg(long, value_name = "T")]
        tenant: Option<String>,
        /// Only this app.
        #[arg(long, value_name = "A")]
        app: Option<String>,
        /// Only this function.
        #[arg(long, value_name = "F")]
        function: Option<String>,
        /// Output format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
    },
}

/// A listener address, or `None` for `off`.
#[derive(Debug, Clone, Copy)]
pub struct ListenOrOff(pub Option<SocketAddr>);

fn parse_listen_or_off(s: &str) -> Result<ListenOrOff, String> {
    match s.trim() {
        "off" => Ok(ListenOrOff(None)),
        other => other.parse().map(|a| ListenOrOff(Some(a))).map_err(|_| {
            format!("{other:?} is neither an address like 127.0.0.1:7701 nor \"off\"")
        }),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        other => Err(format!("{other:?} is neither \"on\" nor \"off\"")),
    }
}

fn parse_at_least_one(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a limit: use a whole number of at least 1, e.g. 1000"
        )),
    }
}

fn parse_at_least_one_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a limit: use a whole number of at least 1, e.g. 100000"
        )),
    }
}

fn parse_keep(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of revisions to keep: use a whole number of at least 1, e.g. 100"
        )),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    nubo_core::parse_duration(s)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Nubo server (node).
    Server(ServerArgs),
    /// Start an embedded server, build and deploy the app in DIR, and stream its logs.
    Up {
        /// The app's folder (holding nubo.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Server options.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Build the app in DIR and deploy it as a new revision.
    Deploy {
        /// The app's folder (holding nubo.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Skip the functions' build commands; deploy the files as they are.
        #[arg(long)]
        no_build: bool,
        /// Send only this percent (1-99) of the app's traffic to the new revision; the rest
        /// stays on the revision(s) serving now.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        /// Store and check the new revision but send it no traffic; reach it by pinning
        /// (header `nubo-revision: N` or the path prefix `/_rev/N/`).
        #[arg(long, conflicts_with = "canary")]
        no_traffic: bool,
        /// Deploy only if the app is still at this traffic generation (see `nubo traffic APP`).
        #[arg(long, value_name = "GENERATION")]
        expect: Option<u64>,
    },
    /// List an app's retained revisions, newest first.
    Revisions {
        /// App name.
        app: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an app's traffic split, or set it: `nubo traffic shop 12=90 13=10`.
    Traffic {
        /// App name.
        app: String,
        /// The new split as REVISION=PERCENT pairs summing to 100; none shows the live split.
        #[arg(value_name = "REVISION=PERCENT")]
        split: Vec<String>,
        /// Apply only if the app is still at this generation (printed by `nubo traffic APP`).
        #[arg(long, value_name = "GENERATION")]
        expect: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move all of an app's traffic back to an earlier revision, at once and without recompiling.
    Rollback {
        /// App name.
        app: String,
        /// The revision to serve; default the one that served before the last traffic change.
        #[arg(long, value_name = "REVISION")]
        to: Option<u64>,
        /// Apply only if the app is still at this generation (printed by `nubo traffic APP`).
        #[arg(long, value_name = "GENERATION")]
        expect: Option<u64>,
    },
    /// Shift an app's traffic to a revision in timed steps, rolling back by itself when the
    /// new revision fails more than the old one: `nubo rollout shop --to 13 --steps 10,50,100
    /// --interval 5m`. Without --to, shows the running or last rollout.
    Rollout {
        /// App name.
        app: String,
        /// The revision to roll out (`nubo revisions APP` lists them).
        #[arg(long, value_name = "REVISION", conflicts_with = "abort")]
        to: Option<u64>,
        /// Its share at each step, in percent, increasing and ending at 100 [default: 10,50,100].
        #[arg(long, value_name = "PERCENTS", requires = "to")]
        steps: Option<String>,
        /// How long each step lasts, from 1s to 7d [default: 5m].
        #[arg(long, value_name = "DURATION", requires = "to", value_parser = parse_duration)]
        interval: Option<std::time::Duration>,
        /// Roll back when the new revision's error rate in a step exceeds this many times the
        /// old revision's [default: 2] …
        #[arg(long, value_name = "RATIO", requires = "to")]
        error_ratio: Option<f64>,
        /// … and this percent [default: 5].
        #[arg(long, value_name = "PERCENT", requires = "to")]
        min_error_rate: Option<f64>,
        /// Start only if the app is still at this generation (printed by `nubo traffic APP`).
        #[arg(long, value_name = "GENERATION", requires = "to")]
        expect: Option<u64>,
        /// Stop the running rollout and move all traffic back to the revision it started from.
        #[arg(long)]
        abort: bool,
        /// Follow the rollout until it ends; exit with status 1 unless it completes.
        #[arg(long, conflicts_with = "abort")]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List deployed apps.
    Ls,
    /// Remove an app (it stops serving at once).
    Rm {
        /// App name.
        app: String,
    },
    /// Invoke a function directly and print its response body.
    Invoke {
        /// APP/FUNCTION.
        target: String,
        /// Request body; @FILE reads a file, @- reads standard input.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// HTTP method (default POST with data, GET without).
        #[arg(short = 'X', long = "method")]
        method: Option<String>,
        /// Path (and query) the function sees.
        #[arg(long, default_value = "/")]
        path: String,
        /// Extra request header, "Name: value" (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print the status line and headers to stderr.
        #[arg(short = 'i', long = "include")]
        include: bool,
        /// Run this revision of the function (it must be retained; it need not take traffic).
        #[arg(long, value_name = "REVISION", conflicts_with = "asynchronous")]
        revision: Option<u64>,
        /// Queue the invocation and print its id instead of waiting for the response; it runs
        /// with retries (`nubo invocation ID` shows how it went).
        #[arg(long = "async", id = "asynchronous")]
        asynchronous: bool,
        /// With --async: a key naming this invocation; sending the same key again within 24h
        /// returns the original invocation's id and runs nothing.
        #[arg(long, value_name = "KEY", requires = "asynchronous")]
        idempotency_key: Option<String>,
    },
    /// Show function log lines, filtered on the server.
    Logs(LogsArgs),
    /// Report usage and its cost (requests, errors, billed GB-seconds, bytes out), or export
    /// per-invocation usage records.
    Usage(UsageArgs),
    /// Show recent invocation records of an app, or with --status / --async its async
    /// invocations.
    Invocations {
        /// App name.
        app: String,
        /// Only this function.
        #[arg(long)]
        function: Option<String>,
        /// How many (newest first).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// List async invocations in this state: queued, running, succeeded, failed or
        /// cancelled.
        #[arg(long, value_name = "STATE", value_parser = ["queued", "running", "succeeded", "failed", "cancelled"])]
        status: Option<String>,
        /// List async invocations (in every state) instead of invocation records.
        #[arg(long = "async")]
        asynchronous: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one invocation: an async one's state, attempts (each with its logs) and payload,
    /// or a record and its logs. With --cancel, cancel a queued async invocation.
    Invocation {
        /// The invocation id (printed by `nubo invoke --async` and `nubo invocations`).
        id: String,
        /// Cancel it; only a queued async invocation can be cancelled.
        #[arg(long)]
        cancel: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// An app's dead-letter queue: async invocations that failed every attempt. Lists them, or
    /// queues them again (--redrive) or deletes them (--purge).
    Dlq {
        /// App name.
        app: String,
        /// Queue these failed invocations again, attempts starting over (default: all of them).
        #[arg(long, conflicts_with = "purge")]
        redrive: bool,
        /// Delete every failed invocation of the app and its attempts.
        #[arg(long)]
        purge: bool,
        /// With --redrive: only these invocations.
        #[arg(value_name = "ID", requires = "redrive")]
        ids: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Key-value stores: list stores and keys, read, write and delete values.
    Kv {
        /// What to do.
        #[command(subcommand)]
        command: KvCommand,
    },
    /// The S3-compatible endpoint: show its address and key pair.
    S3 {
        /// What to do.
        #[command(subcommand)]
        command: S3Command,
    },
    /// Object storage: list, make and remove buckets; upload, download and delete objects.
    Obj {
        /// What to do.
        #[command(subcommand)]
        command: ObjCommand,
    },
    /// Durable queues: create, list, publish to, purge and remove queues.
    Queue {
        /// What to do.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// An app's triggers in force (cron, queue, object, MQTT, NATS) and how each is doing.
    Triggers {
        /// App name.
        app: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Secrets of an app: set one from stdin or a file, list names, remove one.
    Secrets {
        /// What to do.
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Internal: compile one component read from stdin (spawned by the server).
    #[command(name = "__compile-worker", hide = true)]
    CompileWorker,
}

/// `nubo s3` subcommands.
#[derive(Debug, Subcommand)]
pub enum S3Command {
    /// Print the S3 endpoint's URL, region and the key pair S3 clients sign with.
    Credentials {
        /// Print `export AWS_...=` lines for a shell (`eval "$(nubo s3 credentials --env)"`).
        #[arg(long, conflicts_with = "json")]
        env: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `nubo secrets` subcommands. A value is never taken from the command line (it would end
/// up in shell history and in `ps`), and never printed.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set a secret from stdin (read to its end; one trailing newline is dropped when typed at
    /// a terminal) or from a file. New invocations see it without a redeploy.
    Set {
        /// The app (it need not be deployed yet).
        app: String,
        /// The secret's name: lowercase letters, digits, '-' or '_'.
        name: String,
        /// Read the value from this file (as is) instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// List the app's secrets: names and when each was set, never values.
    Ls {
        /// The app.
        app: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret. Exits 1 when it was not set.
    Rm {
        /// The app.
        app: String,
        /// The secret's name.
        name: String,
    },
}

/// `nubo kv` subcommands.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// List the stores with their key counts and bytes, or with STORE, its keys in byte order.
    Ls {
        /// List this store's keys.
        store: Option<String>,
        /// Only keys starting with this.
        #[arg(long, requires = "store")]
        prefix: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value to stdout as it is stored (raw bytes). Exits 1 when absent.
    Get {
        /// The store.
        store: String,
        /// The key.
        key: String,
    },
    /// Set a key's value: VALUE as given, or `-` to read it from stdin.
    Set {
        /// The store (it must exist: bind it in a function's `kv = [...]`, or `nubo kv create`).
        store: String,
        /// The key.
        key: String,
        /// The value, or `-` for stdin.
        value: String,
        /// Remove the key once this long has passed, like 30s, 10m or 24h.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Delete a key. Exits 1 when there was no such key.
    Rm {
        /// The store.
        store: String,
        /// The key.
        key: String,
    },
    /// Create an empty store (deploys create the stores their functions bind).
    Create {
        /// The store's name: lowercase letters, digits, '-' or '_'.
        store: String,
    },
}

/// `nubo queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create an empty queue (deploys create the queues their apps name).
    Create {
        /// The queue's name: lowercase letters, digits, '-' or '_'.
        queue: String,
    },
    /// List the queues with their figures: messages held, in flight, ever published.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish one message and print its id once it is stored durably.
    Publish {
        /// The queue (it must exist).
        queue: String,
        /// The message: text as given, @FILE for a file's bytes, or @- for stdin.
        #[arg(short, long, value_name = "DATA")]
        data: String,
        /// The message's content type, handed to the consumer.
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Delete every message of a queue, leased or not.
    Purge {
        /// The queue.
        queue: String,
    },
    /// Delete a queue and every message it holds.
    Rm {
        /// The queue.
        queue: String,
    },
}

/// `nubo obj` subcommands.
#[derive(Debug, Subcommand)]
pub enum ObjCommand {
    /// List the buckets, or with BUCKET[/PREFIX], its objects (size, time, etag) one level
    /// below the prefix; deeper keys show once as their common prefix (PRE).
    Ls {
        /// A bucket, optionally followed by `/` and a key prefix.
        #[arg(value_name = "BUCKET[/PREFIX]")]
        target: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a bucket (deploys create the buckets their functions bind).
    Mb {
        /// The bucket's name: 3 to 63 lowercase letters, digits, '.' or '-' (S3 rules).
        bucket: String,
    },
    /// Remove an empty bucket.
    Rb {
        /// The bucket.
        bucket: String,
    },
    /// Upload FILE (or stdin, with `-` or no FILE) as the object KEY, replacing any object there.
    Put {
        /// The bucket (it must exist).
        bucket: String,
        /// The object's key.
        key: String,
        /// The file to upload, or `-` for stdin.
        #[arg(value_name = "FILE|-")]
        file: Option<String>,
        /// The content type to store with the object.
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Download the object KEY into FILE (or to stdout, with `-` or no FILE).
    Get {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// Where to write it, or `-` for stdout.
        #[arg(value_name = "FILE|-")]
        file: Option<String>,
    },
    /// Delete an object. Exits 1 when there was no such object.
    Rm {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
}

fn parse_log_format(s: &str) -> Result<nubo_telemetry::LogFormat, String> {
    s.parse()
}

/// An OTLP/HTTP endpoint, checked before the server starts (an empty value turns export off).
fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    if !s.trim().is_empty() {
        nubo_telemetry::traces_url(s)?;
    }
    Ok(s.to_string())
}
