//! The deploy bundle: how the CLI ships an app (its `nubo.toml` and one component per
//! function) to the server in one request body.
//!
//! Format (`application/vnd.nubo.bundle`): the line `NUBO-BUNDLE-1`, then parts, each a header
//! line `<name> <length>` followed by exactly `<length>` bytes. Names are `nubo.toml` and
//! `function/<name>`. A length-prefixed format needs no escaping, is trivial to stream and to
//! bound, and keeps binary components as they are.

use nubo_core::limits;
use std::collections::BTreeMap;

/// First line of every bundle.
pub const MAGIC: &str = "NUBO-BUNDLE-1";
/// Part name of the manifest.
pub const MANIFEST_PART: &str = "nubo.toml";
/// Prefix of function part names.
pub const FUNCTION_PART_PREFIX: &str = "function/";

/// Longest part header line. Bounds work on a malformed bundle.
const MAX_HEADER_LINE: usize = 256;

/// A parsed bundle.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// The manifest text.
    pub manifest: String,
    /// Component bytes by function name.
    pub components: BTreeMap<String, Vec<u8>>,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid deploy bundle: {0}")]
pub struct BundleError(pub String);

impl Bundle {
    /// Parses a bundle, enforcing the size limits.
    pub fn parse(mut data: &[u8]) -> Result<Bundle, BundleError> {
        let err = |m: String| BundleError(m);
        if data.len() as u64 > limits::MAX_DEPLOY_BYTES {
            return Err(err(format!(
                "the bundle is larger than {} bytes",
                limits::MAX_DEPLOY_BYTES
            )));
        }
        let first = take_line(&mut data).ok_or_else(|| err("empty body".into()))?;
        if first != MAGIC {
            return Err(err(format!(
                "it does not start with {MAGIC:?}; deploy with `nubo deploy`"
            )));
        }
        let mut bundle = Bundle::default();
        let mut saw_manifest = false;
        while !data.is_empty() {
            let header = take_line(&mut data).ok_or_else(|| err("truncated part header".into()))?;
            let (name, len) = header
                .rsplit_once(' ')
                .ok_or_else(|| err(format!("malformed part header {header:?}")))?;
            let len: usize = len
                .parse()
                .map_err(|_| err(format!("malformed part length in {header:?}")))?;
            if len > data.len() {
                return Err(err(format!(
                    "part {name:?} is truncated: {len} bytes announced, {} present",
                    data.len()
                )));
            }
            let (body, rest) = data.split_at(len);
            data = rest;
            if name == MANIFEST_PART {
                if saw_manifest {
                    return Err(err("two nubo.toml parts".into()));
                }
                saw_manifest = true;
                bundle.manifest = String::from_utf8(body.to_vec())
                    .map_err(|_| err("nubo.toml is not valid UTF-8".into()))?;
            } else if let Some(f) = name.strip_prefix(FUNCTION_PART_PREFIX) {
                if body.len() as u64 > limits::MAX_COMPONENT_BYTES {
                    return Err(err(format!(
                        "the component of function {f:?} is {} bytes; the limit is {} bytes",
                        body.len(),
                        limits::MAX_COMPONENT_BYTES
                    )));
                }
                if bundle
                    .components
                    .insert(f.to_string(), body.to_vec())
                    .is_some()
                {
                    return Err(err(format!("two components for function {f:?}")));
                }
            } else {
                return Err(err(format!("unknown part {name:?}")));
            }
        }
        if !saw_manifest {
            return Err(err("it has no nubo.toml part".into()));
        }
        Ok(bundle)
    }
}

fn take_line<'a>(data: &mut &'a [u8]) -> Option<&'a str> {
    let limit = data.len().min(MAX_HEADER_LINE);
    let pos = data[..limit].iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&data[..pos]).ok()?;
    *data = &data[pos + 1..];
    Some(line)
}

/// Builds a bundle.
#[derive(Debug)]
pub struct BundleWriter {
    buf: Vec<u8>,
}

impl Default for BundleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BundleWriter {
    /// An empty bundle.
    pub fn new() -> Self {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC.as_bytes());
        buf.push(b'\n');
        BundleWriter { buf }
    }

    /// Adds a part.
    pub fn part(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(format!("{name} {}\n", bytes.len()).as_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The encoded bundle.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = BundleWriter::new();
        w.part(MANIFEST_PART, b"[app]\nname = \"a\"\n")
            .part("function/f", b"\0asm\n\nbinary");
        let b = Bundle::parse(&w.finish()).unwrap();
        assert_eq!(b.manifest, "[app]\nname = \"a\"\n");
        assert_eq!(b.components["f"], b"\0asm\n\nbinary");
    }

    #[test]
    fn malformed() {
        for (data, frag) in [
            (&b""[..], "empty"),
            (b"HELLO\n", "does not start"),
            (b"NUBO-BUNDLE-1\nnubo.toml 100\nshort", "truncated"),
            (b"NUBO-BUNDLE-1\nfunction/f 1\nx", "no nubo.toml"),
            (b"NUBO-BUNDLE-1\nweird 0\n", "unknown part"),
            (b"NUBO-BUNDLE-1\nnubo.toml x\n", "malformed part length"),
        ] {
            let e = Bundle::parse(data).unwrap_err().to_string();
            assert!(e.contains(frag), "{e} lacks {frag}");
        }
    }
}
