//! W3C trace context: reading a caller's `traceparent`/`tracestate`, the context an invocation
//! runs in, and the forms it is handed on in (`traceparent` headers, the X-Ray trace header of
//! the Lambda Runtime API).

use std::fmt::Write as _;
use std::sync::Arc;

/// The W3C header naming the caller's trace and span.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The W3C header carrying vendor state along a trace.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Longest `tracestate` passed on: the W3C limit of 32 members of at most 256 bytes each is far
/// above what any vendor sends, and the value is copied into every span and header of the
/// invocation, so a caller cannot make each invocation carry an unbounded string.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Length of a version-00 `traceparent`: `00-{32 hex}-{16 hex}-{2 hex}`.
const TRACEPARENT_LEN: usize = 55;

/// A trace id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// The trace an invocation (or one of its outbound calls) belongs to and the span that stands
/// for it: whoever receives it as a `traceparent` makes that span its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The span this context names.
    pub span_id: SpanId,
    /// The span's parent, when the trace came from a caller.
    pub parent_span_id: Option<SpanId>,
    /// Whether the trace is sampled (recorded); an unsampled trace is still passed on.
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<Arc<str>>,
}

impl TraceContext {
    /// Reads a `traceparent` strictly: version `00`, lowercase hex, non-zero ids, nothing
    /// around it. `None` for anything else (the caller starts a new trace instead).
    pub fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
        if value.len() != TRACEPARENT_LEN
            || &value[..3] != b"00-"
            || value[35] != b'-'
            || value[52] != b'-'
        {
            return None;
        }
        let trace_id: TraceId = hex_bytes(&value[3..35])?;
        let span_id: SpanId = hex_bytes(&value[36..52])?;
        let [flags] = hex_bytes::<1>(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: flags & 1 == 1,
            tracestate: None,
        })
    }

    /// The context of an invocation whose request carried `traceparent` and `tracestate`.
    ///
    /// With `recording` (the server exports traces) the invocation gets a span of its own: a
    /// child of the caller's span when the header is valid, else the root of a new, sampled
    /// trace. Without it, a valid caller's context is passed through as it came (the server
    /// takes no part in the trace), and a request without one gets none.
    pub fn for_invocation(
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
        recording: bool,
    ) -> Option<TraceContext> {
        let remote = traceparent.and_then(TraceContext::parse_traceparent);
        match (remote, recording) {
            (Some(mut remote), false) => {
                remote.tracestate = tracestate.and_then(valid_tracestate);
                Some(remote)
            }
            (Some(mut remote), true) => {
                remote.tracestate = tracestate.and_then(valid_tracestate);
                Some(remote.child())
            }
            (None, true) => Some(TraceContext::root(true)),
            (None, false) => None,
        }
    }

    /// The root span of a new trace.
    pub fn root(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            sampled,
            tracestate: None,
        }
    }

    /// A new span in the same trace whose parent is this context's span.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
        }
    }

    /// The `traceparent` header naming this context's span as the parent.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(TRACEPARENT_LEN);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }

    /// The same context in AWS X-Ray's header form, as the Lambda Runtime API hands it to
    /// runtimes (`Lambda-Runtime-Trace-Id`, then `_X_AMZN_TRACE_ID`):
    /// `Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}`. The W3C trace id maps onto the
    /// X-Ray root one to one (X-Ray's epoch seconds are simply the first 4 bytes).
    pub fn xray(&self) -> String {
        let mut hex = String::with_capacity(32);
        push_hex(&mut hex, &self.trace_id);
        let mut out = String::with_capacity(80);
        let _ = write!(out, "Root=1-{}-{};Parent=", &hex[..8], &hex[8..]);
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled {
            ";Sampled=1"
        } else {
            ";Sampled=0"
        });
        out
    }

    /// Reads an X-Ray trace header back (`Root`, `Parent`, `Sampled` in any order; other
    /// fields ignored). `None` without a valid root and parent.
    pub fn from_xray(value: &str) -> Option<TraceContext> {
        let (mut root, mut parent, mut sampled) = (None, None, false);
        for field in value.split(';') {
            let (key, val) = field.trim().split_once('=')?;
            match key {
                "Root" => {
                    let rest = val.strip_prefix("1-")?;
                    let (epoch, unique) = rest.split_once('-')?;
                    if epoch.len() != 8 || unique.len() != 24 {
                        return None;
                    }
                    let mut both = [0u8; 32];
                    both[..8].copy_from_slice(epoch.as_bytes());
                    both[8..].copy_from_slice(unique.as_bytes());
                    root = Some(hex_bytes::<16>(&both)?);
                }
                "Parent" => parent = Some(hex_bytes::<8>(val.as_bytes())?),
                "Sampled" => sampled = val == "1",
                _ => {}
            }
        }
        let (trace_id, span_id) = (root?, parent?);
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled,
            tracestate: None,
        })
    }
}

/// A fresh non-zero span id.
pub fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// `tracestate` kept when it is short and printable (W3C: an invalid one is dropped).
fn valid_tracestate(value: &[u8]) -> Option<Arc<str>> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TRACESTATE_BYTES
        && value.iter().all(|b| (0x20..0x7f).contains(b));
    if !ok {
        return None;
    }
    std::str::from_utf8(value).ok().map(Arc::from)
}

/// Decodes lowercase hex (uppercase is not valid in a `traceparent`).
fn hex_bytes<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let ctx = TraceContext::parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent(), VALID);
        let unsampled = TraceContext::parse_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
        )
        .unwrap();
        assert!(!unsampled.sampled, "only bit 0 is the sampled flag");
        assert!(unsampled.traceparent().ends_with("-00"));
    }

    #[test]
    fn every_invalid_traceparent_form_is_refused() {
        let bad = [
            "",
            // Another version, even one that may come later.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths, separators, extra text, non-hex.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse_traceparent(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn an_invocation_continues_a_valid_trace_and_starts_one_otherwise() {
        let ctx =
            TraceContext::for_invocation(Some(VALID.as_bytes()), Some(b"congo=t61rcWkgMzE"), true)
                .unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(Some(ctx.span_id), ctx.parent_span_id);
        assert_eq!(ctx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));

        let fresh = TraceContext::for_invocation(Some(b"garbage"), None, true).unwrap();
        assert_eq!(fresh.parent_span_id, None);
        assert!(fresh.sampled);
        assert_ne!(fresh.trace_id, ctx.trace_id);

        // Not recording: the caller's context passes through untouched, or there is none.
        let through = TraceContext::for_invocation(Some(VALID.as_bytes()), None, false).unwrap();
        assert_eq!(through.traceparent(), VALID);
        assert_eq!(TraceContext::for_invocation(None, None, false), None);

        let unprintable =
            TraceContext::for_invocation(Some(VALID.as_bytes()), Some(b"a=\x01"), true);
        assert_eq!(unprintable.unwrap().tracestate, None);
        let long = vec![b'a'; MAX_TRACESTATE_BYTES + 1];
        let too_long = TraceContext::for_invocation(Some(VALID.as_bytes()), Some(&long), true);
        assert_eq!(too_long.unwrap().tracestate, None);
    }

    #[test]
    fn a_child_keeps_the_trace_and_names_its_parent() {
        let parent = TraceContext::root(true);
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.parent_span_id, Some(parent.span_id));
        assert_ne!(child.span_id, parent.span_id);
        assert!(child.sampled);
    }

    #[test]
    fn the_xray_form_carries_the_same_ids() {
        let ctx = TraceContext::parse_traceparent(VALID.as_bytes()).unwrap();
        let xray = ctx.xray();
        assert_eq!(
            xray,
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        assert_eq!(TraceContext::from_xray(&xray), Some(ctx));
        let shuffled = TraceContext::from_xray(
            "Sampled=0;Parent=00f067aa0ba902b7;Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Lineage=a:1",
        )
        .unwrap();
        assert!(!shuffled.sampled);
        for bad in [
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736",
            "Root=2-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7",
            "Root=1-4bf92f3-577b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7",
            "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0",
            "",
        ] {
            assert_eq!(TraceContext::from_xray(bad), None, "{bad:?}");
        }
    }
}
