//! Containment of process workers: each test starts a shell or Python worker through the
//! sandbox API with the real `nubo` binary as launcher and checks what the worker can and
//! cannot see or do, and that nothing of it outlives the worker.

use crate::support::nubo_bin;
use nubo_runtime::sandbox::{Exit, SandboxPolicy, Sandboxed, SpawnError, WorkerSpec, probe};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const MIB: u64 = 1024 * 1024;

struct Fixture {
    scratch: tempfile::TempDir,
    code: tempfile::TempDir,
}

impl Fixture {
    /// A scratch dir and a code dir (readable by the worker's uid) holding `files`.
    fn new(files: &[(&str, &str)]) -> Fixture {
        let scratch = tempfile::tempdir().unwrap();
        let code = tempfile::tempdir().unwrap();
        std::fs::set_permissions(code.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, text) in files {
            let path = code.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fixture { scratch, code }
    }

    /// The policy, after checking that this host supports the sandbox (fails, never skips).
    fn policy(&self) -> SandboxPolicy {
        let policy = SandboxPolicy {
            enabled: true,
            launcher: PathBuf::from(nubo_bin()),
            uid: 65534,
            gid: 65534,
            allow_host_network: false,
            readonly_paths: Vec::new(),
            scratch_dir: self.scratch.path().to_path_buf(),
        };
        if let Err(e) = probe(&policy) {
            panic!("sandbox probe failed: {e}");
        }
        policy
    }

    fn spec(&self, name: &str, argv: &[&str]) -> WorkerSpec {
        WorkerSpec {
            name: name.to_owned(),
            code_dir: self.code.path().to_path_buf(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            memory_bytes: 128 * MIB,
            tmp_bytes: 8 * MIB,
            host_network: false,
            egress_proxy: false,
        }
    }
}

async fn spawn(policy: &SandboxPolicy, spec: WorkerSpec) -> Sandboxed {
    match tokio::time::timeout(WAIT, Sandboxed::spawn(policy, spec)).await {
        Ok(Ok(worker)) => worker,
        Ok(Err(e)) => panic!("spawn failed: {e}"),
        Err(_) => panic!("spawn did not finish within {WAIT:?}"),
    }
}

/// Waits for the program to exit and returns its exit and everything it printed.
async fn finish(worker: &mut Sandboxed) -> (Exit, String, String) {
    let mut stdout = worker.stdout().unwrap();
    let mut stderr = worker.stderr().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    let all = async {
        let exit = worker.wait().await;
        // The program's output pipes close once every process of the worker is gone.
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        exit
    };
    let exit = tokio::time::timeout(WAIT, all)
        .await
        .expect("worker did not finish in time");
    (exit, out, err)
}

/// Reads stdout lines until one starts with `prefix`.
async fn line_starting<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    prefix: &str,
) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with(prefix) {
                return line;
            }
        }
        panic!("worker ended without printing {prefix:?}");
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no {prefix:?} line within {WAIT:?}"))
}

/// Polls until `done` holds, within `WAIT`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live (not zombie) process on the host.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[tokio::test]
async fn the_worker_sees_only_its_own_world() {
    let other = Fixture::new(&[("secret", "other function's code")]);
    let secret = other.code.path().join("secret");
    let fixture = Fixture::new(&[]);
    let shared = Fixture::new(&[("data.txt", "shared data")]);
    let data = shared.code.path().join("data.txt");
    let script = format!(
        r#"echo "pid=$$"
echo "shared=$(cat {data})"
if echo x >> {data} 2>/dev/null; then echo "shared=writable"; else echo "shared=readonly"; fi
echo "host=$(cat /proc/sys/kernel/hostname)"
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "cwd=$(pwd) api=$AWS_LAMBDA_RUNTIME_API root=$LAMBDA_TASK_ROOT"
echo hi > /tmp/probe && echo "tmp=writable"
if echo x > /var/task/x 2>/dev/null; then echo "task=writable"; else echo "task=readonly"; fi
if echo x > /etc/x 2>/dev/null; then echo "etc=writable"; else echo "etc=readonly"; fi
for p in {secret} {code} /root /work /sys/fs/cgroup; do [ -e "$p" ] && echo "sees=$p"; done
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "no_new_privs=$(grep NoNewPrivs /proc/self/status | cut -f2) files=$(ulimit -n) core=$(ulimit -c)"
"#,
        secret = secret.display(),
        data = data.display(),
        code = fixture.code.path().display(),
    );
    let mut policy = fixture.policy();
    policy.readonly_paths = vec![shared.code.path().to_path_buf()];
    let mut worker = spawn(&policy, fixture.spec("view-1", &["sh", "-c", &script])).await;
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(
        exit,
        Exit {
            code: Some(0),
            signal: None,
            oom_killed: false
        },
        "stdout: {out}\nstderr: {err}"
    );
    let pid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        pid <= 3,
        "the program should be one of the first processes of its namespace, got pid {pid}"
    );
    for expected in [
        "host=view-1",
        "uid=65534 gid=65534 groups=65534",
        "cwd=/var/task api=127.0.0.1:9001 root=/var/task",
        "tmp=writable",
        "shared=shared data",
        "shared=readonly",
        "task=readonly",
        "etc=readonly",
        "no_new_privs=1 files=1024 core=0",
    ] {
        assert!(
            out.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{out}\nstderr: {err}"
        );
    }
    assert!(
        !out.contains("sees="),
        "host paths visible inside the sandbox:\n{out}"
    );
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        procs < 10,
        "the worker's /proc should list only its own few processes, got {procs}"
    );
}

#[tokio::test]
async fn a_fork_bomb_hits_the_process_cap_and_kill_leaves_nothing() {
    let bomb = r#"
import subprocess, sys, time
started, failed = [], 0
for _ in range(400):
    try:
        started.append(subprocess.Popen(["sleep", "120"]))
    except OSError:
        failed += 1
print(f"started={len(started)} failed={failed}", flush=True)
time.sleep(120)
"#;
    let fixture = Fixture::new(&[("bomb.py", bomb)]);
    let policy = fixture.policy();
    let mut worker = spawn(&policy, fixture.spec("forkbomb-1", &["python3", "bomb.py"])).await;
    let mut lines = BufReader::new(worker.stdout().unwrap()).lines();
    let line = line_starting(&mut lines, "started=").await;
    let failed: u32 = line.rsplit_once("failed=").unwrap().1.parse().unwrap();
    assert!(failed > 0, "the process cap was never hit: {line}");
    let members = worker.members();
    assert!(
        members.len() <= 256 && members.len() > 100,
        "{} processes in the worker's cgroup",
        members.len()
    );
    // The host still starts processes.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );

    worker.kill();
    eventually("every process of the worker dying", || {
        worker.members().is_empty()
    })
    .await;
    eventually("the worker's processes leaving the host", || {
        members.iter().all(|pid| !alive(*pid))
    })
    .await;
    let exit = tokio::time::timeout(WAIT, worker.wait()).await.unwrap();
    assert_eq!(exit.code, None, "{exit:?}");
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let mut spec = fixture.spec("membomb-1", &["tail", "/dev/zero"]);
    spec.memory_bytes = 32 * MIB;
    let mut worker = spawn(&policy, spec).await;
    let (exit, _, err) = finish(&mut worker).await;
    assert_eq!(
        exit,
        Exit {
            code: None,
            signal: Some(9),
            oom_killed: true
        },
        "stderr: {err}"
    );
    let peak = worker
        .memory_peak()
        .expect("peak memory is measurable with cgroups");
    assert!(
        peak > 16 * MIB && peak <= 33 * MIB,
        "peak {peak} bytes with a 32 MiB cap"
    );
}

#[tokio::test]
async fn filling_tmp_fails_with_enospc_at_its_size() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let script = "dd if=/dev/zero of=/tmp/x bs=1M count=1000 2>&1; echo \"rc=$?\"; echo \"size=$(wc -c < /tmp/x)\"";
    let mut worker = spawn(&policy, fixture.spec("tmpfill-1", &["sh", "-c", script])).await;
    let (exit, out, _) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(0), "{exit:?}\n{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
    let size: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        size <= 8 * MIB && size > 7 * MIB,
        "/tmp held {size} bytes with an 8 MiB cap"
    );
}

#[tokio::test]
async fn the_worker_has_no_network() {
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let script = format!(
        r#"if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo "host-loopback=open"; else echo "host-loopback=closed"; fi
if (exec 3<>/dev/tcp/1.1.1.1/80) 2>/dev/null; then echo "outside=open"; else echo "outside=closed"; fi
echo "links=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')"
cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sed 's/^/iface=/'
"#
    );
    let mut worker = spawn(&policy, fixture.spec("nonet-1", &["bash", "-c", &script])).await;
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(0), "{exit:?}\n{out}\n{err}");
    assert!(out.contains("host-loopback=closed"), "{out}");
    assert!(out.contains("outside=closed"), "{out}");
    let interfaces: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("iface="))
        .collect();
    assert_eq!(interfaces, ["lo"], "{out}");
    host.set_nonblocking(true).unwrap();
    assert!(
        host.accept().is_err(),
        "a connection from the sandbox reached the host"
    );
}

#[tokio::test]
async fn the_runtime_api_listener_serves_the_worker() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let script = r#"exec 3<>/dev/tcp/127.0.0.1/9001
printf 'GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n' >&3
read -r status <&3
echo "got=$status""#;
    let mut worker = spawn(&policy, fixture.spec("api-1", &["bash", "-c", script])).await;
    let listener = worker.listener().expect("the listener");
    assert!(
        worker.listener().is_none(),
        "the listener is handed out once"
    );
    let (mut conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut reader = BufReader::new(&mut conn);
    let mut request_line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut request_line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        request_line,
        "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n"
    );
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(0), "{exit:?}\n{err}");
    assert_eq!(out.trim(), "got=HTTP/1.1 200 OK");
}

/// Starts a worker that leaves a background process and waits until all of it runs.
async fn worker_with_children(
    fixture: &Fixture,
    name: &str,
) -> (Sandboxed, Vec<u32>, Vec<PathBuf>) {
    let policy = fixture.policy();
    let script = "sleep 300 & sleep 301 & echo started; sleep 302";
    let mut worker = spawn(&policy, fixture.spec(name, &["sh", "-c", script])).await;
    let mut lines = BufReader::new(worker.stdout().unwrap()).lines();
    line_starting(&mut lines, "started").await;
    // launcher, init, sh and three sleeps
    eventually("all six processes to run", || worker.members().len() >= 6).await;
    let members = worker.members();
    let dirs = worker.cgroup_dirs();
    assert!(!dirs.is_empty());
    (worker, members, dirs)
}

#[tokio::test]
async fn killing_the_launcher_leaves_no_process() {
    let fixture = Fixture::new(&[]);
    let (mut worker, members, _) = worker_with_children(&fixture, "sigkill-1").await;
    let launcher = worker.pid().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &launcher.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("every process of the worker dying", || {
        members.iter().all(|pid| !alive(*pid))
    })
    .await;
    assert!(worker.members().is_empty());
    let exit = tokio::time::timeout(WAIT, worker.wait()).await.unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
}

#[tokio::test]
async fn dropping_the_worker_leaves_no_process_and_no_cgroup() {
    let fixture = Fixture::new(&[]);
    let (worker, members, dirs) = worker_with_children(&fixture, "drop-1").await;
    drop(worker);
    eventually("every process of the worker dying", || {
        members.iter().all(|pid| !alive(*pid))
    })
    .await;
    eventually("the worker's cgroup being removed", || {
        dirs.iter().all(|dir| !dir.exists())
    })
    .await;
}

#[tokio::test]
async fn host_network_needs_the_operator_s_consent() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let mut spec = fixture.spec("hostnet-1", &["true"]);
    spec.host_network = true;
    let err = Sandboxed::spawn(&policy, spec).await.unwrap_err();
    assert!(matches!(err, SpawnError::HostNetworkNotAllowed), "{err}");
    assert!(err.to_string().contains("--allow-host-network"), "{err}");
}

#[tokio::test]
async fn setup_errors_name_the_problem() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let missing = fixture.spec("missing-1", &["no-such-program"]);
    let err = Sandboxed::spawn(&policy, missing).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("\"no-such-program\" not found in PATH"),
        "{err}"
    );
}

#[tokio::test]
async fn unsandboxed_workers_run_in_the_code_dir_with_a_host_listener() {
    let fixture = Fixture::new(&[(
        "main.sh",
        "#!/bin/sh\necho \"cwd=$(pwd) api=$AWS_LAMBDA_RUNTIME_API root=$LAMBDA_TASK_ROOT\"\n",
    )]);
    let mut policy = fixture.policy();
    policy.enabled = false;
    let mut worker = spawn(&policy, fixture.spec("plain-1", &["./main.sh"])).await;
    let port = worker.listener().unwrap().local_addr().unwrap().port();
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(0), "{err}");
    let code = fixture.code.path().display();
    assert_eq!(
        out.trim(),
        format!("cwd={code} api=127.0.0.1:{port} root={code}")
    );
}

#[tokio::test]
async fn the_program_s_exit_ends_its_background_processes() {
    let fixture = Fixture::new(&[]);
    let policy = fixture.policy();
    let script = "sleep 300 & sleep 301 & echo started; exit 3";
    let mut worker = spawn(&policy, fixture.spec("orphans-1", &["sh", "-c", script])).await;
    // `finish` reads stdout to its end, which the sleeps hold open while they live.
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(3), "{exit:?}\n{err}");
    assert_eq!(out.trim(), "started");
    eventually("the worker's cgroup emptying", || {
        worker.members().is_empty()
    })
    .await;
}

#[tokio::test]
async fn host_network_workers_reach_the_listener_nubo_bound() {
    let fixture = Fixture::new(&[]);
    let mut policy = fixture.policy();
    policy.allow_host_network = true;
    let mut spec = fixture.spec("hostnet-2", &["bash", "-c", HOST_API_SCRIPT]);
    spec.host_network = true;
    let mut worker = spawn(&policy, spec).await;
    let listener = worker.listener().expect("the listener");
    let port = listener.local_addr().unwrap().port();
    let (mut conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    conn.write_all(b"hello\n").await.unwrap();
    let (exit, out, err) = finish(&mut worker).await;
    assert_eq!(exit.code, Some(0), "{exit:?}\n{err}");
    assert_eq!(out.trim(), format!("api=127.0.0.1:{port} got=hello"));
}

/// Connects to the Runtime API address the sandbox put in the environment.
const HOST_API_SCRIPT: &str = r#"exec 3<>"/dev/tcp/${AWS_LAMBDA_RUNTIME_API%:*}/${AWS_LAMBDA_RUNTIME_API#*:}"
read -r line <&3
echo "api=$AWS_LAMBDA_RUNTIME_API got=$line""#;

#[tokio::test]
async fn dropping_an_unsandboxed_worker_kills_its_process_group() {
    let fixture = Fixture::new(&[]);
    let mut policy = fixture.policy();
    policy.enabled = false;
    let script = "sleep 300 & echo \"child=$!\"; sleep 301";
    let mut worker = spawn(&policy, fixture.spec("plain-2", &["sh", "-c", script])).await;
    let mut lines = BufReader::new(worker.stdout().unwrap()).lines();
    let line = line_starting(&mut lines, "child=").await;
    let child: u32 = line.strip_prefix("child=").unwrap().parse().unwrap();
    assert!(alive(child));
    drop(worker);
    eventually("the background process dying", || !alive(child)).await;
}
