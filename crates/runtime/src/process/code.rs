//! Code archives of process functions: checks a zip before anything of it touches the disk
//! (paths that climb out, links that point out, zip bombs, unknown compression, a missing
//! `bootstrap`) and unpacks a checked one atomically, with modes the sandbox uid can read.

use crate::check::code_error;
use nubo_core::ErrorCode;
use nubo_core::engine::CodeError;
use nubo_core::limits::{
    COMPRESSION_RATIO_FLOOR_BYTES, MAX_ARCHIVE_ENTRIES, MAX_COMPRESSION_RATIO,
    MAX_PROCESS_CODE_BYTES,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zip::{CompressionMethod, ZipArchive};

/// File type bits of a unix mode, as zip tools store them in the external attributes.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Longest link target read from an archive (Linux's `PATH_MAX`); a link's target is its
/// entry's content, so this also bounds what is read before the checks are done.
const MAX_LINK_TARGET_BYTES: u64 = 4096;

/// Links followed while resolving one link target, as Linux's own limit before `ELOOP`.
const MAX_LINK_HOPS: usize = 40;

/// What an entry becomes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { executable: bool },
    Link { target: String },
}

/// An entry that passed every check, with its path normalized (components joined by `/`,
/// no `.`, no empty components).
#[derive(Debug)]
struct Entry {
    index: usize,
    path: String,
    kind: Kind,
    /// Unpacked size as the archive declares it; unpacking refuses to write more.
    size: u64,
}

/// Checks a function's code archive (a zip). `needs_bootstrap`: no `command` was given, so an
/// executable `bootstrap` must be at the root.
pub(crate) fn check_zip(
    function: &str,
    zip: &[u8],
    needs_bootstrap: bool,
) -> Result<(), CodeError> {
    let invalid = |message: String| code_error(function, ErrorCode::InvalidComponent, message);
    let entries = plan(zip).map_err(invalid)?;
    if needs_bootstrap {
        let bootstrap = entries
            .iter()
            .find(|e| e.path == "bootstrap")
            .map(|e| &e.kind);
        if bootstrap != Some(&Kind::File { executable: true }) {
            let found = match bootstrap {
                None => "",
                Some(Kind::File { .. }) => " (its `bootstrap` is not executable)",
                Some(Kind::Dir) => " (its `bootstrap` is a folder)",
                Some(Kind::Link { .. }) => " (its `bootstrap` is a symbolic link)",
            };
            return Err(invalid(format!(
                "has no executable `bootstrap` at the root of its source{found}: add one \
                 (chmod +x) or set `command`"
            )));
        }
    }
    Ok(())
}

/// Unpacks a checked archive into `dest` (which must not exist yet): into a temporary sibling
/// directory first, then renamed into place, so a crash never leaves a half-unpacked tree.
/// If `dest` already exists it is left as is (same digest ⇒ same content). Blocking.
pub(crate) fn unpack(zip: &[u8], dest: &Path) -> io::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    // The checks run again: they are cheap next to unpacking, and this way nothing that
    // reaches the disk depends on the caller having called `check_zip` first.
    let entries =
        plan(zip).map_err(|message| io::Error::new(io::ErrorKind::InvalidData, message))?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no folder", dest.display()),
        )
    })?;
    std::fs::create_dir_all(parent)?;
    let temp = parent.join(format!(
        ".{}.unpacking-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        unique()
    ));
    let result = unpack_into(zip, &entries, &temp).and_then(|()| {
        match std::fs::rename(&temp, dest) {
            Ok(()) => Ok(()),
            // Another unpack of the same digest won the race; its tree is the same.
            Err(_) if dest.is_dir() => {
                std::fs::remove_dir_all(&temp)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// A number that differs between calls in one process, so concurrent unpacks of one digest
/// use different temporary folders.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn unpack_into(zip: &[u8], entries: &[Entry], root: &Path) -> io::Result<()> {
    let mut archive = ZipArchive::new(Cursor::new(zip)).map_err(io::Error::other)?;
    let mut dirs = DirMaker::default();
    dirs.make(root)?;
    for entry in entries {
        let path = root.join(&entry.path);
        // `plan` refused entries below a link, so every parent made here is a real folder
        // and no write goes through a link.
        if let Some(parent) = path.parent() {
            dirs.make_all(root, parent)?;
        }
        match &entry.kind {
            Kind::Dir => dirs.make_all(root, &path)?,
            Kind::Link { target } => std::os::unix::fs::symlink(target, &path)?,
            Kind::File { executable } => {
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)?;
                let source = archive.by_index(entry.index).map_err(io::Error::other)?;
                // Declared sizes are untrusted: never write more than was checked.
                let written = io::copy(&mut source.take(entry.size + 1), &mut file)?;
                if written != entry.size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "archive entry {:?} holds {written} bytes, not the {} its header declares",
                            entry.path, entry.size
                        ),
                    ));
                }
                file.flush()?;
                // The process umask may have cleared bits of `mode`.
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Makes folders with mode 0755 whatever the process umask, once each.
#[derive(Default)]
struct DirMaker {
    made: HashSet<PathBuf>,
}

impl DirMaker {
    fn make(&mut self, dir: &Path) -> io::Result<()> {
        if self.made.contains(dir) {
            return Ok(());
        }
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        self.made.insert(dir.to_owned());
        Ok(())
    }

    /// Makes `dir` and its missing parents up to `root`.
    fn make_all(&mut self, root: &Path, dir: &Path) -> io::Result<()> {
        let Ok(rel) = dir.strip_prefix(root) else {
            return Err(io::Error::other(format!(
                "{} is outside {}",
                dir.display(),
                root.display()
            )));
        };
        let mut at = root.to_owned();
        for part in rel.components() {
            at.push(part);
            self.make(&at)?;
        }
        Ok(())
    }
}

/// Reads the central directory and checks every rule, without unpacking file contents
/// (only link targets, which are bounded). Errors are messages that follow
/// `function "name": `.
fn plan(zip: &[u8]) -> Result<Vec<Entry>, String> {
    let mut archive = ZipArchive::new(Cursor::new(zip)).map_err(|e| {
        format!(
            "is not a zip archive ({e}); point `source` at the folder holding the code, or at a \
             .zip made with `zip -r`"
        )
    })?;
    if archive.len() > MAX_ARCHIVE_ENTRIES {
        return Err(format!(
            "its code archive has {} entries, more than the limit of {MAX_ARCHIVE_ENTRIES}: \
             leave development files and caches out of the source",
            archive.len()
        ));
    }
    let mut entries = Vec::with_capacity(archive.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total: u64 = 0;
    let mut total_compressed: u64 = 0;
    for index in 0..archive.len() {
        let file = archive.by_index_raw(index).map_err(|e| {
            format!("its code archive is damaged (entry {index}: {e}); re-create it")
        })?;
        let raw = file.name_raw();
        let shown = String::from_utf8_lossy(raw).into_owned();
        let path = normalize(raw)?;
        let compression = file.compression();
        if !matches!(
            compression,
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(format!(
                "its code archive entry {shown:?} uses the compression method {compression}; Nubo \
                 unpacks stored and deflate entries only: re-create the archive with `zip -r`"
            ));
        }
        if file.encrypted() {
            return Err(format!(
                "its code archive entry {shown:?} is encrypted: re-create the archive without a \
                 password"
            ));
        }
        let size = file.size();
        let compressed = file.compressed_size();
        if size > COMPRESSION_RATIO_FLOOR_BYTES
            && size > compressed.max(1).saturating_mul(MAX_COMPRESSION_RATIO)
        {
            return Err(format!(
                "its code archive entry {shown:?} unpacks to {size} bytes from {compressed}, a \
                 ratio over the limit of {MAX_COMPRESSION_RATIO}:1 (a zip bomb?): store such \
                 data uncompressed or generate it at start-up"
            ));
        }
        total = total.saturating_add(size);
        total_compressed = total_compressed.saturating_add(compressed);
        if total > MAX_PROCESS_CODE_BYTES {
            return Err(format!(
                "its code archive unpacks to more than the limit of {MAX_PROCESS_CODE_BYTES} bytes \
                 (at entry {shown:?}): leave development files and caches out of the source"
            ));
        }
        let mode = file.unix_mode();
        let is_link = match mode.map(|m| m & S_IFMT) {
            Some(S_IFLNK) => true,
            Some(S_IFDIR | S_IFREG | 0) | None => false,
            Some(other) => {
                return Err(format!(
                    "its code archive entry {shown:?} is a special file (type {other:o}): only \
                     files, folders and symbolic links can be deployed"
                ));
            }
        };
        let is_dir = !is_link && (mode.is_some_and(|m| m & S_IFMT == S_IFDIR) || file.is_dir());
        // Only the x bit matters: setuid, setgid, sticky and write bits never reach the disk.
        let executable = mode.is_some_and(|m| m & 0o111 != 0);
        drop(file);
        let Some(path) = path else {
            // `./` or `/`-only names: the root folder itself.
            if is_dir {
                continue;
            }
            return Err(format!(
                "its code archive has an entry with an empty name ({shown:?}): re-create it"
            ));
        };
        let kind = if is_link {
            Kind::Link {
                target: link_target(&mut archive, index, &shown)?,
            }
        } else if is_dir {
            Kind::Dir
        } else {
            Kind::File { executable }
        };
        if let Some(&earlier) = seen.get(&path) {
            let both_dirs = entries
                .get(earlier)
                .is_some_and(|e: &Entry| e.kind == Kind::Dir)
                && kind == Kind::Dir;
            if both_dirs {
                continue;
            }
            return Err(format!(
                "its code archive holds {path:?} twice: re-create it so each path appears once"
            ));
        }
        seen.insert(path.clone(), entries.len());
        entries.push(Entry {
            index,
            path,
            kind,
            size,
        });
    }
    if total > COMPRESSION_RATIO_FLOOR_BYTES
        && total
            > total_compressed
                .max(1)
                .saturating_mul(MAX_COMPRESSION_RATIO)
    {
        return Err(format!(
            "its code archive unpacks to {total} bytes from {total_compressed}, a ratio over the \
             limit of {MAX_COMPRESSION_RATIO}:1 (a zip bomb?): store such data uncompressed or \
             generate it at start-up"
        ));
    }
    check_tree(&entries)?;
    Ok(entries)
}

/// Normalizes an entry name; `None` for the root itself. Refuses names that could write
/// outside the destination (zip-slip) or mean different things on different systems.
fn normalize(raw: &[u8]) -> Result<Option<String>, String> {
    let shown = String::from_utf8_lossy(raw);
    let refuse = |why: &str| {
        Err(format!(
            "its code archive entry {shown:?} {why}: re-create the archive from inside the \
             code folder (`cd folder && zip -r ../code.zip .`)"
        ))
    };
    if raw.contains(&0) {
        return refuse("has a NUL byte in its name");
    }
    if raw.contains(&b'\\') {
        return refuse("has a backslash in its name (a Windows path)");
    }
    let Ok(name) = std::str::from_utf8(raw) else {
        return refuse("has a name that is not UTF-8");
    };
    if name.starts_with('/') {
        return refuse("has an absolute path");
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' && name.as_bytes()[0].is_ascii_alphabetic() {
        return refuse("starts with a drive letter");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return refuse("climbs out of the code folder with `..`"),
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Reads a link entry's target (its content), bounded.
fn link_target(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    index: usize,
    shown: &str,
) -> Result<String, String> {
    let damaged = |e: &dyn std::fmt::Display| {
        format!("its code archive entry {shown:?} cannot be read ({e}): re-create the archive")
    };
    let file = archive.by_index(index).map_err(|e| damaged(&e))?;
    let mut target = Vec::new();
    file.take(MAX_LINK_TARGET_BYTES + 1)
        .read_to_end(&mut target)
        .map_err(|e| damaged(&e))?;
    if target.len() as u64 > MAX_LINK_TARGET_BYTES || target.is_empty() || target.contains(&0) {
        return Err(format!(
            "its code archive entry {shown:?} is a symbolic link with an empty, over-long or \
             NUL-holding target: replace it with the file it points to"
        ));
    }
    String::from_utf8(target).map_err(|_| {
        format!(
            "its code archive entry {shown:?} is a symbolic link whose target is not UTF-8: \
             replace it with the file it points to"
        )
    })
}

/// Checks the entries as one tree: nothing lies below a file or a link (so unpacking never
/// writes through a link), and every link resolves inside the tree.
fn check_tree(entries: &[Entry]) -> Result<(), String> {
    let kinds: HashMap<&str, &Kind> = entries.iter().map(|e| (e.path.as_str(), &e.kind)).collect();
    for entry in entries {
        let mut end = 0;
        while let Some(slash) = entry.path[end..].find('/') {
            let prefix = &entry.path[..end + slash];
            match kinds.get(prefix) {
                Some(Kind::Link { .. }) => {
                    return Err(format!(
                        "its code archive entry {:?} lies below the symbolic link {prefix:?}: \
                         re-create the archive so links are stored as links, not followed",
                        entry.path
                    ));
                }
                Some(Kind::File { .. }) => {
                    return Err(format!(
                        "its code archive has {prefix:?} both as a file and as the folder of \
                         {:?}: re-create it",
                        entry.path
                    ));
                }
                _ => {}
            }
            end += slash + 1;
        }
    }
    let links: HashMap<&str, &str> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Link { target } => Some((e.path.as_str(), target.as_str())),
            _ => None,
        })
        .collect();
    for (&path, &target) in &links {
        let outside = |why: &str| {
            format!(
                "its code archive entry {path:?} is a symbolic link to {target:?}, which {why}: \
                 links may only point inside the code folder; copy the file in instead"
            )
        };
        if target.starts_with('/') {
            return Err(outside("is an absolute path"));
        }
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        match resolve(&links, dir, target) {
            Ok(()) => {}
            Err(Resolve::Escapes) => return Err(outside("leaves the code folder")),
            Err(Resolve::Absolute(via)) => {
                return Err(outside(&format!(
                    "goes through {via:?}, a link to an absolute path"
                )));
            }
            Err(Resolve::Loop) => {
                return Err(format!(
                    "its code archive entry {path:?} is a symbolic link that never resolves (a \
                     loop of links): remove it"
                ));
            }
        }
    }
    Ok(())
}

/// Why a link target does not resolve inside the tree.
enum Resolve {
    Escapes,
    Absolute(String),
    Loop,
}

/// Resolves `target` from the folder `dir` the way the kernel will on the unpacked tree: each
/// component that is itself a link of the archive is replaced by that link's target, so a
/// `..` after a link climbs from where the link points, not from where it sits. (Resolving
/// the text alone would let `a -> .` and `b -> a/..` reach the parent of the tree.)
fn resolve(links: &HashMap<&str, &str>, dir: &str, target: &str) -> Result<(), Resolve> {
    let mut at: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let mut pending: VecDeque<&str> = target.split('/').collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(Resolve::Escapes);
                }
            }
            part => {
                at.push(part);
                let here = at.join("/");
                if let Some(&next) = links.get(here.as_str()) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Resolve::Loop);
                    }
                    if next.starts_with('/') {
                        return Err(Resolve::Absolute(here));
                    }
                    at.pop();
                    for part in next.split('/').rev() {
                        pending.push_front(part);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    /// One entry of a test archive.
    enum Item<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }
    use Item::{Dir, File, Link};

    fn zip_of(items: &[Item<'_>], method: CompressionMethod) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for item in items {
            let options = SimpleFileOptions::default().compression_method(method);
            match *item {
                File(name, mode, data) => {
                    writer
                        .start_file(name, options.unix_permissions(mode))
                        .unwrap();
                    writer.write_all(data).unwrap();
                }
                Dir(name) => writer.add_directory(name, options).unwrap(),
                Link(name, target) => writer.add_symlink(name, target, options).unwrap(),
            }
        }
        writer.finish().unwrap().into_inner()
    }

    fn zip(items: &[Item<'_>]) -> Vec<u8> {
        zip_of(items, CompressionMethod::Deflated)
    }

    fn refused(zip: &[u8], needs_bootstrap: bool) -> String {
        let Err(error) = check_zip("api", zip, needs_bootstrap) else {
            let names: Vec<_> = ZipArchive::new(Cursor::new(zip))
                .unwrap()
                .file_names()
                .map(|n| n.unwrap().into_owned())
                .collect();
            panic!("the archive of {names:?} is refused");
        };
        assert_eq!(error.code, ErrorCode::InvalidComponent);
        assert_eq!(error.function, "api");
        error.message
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_bootstrap_archive_unpacks_with_normalized_modes_and_links_kept() {
        let archive = zip(&[
            File("bootstrap", 0o700, b"#!/bin/sh\n"),
            Dir("lib/"),
            File("lib/data.txt", 0o600, b"data"),
            File("lib/tool", 0o4750, b"tool"),
            File("deep/er/file", 0o644, b"implicit folders"),
            Link("lib/current", "data.txt"),
            Link("up", "lib/../deep"),
        ]);
        check_zip("api", &archive, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        unpack(&archive, &dest).unwrap();
        assert_eq!(
            std::fs::read(dest.join("bootstrap")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(mode_of(&dest.join("bootstrap")), 0o755);
        assert_eq!(mode_of(&dest.join("lib/data.txt")), 0o644);
        // setuid and group/other bits never survive; any x bit means 0755.
        assert_eq!(mode_of(&dest.join("lib/tool")), 0o755);
        assert_eq!(mode_of(&dest.join("lib")), 0o755);
        assert_eq!(mode_of(&dest.join("deep/er")), 0o755);
        assert_eq!(mode_of(&dest), 0o755);
        assert_eq!(
            std::fs::read_link(dest.join("lib/current")).unwrap(),
            Path::new("data.txt")
        );
        assert_eq!(std::fs::read(dest.join("lib/current")).unwrap(), b"data");
        assert_eq!(
            std::fs::read(dest.join("up/er/file")).unwrap(),
            b"implicit folders"
        );
        // Nothing is left beside the destination.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("code")]);
    }

    #[test]
    fn an_existing_destination_is_left_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("marker"), b"first").unwrap();
        unpack(&zip(&[File("bootstrap", 0o755, b"new")]), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("marker")).unwrap(), b"first");
        assert!(!dest.join("bootstrap").exists());
    }

    #[test]
    fn a_failed_unpack_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        let error = unpack(&zip(&[File("../evil", 0o644, b"x")]), &dest).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("climbs out"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn zip_slip_names_are_refused() {
        for (name, why) in [
            ("../evil", "climbs out of the code folder"),
            ("a/../../evil", "climbs out of the code folder"),
            ("/etc/passwd", "absolute path"),
            ("a\\..\\evil", "backslash"),
            ("C:/evil", "drive letter"),
        ] {
            let message = refused(&zip(&[File(name, 0o644, b"x")]), false);
            assert!(message.contains(why), "{name}: {message}");
            assert!(
                message.contains("zip -r"),
                "{name}: the fix is named: {message}"
            );
        }
    }

    #[test]
    fn a_nul_in_a_name_is_refused() {
        let mut archive = zip(&[File("abc", 0o644, b"x")]);
        // Rewrite the name in both the local and the central header.
        let mut replaced = 0;
        for i in 0..archive.len() - 2 {
            if &archive[i..i + 3] == b"abc" {
                archive[i + 1] = 0;
                replaced += 1;
            }
        }
        assert_eq!(replaced, 2);
        let message = refused(&archive, false);
        assert!(message.contains("NUL"), "{message}");
    }

    #[test]
    fn links_that_leave_the_tree_are_refused() {
        for (items, why) in [
            (vec![Link("l", "/etc/passwd")], "absolute path"),
            (vec![Link("l", "../outside")], "leaves the code folder"),
            (
                vec![Dir("a/"), Link("a/l", "../../outside")],
                "leaves the code folder",
            ),
            // Textually `d/l/..` is `d`, but `d/l` points at the root, so `..` climbs from
            // there and leaves the tree.
            (
                vec![Dir("d/"), Link("d/l", ".."), Link("b", "d/l/..")],
                "leaves the code folder",
            ),
            (
                vec![Link("a", "."), Link("b", "a/..")],
                "leaves the code folder",
            ),
            (
                vec![Link("abs", "/"), Link("b", "abs/etc")],
                "absolute path",
            ),
        ] {
            let archive = zip(&items);
            let message = refused(&archive, false);
            assert!(message.contains(why), "{message}");
            assert!(
                message.contains("only point inside the code folder"),
                "{message}"
            );
        }
    }

    #[test]
    fn link_loops_and_entries_below_links_are_refused() {
        let message = refused(&zip(&[Link("a", "b"), Link("b", "a")]), false);
        assert!(message.contains("loop"), "{message}");
        let message = refused(
            &zip(&[Dir("real/"), Link("l", "real"), File("l/f", 0o644, b"x")]),
            false,
        );
        assert!(
            message.contains("below the symbolic link \"l\""),
            "{message}"
        );
        let message = refused(
            &zip(&[File("f", 0o644, b"x"), File("f/g", 0o644, b"y")]),
            false,
        );
        assert!(
            message.contains("both as a file and as the folder"),
            "{message}"
        );
        let message = refused(&zip(&[File("f", 0o644, b"x"), Link("./f", "g")]), false);
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn links_inside_the_tree_are_kept() {
        let archive = zip(&[
            Dir("node_modules/.bin/"),
            File("node_modules/tool/cli.js", 0o755, b"cli"),
            Link("node_modules/.bin/tool", "../tool/cli.js"),
            Link("self", "."),
            Link("dangling", "not-there"),
        ]);
        check_zip("api", &archive, false).unwrap();
    }

    #[test]
    fn a_missing_or_unexecutable_bootstrap_is_refused_only_when_needed() {
        let fix = "has no executable `bootstrap` at the root of its source: add one (chmod +x) or set `command`";
        let without = zip(&[File("app.py", 0o644, b"def handler(e, c): pass")]);
        assert_eq!(refused(&without, true), fix);
        check_zip("api", &without, false).unwrap();
        let nested = zip(&[File("bin/bootstrap", 0o755, b"x")]);
        assert_eq!(refused(&nested, true), fix);
        let plain = zip(&[File("bootstrap", 0o644, b"x")]);
        assert!(refused(&plain, true).contains("not executable"));
        let linked = zip(&[File("run", 0o755, b"x"), Link("bootstrap", "run")]);
        assert!(refused(&linked, true).contains("symbolic link"));
    }

    #[test]
    fn a_body_that_is_not_a_zip_is_refused() {
        let message = refused(b"#!/bin/sh\necho hi\n", true);
        assert!(message.starts_with("is not a zip archive"), "{message}");
        assert!(message.contains("`source`"), "{message}");
    }

    #[test]
    fn stored_entries_are_accepted_and_other_methods_refused() {
        let stored = zip_of(
            &[File("bootstrap", 0o755, b"#!/bin/sh\n")],
            CompressionMethod::Stored,
        );
        check_zip("api", &stored, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(&stored, &dir.path().join("c")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("c/bootstrap")).unwrap(),
            b"#!/bin/sh\n"
        );

        // The writer has no other method compiled in, so change the method field (offset 10
        // in the local header, 10 in the central header) of a stored entry to bzip2 (12).
        let mut archive = stored;
        for signature in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
            let at = archive.windows(4).position(|w| w == signature).unwrap();
            let field = if signature == b"PK\x03\x04" {
                at + 8
            } else {
                at + 10
            };
            archive[field..field + 2].copy_from_slice(&12u16.to_le_bytes());
        }
        let message = refused(&archive, true);
        assert!(message.contains("compression method"), "{message}");
        assert!(message.contains("stored and deflate"), "{message}");
    }

    #[test]
    fn a_zip_bomb_entry_is_refused_by_ratio() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let message = refused(&zip(&[File("zeros", 0o644, &zeros)]), false);
        assert!(message.contains("200:1"), "{message}");
        assert!(message.contains("\"zeros\""), "{message}");
        // Small files compress as well as they like.
        check_zip(
            "api",
            &zip(&[File("pad", 0o644, &zeros[..512 * 1024])]),
            false,
        )
        .unwrap();
    }

    #[test]
    fn many_small_bombs_are_refused_by_the_whole_archive_ratio() {
        // Each entry is under the floor, together they are over it.
        let zeros = vec![0u8; 1024 * 1024];
        let names: Vec<String> = (0..4).map(|i| format!("part{i}")).collect();
        let items: Vec<Item<'_>> = names.iter().map(|n| File(n, 0o644, &zeros)).collect();
        let message = refused(&zip(&items), false);
        assert!(message.contains("unpacks to 4194304 bytes"), "{message}");
    }

    #[test]
    fn declared_sizes_over_the_total_limit_are_refused() {
        // A stored entry whose headers claim more than the limit: the check reads headers
        // only, so the bytes need not exist. Patch the sizes of a small stored entry.
        let mut archive = zip_of(&[File("big", 0o644, b"x")], CompressionMethod::Stored);
        let huge = u32::try_from(MAX_PROCESS_CODE_BYTES + 1).unwrap();
        for (signature, offset) in [(&b"PK\x03\x04"[..], 18), (&b"PK\x01\x02"[..], 20)] {
            let at = archive.windows(4).position(|w| w == signature).unwrap();
            // Compressed and uncompressed size, so the ratio check does not fire first.
            archive[at + offset..at + offset + 4].copy_from_slice(&huge.to_le_bytes());
            archive[at + offset + 4..at + offset + 8].copy_from_slice(&huge.to_le_bytes());
        }
        let message = refused(&archive, false);
        assert!(message.contains("more than the limit of"), "{message}");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let names: Vec<String> = (0..=MAX_ARCHIVE_ENTRIES)
            .map(|i| format!("d{i}/"))
            .collect();
        let items: Vec<Item<'_>> = names.iter().map(|n| Dir(n)).collect();
        let message = refused(&zip_of(&items, CompressionMethod::Stored), false);
        assert!(
            message.contains(&format!("more than the limit of {MAX_ARCHIVE_ENTRIES}")),
            "{message}"
        );
    }
}
