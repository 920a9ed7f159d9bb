//! Packs a process function's source folder into the zip archive `nubo deploy` uploads.
//!
//! The archive is deterministic (entries sorted, one fixed timestamp), so deploying an
//! unchanged folder uploads the same bytes and the server reuses what it already checked and
//! unpacked for that digest. Unix modes are kept (an executable `bootstrap` stays executable)
//! and symbolic links are stored as links; the server decides whether they are acceptable.

use anyhow::{Context, bail};
use nubo_core::limits;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// The code of a process function at `path`: a `.zip` file as it is, or a folder packed.
pub(crate) fn process_code(function: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "function {function:?}: cannot read its source {}; set `source` to the folder or .zip holding its code",
            path.display()
        )
    })?;
    if meta.is_dir() {
        return pack_dir(function, path);
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("function {function:?}: cannot read {}", path.display()))?;
    if !bytes.starts_with(b"PK") {
        bail!(
            "function {function:?}: its source {} is neither a folder nor a zip archive; point `source` at the folder holding `bootstrap` (or your code), or at a .zip of it",
            path.display()
        );
    }
    Ok(bytes)
}

/// Packs the folder `dir` (its contents at the archive's root).
fn pack_dir(function: &str, dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut entries = Vec::new();
    collect(dir, Path::new(""), &mut entries)?;
    entries.sort();
    let base = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::DEFAULT);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let mut total: u64 = 0;
    for rel in entries {
        let full = dir.join(&rel);
        let name = rel
            .to_str()
            .with_context(|| format!("{} has a name that is not UTF-8", full.display()))?
            .to_string();
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("cannot read {}", full.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        let opts = base.unix_permissions(mode);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full)
                .with_context(|| format!("cannot read the link {}", full.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("the link {} is not UTF-8", full.display()))?
                .to_string();
            zip.add_symlink(name, target, opts)?;
        } else if meta.is_dir() {
            zip.add_directory(format!("{name}/"), opts)?;
        } else if meta.is_file() {
            total += meta.len();
            if total > limits::MAX_DEPLOY_BYTES {
                bail!(
                    "function {function:?}: its source folder {} holds more than {} bytes, the most one deploy may carry; leave out what the function does not need",
                    dir.display(),
                    limits::MAX_DEPLOY_BYTES
                );
            }
            zip.start_file(name, opts.large_file(meta.len() >= u64::from(u32::MAX)))?;
            let data =
                std::fs::read(&full).with_context(|| format!("cannot read {}", full.display()))?;
            zip.write_all(&data)?;
        }
        // Sockets, fifos and devices have no place in code: skipped.
    }
    Ok(zip.finish()?.into_inner())
}

/// Every path under `dir` (relative to the root), without following links.
fn collect(root: &Path, rel: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    let here = root.join(rel);
    for entry in
        std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?
    {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        out.push(child.clone());
        if kind.is_dir() {
            collect(root, &child, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn packs_modes_links_and_nested_files_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("bootstrap"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(d.join("bootstrap"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir(d.join("lib")).unwrap();
        std::fs::write(d.join("lib/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("lib/a.txt", d.join("link")).unwrap();

        let one = process_code("f", d).unwrap();
        let two = process_code("f", d).unwrap();
        assert_eq!(one, two, "packing twice gives the same bytes");

        let mut zip = zip::ZipArchive::new(Cursor::new(one)).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(names, ["bootstrap", "lib/", "lib/a.txt", "link"]);
        let boot = zip.by_name("bootstrap").unwrap();
        assert_eq!(boot.unix_mode().unwrap() & 0o777, 0o755);
        drop(boot);
        let mut a = String::new();
        zip.by_name("lib/a.txt")
            .unwrap()
            .read_to_string(&mut a)
            .unwrap();
        assert_eq!(a, "a");
        assert!(zip.by_name("link").unwrap().is_symlink());
    }

    #[test]
    fn a_file_that_is_not_a_zip_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.py");
        std::fs::write(&f, "print(1)").unwrap();
        let e = process_code("api", &f).unwrap_err().to_string();
        assert!(e.contains("neither a folder nor a zip"), "{e}");
    }
}
