//! Content-addressed code blobs and the compiled-artifact cache: files under the data directory,
//! written atomically and named only by validated digests and keys.

use crate::{Store, StoreError};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Where blobs live, relative to the data directory.
pub(crate) const BLOBS_DIR: &str = "blobs/sha256";
/// Where compiled artifacts live, relative to the data directory.
pub(crate) const ARTIFACTS_DIR: &str = "artifacts";
/// Extension of compiled artifacts.
const ARTIFACT_EXT: &str = "cwasm";
/// Prefix of files being written; never a valid digest or `.cwasm` name, and swept at open.
const TEMP_PREFIX: &str = ".tmp-";
/// The name returned for an invalid digest or key: inside the store, never written, so reading
/// it fails with "not found" instead of escaping the data directory.
const INVALID_NAME: &str = "invalid";

/// Longest artifact key. Bounds path length; engine keys are a version plus a short hash.
const MAX_ARTIFACT_KEY_LEN: usize = 128;

/// Checks that `digest` is a sha256 as 64 lowercase hex characters. Anything else (uppercase,
/// `..`, `/`) is refused, so a digest from a request can never name a path outside the store.
pub fn validate_digest(digest: &str) -> Result<(), StoreError> {
    if is_valid_digest(digest) {
        Ok(())
    } else {
        Err(StoreError::InvalidDigest(digest.to_string()))
    }
}

fn is_valid_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An artifact key is one path component: ASCII letters, digits, `.`, `-`, `_`, not starting
/// with `.` (which rules out `.`, `..` and hidden temp names).
fn is_valid_artifact_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ARTIFACT_KEY_LEN
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn validate_artifact_key(key: &str) -> Result<(), StoreError> {
    if is_valid_artifact_key(key) {
        Ok(())
    } else {
        Err(StoreError::InvalidArtifactKey(key.to_string()))
    }
}

impl Store {
    /// Stores `bytes` under their sha256 and returns it as lowercase hex. Idempotent: storing
    /// the same bytes again leaves an intact existing file alone (and replaces a damaged one).
    /// Durable when it returns.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let path = self.blob_path(&digest);
        // Files only ever appear complete (temp + rename), but the disk may have damaged one
        // since: check the content, so deploying the same code again repairs it.
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
            && fs::read(&path).is_ok_and(|stored| stored == bytes)
        {
            return Ok(digest);
        }
        write_atomic(&path, bytes, "write code blob")?;
        Ok(digest)
    }

    /// Where the blob named `digest` lives. For an invalid digest, a path inside the store that
    /// never exists.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let root = self.dir.join(BLOBS_DIR);
        if is_valid_digest(digest) {
            root.join(&digest[..2]).join(digest)
        } else {
            root.join(INVALID_NAME)
        }
    }

    /// Reads the blob named `digest`, checking its content still matches the name.
    pub fn get_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        validate_digest(digest)?;
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobNotFound {
                    digest: digest.to_string(),
                    path,
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    doing: "read code blob",
                    path,
                    source,
                });
            }
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != digest {
            return Err(StoreError::BlobCorrupt { path, actual });
        }
        Ok(bytes)
    }

    /// Where the artifact compiled from `digest` by the engine build `artifact_key` lives. For an
    /// invalid digest or key, a path inside the store that never exists.
    pub fn artifact_path(&self, digest: &str, artifact_key: &str) -> PathBuf {
        let root = self.dir.join(ARTIFACTS_DIR);
        if is_valid_digest(digest) && is_valid_artifact_key(artifact_key) {
            root.join(artifact_key)
                .join(format!("{digest}.{ARTIFACT_EXT}"))
        } else {
            root.join(INVALID_NAME)
        }
    }

    /// Whether a compiled artifact for (`digest`, `artifact_key`) is cached.
    pub fn has_artifact(&self, digest: &str, artifact_key: &str) -> bool {
        is_valid_digest(digest)
            && is_valid_artifact_key(artifact_key)
            && self.artifact_path(digest, artifact_key).is_file()
    }

    /// Caches a compiled artifact, replacing any previous one atomically (a process that has the
    /// old file mapped keeps its copy). Returns its path. Durable when it returns.
    pub fn put_artifact(
        &self,
        digest: &str,
        artifact_key: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        validate_digest(digest)?;
        validate_artifact_key(artifact_key)?;
        let path = self.artifact_path(digest, artifact_key);
        write_atomic(&path, bytes, "write compiled artifact")?;
        Ok(path)
    }
}

/// Writes `bytes` to `path` so that readers see either nothing or the whole file, and the file
/// survives a crash once this returns: temp file in the same directory, fsync, rename, fsync
/// the directory.
fn write_atomic(path: &Path, bytes: &[u8], doing: &'static str) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{}", ulid::Ulid::new()));
    if let Err(source) = write_then_rename(&tmp, path, bytes) {
        // Best effort: the sweep at the next open removes it if this fails too.
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            doing,
            path: path.to_path_buf(),
            source,
        });
    }
    sync_dir(dir).map_err(|source| StoreError::Io {
        doing,
        path: dir.to_path_buf(),
        source,
    })
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_file_options().open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
}

/// Creates `dir` (and its parents) when missing, syncing the parent so the new entry is durable.
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    create_private_dir(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(|source| StoreError::Io {
            doing: "sync directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Creates `dir` and missing parents, readable only by this user: code and logs are private.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files here; the rename itself is what makes it visible.
    Ok(())
}

/// Removes temp files left by a crash mid-write. Best effort: a leftover only wastes space.
pub(crate) fn remove_stale_temp_files(data_dir: &Path) {
    for root in [data_dir.join(BLOBS_DIR), data_dir.join(ARTIFACTS_DIR)] {
        let Ok(subdirs) = fs::read_dir(&root) else {
            continue;
        };
        for sub in subdirs.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.flatten() {
                if !file.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    continue;
                }
                let path = file.path();
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp file");
                } else {
                    tracing::debug!(path = %path.display(), "removed stale temp file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert!(is_valid_digest(&"a".repeat(64)));
        for bad in [
            "",
            "..",
            &"A".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("../{}", "a".repeat(61)),
        ] {
            assert!(!is_valid_digest(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn artifact_keys() {
        assert!(is_valid_artifact_key("wasmtime-48.0.8-x86_64_abc"));
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            &"k".repeat(129),
        ] {
            assert!(!is_valid_artifact_key(bad), "{bad:?} accepted");
        }
    }
}
