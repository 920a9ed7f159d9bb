//! Identifiers: invocation ids (ULIDs) and the naming rule for apps and functions.

use std::fmt;

/// The id of one invocation: a ULID, so ids sort by start time and carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(pub ulid::Ulid);

impl InvocationId {
    /// A new id for an invocation starting now.
    pub fn new() -> Self {
        InvocationId(ulid::Ulid::new())
    }

    /// Parses the 26-character Crockford base32 form.
    pub fn parse(s: &str) -> Option<Self> {
        ulid::Ulid::from_string(s).ok().map(InvocationId)
    }
}

impl Default for InvocationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {name:?}: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
)]
pub struct NameError {
    /// "app" or "function".
    pub what: &'static str,
    /// The refused name.
    pub name: String,
}

/// Checks an app or function name. Names appear in URLs, file names and metric labels, so they
/// are kept to a small, unambiguous alphabet.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            name: name.to_string(),
        })
    }
}

/// Why a bucket name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid bucket name {0:?}: use 3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit (the S3 rules, so S3 clients accept it)"
)]
pub struct BucketNameError(pub String);

/// Checks an object storage bucket name against the S3 naming rules (path-style S3 clients
/// refuse other names): 3 to 63 of `a-z 0-9 - .`, starting and ending with a letter or digit,
/// no `..`, and not shaped like an IP address.
pub fn validate_bucket_name(name: &str) -> Result<(), BucketNameError> {
    let b = name.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(BucketNameError(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3() {
        for good in ["abc", "my-bucket.v2", &"x".repeat(63)] {
            assert!(validate_bucket_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "ab",
            "My",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            "10.0.0.1",
            &"x".repeat(64),
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("app", "hello-world_2").is_ok());
        for bad in ["", "-x", "Hello", "a/b", "a.b", &"x".repeat(64)] {
            assert!(validate_name("app", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn invocation_ids_round_trip() {
        let id = InvocationId::new();
        assert_eq!(InvocationId::parse(&id.to_string()), Some(id));
        assert_eq!(InvocationId::parse("nope"), None);
    }
}
