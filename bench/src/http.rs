//! A tiny blocking HTTP/1.1 client for the driver's own requests (readiness polls, deploys): one
//! request per connection (`Connection: close`), loopback only, bounded in time and size.

use anyhow::{Context as _, bail, ensure};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response the driver reads.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// A response: status and (de-chunked) body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, shortened for messages.
    pub fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        if t.chars().count() > 300 {
            format!("{}…", t.chars().take(300).collect::<String>())
        } else {
            t.to_string()
        }
    }
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Response> {
    request(addr, "GET", path, None, &[], timeout)
}

/// Sends one request and reads the whole answer. `timeout` bounds connecting and each read or
/// write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Response> {
    ensure!(
        addr.ip().is_loopback(),
        "the benchmark only talks to loopback, not {addr}"
    );
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut buf)?;
    parse(&buf).with_context(|| format!("{method} {path} on {addr}"))
}

fn parse(buf: &[u8]) -> anyhow::Result<Response> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the connection closed before a complete response head");
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest[..n.min(rest.len())].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("malformed chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size, "truncated chunk");
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Deploys an app through the admin API: `manifest` and one component per `(function, code)`,
/// in the deploy bundle format. `what` names the app in errors.
pub fn deploy(
    addr: SocketAddr,
    what: &str,
    manifest: &str,
    functions: &[(String, &[u8])],
) -> anyhow::Result<()> {
    let code: usize = functions.iter().map(|(_, c)| c.len() + 32).sum();
    let mut body = Vec::with_capacity(64 + manifest.len() + code);
    body.extend_from_slice(b"NUBO-BUNDLE-1\n");
    body.extend_from_slice(format!("nubo.toml {}\n", manifest.len()).as_bytes());
    body.extend_from_slice(manifest.as_bytes());
    for (name, wasm) in functions {
        body.extend_from_slice(format!("function/{name} {}\n", wasm.len()).as_bytes());
        body.extend_from_slice(wasm);
    }
    let r = request(
        addr,
        "POST",
        "/_nubo/api/v1/apps",
        Some("application/vnd.nubo.bundle"),
        &body,
        Duration::from_secs(600),
    )
    .with_context(|| format!("deploying {what}"))?;
    ensure!(
        (200..300).contains(&r.status),
        "deploying {what}: the server answered {}: {}",
        r.status,
        r.text()
    );
    Ok(())
}

/// An answer read by [`keep_alive`].
pub struct KeptAlive {
    /// The status code.
    pub status: u16,
    /// Whether a `Retry-After` header came with it.
    pub retry_after: bool,
    /// The body (chunked bodies joined).
    pub body: Vec<u8>,
}

/// Sends `request` (a whole HTTP/1.1 request) on a keep-alive connection, connecting when
/// `conn` is empty, and reads the answer. The connection is dropped when the server closes it.
pub fn keep_alive(
    conn: &mut Option<std::io::BufReader<TcpStream>>,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<KeptAlive> {
    use std::io::{BufRead as _, Error, ErrorKind};
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        *conn = Some(std::io::BufReader::new(s));
    }
    let Some(c) = conn.as_mut() else {
        return Err(Error::other("not connected"));
    };
    c.get_mut().write_all(request)?;
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(Error::new(
            ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked, mut retry_after, mut close) = (None, false, false, false);
    loop {
        line.clear();
        c.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "retry-after" => retry_after = true,
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                line.clear();
                c.read_line(&mut line)?;
                break;
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            c.read_exact(&mut body[start..])?;
            body.truncate(start + size);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        c.read_exact(&mut body)?;
    } else {
        return Err(bad("a response without a length"));
    }
    if close {
        *conn = None;
    }
    Ok(KeptAlive {
        status,
        retry_after,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        let r = parse(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"abcde"[..]));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
