//! Object storage as its callers see it: buckets, puts and reads (whole and by range),
//! content shared by equal objects and removed with the last of them, S3-style listings,
//! multipart uploads, limits, and what survives reopening the store.

use md5::{Digest as _, Md5};
use nubo_core::ErrorCode;
use nubo_core::limits::MIN_PART_BYTES;
use nubo_store::Store;
use nubo_store::objects::{ObjectError, Objects, PutOptions};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

fn open(dir: &Path) -> (Store, Objects) {
    let store = Store::open(dir).unwrap();
    let objects = store.objects();
    (store, objects)
}

fn put(o: &Objects, bucket: &str, key: &str, body: &[u8]) -> nubo_store::objects::ObjectMeta {
    o.put(bucket, key, &mut &body[..], PutOptions::default())
        .unwrap()
}

fn read_all(o: &Objects, bucket: &str, key: &str, range: Option<(u64, Option<u64>)>) -> Vec<u8> {
    let (_, mut reader) = o.open(bucket, key, range).unwrap().expect("object exists");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, reader.len());
    out
}

/// Content files under the objects directory.
fn content_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("objects/sha256")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn buckets_are_created_listed_and_deleted_only_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    assert!(o.create_bucket("photos").unwrap());
    assert!(
        !o.create_bucket("photos").unwrap(),
        "second create is a no-op"
    );
    let bad = o.create_bucket("Not_Valid").unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidBucketName);

    put(&o, "photos", "a.jpg", b"abc");
    put(&o, "photos", "b.jpg", b"defg");
    let info = o.bucket("photos").unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (2, 7));
    assert_eq!(
        o.buckets()
            .unwrap()
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        ["photos"]
    );

    let e = o.delete_bucket("photos").unwrap_err();
    assert!(matches!(e, ObjectError::BucketNotEmpty(_)), "{e}");
    assert_eq!(e.code(), ErrorCode::BucketNotEmpty);
    assert!(o.delete("photos", "a.jpg").unwrap());
    assert!(!o.delete("photos", "a.jpg").unwrap(), "already gone");
    assert!(o.delete("photos", "b.jpg").unwrap());
    o.delete_bucket("photos").unwrap();
    assert!(o.bucket("photos").unwrap().is_none());
    let e = o.delete_bucket("photos").unwrap_err();
    assert_eq!(e.code(), ErrorCode::BucketNotFound);
}

#[test]
fn operations_on_a_missing_bucket_fail_with_no_such_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    let codes = [
        o.put("nope", "k", &mut &b"x"[..], PutOptions::default())
            .unwrap_err()
            .code(),
        o.head("nope", "k").unwrap_err().code(),
        o.open("nope", "k", None).unwrap_err().code(),
        o.delete("nope", "k").unwrap_err().code(),
        o.list("nope", None, None, None, 10).unwrap_err().code(),
        o.create_multipart("nope", "k", PutOptions::default())
            .unwrap_err()
            .code(),
        o.begin_put()
            .unwrap()
            .commit("nope", "k", PutOptions::default())
            .unwrap_err()
            .code(),
    ];
    assert!(
        codes.iter().all(|c| *c == ErrorCode::BucketNotFound),
        "{codes:?}"
    );
}

#[test]
fn puts_hash_store_and_read_back_with_metadata_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("docs").unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut meta = BTreeMap::new();
    meta.insert("author".to_string(), "Ada".to_string());
    let stored = o
        .put(
            "docs",
            "dir/report.bin",
            &mut &body[..],
            PutOptions {
                content_type: Some("application/x-report".into()),
                user_metadata: meta.clone(),
                hop: 0,
            },
        )
        .unwrap();
    assert_eq!(stored.size, body.len() as u64);
    assert_eq!(stored.etag, hex::encode(Md5::digest(&body)));
    assert_eq!(stored.digest, hex::encode(Sha256::digest(&body)));

    let head = o.head("docs", "dir/report.bin").unwrap().unwrap();
    assert_eq!(head, stored);
    assert_eq!(head.content_type.as_deref(), Some("application/x-report"));
    assert_eq!(head.user_metadata, meta);
    assert!(o.head("docs", "missing").unwrap().is_none());
    assert!(o.open("docs", "missing", None).unwrap().is_none());

    assert_eq!(read_all(&o, "docs", "dir/report.bin", None), body);
    assert_eq!(
        read_all(&o, "docs", "dir/report.bin", Some((10, Some(19)))),
        body[10..20]
    );
    assert_eq!(
        read_all(&o, "docs", "dir/report.bin", Some((99_990, None))),
        body[99_990..]
    );
    // A last byte past the end means the end.
    assert_eq!(
        read_all(&o, "docs", "dir/report.bin", Some((99_999, Some(500_000)))),
        body[99_999..]
    );
    let e = o
        .open("docs", "dir/report.bin", Some((100_000, None)))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::RangeNotSatisfiable);

    // Replacing the object changes what is read and the bucket's totals.
    put(&o, "docs", "dir/report.bin", b"short");
    assert_eq!(read_all(&o, "docs", "dir/report.bin", None), b"short");
    let info = o.bucket("docs").unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (1, 5));
}

#[test]
fn equal_content_is_stored_once_and_removed_with_its_last_object() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("a-bucket").unwrap();
    o.create_bucket("b-bucket").unwrap();
    let one = put(&o, "a-bucket", "x", b"same bytes");
    put(&o, "b-bucket", "y", b"same bytes");
    assert_eq!(content_files(dir.path()), [one.digest.as_str()]);

    assert!(o.delete("a-bucket", "x").unwrap());
    assert_eq!(
        content_files(dir.path()),
        [one.digest.as_str()],
        "still used by y"
    );
    assert_eq!(read_all(&o, "b-bucket", "y", None), b"same bytes");

    // Replacing y drops the last reference to the old content.
    let two = put(&o, "b-bucket", "y", b"other bytes");
    assert_eq!(content_files(dir.path()), [two.digest.as_str()]);
    assert!(o.delete("b-bucket", "y").unwrap());
    assert!(content_files(dir.path()).is_empty());
}

#[test]
fn a_reader_keeps_its_bytes_when_the_object_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("keep").unwrap();
    put(&o, "keep", "k", b"still here");
    let (_, mut reader) = o.open("keep", "k", None).unwrap().unwrap();
    assert!(o.delete("keep", "k").unwrap());
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"still here");
}

#[test]
fn an_uncommitted_put_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("tmp-test").unwrap();
    let mut pending = o.begin_put().unwrap();
    pending.write(b"half an upload").unwrap();
    assert_eq!(pending.len(), 14);
    drop(pending);
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(o.head("tmp-test", "k").unwrap().is_none());
    assert!(content_files(dir.path()).is_empty());
}

#[test]
fn keys_and_metadata_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("checks").unwrap();
    for key in [String::new(), "a\0b".into(), "k".repeat(1025)] {
        let e = o
            .put("checks", &key, &mut &b"x"[..], PutOptions::default())
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidObjectKey, "{key:?}");
    }
    put(&o, "checks", &"k".repeat(1024), b"longest key");

    let mut too_much = BTreeMap::new();
    too_much.insert("big".to_string(), "v".repeat(2048));
    let mut bad_name = BTreeMap::new();
    bad_name.insert("Has Space".to_string(), "v".into());
    let mut bad_value = BTreeMap::new();
    bad_value.insert("ok".to_string(), "line\r\nbreak".into());
    for user_metadata in [too_much, bad_name, bad_value] {
        let e = o
            .put(
                "checks",
                "k",
                &mut &b"x"[..],
                PutOptions {
                    content_type: None,
                    user_metadata,
                    hop: 0,
                },
            )
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidObjectKey, "{e}");
    }
}

#[test]
fn listings_follow_s3_with_prefixes_delimiters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("list").unwrap();
    let keys = [
        "a.txt",
        "photos/2024/jan.jpg",
        "photos/2024/feb.jpg",
        "photos/2025/mar.jpg",
        "photos/cover.jpg",
        "videos/x.mp4",
        "z.txt",
    ];
    for k in keys {
        put(&o, "list", k, k.as_bytes());
    }
    let names = |p: &nubo_store::objects::ObjectPage| {
        p.objects.iter().map(|m| m.key.clone()).collect::<Vec<_>>()
    };

    let all = o.list("list", None, None, None, 100).unwrap();
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(names(&all), sorted);
    assert!(all.common_prefixes.is_empty() && all.next.is_none());

    let top = o.list("list", None, Some("/"), None, 100).unwrap();
    assert_eq!(names(&top), ["a.txt", "z.txt"]);
    assert_eq!(top.common_prefixes, ["photos/", "videos/"]);

    let photos = o
        .list("list", Some("photos/"), Some("/"), None, 100)
        .unwrap();
    assert_eq!(names(&photos), ["photos/cover.jpg"]);
    assert_eq!(photos.common_prefixes, ["photos/2024/", "photos/2025/"]);

    // Pages of two, each starting after the last entry of the one before.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = o
            .list("list", None, Some("/"), after.as_deref(), 2)
            .unwrap();
        assert!(page.objects.len() + page.common_prefixes.len() <= 2);
        seen.extend(page.common_prefixes.iter().cloned());
        seen.extend(names(&page));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a.txt", "photos/", "videos/", "z.txt"]);

    // Plain pagination without a delimiter visits every key once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = o.list("list", None, None, after.as_deref(), 3).unwrap();
        seen.extend(names(&page));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, sorted);
}

/// A part of `len` bytes of `fill`.
fn part(fill: u8, len: u64) -> Vec<u8> {
    vec![fill; len as usize]
}

#[test]
fn multipart_uploads_concatenate_parts_with_s3_etags() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("big").unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("kind".to_string(), "video".to_string());
    let id = o
        .create_multipart(
            "big",
            "movie.mp4",
            PutOptions {
                content_type: Some("video/mp4".into()),
                user_metadata: meta.clone(),
                hop: 0,
            },
        )
        .unwrap();
    assert_eq!(o.list_multipart("big").unwrap()[0].0, "movie.mp4");
    let p1 = part(b'a', MIN_PART_BYTES);
    let p2 = part(b'b', 10);
    let e2 = o.upload_part(&id, 2, &mut &p2[..]).unwrap();
    let e1 = o.upload_part(&id, 1, &mut &p1[..]).unwrap();
    assert_eq!(e1, hex::encode(Md5::digest(&p1)));

    // Wrong etag, wrong order and a missing part are refused.
    for parts in [
        vec![(1, "0".repeat(32)), (2, e2.clone())],
        vec![(2, e2.clone()), (1, e1.clone())],
        vec![(1, e1.clone()), (3, e2.clone())],
    ] {
        let e = o.complete_multipart(&id, &parts).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidPart, "{e}");
    }
    let e = o.delete_bucket("big").unwrap_err();
    assert_eq!(e.code(), ErrorCode::BucketNotEmpty, "an upload is open");

    let done = o
        .complete_multipart(&id, &[(1, format!("\"{e1}\"")), (2, e2.clone())])
        .unwrap();
    let mut md5s = hex::decode(&e1).unwrap();
    md5s.extend(hex::decode(&e2).unwrap());
    assert_eq!(done.etag, format!("{}-2", hex::encode(Md5::digest(&md5s))));
    let mut whole = p1.clone();
    whole.extend(&p2);
    assert_eq!(done.digest, hex::encode(Sha256::digest(&whole)));
    assert_eq!(done.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(done.user_metadata, meta);
    assert_eq!(read_all(&o, "big", "movie.mp4", None), whole);
    assert!(o.list_multipart("big").unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects/parts"))
            .unwrap()
            .count(),
        0,
        "parts are removed"
    );
    let e = o.complete_multipart(&id, &[(1, e1)]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UploadNotFound);
}

#[test]
fn small_parts_other_than_the_last_are_refused_and_aborts_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("parts").unwrap();
    let id = o
        .create_multipart("parts", "k", PutOptions::default())
        .unwrap();
    let e1 = o.upload_part(&id, 1, &mut &b"tiny"[..]).unwrap();
    let e2 = o.upload_part(&id, 2, &mut &b"tail"[..]).unwrap();
    let e = o
        .complete_multipart(&id, &[(1, e1.clone()), (2, e2)])
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidPart, "{e}");
    // One small part alone is the last part, and fine; but abort instead.
    o.abort_multipart(&id).unwrap();
    assert_eq!(
        o.upload_part(&id, 3, &mut &b"late"[..]).unwrap_err().code(),
        ErrorCode::UploadNotFound
    );
    assert_eq!(
        o.abort_multipart("../../etc").unwrap_err().code(),
        ErrorCode::UploadNotFound
    );
    assert_eq!(
        o.upload_part(&id, 0, &mut &b"x"[..]).unwrap_err().code(),
        ErrorCode::InvalidPart
    );
    assert!(o.head("parts", "k").unwrap().is_none());
    o.delete_bucket("parts").unwrap();
}

#[test]
fn objects_and_uploads_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let (_s, o) = open(dir.path());
        o.create_bucket("durable").unwrap();
        put(&o, "durable", "k", b"persisted");
        id = o
            .create_multipart("durable", "m", PutOptions::default())
            .unwrap();
        o.upload_part(&id, 1, &mut &b"part one"[..]).unwrap();
        // A temp file as a crash mid-put leaves it.
        std::fs::write(dir.path().join("objects/tmp/leftover"), b"junk").unwrap();
    }
    let (_s, o) = open(dir.path());
    assert_eq!(read_all(&o, "durable", "k", None), b"persisted");
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects/tmp"))
            .unwrap()
            .count(),
        0,
        "temp files are swept at open"
    );
    let etag = hex::encode(Md5::digest(b"part one"));
    let done = o.complete_multipart(&id, &[(1, etag)]).unwrap();
    assert_eq!(read_all(&o, "durable", "m", None), b"part one");
    assert!(done.etag.ends_with("-1"));
}

/// Yields some bytes, then fails, as a client that goes away mid-upload.
struct BrokenBody(usize);

impl Read for BrokenBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_put_whose_body_breaks_off_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, o) = open(dir.path());
    o.create_bucket("broken").unwrap();
    put(&o, "broken", "k", b"old");
    let e = o
        .put("broken", "k", &mut BrokenBody(1000), PutOptions::default())
        .unwrap_err();
    assert!(matches!(e, ObjectError::BodyRead(_)), "{e}");
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert_eq!(read_all(&o, "broken", "k", None), b"old");
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects/tmp"))
            .unwrap()
            .count(),
        0
    );
}
