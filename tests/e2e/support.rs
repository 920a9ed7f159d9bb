//! Test support: start and stop the real server, run the CLI against it, make plain HTTP
//! requests, and find (building once if needed) the guest components.

#![allow(
    dead_code,
    reason = "each test module uses a different part of the support code"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the `nubo` binary under test.
pub fn nubo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nubo")
}

/// Path of a test guest component, building the guests once per test run if missing.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = root().join(format!(
        "tests/guests/{name}/target/wasm32-wasip2/release/{name}_guest.wasm"
    ));
    if !path.exists() {
        BUILT.get_or_init(|| {
            let status = Command::new("bash")
                .arg(root().join("tests/guests/build.sh"))
                .env_remove("CARGO_TARGET_DIR")
                .stdout(Stdio::null())
                .status()
                .expect("running tests/guests/build.sh");
            assert!(status.success(), "tests/guests/build.sh failed");
        });
    }
    assert!(
        path.exists(),
        "guest {name} not built at {}",
        path.display()
    );
    path
}

/// Serializes builds of the examples (they share a target dir per example).
pub fn build_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `nubo server`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// What the server printed to stdout after its first line.
    stdout: std::sync::Arc<Mutex<String>>,
}

impl Server {
    /// Starts a server with a fresh data dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server with a fresh data dir and extra arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` with extra arguments.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_in_env(data_dir, extra, &[])
    }

    /// Starts a server with a fresh data dir and extra environment variables.
    pub fn start_env(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in_env(&dir, &[], env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` with extra arguments and environment variables.
    pub fn start_in_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(nubo_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // Tests see the defaults unless they set a limit themselves.
            .env_remove("NUBO_MAX_CONCURRENCY")
            // Servers run side by side: each S3 endpoint takes a free port (tests may override).
            .env("NUBO_S3_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env("NUBO_LOG", "info")
            .env_remove("NUBO_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nubo server");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).expect("reading the first line");
        let stdout = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = first
            .trim()
            .strip_prefix("nubo listening on http://")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "unexpected first line {first:?}; stderr: {}",
                    stderr.lock().unwrap()
                )
            })
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            stderr,
            stdout,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server has printed to stdout after its first line so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// What the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Runs the CLI against this server.
    pub fn nubo(&self, args: &[&str]) -> Output {
        self.nubo_in(&root(), args)
    }

    /// Runs the CLI against this server, in `cwd`.
    pub fn nubo_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(nubo_bin())
            .args(args)
            .current_dir(cwd)
            .env("NUBO_URL", self.url())
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("running nubo")
    }

    /// Runs the CLI and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.nubo(args);
        assert!(
            out.status.success(),
            "nubo {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deploys an app folder, asserting success.
    pub fn deploy(&self, dir: &Path) -> String {
        let _g = build_lock();
        self.ok(&["deploy", dir.to_str().unwrap()])
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = wait_bounded(&mut self.child, Duration::from_secs(30));
        (status, self.stderr())
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(mut self) -> PathBuf {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        let dir = self.data_dir.clone();
        // Keep the temp dir alive for a restart: leak it on purpose.
        if let Some(t) = self._tmp.take() {
            let _ = t.keep();
        }
        dir
    }

    /// The record and log lines of invocation `id`, waiting (bounded) for the batched writer.
    pub fn invocation(&self, id: &str) -> serde_json::Value {
        eventually(Duration::from_secs(10), || {
            let r = http(
                self.addr,
                "GET",
                &format!("/_nubo/api/v1/invocations/{id}"),
                &[],
                b"",
            );
            (r.status == 200).then(|| r.json())
        })
    }

    /// Fetches JSON from the admin API.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let r = http(self.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child to exit, killing it after `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns Some, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a Nubo JSON error with `code`, carrying an invocation id when `with_id`.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "body: {}", self.text());
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        v
    }
}

/// A minimal HTTP/1.1 client (one request per connection) so tests see exactly what is sent.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// One keep-alive HTTP/1.1 connection, for tests that send thousands of requests without
/// leaving thousands of sockets in TIME_WAIT. An error leaves it closed; the next request
/// connects again.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// A connection to `addr` (opened by the first request).
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    /// Sends one request and reads the whole response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let result = self.exchange(method, path, headers, body);
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.stream = None;
            }
            Ok(_) => {}
            Err(_) => self.stream = None,
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        use std::io::{Error, ErrorKind};
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        stream.get_mut().write_all(&out)?;

        let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                stream.read_line(&mut line)?;
                let size =
                    usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    loop {
                        line.clear();
                        stream.read_line(&mut line)?;
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                stream.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                stream.read_exact(&mut crlf)?;
            }
        } else if let Some(n) = find("content-length") {
            let n: usize = n.parse().map_err(|_| bad("bad content-length"))?;
            body.resize(n, 0);
            stream.read_exact(&mut body)?;
        } else if status != 204 && status != 304 {
            stream.read_to_end(&mut body)?;
            self.stream = None;
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// Parses a raw HTTP/1.1 response (content-length, chunked or close-delimited).
pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16).unwrap();
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Writes an app folder with a manifest into a fresh temp dir.
pub fn app_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nubo.toml"), manifest).unwrap();
    dir
}

/// A manifest for one test guest at `path` with extra function keys and routes.
pub fn guest_app(
    app: &str,
    function: &str,
    guest_path: &Path,
    function_extra: &str,
    routes: &[&str],
) -> tempfile::TempDir {
    let mut m = format!(
        "[app]\nname = \"{app}\"\n\n[function.{function}]\nsource = \"{}\"\n{function_extra}\n",
        guest_path.display()
    );
    for r in routes {
        m.push_str(&format!(
            "\n[[route]]\npath = \"{r}\"\nfunction = \"{function}\"\n"
        ));
    }
    app_dir(&m)
}

/// Path of a process-runtime test function folder under `tests/process/` (`rel` like
/// "python/app"), running `tests/process/build.sh` once per test run when `marker`, a file the
/// build produces inside that folder, is missing.
pub fn process_fn(rel: &str, marker: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = root().join("tests/process").join(rel);
    if !dir.join(marker).exists() {
        BUILT.get_or_init(|| {
            let status = Command::new("bash")
                .arg(root().join("tests/process/build.sh"))
                .env_remove("CARGO_TARGET_DIR")
                .stdout(Stdio::null())
                .status()
                .expect("running tests/process/build.sh");
            assert!(status.success(), "tests/process/build.sh failed");
        });
    }
    assert!(
        dir.join(marker).exists(),
        "process test function {rel} not built: {} is missing (run bash tests/process/build.sh)",
        dir.join(marker).display()
    );
    dir
}

/// Invokes APP/FUNCTION through the admin invoke endpoint with `payload` as the raw event.
pub fn invoke(s: &Server, app: &str, function: &str, payload: &[u8]) -> Resp {
    http(
        s.addr,
        "POST",
        &format!("/_nubo/api/v1/apps/{app}/functions/{function}/invoke"),
        &[("content-type", "application/json")],
        payload,
    )
}

/// Every value of a response header (case-insensitive name), in order.
pub fn header_values<'a>(r: &'a Resp, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Pids of host processes whose command line contains `needle`.
pub fn pids_running(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}
