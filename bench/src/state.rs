//! The state scenario: what Nubo's key-value store and object storage cost. KV `get` and `set`
//! latency seen from a wasm guest (net of the same guest's request that only opens the store),
//! next to the same statements on a plain SQLite database in the same process; object put/get
//! throughput through the admin API next to writing (with fsync) and reading a file in the same
//! filesystem. Figures only, no pass/fail.

use crate::asynchronous::percentile;
use crate::http;
use crate::report::{median, micros};
use anyhow::{Context as _, bail, ensure};
use std::io::{BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The key-value store the guest binds.
const STORE: &str = "bench";
/// Bytes of every value written, by the guest and by the baseline.
pub const VALUE_BYTES: usize = 100;
/// Requests sent before measuring, so the first instances and statements are warm.
const WARMUP: usize = 50;
/// Bounds every read and write of the clients.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The bucket the object phase writes to (bucket names take 3 to 63 characters).
const BUCKET: &str = "bench";
/// Object sizes of the throughput phase.
pub const OBJECT_SIZES: [usize; 2] = [1 << 20, 16 << 20];

/// The state app's manifest: the kv test guest bound to one store, under `/kv/...`.
const MANIFEST: &str = "[app]\nname = \"state\"\n\n[function.kv]\nsource = \"kv.wasm\"\n\
                        kv = [\"bench\"]\n\n[[route]]\npath = \"/kv/...\"\nfunction = \"kv\"\n";

/// Builds `tests/guests/kv` with `tests/guests/build.sh` and returns the component.
pub fn build_guest(root: &Path) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("bash")
        .arg(root.join("tests/guests/build.sh"))
        .arg("kv")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .context("running tests/guests/build.sh kv")?;
    if !out.status.success() {
        bail!(
            "tests/guests/build.sh kv failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read(&path).with_context(|| format!("reading {path}"))
}

/// Deploys the state app (the kv test guest with `kv = ["bench"]`) on `addr`.
pub fn deploy(addr: SocketAddr, wasm: &[u8]) -> anyhow::Result<()> {
    http::deploy(addr, "the state app", MANIFEST, &[("kv".into(), wasm)])
}

/// Latencies (µs) of one operation.
#[derive(Debug, Default)]
pub struct Latencies {
    pub us: Vec<f64>,
}

impl Latencies {
    fn p(&self, q: f64) -> Option<f64> {
        percentile(&self.us, q)
    }
}

/// Guest-side figures: the `/open`, `/set` and `/get` requests, sequential on one connection.
#[derive(Debug, Default)]
pub struct GuestKv {
    pub open: Latencies,
    pub set: Latencies,
    pub get: Latencies,
}

/// Sends `n` sequential `/open`, then `n` `PUT /set`, then `n` `GET /get` requests (keys `k0`…)
/// on one keep-alive connection, after a warm-up; every answer must be a 200 (and every get
/// must return the value that was set).
pub fn measure_guest(addr: SocketAddr, n: usize) -> anyhow::Result<GuestKv> {
    let value = value_bytes();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut one = |method: &str, op: &str, key: &str, body: &[u8]| -> anyhow::Result<f64> {
        let mut req = format!(
            "{method} /kv/{op}?store={STORE}&key={key} HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let t = Instant::now();
        let r = http::keep_alive(&mut conn, addr, &req, IO_TIMEOUT)
            .with_context(|| format!("{method} /kv/{op}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        ensure!(
            r.status == 200,
            "{method} /kv/{op}?key={key} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if op == "get" {
            ensure!(
                r.body == value,
                "GET /kv/get?key={key} returned {} bytes, not the {VALUE_BYTES} that were set",
                r.body.len()
            );
        }
        Ok(us)
    };
    for i in 0..WARMUP {
        one("PUT", "set", &format!("warm{i}"), &value)?;
        one("GET", "get", &format!("warm{i}"), &[])?;
        one("GET", "open", "", &[])?;
    }
    let mut g = GuestKv::default();
    for _ in 0..n {
        g.open.us.push(one("GET", "open", "", &[])?);
    }
    for i in 0..n {
        g.set.us.push(one("PUT", "set", &format!("k{i}"), &value)?);
    }
    for i in 0..n {
        g.get.us.push(one("GET", "get", &format!("k{i}"), &[])?);
    }
    Ok(g)
}

/// The direct SQLite baseline: the kv table's shape, WAL, `synchronous=NORMAL`, one autocommit
/// `INSERT OR REPLACE` per set and one `SELECT` per get, `n` of each (keys `k0`…), in a database
/// under `dir`.
pub fn measure_sqlite(dir: &Path, n: usize) -> anyhow::Result<(Latencies, Latencies)> {
    let path = dir.join("baseline-kv.db");
    let conn =
        rusqlite::Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "the baseline database at {} is not in WAL mode ({mode}); put the temp dir on a local filesystem",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (
             store TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
             version INTEGER NOT NULL, expires_at_ms INTEGER,
             PRIMARY KEY (store, key)
         ) WITHOUT ROWID;",
    )?;
    let value = value_bytes();
    let set = |key: &str, version: usize| -> anyhow::Result<f64> {
        let t = Instant::now();
        conn.prepare_cached(
            "INSERT OR REPLACE INTO kv (store, key, value, version, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, NULL)",
        )?
        .execute(rusqlite::params![
            STORE,
            key.as_bytes(),
            &value,
            version as i64
        ])?;
        Ok(t.elapsed().as_secs_f64() * 1e6)
    };
    let get = |key: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        let got: Vec<u8> = conn
            .prepare_cached("SELECT value FROM kv WHERE store = ?1 AND key = ?2")?
            .query_row(rusqlite::params![STORE, key.as_bytes()], |r| r.get(0))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        ensure!(
            got == value,
            "the baseline read back a different value for {key}"
        );
        Ok(us)
    };
    for i in 0..WARMUP {
        set(&format!("warm{i}"), i)?;
        get(&format!("warm{i}"))?;
    }
    let (mut s, mut g) = (Latencies::default(), Latencies::default());
    for i in 0..n {
        s.us.push(set(&format!("k{i}"), i)?);
    }
    for i in 0..n {
        g.us.push(get(&format!("k{i}"))?);
    }
    Ok((s, g))
}

/// Column headers of [`kv_rows`].
pub const KV_HEADERS: [&str; 6] = [
    "operation",
    "samples",
    "p50",
    "p99",
    "p50 − `/open` p50",
    "p99 − `/open` p99",
];

/// The KV table: the guest's requests (with what the store adds over `/open`) and the SQLite
/// baseline.
pub fn kv_rows(g: &GuestKv, set: &Latencies, get: &Latencies) -> Vec<Vec<String>> {
    let fmt = |v: Option<f64>| v.map_or("-".into(), micros);
    let net = |l: &Latencies, q: f64| match (l.p(q), g.open.p(q)) {
        (Some(a), Some(b)) => signed(a - b),
        _ => "-".into(),
    };
    let guest = |label: &str, l: &Latencies, with_net: bool| {
        vec![
            label.to_string(),
            l.us.len().to_string(),
            fmt(l.p(0.50)),
            fmt(l.p(0.99)),
            if with_net { net(l, 0.50) } else { "-".into() },
            if with_net { net(l, 0.99) } else { "-".into() },
        ]
    };
    vec![
        guest(
            "guest `GET /kv/open` (opens the store only)",
            &g.open,
            false,
        ),
        guest("guest `PUT /kv/set` (store.set)", &g.set, true),
        guest("guest `GET /kv/get` (store.get)", &g.get, true),
        guest("SQLite direct: `INSERT OR REPLACE`", set, false),
        guest("SQLite direct: `SELECT`", get, false),
    ]
}

/// Throughputs (MiB/s) of the rounds of one object size.
#[derive(Debug, Default)]
pub struct Throughput {
    pub put: Vec<f64>,
    pub get: Vec<f64>,
}

/// Creates the bucket, then `rounds` times per size: `PUT` one object through the admin API
/// (send to answer) and `GET` it back (send to last byte), checking the length read back.
pub fn measure_objects(addr: SocketAddr, rounds: usize) -> anyhow::Result<Vec<Throughput>> {
    let r = http::request(
        addr,
        "PUT",
        &format!("/_nubo/api/v1/buckets/{BUCKET}"),
        None,
        &[],
        IO_TIMEOUT,
    )?;
    ensure!(
        (200..300).contains(&r.status),
        "creating bucket {BUCKET}: the server answered {}: {}",
        r.status,
        r.text()
    );
    let mut out = Vec::new();
    for size in OBJECT_SIZES {
        let data = object_bytes(size);
        let mut t = Throughput::default();
        let mut conn: Option<BufReader<TcpStream>> = None;
        for round in 0..rounds {
            let path = format!("/_nubo/api/v1/buckets/{BUCKET}/objects/o-{size}-{round}");
            // Each round's bytes differ, so the store cannot share one content file.
            let mut body = data.clone();
            body[..8].copy_from_slice(&(round as u64).to_le_bytes());
            let mut req = format!(
                "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {size}\r\n\r\n"
            )
            .into_bytes();
            req.extend_from_slice(&body);
            let s = Instant::now();
            let r = http::keep_alive(&mut conn, addr, &req, IO_TIMEOUT)
                .with_context(|| format!("PUT {path}"))?;
            let put = s.elapsed();
            ensure!(
                (200..300).contains(&r.status),
                "PUT {path} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
            let s = Instant::now();
            let r = http::keep_alive(&mut conn, addr, req.as_bytes(), IO_TIMEOUT)
                .with_context(|| format!("GET {path}"))?;
            let get = s.elapsed();
            ensure!(
                r.status == 200 && r.body == body,
                "GET {path} answered {} with {} bytes, not the {size} put",
                r.status,
                r.body.len()
            );
            t.put.push(mib_per_s(size, put));
            t.get.push(mib_per_s(size, get));
        }
        out.push(t);
    }
    Ok(out)
}

/// The file baseline in `dir` (the server's filesystem): per size and round, create a file,
/// write the bytes and `fsync` it; then open it again and read it whole.
pub fn measure_files(dir: &Path, rounds: usize) -> anyhow::Result<Vec<Throughput>> {
    let mut out = Vec::new();
    for size in OBJECT_SIZES {
        let data = object_bytes(size);
        let mut t = Throughput::default();
        for round in 0..rounds {
            let path = dir.join(format!("baseline-object-{size}-{round}"));
            let mut body = data.clone();
            body[..8].copy_from_slice(&(round as u64).to_le_bytes());
            let s = Instant::now();
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&body)?;
            f.sync_all()?;
            drop(f);
            let put = s.elapsed();
            let s = Instant::now();
            let mut back = Vec::with_capacity(size);
            std::fs::File::open(&path)?.read_to_end(&mut back)?;
            let get = s.elapsed();
            ensure!(back == body, "{} read back differently", path.display());
            std::fs::remove_file(&path)?;
            t.put.push(mib_per_s(size, put));
            t.get.push(mib_per_s(size, get));
        }
        out.push(t);
    }
    Ok(out)
}

/// Column headers of [`object_rows`].
pub const OBJECT_HEADERS: [&str; 6] = [
    "object size",
    "rounds",
    "admin API put (median / best)",
    "file write + fsync (median / best)",
    "admin API get (median / best)",
    "file read (median / best)",
];

/// One row per object size: Nubo next to the file baseline, in MiB/s.
pub fn object_rows(nubo: &[Throughput], files: &[Throughput]) -> Vec<Vec<String>> {
    let cell = |v: &[f64]| {
        let best = v.iter().copied().fold(f64::NAN, f64::max);
        format!("{:.0} / {:.0} MiB/s", median(v.to_vec()), best)
    };
    OBJECT_SIZES
        .iter()
        .zip(nubo.iter().zip(files))
        .map(|(size, (n, f))| {
            vec![
                format!("{} MiB", size >> 20),
                n.put.len().to_string(),
                cell(&n.put),
                cell(&f.put),
                cell(&n.get),
                cell(&f.get),
            ]
        })
        .collect()
}

/// What was measured, for the report.
pub fn describe(n: usize, rounds: usize) -> String {
    format!(
        "`tests/guests/kv` deployed as app `state` with `kv = [\"{STORE}\"]`. After {WARMUP} warm-up \
         rounds, {n} sequential `GET /kv/open` (the guest opens the store and answers), then {n} \
         `PUT /kv/set?key=kI` with a {VALUE_BYTES}-byte value, then {n} `GET /kv/get?key=kI`, all on \
         one keep-alive connection, send to last byte at the client; the last two columns subtract \
         the `/open` percentile, which leaves what the store operation adds to a request. The \
         SQLite rows run in the benchmark's own process on a WAL database with \
         `synchronous=NORMAL` (what the kv store uses), the kv table's shape, one autocommit \
         statement per operation, same keys and value size. Objects: bucket `{BUCKET}` through \
         `PUT/GET /_nubo/api/v1/buckets/{BUCKET}/objects/KEY` on one keep-alive connection, \
         {rounds} round(s) per size, a distinct object each round; put is send to answer (the \
         object is durable when the server answers), get is send to last byte. The baseline \
         writes the same bytes to a new file in the same filesystem as the server's data \
         directory and `fsync`s it, then reads it back (from the page cache, like the server's \
         get of an object it just wrote)."
    )
}

/// A difference of latencies that may be negative (noise): `+120 µs`, `−15 µs`.
fn signed(us: f64) -> String {
    if us < 0.0 {
        format!("−{}", micros(-us))
    } else {
        format!("+{}", micros(us))
    }
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

/// The value every set writes: printable, `VALUE_BYTES` long.
fn value_bytes() -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `size` bytes that do not compress to nothing (a simple xorshift sequence).
fn object_bytes(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_keep_their_sign() {
        assert_eq!(signed(120.0), "+120 µs");
        assert_eq!(signed(-15.0), "−15 µs");
    }

    #[test]
    fn throughput_is_mib_per_second() {
        assert_eq!(mib_per_s(1 << 20, Duration::from_millis(500)), 2.0);
    }

    #[test]
    fn the_sqlite_baseline_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (set, get) = measure_sqlite(dir.path(), 10).unwrap();
        assert_eq!((set.us.len(), get.us.len()), (10, 10));
    }
}
