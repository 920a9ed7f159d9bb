//! The runtime's configuration and the one place the wasmtime engine is configured, so the
//! server and the compile worker always build engines whose artifacts are interchangeable.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Default number of wasm instances that may run at once. Bounds the pooling allocator's slots
/// (and the virtual address space it reserves, about 4 GiB per memory slot).
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;

/// Default epoch tick. One ticker thread bumps the engine's epoch this often; timeouts are
/// enforced with this granularity and CPU-bound guests yield to other requests this often.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);

/// Region process functions see unless configured: there is no AWS region behind Nubo.
pub const DEFAULT_REGION: &str = "local";

/// Default wall-clock limit on compiling one component. Bounds deploy time spent on hostile or
/// pathological code (huge functions, deep nesting).
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default memory limit of the compile worker process. Bounds the memory hostile code can make
/// the compiler allocate; past it the worker dies instead of the server.
pub const DEFAULT_COMPILE_MEMORY_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

/// Linear memories per instance slot budgeted in the pool. Components from the usual toolchains
/// hold one or two (the program and, for adapter-built ones, the WASI adapter).
const MEMORIES_PER_INSTANCE: u32 = 2;

/// Tables per instance slot budgeted in the pool (as for memories).
const TABLES_PER_INSTANCE: u32 = 2;

/// Core instances per component instance budgeted in the pool. Core instances cost only a
/// counter and some heap, so this is generous: interpreters built as components
/// (componentize-py, componentize-js) hold dozens of small shim instances.
const CORE_INSTANCES_PER_INSTANCE: u32 = 50;

/// Most linear memories one component may hold. Bounds how much of the pool a single
/// (hostile) instance can take from everyone else.
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;

/// Most tables one component may hold (see [`MAX_MEMORIES_PER_COMPONENT`]).
const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Cap on an instance's runtime metadata (`VMContext`), per core instance and per component.
/// Interpreters compiled to wasm have tens of thousands of functions; the memory is allocated
/// on demand, so this only bounds a hostile component's host-side footprint.
const MAX_CORE_INSTANCE_METADATA: usize = 4 * 1024 * 1024;
/// See [`MAX_CORE_INSTANCE_METADATA`].
const MAX_COMPONENT_INSTANCE_METADATA: usize = 16 * 1024 * 1024;

/// Bytes of each linear memory reset with `memset` (only the dirty pages when the kernel has
/// `PAGEMAP_SCAN`) instead of `madvise` when a slot is freed. Keeps the pages a typical request
/// touches resident, avoiding page faults and the TLB-shootdown IPIs `madvise` causes; costs
/// up to this much RSS per warm slot.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 2 * 1024 * 1024;

/// Same as [`LINEAR_MEMORY_KEEP_RESIDENT`] for tables.
const TABLE_KEEP_RESIDENT: usize = 512 * 1024;

/// Decommits (`madvise`) gathered before they are issued together; slot exhaustion flushes
/// them early, so batching never makes an allocation fail.
const DECOMMIT_BATCH_SIZE: usize = 16;

/// How the runtime is sized and how it isolates compilation.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most wasm instances alive at once (each request runs in a fresh one). Sizes the pooling
    /// allocator.
    pub max_instances: u32,
    /// Server-wide cap on invocations running at once (`NUBO_MAX_CONCURRENCY` for `nubo server`);
    /// functions with `reserve = true` take their share out of it, the others share the rest.
    pub max_concurrency: u32,
    /// How often the epoch advances: the granularity of timeouts.
    pub epoch_tick: Duration,
    /// Longest time one compilation may take.
    pub compile_timeout: Duration,
    /// Most memory (bytes of data segment, `RLIMIT_DATA`) the compile worker may use.
    pub compile_memory_limit: u64,
    /// The command that compiles in a separate process; `None` compiles on the calling thread,
    /// without time or memory bounds (tests).
    pub compile_worker: Option<CompileWorker>,
    /// Where process functions' code is unpacked, one directory per code digest (under the
    /// data directory for `nubo server`).
    pub code_dir: PathBuf,
    /// How process function workers are confined.
    pub sandbox: crate::sandbox::SandboxPolicy,
    /// The region process functions see (`AWS_REGION`, their ARN).
    pub region: String,
    /// The key-value stores functions bind (`kv = [...]`), for wasm and process functions
    /// alike; `None`: every store access is refused with a message saying the server has none.
    pub kv: Option<nubo_store::kv::Kv>,
    /// The object storage whose buckets functions bind (`buckets = [...]`), for wasm and
    /// process functions alike; `None`: every bucket access is refused with a message saying
    /// the server has none.
    pub objects: Option<nubo_store::objects::Objects>,
    /// The durable queues functions publish to (`queues = [...]`), for wasm and process
    /// functions alike; `None`: every publish is refused with a message saying the server has
    /// none.
    pub queues: Option<nubo_store::Queues>,
    /// The apps' secrets, delivered to the functions whose `env` names them (wasm: at each
    /// invocation; process: at each worker's spawn); `None`: such variables stay unset.
    pub secrets: Option<nubo_store::secrets::Secrets>,
    /// Whether wasm invocations measure the CPU time they spend (two monotonic clock reads per
    /// poll of the guest); off, their records carry none.
    pub measure_cpu: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_concurrency: nubo_core::limits::DEFAULT_SERVER_MAX_CONCURRENCY,
            epoch_tick: DEFAULT_EPOCH_TICK,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compile_memory_limit: DEFAULT_COMPILE_MEMORY_LIMIT,
            compile_worker: None,
            code_dir: std::env::temp_dir().join("nubo-code"),
            sandbox: default_sandbox(),
            region: DEFAULT_REGION.to_owned(),
            kv: None,
            objects: None,
            queues: None,
            secrets: None,
            measure_cpu: true,
        }
    }
}

/// The sandbox on, re-executing this program as its launcher, state under the temp dir.
/// `nubo server` sets its own (launcher: the `nubo` binary, state under the data dir).
fn default_sandbox() -> crate::sandbox::SandboxPolicy {
    let scratch = std::env::temp_dir().join("nubo-sandbox");
    crate::sandbox::SandboxPolicy::new(scratch.clone()).unwrap_or(crate::sandbox::SandboxPolicy {
        enabled: true,
        launcher: PathBuf::from("nubo"),
        uid: 65_534,
        gid: 65_534,
        allow_host_network: false,
        readonly_paths: Vec::new(),
        scratch_dir: scratch,
    })
}

/// A program that runs [`compile_worker_main`](crate::compile_worker_main): the `nubo` binary
/// passes itself with a hidden subcommand.
#[derive(Debug, Clone)]
pub struct CompileWorker {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Everything that decides whether compiled code is compatible: shared by the server's engine
/// and the compile worker's, so an artifact compiled by either loads in the other.
pub(crate) fn base_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // Epoch checks are compiled into the code, so this must match between compiler and loader.
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config
}

/// The server's engine configuration: [`base_config`] plus the pooling allocator sized from
/// `max_instances`.
pub(crate) fn pooled_config(max_instances: u32) -> wasmtime::Config {
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .total_memories(n.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(n.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(n)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_core_instance_size(MAX_CORE_INSTANCE_METADATA)
        .max_component_instance_size(MAX_COMPONENT_INSTANCE_METADATA)
        .max_memory_size(max_memory_size())
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // Resets only the pages a request dirtied (Linux >= 6.7); `Auto` quietly falls back
        // to plain `memset`/`madvise` where the ioctl is missing.
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH_SIZE);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The server's engine configuration without the pool, for hosts where reserving the pool's
/// address space fails.
pub(crate) fn on_demand_config() -> wasmtime::Config {
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    config
}

fn max_memory_size() -> usize {
    usize::try_from(nubo_core::limits::MAX_FUNCTION_MEMORY).unwrap_or(usize::MAX)
}
