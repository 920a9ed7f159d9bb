//! Masking of secret values in captured function output: a function that prints its own secret
//! must not put it in the invocation's logs, where every operator can read it.

use std::borrow::Cow;
use std::fmt;
use zeroize::Zeroizing;

/// Shortest value that is masked. Shorter values (`1`, `true`, `prod`) would mask ordinary
/// words all over the logs and reveal the value by where `[secret]` shows up.
pub const MIN_MASKED_BYTES: usize = 6;

/// What a masked value is replaced with.
const REPLACEMENT: &[u8] = b"[secret]";

/// The values to mask in one function's log lines, longest first so that a value containing
/// another is masked whole. Values spanning several lines are masked line by line.
#[derive(Default)]
pub struct LogMask {
    values: Vec<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for LogMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogMask")
            .field("values", &self.values.len())
            .finish()
    }
}

impl LogMask {
    /// A mask for `values`; pieces shorter than [`MIN_MASKED_BYTES`] are not masked.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> LogMask {
        let mut pieces: Vec<Zeroizing<Vec<u8>>> = values
            .into_iter()
            .flat_map(|v| v.split(|b| *b == b'\n'))
            .map(|p| p.strip_suffix(b"\r").unwrap_or(p))
            .filter(|p| p.len() >= MIN_MASKED_BYTES)
            .map(|p| Zeroizing::new(p.to_vec()))
            .collect();
        pieces.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        pieces.dedup();
        LogMask { values: pieces }
    }

    /// Whether nothing would be masked.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `line` with every occurrence of a value replaced by `[secret]`, in one pass over the
    /// line (so the replacement text itself is never masked again).
    pub fn apply<'a>(&self, line: &'a [u8]) -> Cow<'a, [u8]> {
        let occurs = |v: &Zeroizing<Vec<u8>>| line.windows(v.len()).any(|w| w == v.as_slice());
        if !self.values.iter().any(occurs) {
            return Cow::Borrowed(line);
        }
        let mut out = Vec::with_capacity(line.len());
        let mut at = 0;
        // Every step moves `at` forward by at least one byte, so this ends.
        while at < line.len() {
            let rest = &line[at..];
            match self.values.iter().find(|v| rest.starts_with(v)) {
                Some(v) => {
                    out.extend_from_slice(REPLACEMENT);
                    at += v.len();
                }
                None => {
                    out.push(line[at]);
                    at += 1;
                }
            }
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_wherever_they_occur() {
        let mask = LogMask::new([&b"hunter22"[..], b"abc", b"multi-line\nsecond-part"]);
        assert_eq!(
            &*mask.apply(b"db=hunter22 and again hunter22!"),
            b"db=[secret] and again [secret]!"
        );
        // Too short to mask.
        assert_eq!(&*mask.apply(b"abc"), b"abc");
        assert_eq!(&*mask.apply(b"x second-part y"), b"x [secret] y");
        assert!(matches!(mask.apply(b"nothing here"), Cow::Borrowed(_)));
        assert!(!format!("{mask:?}").contains("hunter"));
    }

    #[test]
    fn a_longer_value_containing_a_shorter_one_is_masked_whole() {
        let mask = LogMask::new([&b"secret"[..], b"secret-and-more"]);
        assert_eq!(&*mask.apply(b"[secret-and-more]"), b"[[secret]]");
        assert_eq!(&*mask.apply(b"a secret"), b"a [secret]");
    }
}
