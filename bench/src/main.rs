//! `nubo-bench`: measures Nubo serving `examples/hello` against a minimal hyper server on loopback
//! in one run, and writes the figures with a machine description to `bench/RESULTS.md`.
//!
//! Run it as `cargo run --release -p nubo-bench --bin nubo-bench` (see `bench/README.md`). It
//! prints figures and asserts nothing about them.

mod asynchronous;
mod burst;
mod http;
mod machine;
mod process;
mod procs;
mod report;
mod state;
mod telemetry;
mod wrk;

use anyhow::{Context as _, bail, ensure};
use procs::{Memory, Proc};
use report::{Report, kib, micros, millis, progress};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Core the server under test is pinned to.
const SERVER_CORE: &str = "0";
/// Core wrk is pinned to.
const LOAD_CORE: &str = "1";
/// Connections of the throughput runs.
const CONNS: u32 = 32;
/// The path every server is asked for (a route of `examples/hello`).
const HELLO_PATH: &str = "/hello/world";
/// Most functions per deployed app in the memory test (the manifest limit is 256).
const FUNCTIONS_PER_APP: usize = 100;
/// Upper bound of one start-up measurement.
const START_BOUND: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: cargo run --release -p nubo-bench --bin nubo-bench -- [OPTIONS]

  --quick         short runs for a smoke test (writes no file unless --out is given)
  --rounds N      throughput rounds, alternating the servers (default 3; --quick: 1)
  --out PATH      where to write the report (default bench/RESULTS.md)
  --hyper-only    measure only the hyper baseline (when nubo does not build)
  --no-perf       skip the perf profile
  --wasmtime PATH the `wasmtime` CLI to compare with (default: PATH, then the cache below)
  --install-wasmtime
                  install wasmtime-cli WASMTIME_VERSION with cargo into
                  ~/.cache/nubo/wasmtime-WASMTIME_VERSION when it is not found (20-40 min)
  -h, --help      this text";

/// The wasmtime release Nubo runs on; `wasmtime serve` of this version is the comparison.
const WASMTIME_VERSION: &str = "48.0.8";

/// Pool settings Nubo's engine uses (crates/runtime/src/config.rs), as `wasmtime serve -O`
/// flags, so the second wasmtime configuration differs from Nubo only in what Nubo adds.
const WASMTIME_TUNED_POOL: &str = "pooling-memory-keep-resident=2097152,\
pooling-table-keep-resident=524288,pooling-pagemap-scan=y,pooling-decommit-batch-size=16";

#[derive(Debug)]
struct Opts {
    quick: bool,
    rounds: Option<usize>,
    out: Option<PathBuf>,
    hyper_only: bool,
    no_perf: bool,
    wasmtime: Option<PathBuf>,
    install_wasmtime: bool,
}

fn parse_args() -> anyhow::Result<Option<Opts>> {
    let mut o = Opts {
        quick: false,
        rounds: None,
        out: None,
        hyper_only: false,
        no_perf: false,
        wasmtime: None,
        install_wasmtime: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--hyper-only" => o.hyper_only = true,
            "--no-perf" => o.no_perf = true,
            "--rounds" => {
                let n: usize = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("--rounds needs a number")?;
                ensure!((1..=20).contains(&n), "--rounds must be 1..=20");
                o.rounds = Some(n);
            }
            "--out" => o.out = Some(args.next().context("--out needs a path")?.into()),
            "--wasmtime" => {
                o.wasmtime = Some(args.next().context("--wasmtime needs a path")?.into());
            }
            "--install-wasmtime" => o.install_wasmtime = true,
            "-h" | "--help" => {
                println!("{}", USAGE.replace("WASMTIME_VERSION", WASMTIME_VERSION));
                return Ok(None);
            }
            other => bail!(
                "unknown argument {other:?}\n{}",
                USAGE.replace("WASMTIME_VERSION", WASMTIME_VERSION)
            ),
        }
    }
    Ok(Some(o))
}

/// Durations and counts of one run; every loop of the benchmark is bounded by these.
#[derive(Debug)]
struct Plan {
    warmup_secs: u64,
    measure_secs: u64,
    single_secs: u64,
    perf_secs: u64,
    rounds: usize,
    restarts: usize,
    settle: Duration,
    rss_steps: Vec<usize>,
    trickle_secs: u64,
    burst_secs: u64,
    async_secs: u64,
    /// Process functions: cold starts per runtime, and warm requests per function.
    process_cold: usize,
    process_warm: usize,
    /// State: sequential requests per key-value operation, and rounds per object size.
    state_requests: usize,
    state_rounds: usize,
}

impl Plan {
    fn new(o: &Opts) -> Plan {
        if o.quick {
            Plan {
                warmup_secs: 1,
                measure_secs: 3,
                single_secs: 2,
                perf_secs: 2,
                rounds: o.rounds.unwrap_or(1),
                restarts: 3,
                settle: Duration::from_secs(1),
                rss_steps: vec![1, 100],
                trickle_secs: 2,
                burst_secs: 3,
                async_secs: 2,
                process_cold: 3,
                process_warm: 100,
                state_requests: 500,
                state_rounds: 2,
            }
        } else {
            Plan {
                warmup_secs: 2,
                measure_secs: 10,
                single_secs: 5,
                perf_secs: 5,
                rounds: o.rounds.unwrap_or(3),
                restarts: 5,
                settle: Duration::from_secs(2),
                rss_steps: vec![1, 100, 1000],
                trickle_secs: 5,
                burst_secs: 5,
                async_secs: 5,
                process_cold: 5,
                process_warm: 500,
                state_requests: 2000,
                state_rounds: 5,
            }
        }
    }
}

/// Rows of a report table.
type Rows = Vec<Vec<String>>;

/// A server under test.
struct Target {
    label: String,
    proc: Proc,
    addr: SocketAddr,
}

/// Figures of one measured wrk run.
#[derive(Debug, Clone)]
struct Measured {
    w: wrk::WrkResult,
    cpu_us_per_req: f64,
    switches_per_req: f64,
    server_cpu_pct: f64,
    core0_steal_pct: f64,
    core0_other_pct: f64,
    core1_busy_pct: f64,
}

struct Bench {
    root: PathBuf,
    bin_dir: PathBuf,
    tmp: tempfile::TempDir,
    plan: Plan,
    ticks: u64,
    rep: Report,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nnubo-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let Some(opts) = parse_args()? else {
        return Ok(());
    };
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?
        .to_path_buf();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    ensure!(
        cores >= 2,
        "this benchmark pins the server and the load generator to different cores; this machine has {cores}"
    );
    ensure_tools()?;
    build(&root, opts.hyper_only)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the driver's directory")?
        .to_path_buf();
    let tmp = tempfile::Builder::new().prefix("nubo-bench-").tempdir()?;
    let mut b = Bench {
        root,
        bin_dir,
        tmp,
        plan: Plan::new(&opts),
        ticks: procs::clock_ticks(),
        rep: Report::default(),
    };

    b.rep.block("# Nubo benchmark results");
    let command = if opts.quick {
        "`cargo run --release -p nubo-bench --bin nubo-bench -- --quick` (a short smoke run: rough figures)"
    } else {
        "`cargo run --release -p nubo-bench --bin nubo-bench`"
    };
    b.rep.block(&format!(
        "Written by {command}; see `bench/README.md` for the method. Loopback only; servers \
         pinned to core {SERVER_CORE}, wrk to core {LOAD_CORE}. Figures, not assertions: this \
         machine is shared and noisy, so compare rows of the same run."
    ));
    b.rep.heading("Machine");
    let rows: Vec<Vec<String>> = machine::describe(&b.root)
        .into_iter()
        .map(|(k, v)| vec![k, v])
        .collect();
    b.rep.table(&["what", "value"], &rows);

    let hyper = b.start_hyper(Some(SERVER_CORE))?;
    let hyper_mem = hyper.proc.memory()?;
    let mut targets = vec![hyper];
    let mut nubo_data = None;
    if opts.hyper_only {
        b.rep
            .block("Nubo was not measured in this run (`--hyper-only`).");
    } else {
        let data = b.tmp.path().join("data-throughput");
        let nubo = b.start_nubo(&data, Some(SERVER_CORE), "nubo")?;
        b.deploy_example(nubo.addr)?;
        check_hello(nubo.addr, "nubo")?;
        targets.push(nubo);
        nubo_data = Some(data);
    }
    let wasmtime = (!opts.hyper_only).then(|| find_wasmtime(&opts));
    let wasmtime_note = match wasmtime {
        None => None,
        Some(Err(e)) => Some(format!(
            "`wasmtime serve` was not measured in this run: {e:#}."
        )),
        Some(Ok(wasmtime)) => {
            let mut notes = Vec::new();
            for (label, flags) in [
                ("wasmtime serve", None),
                ("wasmtime serve, tuned pool", Some(WASMTIME_TUNED_POOL)),
            ] {
                match b.start_wasmtime(&wasmtime, label, flags) {
                    Ok(t) => targets.push(t),
                    Err(e) => notes.push(format!("`{label}` failed to start ({e:#}).")),
                }
            }
            (!notes.is_empty()).then(|| notes.join(" "))
        }
    };
    b.throughput(&targets, wasmtime_note.as_deref())?;
    b.single_connection(&targets)?;
    let perf_target = targets.iter().find(|t| t.label == "nubo");
    b.profile(perf_target, opts.no_perf);
    b.burst(perf_target);
    b.asynchronous(perf_target);
    b.process(perf_target);
    b.state(perf_target);
    b.telemetry(perf_target.is_some());

    // Start-up and memory run on fresh processes.
    let mut nubo_proc = None;
    for t in targets {
        if t.label == "nubo" {
            nubo_proc = Some(t.proc);
        }
    }
    b.rep
        .heading("Start-up: server start to first successful response");
    let mut rows = vec![b.startup_hyper()?];
    if let (Some(mut p), Some(data)) = (nubo_proc, nubo_data) {
        progress("stopping the nubo server (SIGTERM) for the restart test");
        let st = p.terminate(Duration::from_secs(15))?;
        if !st.success() {
            progress(&format!("  nubo server exited with {st}"));
        }
        drop(p);
        rows.push(b.startup_nubo(&data)?);
    }
    b.rep.table(
        &[
            "server",
            "runs",
            "first stdout line (min / median)",
            "first 200 (min / median)",
            "every run (first 200)",
        ],
        &rows,
    );
    b.rep.block(&format!(
        "Time from spawning the process to the first `200` for `GET {HELLO_PATH}`, polled every 1 ms \
         (bounded to {} s). For Nubo the app was deployed before the restart, so this includes opening \
         the store, loading the compiled artifact and building the route table. Not pinned.",
        START_BOUND.as_secs()
    ));

    b.memory(hyper_mem, opts.hyper_only)?;

    let total = started.elapsed();
    b.rep.block(&format!(
        "Whole run (including builds and deploys): {:.0} s.",
        total.as_secs_f64()
    ));
    let out = match (opts.out, opts.quick) {
        (Some(p), _) => Some(p),
        (None, false) => Some(b.root.join("bench/RESULTS.md")),
        (None, true) => None,
    };
    if let Some(out) = out {
        std::fs::write(&out, b.rep.markdown())
            .with_context(|| format!("writing {}", out.display()))?;
        progress(&format!("wrote {}", out.display()));
    } else {
        progress("--quick: no file written (pass --out PATH to keep the report)");
    }
    Ok(())
}

/// wrk (installed with apt-get if missing) and taskset.
fn ensure_tools() -> anyhow::Result<()> {
    if procs::on_path("wrk").is_none() {
        progress("wrk is not installed: installing it with `apt-get install -y wrk`");
        let ok = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["install", "-y", "wrk"]) {
            progress("retrying after `apt-get update`");
            let _ = ok(&["update"]);
            let _ = ok(&["install", "-y", "wrk"]);
        }
        ensure!(
            procs::on_path("wrk").is_some(),
            "wrk is missing and `apt-get install -y wrk` did not install it; install wrk and rerun"
        );
    }
    ensure!(
        procs::on_path("taskset").is_some(),
        "taskset is missing (package util-linux); it pins the server and the load to separate cores"
    );
    Ok(())
}

/// The `wasmtime` CLI to compare with: `--wasmtime`, else `PATH`, else the cached install
/// (made first with `--install-wasmtime`). It must be the release Nubo runs on.
fn find_wasmtime(opts: &Opts) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(format!(".cache/nubo/wasmtime-{WASMTIME_VERSION}")))
        .context("HOME is not set, so the wasmtime cache cannot be found")?;
    let cached = cache.join("bin/wasmtime");
    let found = match &opts.wasmtime {
        Some(p) => Some(p.clone()),
        None => procs::on_path("wasmtime").or_else(|| cached.is_file().then(|| cached.clone())),
    };
    let wasmtime = match found {
        Some(p) => p,
        None if opts.install_wasmtime => {
            progress(&format!(
                "installing wasmtime-cli {WASMTIME_VERSION} into {} (takes 20-40 minutes)",
                cache.display()
            ));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let ok = Command::new(cargo)
                .args([
                    "install",
                    "wasmtime-cli",
                    "--locked",
                    "--version",
                    WASMTIME_VERSION,
                ])
                .arg("--root")
                .arg(&cache)
                .status()
                .is_ok_and(|s| s.success());
            ensure!(
                ok,
                "`cargo install wasmtime-cli` failed (see its output above)"
            );
            cached
        }
        None => bail!(
            "no `wasmtime` on PATH or in {}; rerun with --install-wasmtime, or pass \
             --wasmtime PATH",
            cache.display()
        ),
    };
    let out = Command::new(&wasmtime)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", wasmtime.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        version.split_whitespace().nth(1) == Some(WASMTIME_VERSION),
        "{} is {}, not wasmtime {WASMTIME_VERSION} (the release Nubo runs on)",
        wasmtime.display(),
        version.trim()
    );
    Ok(wasmtime)
}

/// Builds the release `nubo` and `hyper-hello` into the driver's target directory.
fn build(root: &Path, hyper_only: bool) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "nubo-bench",
        "--bin",
        "hyper-hello",
    ]);
    if !hyper_only {
        cmd.args(["-p", "nubo", "--bin", "nubo"]);
    }
    progress(&format!(
        "building {} (release)",
        if hyper_only {
            "hyper-hello"
        } else {
            "nubo and hyper-hello"
        }
    ));
    let st = cmd.status().context("cannot run cargo")?;
    if !st.success() {
        bail!(
            "`cargo build --release -p nubo` failed ({st}): the workspace does not build right now; \
             fix it or run with --hyper-only to measure the baseline alone"
        );
    }
    Ok(())
}

fn pinned(core: Option<&str>, program: &Path) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Server environment without settings a user's shell may carry.
fn clean_server_env(cmd: &mut Command) {
    for k in [
        "NUBO_ADMIN_KEY",
        "NUBO_LISTEN",
        "NUBO_DATA_DIR",
        "NUBO_URL",
        "NUBO_TOKEN",
    ] {
        cmd.env_remove(k);
    }
}

/// Asks `GET /hello/world` until it answers 200 (bounded to 5 s).
fn check_hello(addr: SocketAddr, label: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        match http::get(addr, HELLO_PATH, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => {
                progress(&format!("{label}: GET {HELLO_PATH} -> 200 {:?}", r.text()));
                return Ok(());
            }
            Ok(r) => last = format!("{} {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{label} at {addr} does not answer GET {HELLO_PATH} with 200; last answer: {last}")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Bench {
    fn nubo_bin(&self) -> PathBuf {
        self.bin_dir.join("nubo")
    }

    fn hello_wasm(&self) -> PathBuf {
        self.root
            .join("examples/hello/target/wasm32-wasip2/release/hello.wasm")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.log"))
    }

    fn start_hyper(&self, core: Option<&str>) -> anyhow::Result<Target> {
        let mut cmd = pinned(core, &self.bin_dir.join("hyper-hello"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        let (proc, addr) = Proc::spawn_server(
            "hyper-hello",
            cmd,
            "listening on ",
            &self.log("hyper-hello"),
            START_BOUND,
        )?;
        check_hello(addr, "hyper")?;
        Ok(Target {
            label: "hyper".into(),
            proc,
            addr,
        })
    }

    fn nubo_command(&self, data: &Path, core: Option<&str>) -> Command {
        let mut cmd = pinned(core, &self.nubo_bin());
        cmd.args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "off",
            "--drain-timeout",
            "1s",
        ])
        .arg("--data-dir")
        .arg(data);
        clean_server_env(&mut cmd);
        cmd
    }

    fn start_nubo(&self, data: &Path, core: Option<&str>, log: &str) -> anyhow::Result<Target> {
        progress(&format!(
            "starting nubo server (data dir {})",
            data.display()
        ));
        let (proc, addr) = Proc::spawn_server(
            "nubo server",
            self.nubo_command(data, core),
            "nubo listening on ",
            &self.log(log),
            START_BOUND,
        )
        .context("the nubo server did not start")?;
        Ok(Target {
            label: "nubo".into(),
            proc,
            addr,
        })
    }

    /// `nubo deploy examples/hello` (which builds the component with its own target directory).
    fn deploy_example(&self, addr: SocketAddr) -> anyhow::Result<()> {
        progress("deploying examples/hello with `nubo deploy` (builds the component)");
        let mut cmd = Command::new(self.nubo_bin());
        cmd.current_dir(&self.root)
            .args(["deploy", "examples/hello"])
            .env("NUBO_URL", format!("http://{addr}"))
            // The example is its own cargo project; a shared target dir would misplace its output.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("NUBO_TOKEN");
        let t = Instant::now();
        let log = self.log("deploy-hello");
        let mut p = Proc::spawn_quiet("nubo deploy", cmd, &log)?;
        let st = p.wait_for(Duration::from_secs(900))?;
        if !st.success() {
            bail!(
                "`nubo deploy examples/hello` failed ({st}):\n{}",
                procs::tail(&log, 30)
            );
        }
        progress(&format!(
            "deployed examples/hello in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// `wasmtime serve -S cli` on the same component, with `-O flags` when given.
    fn start_wasmtime(
        &self,
        wasmtime: &Path,
        label: &str,
        pool_flags: Option<&str>,
    ) -> anyhow::Result<Target> {
        let wasm = self.hello_wasm();
        ensure!(
            wasm.is_file(),
            "the hello component ({}) was not built in this run",
            wasm.display()
        );
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = pinned(Some(SERVER_CORE), wasmtime);
        cmd.args([
            "serve",
            "-S",
            "cli",
            "--env",
            "GREETING=Hello from wasmtime",
        ]);
        if let Some(flags) = pool_flags {
            cmd.arg("-O").arg(flags);
        }
        cmd.arg("--addr").arg(addr.to_string()).arg(&wasm);
        let log = self.log(&label.replace([' ', ','], "-"));
        let proc = Proc::spawn_quiet(label, cmd, &log)?;
        check_hello(addr, label)
            .map_err(|e| anyhow::anyhow!("{e:#}; its output ends with:\n{}", proc.log_tail()))?;
        Ok(Target {
            label: label.into(),
            proc,
            addr,
        })
    }

    /// One wrk run against `t` with the server's CPU time and the cores' counters around it.
    fn measure(&self, t: &Target, conns: u32, secs: u64) -> anyhow::Result<Measured> {
        let url = format!("http://{}{HELLO_PATH}", t.addr);
        let (c0, c1, p0) = (
            procs::cpu_times(0)?,
            procs::cpu_times(1)?,
            t.proc.cpu_ticks()?,
        );
        let s0 = t.proc.context_switches()?;
        let start = Instant::now();
        let w = wrk::run(LOAD_CORE, &url, conns, secs)
            .with_context(|| format!("wrk against {}", t.label))?;
        let wall = start.elapsed().as_secs_f64();
        let p1 = t.proc.cpu_ticks()?;
        let s1 = t.proc.context_switches()?;
        let d0 = procs::cpu_times(0)?.since(c0);
        let d1 = procs::cpu_times(1)?.since(c1);
        let server = p1.saturating_sub(p0);
        let pct = |v: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                v as f64 * 100.0 / total as f64
            }
        };
        Ok(Measured {
            cpu_us_per_req: server as f64 * 1e6 / self.ticks as f64 / w.requests.max(1) as f64,
            switches_per_req: s1.saturating_sub(s0) as f64 / w.requests.max(1) as f64,
            server_cpu_pct: server as f64 * 100.0 / self.ticks as f64 / wall,
            core0_steal_pct: pct(d0.steal, d0.total),
            core0_other_pct: pct(d0.busy.saturating_sub(server), d0.total),
            core1_busy_pct: pct(d1.busy, d1.total),
            w,
        })
    }

    fn throughput(
        &mut self,
        targets: &[Target],
        wasmtime_note: Option<&str>,
    ) -> anyhow::Result<()> {
        let p = &self.plan;
        let (rounds, warm, secs) = (p.rounds, p.warmup_secs, p.measure_secs);
        let mut results: Vec<Vec<Measured>> = vec![Vec::new(); targets.len()];
        let mut rows = Vec::new();
        for round in 1..=rounds {
            for (i, t) in targets.iter().enumerate() {
                progress(&format!(
                    "round {round}/{rounds}: {} -- warm-up {warm} s, then wrk -t1 -c{CONNS} -d{secs}s",
                    t.label
                ));
                let url = format!("http://{}{HELLO_PATH}", t.addr);
                wrk::run(LOAD_CORE, &url, CONNS, warm)
                    .with_context(|| format!("warm-up of {}", t.label))?;
                let m = self.measure(t, CONNS, secs)?;
                rows.push(vec![
                    round.to_string(),
                    t.label.clone(),
                    report::rps(m.w.rps),
                    micros(m.w.p50_us),
                    micros(m.w.p99_us),
                    format!("{:.1} µs", m.cpu_us_per_req),
                    format!("{:.2}", m.switches_per_req),
                    format!("{:.0}%", m.server_cpu_pct),
                    format!("{:.0}%", m.core0_steal_pct),
                    format!("{:.0}%", m.core0_other_pct),
                    format!("{:.0}%", m.core1_busy_pct),
                    m.w.errors.to_string(),
                ]);
                results[i].push(m);
            }
        }
        self.rep.heading(&format!(
            "Throughput and latency: `wrk -t1 -c{CONNS} -d{secs}s --latency`, GET {HELLO_PATH}"
        ));
        let mut summary = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let r = &results[i];
            let med = |f: fn(&Measured) -> f64| report::median(r.iter().map(f).collect());
            // Ratios per round (neighbours in time share the machine's mood), then the median.
            let ratio = |f: fn(&Measured) -> f64| {
                report::median(
                    r.iter()
                        .zip(&results[0])
                        .map(|(m, h)| f(m) / f(h))
                        .collect(),
                )
            };
            summary.push(vec![
                t.label.clone(),
                report::rps(med(|m| m.w.rps)),
                micros(med(|m| m.w.p50_us)),
                micros(med(|m| m.w.p99_us)),
                format!("{:.1} µs", med(|m| m.cpu_us_per_req)),
                format!("**{:.2}×**", ratio(|m| m.w.rps)),
                format!("{:.1}×", ratio(|m| m.cpu_us_per_req)),
            ]);
        }
        self.rep.table(
            &[
                "server",
                "requests/s",
                "p50",
                "p99",
                "server CPU per request",
                "requests/s ÷ hyper",
                "CPU per request ÷ hyper",
            ],
            &summary,
        );
        self.rep.block(&format!(
            "Medians over {rounds} round(s); ratios are taken per round (the servers measured \
             back to back) and then the median. `wasmtime serve` is wasmtime-cli \
             {WASMTIME_VERSION} (`-S cli`, instance per request) on the same `hello.wasm`; \
             *tuned pool* adds `-O {WASMTIME_TUNED_POOL}`, the pool settings Nubo uses."
        ));
        if let Some(n) = targets.iter().position(|t| t.label == "nubo") {
            let mut lines = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                if !t.label.starts_with("wasmtime") {
                    continue;
                }
                let per_round = |f: fn(&Measured) -> f64| {
                    report::median(
                        results[n]
                            .iter()
                            .zip(&results[i])
                            .map(|(a, b)| f(a) / f(b))
                            .collect(),
                    )
                };
                lines.push(format!(
                    "- Nubo ÷ {}: **{:.2}×** the requests/s, {:.2}× the CPU per request.",
                    t.label,
                    per_round(|m| m.w.rps),
                    per_round(|m| m.cpu_us_per_req)
                ));
            }
            if !lines.is_empty() {
                self.rep.block(&lines.join("\n"));
            }
        }
        if let Some(n) = wasmtime_note {
            self.rep.block(n);
        }
        self.rep.block("Every measured run:");
        self.rep.table(
            &[
                "round",
                "server",
                "requests/s",
                "p50",
                "p99",
                "CPU/request",
                "context switches/request",
                "server CPU",
                "core 0 steal",
                "core 0 other",
                "core 1 (wrk) busy",
                "errors",
            ],
            &rows,
        );
        self.rep.block(
            "*context switches/request*: voluntary + involuntary switches of the server's threads \
             (/proc/PID/task/*/status) per request. *server CPU*: the server's utime+stime over the run's wall time (100% = the whole \
             pinned core). *core 0 steal*: time the hypervisor gave the server's core to someone \
             else. *core 0 other*: busy time on core 0 not charged to the server (softirq network \
             work, other processes). *core 1 busy*: the load generator's core; near 100% means the \
             run measured wrk, not the server. *errors*: non-2xx answers plus socket errors.",
        );
        let errors: u64 = results.iter().flatten().map(|m| m.w.errors).sum();
        if errors > 0 {
            self.rep.block(&format!(
                "WARNING: {errors} requests failed during the measured runs (see the errors column)."
            ));
        }
        Ok(())
    }

    fn single_connection(&mut self, targets: &[Target]) -> anyhow::Result<()> {
        let secs = self.plan.single_secs;
        let mut rows = Vec::new();
        for t in targets {
            progress(&format!(
                "single connection: {} -- wrk -t1 -c1 -d{secs}s",
                t.label
            ));
            let m = self.measure(t, 1, secs)?;
            rows.push(vec![
                t.label.clone(),
                micros(m.w.p50_us),
                micros(m.w.p99_us),
                report::rps(m.w.rps),
                format!("{:.1} µs", m.cpu_us_per_req),
            ]);
        }
        self.rep.heading(&format!(
            "Single connection: `wrk -t1 -c1 -d{secs}s --latency`"
        ));
        self.rep.table(
            &[
                "server",
                "p50",
                "p99",
                "requests/s",
                "server CPU per request",
            ],
            &rows,
        );
        Ok(())
    }

    /// The burst scenario (see `burst.rs`) against the Nubo server: accepted, throttled and
    /// the latency of accepted requests. A failure is reported, not fatal.
    fn burst(&mut self, target: Option<&Target>) {
        self.rep.heading("Burst: concurrency limits and 429");
        let Some(t) = target else {
            self.rep
                .block("Not measured: Nubo was not measured in this run.");
            return;
        };
        let (trickle_secs, burst_secs) = (self.plan.trickle_secs, self.plan.burst_secs);
        let measured = (|| -> anyhow::Result<(burst::Phase, burst::Phase, String)> {
            progress("burst: building tests/guests/echo and deploying the burst app");
            let wasm = burst::build_guest(&self.root)?;
            burst::deploy(t.addr, &wasm)?;
            progress(&format!(
                "burst: trickle for {trickle_secs} s, then ~100x the rate for {burst_secs} s"
            ));
            let (trickle, burst) = burst::run(t.addr, trickle_secs, burst_secs);
            let metrics = http::get(t.addr, "/_nubo/api/v1/metrics", Duration::from_secs(10))?;
            Ok((trickle, burst, metrics.text()))
        })();
        match measured {
            Ok((trickle, burst, metrics)) => {
                self.rep.table(
                    &burst::HEADERS,
                    &[trickle.row("trickle"), burst.row("burst (100×)")],
                );
                self.rep.block(&burst::describe());
                self.rep
                    .block("`GET /_nubo/api/v1/metrics` after the burst (shortened):");
                self.rep.code(&metrics);
            }
            Err(e) => self.rep.block(&format!("Not measured: {e:#}.")),
        }
    }

    /// The process scenario (see `process.rs`) against the Nubo server: cold start and warm
    /// latency of Python and Rust functions speaking the Lambda Runtime API, next to the wasm
    /// hello. A failure is reported, not fatal.
    fn process(&mut self, target: Option<&Target>) {
        self.rep
            .heading("Process functions: cold start and warm latency");
        let Some(t) = target else {
            self.rep
                .block("Not measured: Nubo was not measured in this run.");
            return;
        };
        let (cold, warm) = (self.plan.process_cold, self.plan.process_warm);
        let measured = (|| -> anyhow::Result<Rows> {
            progress("process: building tests/process (pip, npm and cargo when not yet done)");
            process::build(&self.root, &self.log("process-build"))?;
            progress("process: deploying the Python and Rust functions");
            let dir = self.tmp.path().join("process-app");
            process::deploy(&self.root, &self.nubo_bin(), t.addr, &dir, cold)?;
            progress(&format!(
                "process: {cold} cold starts per runtime, then {warm} warm requests each"
            ));
            let wasm = process::measure_wasm(t.addr, HELLO_PATH, warm)?;
            let figures = process::measure_process(t.addr, cold, warm)?;
            let wasm_p50 = asynchronous::percentile(&wasm.warm_us, 0.5);
            let mut rows = vec![wasm.row(None)];
            rows.extend(figures.iter().map(|f| f.row(wasm_p50)));
            Ok(rows)
        })();
        match measured {
            Ok(rows) => {
                self.rep.table(&process::HEADERS, &rows);
                self.rep.block(&process::describe(cold, warm));
            }
            Err(e) => self.rep.block(&format!("Not measured: {e:#}.")),
        }
    }

    /// The state scenario (see `state.rs`) against the Nubo server: key-value get/set latency
    /// from a wasm guest next to direct SQLite, and object put/get throughput through the admin
    /// API next to a plain file. A failure is reported, not fatal.
    fn state(&mut self, target: Option<&Target>) {
        self.rep
            .heading("Key-value and object storage: what the store adds");
        let Some(t) = target else {
            self.rep
                .block("Not measured: Nubo was not measured in this run.");
            return;
        };
        let (n, rounds) = (self.plan.state_requests, self.plan.state_rounds);
        let kv = (|| -> anyhow::Result<Rows> {
            progress("state: building tests/guests/kv and deploying the state app");
            let wasm = state::build_guest(&self.root)?;
            state::deploy(t.addr, &wasm)?;
            progress(&format!(
                "state: {n} sequential kv requests per operation, then direct SQLite"
            ));
            let guest = state::measure_guest(t.addr, n)?;
            let (set, get) = state::measure_sqlite(self.tmp.path(), n)?;
            Ok(state::kv_rows(&guest, &set, &get))
        })();
        match kv {
            Ok(rows) => self.rep.table(&state::KV_HEADERS, &rows),
            Err(e) => self.rep.block(&format!("Key-value not measured: {e:#}.")),
        }
        let objects = (|| -> anyhow::Result<Rows> {
            progress(&format!(
                "state: objects of 1 and 16 MiB, {rounds} round(s), admin API then files"
            ));
            let nubo = state::measure_objects(t.addr, rounds)?;
            let files = state::measure_files(self.tmp.path(), rounds)?;
            Ok(state::object_rows(&nubo, &files))
        })();
        match objects {
            Ok(rows) => self.rep.table(&state::OBJECT_HEADERS, &rows),
            Err(e) => self.rep.block(&format!("Objects not measured: {e:#}.")),
        }
        self.rep.block(&state::describe(n, rounds));
    }

    /// The async scenario (see `asynchronous.rs`) against the Nubo server: durable submissions
    /// per second and submit-to-execution latency, next to the same function called
    /// synchronously. A failure is reported, not fatal.
    fn asynchronous(&mut self, target: Option<&Target>) {
        use asynchronous as a;
        self.rep
            .heading("Async invocations: durable submissions and latency");
        let Some(t) = target else {
            self.rep
                .block("Not measured: Nubo was not measured in this run.");
            return;
        };
        let secs = self.plan.async_secs;
        let measured = (|| -> anyhow::Result<(Rows, Rows, String)> {
            progress("async: building tests/guests/echo and deploying the async app");
            let wasm = burst::build_guest(&self.root)?;
            a::deploy(t.addr, &wasm)?;
            let warm = a::phase(t.addr, 1, None, 1, false);
            ensure!(
                warm.ok > 0 && warm.other == 0,
                "the async app does not answer: {warm:?}"
            );
            let mut throughput = Vec::new();
            let mut drains = Vec::new();
            for clients in [1, a::CLIENTS] {
                for asynchronous in [false, true] {
                    let label = format!(
                        "{} ({clients} client{})",
                        if asynchronous {
                            "async submit"
                        } else {
                            "sync request"
                        },
                        if clients == 1 { "" } else { "s" }
                    );
                    progress(&format!("async: {label} for {secs} s"));
                    let p = a::phase(t.addr, clients, None, secs, asynchronous);
                    throughput.push(p.row(&label));
                    if asynchronous {
                        let d = a::drain(t.addr)?;
                        drains.push(format!(
                            "{} accepted by {clients} client(s) were all delivered {:.1} s after the phase ended",
                            p.ok,
                            d.as_secs_f64()
                        ));
                    }
                }
            }
            progress(&format!(
                "async: latency at {} requests/s for {secs} s, sync then async",
                a::LATENCY_RPS
            ));
            let sync = a::phase(
                t.addr,
                a::LATENCY_CLIENTS,
                Some(a::LATENCY_RPS),
                secs,
                false,
            );
            let asy = a::phase(t.addr, a::LATENCY_CLIENTS, Some(a::LATENCY_RPS), secs, true);
            a::drain(t.addr)?;
            let (e2e, not_ok) = a::end_to_end(t.addr, &asy.submitted)?;
            let ms = |v: &[f64]| v.iter().map(|us| us / 1e3).collect::<Vec<f64>>();
            let mut latency = vec![
                a::latency_row("sync request (send → response)", &ms(&sync.latency_us)),
                a::latency_row("async submit (send → 202)", &ms(&asy.latency_us)),
                a::latency_row("async submit → first attempt started", &e2e),
            ];
            if let (Some(s50), Some(e50)) = (
                a::percentile(&ms(&sync.latency_us), 0.5),
                a::percentile(&e2e, 0.5),
            ) && s50 > 0.0
            {
                latency.push(vec![
                    "ratio p50: async start ÷ sync response".into(),
                    String::new(),
                    format!("{:.1}×", e50 / s50),
                    String::new(),
                    String::new(),
                ]);
            }
            let mut notes = drains.join("; ");
            if not_ok > 0 {
                notes.push_str(&format!(
                    "; {not_ok} of the latency phase's invocations did not succeed"
                ));
            }
            Ok((throughput, latency, notes))
        })();
        match measured {
            Ok((throughput, latency, notes)) => {
                self.rep.table(&a::THROUGHPUT_HEADERS, &throughput);
                self.rep.table(&a::LATENCY_HEADERS, &latency);
                self.rep.block(&a::describe(secs));
                if !notes.is_empty() {
                    self.rep.block(&format!("Queue drained: {notes}."));
                }
            }
            Err(e) => self.rep.block(&format!("Not measured: {e:#}.")),
        }
    }

    /// `perf record` on the Nubo server under load; the top symbols go to the report.
    fn profile(&mut self, target: Option<&Target>, skip: bool) {
        self.rep.heading("Where the time goes");
        let Some(t) = target else {
            self.rep
                .block("Not profiled: Nubo was not measured in this run.");
            return;
        };
        if skip {
            self.rep.block("Not profiled (`--no-perf`).");
            return;
        }
        match self.profile_inner(t) {
            Ok(()) => {}
            Err(e) => self
                .rep
                .block(&format!("Not profiled: perf is unavailable here ({e:#}).")),
        }
    }

    fn profile_inner(&mut self, t: &Target) -> anyhow::Result<()> {
        let perf =
            procs::on_path("perf").context("no `perf` on PATH (apt-get install linux-perf)")?;
        let probe = self.tmp.path().join("probe.data");
        let ok = Command::new(&perf)
            .args(["record", "-q", "-o"])
            .arg(&probe)
            .args(["--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(ok, "`perf record -- true` fails on this kernel/container");
        let secs = self.plan.perf_secs;
        progress(&format!(
            "profiling nubo with perf record -g for {secs} s under wrk -c{CONNS}"
        ));
        let data = self.tmp.path().join("perf.data");
        let mut cmd = Command::new(&perf);
        cmd.args([
            "record",
            "-g",
            "-F",
            "999",
            "-p",
            &t.proc.pid().to_string(),
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &secs.to_string()]);
        let mut rec = Proc::spawn_quiet("perf record", cmd, &self.log("perf-record"))?;
        // Let perf attach before the load starts.
        std::thread::sleep(Duration::from_millis(200));
        let url = format!("http://{}{HELLO_PATH}", t.addr);
        let w = wrk::run(LOAD_CORE, &url, CONNS, secs);
        let st = rec.wait_for(Duration::from_secs(secs + 60))?;
        ensure!(
            st.success(),
            "perf record failed ({st}): {}",
            rec.log_tail()
        );
        w?;
        let flat = |sort: &str, n: usize| -> anyhow::Result<(String, String)> {
            let text = perf_report(
                &perf,
                &data,
                &[
                    "--no-children",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                    "--sort",
                    sort,
                ],
            )?;
            let samples = text
                .lines()
                .find_map(|l| l.strip_prefix("# Samples:"))
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            Ok((samples, top_lines(&text, n)))
        };
        let (samples, by_dso) = flat("dso", 10)?;
        let (_, by_thread) = flat("comm", 10)?;
        let (_, by_sym) = flat("dso,sym", 30)?;
        // Who calls the two hottest kernel symbols (the kernel unwinds its own stacks, so these
        // chains are reliable even without frame pointers in user space).
        let hot_kernel: Vec<&str> = by_sym
            .lines()
            .filter_map(|l| l.split_once("[k] ").map(|(_, s)| s.trim()))
            .take(2)
            .collect();
        let callers = if hot_kernel.is_empty() {
            None
        } else {
            let text = perf_report(
                &perf,
                &data,
                &[
                    "--no-children",
                    "--sort",
                    "comm,sym",
                    "-S",
                    &hot_kernel.join(","),
                    "-g",
                    "folded,0.5,callee",
                    "--percent-limit",
                    "0.5",
                ],
            )?;
            Some(digest_folded(&text, 24))
        };
        self.rep.block(&format!(
            "`perf record -g -F 999 -p <nubo>` for {secs} s while `wrk -t1 -c{CONNS}` runs, then \
             `perf report --stdio --no-children -g none --sort dso` (share of the server's samples by \
             binary; `[kernel.kallsyms]` is the kernel, `nubo` is host code in the binary, JIT-compiled \
             wasm shows as an anonymous map or `[unknown]`):"
        ));
        self.rep.code(&by_dso);
        self.rep.block("By thread name (`--sort comm`):");
        self.rep.code(&by_thread);
        self.rep.block("Top symbols (`--sort dso,sym`):");
        self.rep.code(&by_sym);
        let mut note = format!("Samples: {samples}.");
        if samples.contains("cpu-clock") {
            note.push_str(
                " The event is the `cpu-clock` software timer (no hardware PMU in this VM): a \
                 sample that falls while interrupts are disabled is charged to the point where \
                 they are re-enabled, so `_raw_spin_unlock_irqrestore` and `finish_task_switch` \
                 stand for scheduler work (wake-ups, context switches) rather than for those \
                 functions themselves.",
            );
        }
        self.rep.block(&note);
        if let Some(c) = callers {
            self.rep.block(&format!(
                "Call chains into the two hottest kernel symbols (`-S {} -g folded,0.5,callee \
                 --sort comm,sym`; outermost frames first, middle elided):",
                hot_kernel.join(",")
            ));
            self.rep.code(&c);
        }
        Ok(())
    }

    /// Spawn → first 200 for hyper-hello, for reference.
    fn startup_hyper(&self) -> anyhow::Result<Vec<String>> {
        let mut listen = Vec::new();
        let mut first = Vec::new();
        for i in 0..self.plan.restarts {
            progress(&format!("start-up: hyper-hello run {}", i + 1));
            let t0 = Instant::now();
            let mut cmd = Command::new(self.bin_dir.join("hyper-hello"));
            cmd.args(["--listen", "127.0.0.1:0"]);
            let (mut p, addr) = Proc::spawn_server(
                "hyper-hello",
                cmd,
                "listening on ",
                &self.log("hyper-start"),
                START_BOUND,
            )?;
            listen.push(t0.elapsed());
            first.push(poll_first_ok(addr, t0).context("hyper-hello")?);
            p.terminate(Duration::from_secs(5))?;
        }
        Ok(startup_row("hyper", &listen, &first))
    }

    /// Restart → first 200 for Nubo with `examples/hello` deployed in `data`.
    fn startup_nubo(&self, data: &Path) -> anyhow::Result<Vec<String>> {
        let mut listen = Vec::new();
        let mut first = Vec::new();
        for i in 0..self.plan.restarts {
            progress(&format!("start-up: nubo server restart {}", i + 1));
            let t0 = Instant::now();
            let (mut p, addr) = Proc::spawn_server(
                "nubo server",
                self.nubo_command(data, None),
                "nubo listening on ",
                &self.log(&format!("nubo-restart-{i}")),
                START_BOUND,
            )?;
            listen.push(t0.elapsed());
            first.push(poll_first_ok(addr, t0).with_context(|| {
                format!("nubo after restart; its log ends with:\n{}", p.log_tail())
            })?);
            let st = p.terminate(Duration::from_secs(15))?;
            if !st.success() {
                progress(&format!("  nubo server exited with {st}"));
            }
        }
        Ok(startup_row("nubo (hello deployed)", &listen, &first))
    }

    fn memory(&mut self, hyper_mem: Memory, hyper_only: bool) -> anyhow::Result<()> {
        self.rep.heading("Idle memory");
        let mut rows = vec![mem_row(
            "hyper-hello (idle, after one request)",
            "",
            "",
            hyper_mem,
            None,
        )];
        if hyper_only {
            self.rep.table(&MEM_HEADERS, &rows);
            self.rep
                .block("Nubo was not measured in this run (`--hyper-only`).");
            return Ok(());
        }
        let wasm = std::fs::read(self.hello_wasm())
            .with_context(|| format!("reading {}", self.hello_wasm().display()))?;
        let data = self.tmp.path().join("data-rss");
        let nubo = self.start_nubo(&data, None, "nubo-rss")?;
        std::thread::sleep(self.plan.settle);
        let base = nubo.proc.memory()?;
        rows.push(mem_row("nubo, no apps", "0", "0", base, None));
        let (mut total, mut apps) = (0usize, 0usize);
        let mut last_rss = base.rss_kib;
        let mut per_fn = Vec::new();
        let steps = self.plan.rss_steps.clone();
        for target in steps {
            let prev_total = total;
            let t = Instant::now();
            while total < target {
                let n = (target - total).min(FUNCTIONS_PER_APP);
                apps += 1;
                let name = format!("rss-{apps:03}");
                progress(&format!(
                    "memory: deploying app {name} with {n} function(s) ({} in total)",
                    total + n
                ));
                deploy_bundle(nubo.addr, &name, n, &wasm)?;
                total += n;
            }
            let took = t.elapsed();
            std::thread::sleep(self.plan.settle);
            let m = nubo.proc.memory()?;
            if prev_total > 0 && total > prev_total {
                let kib_per_fn = (m.rss_kib as f64 - last_rss as f64) / (total - prev_total) as f64;
                per_fn.push((prev_total, total, kib_per_fn));
            }
            last_rss = m.rss_kib;
            rows.push(mem_row(
                &format!(
                    "nubo, {total} function{}",
                    if total == 1 { "" } else { "s" }
                ),
                &total.to_string(),
                &apps.to_string(),
                m,
                Some((base, took)),
            ));
        }
        self.rep.table(&MEM_HEADERS, &rows);
        let marginal: Vec<String> = per_fn
            .iter()
            .map(|(a, b, k)| format!("{a}→{b}: {k:.1} KiB of RSS per added function"))
            .collect();
        self.rep.block(&format!(
            "VmRSS and VmSize from /proc/PID/status, read {} s after the last deploy with no \
             traffic. Every function is the same `examples/hello` component (deployed through the \
             admin API as bundles of up to {FUNCTIONS_PER_APP} functions per app, no routes), so it \
             is stored and compiled once; the growth is per-function state. VmSize includes the \
             address space the wasm instance pool reserves. {}.",
            self.plan.settle.as_secs(),
            marginal.join("; ")
        ));
        Ok(())
    }
}

const MEM_HEADERS: [&str; 8] = [
    "process",
    "functions",
    "apps",
    "VmRSS",
    "RSS − no apps",
    "VmSize",
    "threads",
    "deploy time of the step",
];

fn mem_row(
    what: &str,
    fns: &str,
    apps: &str,
    m: Memory,
    base: Option<(Memory, Duration)>,
) -> Vec<String> {
    vec![
        what.to_string(),
        fns.to_string(),
        apps.to_string(),
        kib(m.rss_kib),
        base.map_or(String::new(), |(b, _)| {
            format!("{:+.1} MiB", (m.rss_kib as f64 - b.rss_kib as f64) / 1024.0)
        }),
        kib(m.size_kib),
        m.threads.to_string(),
        base.map_or(String::new(), |(_, d)| format!("{:.1} s", d.as_secs_f64())),
    ]
}

fn startup_row(label: &str, listen: &[Duration], first: &[Duration]) -> Vec<String> {
    let mm = |v: &[Duration]| {
        let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
        format!("{min:.1} / {:.1} ms", report::median(ms))
    };
    vec![
        label.to_string(),
        first.len().to_string(),
        mm(listen),
        format!("**{}**", mm(first)),
        first
            .iter()
            .map(|d| millis(*d))
            .collect::<Vec<_>>()
            .join(", "),
    ]
}

/// Polls `GET /hello/world` every 1 ms until it answers 200, at most until `t0 + START_BOUND`;
/// returns the time since `t0`.
fn poll_first_ok(addr: SocketAddr, t0: Instant) -> anyhow::Result<Duration> {
    let mut last = String::from("no answer");
    while t0.elapsed() < START_BOUND {
        match http::get(addr, HELLO_PATH, Duration::from_secs(1)) {
            Ok(r) if r.status == 200 => return Ok(t0.elapsed()),
            Ok(r) => last = format!("{} {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!(
        "no 200 for GET {HELLO_PATH} within {} s of the start; last answer: {last}",
        START_BOUND.as_secs()
    )
}

/// `perf report --stdio -i DATA ARGS…`, its stdout.
fn perf_report(perf: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(perf)
        .args(["report", "--stdio", "-i"])
        .arg(data)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "perf report failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `n` entry lines of a perf report (no comments, no blank lines).
fn top_lines(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(n)
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Shortens `perf report -g folded,…,callee` output: entry lines stay, each chain
/// (`P% callee;…;outermost`) becomes `P%  outermost → next → … → caller → callee` with at most
/// two outer and four inner frames.
fn digest_folded(text: &str, max_lines: usize) -> String {
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let chain = l
            .split_once("% ")
            .filter(|(p, _)| !p.starts_with(' ') && p.parse::<f64>().is_ok());
        match chain {
            Some((pct, frames)) => {
                let mut f: Vec<&str> = frames.split(';').collect();
                f.reverse();
                let shown = if f.len() > 6 {
                    let mut v = f[..2].to_vec();
                    v.push("…");
                    v.extend_from_slice(&f[f.len() - 4..]);
                    v
                } else {
                    f
                };
                out.push(format!("    {pct}%  {}", shown.join(" → ")));
            }
            None => out.push(l.trim_end().to_string()),
        }
        if out.len() >= max_lines {
            break;
        }
    }
    out.join("\n")
}

/// Deploys an app of `n` functions (all the same component, no routes) through the admin API.
fn deploy_bundle(addr: SocketAddr, app: &str, n: usize, wasm: &[u8]) -> anyhow::Result<()> {
    let mut manifest = format!("[app]\nname = \"{app}\"\n");
    for i in 0..n {
        manifest.push_str(&format!("\n[function.f{i:03}]\nsource = \"hello.wasm\"\n"));
    }
    let functions: Vec<(String, &[u8])> = (0..n).map(|i| (format!("f{i:03}"), wasm)).collect();
    http::deploy(
        addr,
        &format!("{app} ({n} functions)"),
        &manifest,
        &functions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_chains_are_shortened() {
        let text = "# comment\n\
             \n    10.92%  tokio-rt-worker  [k] _raw_spin_unlock_irqrestore\n\
             9.00% _raw_spin_unlock_irqrestore;sock_def_readable;tcp_rcv;ip_rcv;softirq;tcp_sendmsg;writev;write_vectored\n\
             1.02% unlock;wake;futex_wake;try_send\n";
        let d = digest_folded(text, 10);
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(
            lines[0],
            "    10.92%  tokio-rt-worker  [k] _raw_spin_unlock_irqrestore"
        );
        assert_eq!(
            lines[1],
            "    9.00%  write_vectored → writev → … → ip_rcv → tcp_rcv → sock_def_readable → _raw_spin_unlock_irqrestore"
        );
        assert_eq!(lines[2], "    1.02%  try_send → futex_wake → wake → unlock");
    }
}
