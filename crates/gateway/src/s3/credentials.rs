//! The S3 endpoint's one access key pair: taken from the operator's environment, or generated
//! at first start and kept in the data dir (readable by its owner only) so that clients keep
//! working across restarts.

use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The file under the data dir that holds generated credentials.
pub const CREDENTIALS_FILE: &str = "s3-credentials.json";

/// Length of a generated access key id (as AWS's).
const ACCESS_KEY_LEN: usize = 20;
/// Length of a generated secret (as AWS's); 40 characters of 62 carry about 238 bits.
const SECRET_KEY_LEN: usize = 40;
/// Shortest secret accepted from the environment: a short one could be guessed offline from one
/// signed request.
const MIN_SECRET_LEN: usize = 16;

/// An S3 access key pair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Credentials {
    /// The access key id clients send in their signature's credential scope.
    pub access_key_id: String,
    /// The secret clients sign with.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Why the S3 credentials could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Only one of the two environment variables is set, or one is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The credentials file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl S3Credentials {
    /// The operator's pair when both `access_key` and `secret_key` are given (from
    /// `NUBO_S3_ACCESS_KEY` / `NUBO_S3_SECRET_KEY`); otherwise the pair stored in `data_dir`,
    /// generated and stored (mode 0600) the first time.
    pub fn resolve(
        data_dir: &Path,
        access_key: Option<String>,
        secret_key: Option<String>,
    ) -> Result<S3Credentials, CredentialsError> {
        match (access_key, secret_key) {
            (Some(a), Some(s)) => {
                check_access_key(&a)?;
                if s.chars().count() < MIN_SECRET_LEN || s.chars().any(char::is_whitespace) {
                    return Err(CredentialsError::Invalid(format!(
                        "NUBO_S3_SECRET_KEY must be at least {MIN_SECRET_LEN} characters without spaces; e.g. `export NUBO_S3_SECRET_KEY=$(openssl rand -hex 20)`"
                    )));
                }
                Ok(S3Credentials {
                    access_key_id: a,
                    secret_access_key: s,
                })
            }
            (Some(_), None) => Err(CredentialsError::Invalid(
                "NUBO_S3_ACCESS_KEY is set but NUBO_S3_SECRET_KEY is not; set both, or neither to use the generated pair (`nubo s3 credentials`)".into(),
            )),
            (None, Some(_)) => Err(CredentialsError::Invalid(
                "NUBO_S3_SECRET_KEY is set but NUBO_S3_ACCESS_KEY is not; set both, or neither to use the generated pair (`nubo s3 credentials`)".into(),
            )),
            (None, None) => load_or_generate(data_dir),
        }
    }
}

fn check_access_key(a: &str) -> Result<(), CredentialsError> {
    // The key id travels inside the signature's `Credential=ID/date/region/s3/aws4_request`.
    let ok = (3..=128).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(CredentialsError::Invalid(
            "NUBO_S3_ACCESS_KEY must be 3 to 128 ASCII letters or digits, e.g. NUBOEXAMPLEKEY00001"
                .into(),
        ))
    }
}

fn load_or_generate(data_dir: &Path) -> Result<S3Credentials, CredentialsError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    if let Some(c) = load(&path)? {
        return Ok(c);
    }
    let fresh = S3Credentials {
        access_key_id: random_string(ACCESS_KEY_LEN, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            .map_err(|source| CredentialsError::Io {
                what: "drawing random bytes for",
                path: path.clone(),
                source,
            })?,
        secret_access_key: random_string(
            SECRET_KEY_LEN,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        )
        .map_err(|source| CredentialsError::Io {
            what: "drawing random bytes for",
            path: path.clone(),
            source,
        })?,
    };
    let io = |what| {
        let path = path.clone();
        move |source| CredentialsError::Io { what, path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io("creating the directory of"))?;
    // Written whole to a private temporary file, then linked into place: a reader never sees
    // half a file, and when two servers start at once on one data dir the first link wins and
    // both use its pair.
    let tmp = data_dir.join(format!(".{CREDENTIALS_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating"))?;
    let mut text = serde_json::to_vec_pretty(&fresh).expect("credentials serialize");
    text.push(b'\n');
    let written = f.write_all(&text).and_then(|()| f.sync_all());
    drop(f);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(&path)?.ok_or_else(|| CredentialsError::Io {
                what: "reading",
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "vanished"),
            })
        }
        Err(e) => Err(io("writing")(e)),
    }
}

fn load(path: &Path) -> Result<Option<S3Credentials>, CredentialsError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Io {
                what: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        CredentialsError::Invalid(format!(
            "{} is not a credentials file ({e}); delete it to generate a new pair, or set NUBO_S3_ACCESS_KEY and NUBO_S3_SECRET_KEY",
            path.display()
        ))
    })
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling: no modulo bias).
fn random_string(len: usize, alphabet: &[u8]) -> std::io::Result<String> {
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(std::io::Error::other)?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_generated_pair_is_stored_privately_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = S3Credentials::resolve(dir.path(), None, None).unwrap();
        assert_eq!(first.access_key_id.len(), ACCESS_KEY_LEN);
        assert_eq!(first.secret_access_key.len(), SECRET_KEY_LEN);
        assert!(
            first
                .access_key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        let mode = std::fs::metadata(dir.path().join(CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = S3Credentials::resolve(dir.path(), None, None).unwrap();
        assert_eq!(first, again);
        let other = tempfile::tempdir().unwrap();
        let elsewhere = S3Credentials::resolve(other.path(), None, None).unwrap();
        assert_ne!(first.secret_access_key, elsewhere.secret_access_key);
        assert!(!format!("{first:?}").contains(&first.secret_access_key));
    }

    #[test]
    fn the_environment_wins_and_must_be_complete() {
        let dir = tempfile::tempdir().unwrap();
        let c = S3Credentials::resolve(
            dir.path(),
            Some("OPERATORKEY".into()),
            Some("a-long-enough-secret".into()),
        )
        .unwrap();
        assert_eq!(c.access_key_id, "OPERATORKEY");
        assert!(!dir.path().join(CREDENTIALS_FILE).exists());
        let half = S3Credentials::resolve(dir.path(), Some("OPERATORKEY".into()), None);
        assert!(half.unwrap_err().to_string().contains("NUBO_S3_SECRET_KEY"));
        let short = S3Credentials::resolve(dir.path(), Some("K3Y".into()), Some("short".into()));
        assert!(short.unwrap_err().to_string().contains("at least"));
        let slash = S3Credentials::resolve(
            dir.path(),
            Some("a/b".into()),
            Some("a-long-enough-secret".into()),
        );
        assert!(slash.is_err());
    }
}
