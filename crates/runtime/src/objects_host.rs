//! The host side of `nubo:objects/objects@0.1.0` (WIT in `wit/nubo-objects/` at the repository
//! root): wasm functions read and write objects in the buckets they bind (`buckets = [...]` in
//! the manifest), backed by `nubo_store::objects::Objects`.
//!
//! Every call names its bucket; one the function does not bind is refused with `not-bound` and
//! a line in the invocation's log naming the manifest fix. Writes and deletes carry the
//! invocation's trigger hop count, so the object events they cause run one hop further. Object data crosses the boundary as
//! `list<u8>`, so each call moves at most [`MAX_CALL_BYTES`]; larger objects are read by range.
//! The store calls block on SQLite and files, so each runs on tokio's blocking pool while the
//! guest waits.

use crate::bound::{Bound, BoundCtx, Kind, Refused};
use nubo_core::ErrorCode;
use nubo_core::limits::MAX_LIST_OBJECTS;
use nubo_store::objects::{ObjectError, ObjectMeta, Objects, PutOptions};
use std::io::Read;
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/nubo-objects",
        world: "nubo:objects/imports",
        imports: { default: async | trappable },
    });
}

use bindings::nubo::objects::objects;

/// Most object bytes one call moves (a `get`'s answer, a `put`'s data): a guest holds the
/// whole value in its memory and the host copies it once, so this bounds what one call makes
/// the host hold. Larger objects are read by range.
pub(crate) const MAX_CALL_BYTES: u64 = 16 * 1024 * 1024;

/// What a loaded function may reach: the server's object storage and the buckets it binds.
pub(crate) type ObjBindings = Bound<Objects>;

/// Per-invocation object storage state: the bindings, the trigger hop count, the log.
pub(crate) type ObjCtx = BoundCtx<Objects>;

/// How buckets are named in refusals.
const BUCKETS: Kind = Kind {
    what: "bucket",
    key: "buckets",
    missing: "this server has no object storage: start it with a data directory",
};

/// The object storage, when the function binds `bucket`; a refusal is logged with the fix.
fn reach(ctx: &ObjCtx, bucket: &str) -> Result<Objects, objects::Error> {
    ctx.reach(&BUCKETS, bucket).map_err(|r| match r {
        Refused::NotBound(m) => objects::Error::NotBound(m),
        Refused::NoService(m) => objects::Error::Other(m),
    })
}

struct HasObjects;

impl HasData for HasObjects {
    type Data<'a> = &'a mut ObjCtx;
}

/// Adds the `nubo:objects/objects` interface to `linker`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut ObjCtx,
) -> wasmtime::Result<()> {
    objects::add_to_linker::<_, HasObjects>(linker, view)
}

type ObjResult<T> = wasmtime::Result<Result<T, objects::Error>>;

/// The WIT error for a store error; messages name the limit or the fix.
#[expect(
    clippy::needless_pass_by_value,
    reason = "taken by value to be passed to map_err as a function"
)]
fn wit_error(error: ObjectError) -> objects::Error {
    if let ObjectError::NoSuchBucket(_) = &error {
        return objects::Error::NoSuchBucket(error.to_string());
    }
    match error.code() {
        ErrorCode::RangeNotSatisfiable => objects::Error::RangeNotSatisfiable,
        ErrorCode::PayloadTooLarge => objects::Error::TooLarge(error.to_string()),
        ErrorCode::InvalidObjectKey | ErrorCode::InvalidBucketName => {
            objects::Error::Invalid(error.to_string())
        }
        ErrorCode::Internal => {
            tracing::warn!(error = %error, "object storage failed");
            objects::Error::Other("object storage failed; the server log has details".to_owned())
        }
        _ => objects::Error::Other(error.to_string()),
    }
}

/// Runs a blocking store call on the blocking pool; the call answers the WIT result itself.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, objects::Error> + Send + 'static,
) -> ObjResult<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| wasmtime::Error::msg(format!("an object storage call failed: {e}")))
}

fn info(meta: ObjectMeta) -> objects::ObjectInfo {
    objects::ObjectInfo {
        key: meta.key,
        size: meta.size,
        etag: meta.etag,
        content_type: meta.content_type,
        last_modified_ms: u64::try_from(nubo_core::to_millis(meta.last_modified)).unwrap_or(0),
    }
}

fn too_large(what: &str, size: u64) -> objects::Error {
    objects::Error::TooLarge(format!(
        "{what} is {size} bytes, more than the {MAX_CALL_BYTES} bytes (16 MiB) one call moves; \
         read it in ranges of at most 16 MiB"
    ))
}

/// Reads one object (or range) whole, refusing it before reading when it is over
/// [`MAX_CALL_BYTES`]. Blocking.
fn read_whole(
    objects: &Objects,
    bucket: &str,
    key: &str,
    range: Option<(u64, u64)>,
) -> Result<Option<Vec<u8>>, objects::Error> {
    if let Some((first, last)) = range
        && last < first
    {
        return Err(objects::Error::Invalid(format!(
            "the range ({first}, {last}) ends before it starts; give (first byte, last byte)"
        )));
    }
    let opened = objects
        .open(bucket, key, range.map(|(first, last)| (first, Some(last))))
        .map_err(wit_error)?;
    let Some((_, mut reader)) = opened else {
        return Ok(None);
    };
    let len = reader.len();
    if len > MAX_CALL_BYTES {
        let what = if range.is_some() {
            "the range"
        } else {
            "the object"
        };
        return Err(too_large(what, len));
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    reader
        .read_to_end(&mut data)
        .map_err(|e| objects::Error::Other(format!("reading the object failed: {e}")))?;
    Ok(Some(data))
}

impl objects::Host for ObjCtx {
    async fn get(
        &mut self,
        bucket: String,
        key: String,
        range: Option<(u64, u64)>,
    ) -> ObjResult<Option<Vec<u8>>> {
        let store = match reach(self, &bucket) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        blocking(move || read_whole(&store, &bucket, &key, range)).await
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> ObjResult<objects::ObjectInfo> {
        let store = match reach(self, &bucket) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        if data.len() as u64 > MAX_CALL_BYTES {
            return Ok(Err(objects::Error::TooLarge(format!(
                "the data is {} bytes, more than the {MAX_CALL_BYTES} bytes (16 MiB) one put \
                 writes; write larger objects through the S3 endpoint",
                data.len()
            ))));
        }
        let hop = self.hop;
        let traceparent = self.traceparent();
        blocking(move || {
            let opts = PutOptions {
                content_type,
                hop,
                ..PutOptions::default()
            };
            store
                .put_traced(&bucket, &key, &mut data.as_slice(), opts, traceparent)
                .map(info)
                .map_err(wit_error)
        })
        .await
    }

    async fn head(
        &mut self,
        bucket: String,
        key: String,
    ) -> ObjResult<Option<objects::ObjectInfo>> {
        let store = match reach(self, &bucket) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        blocking(move || {
            store
                .head(&bucket, &key)
                .map(|m| m.map(info))
                .map_err(wit_error)
        })
        .await
    }

    async fn delete(&mut self, bucket: String, key: String) -> ObjResult<bool> {
        let store = match reach(self, &bucket) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let hop = self.hop;
        let traceparent = self.traceparent();
        blocking(move || {
            store
                .delete_traced(&bucket, &key, hop, traceparent.as_deref())
                .map_err(wit_error)
        })
        .await
    }

    async fn list(
        &mut self,
        bucket: String,
        prefix: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> ObjResult<objects::Page> {
        let store = match reach(self, &bucket) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let limit = match usize::try_from(limit) {
            Ok(0) | Err(_) => MAX_LIST_OBJECTS,
            Ok(n) if n > MAX_LIST_OBJECTS => {
                return Ok(Err(objects::Error::Invalid(format!(
                    "limit {n} is more than {MAX_LIST_OBJECTS} objects a page; ask for fewer and \
                     follow `next`"
                ))));
            }
            Ok(n) => n,
        };
        blocking(move || {
            let page = store
                .list(&bucket, prefix.as_deref(), None, after.as_deref(), limit)
                .map_err(wit_error)?;
            Ok(objects::Page {
                objects: page.objects.into_iter().map(info).collect(),
                next: page.next,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ctx(dir: &std::path::Path, buckets: &[&str]) -> ObjCtx {
        let store = nubo_store::Store::open(dir).unwrap();
        let objects = store.objects();
        objects.create_bucket("photos").unwrap();
        objects.create_bucket("private").unwrap();
        let bound: Vec<String> = buckets.iter().map(|b| (*b).to_owned()).collect();
        ObjCtx::new(
            Some(Arc::new(ObjBindings::new(Some(objects), &bound))),
            0,
            None,
        )
    }

    fn ok<T>(r: ObjResult<T>) -> T {
        match r.unwrap() {
            Ok(v) => v,
            Err(e) => panic!("call failed: {e:?}"),
        }
    }

    #[tokio::test]
    async fn a_bound_bucket_answers_every_call() {
        use objects::Host as _;
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(dir.path(), &["photos"]);
        let b = || "photos".to_owned();
        let put = ok(c
            .put(
                b(),
                "a/1".into(),
                b"hello world".to_vec(),
                Some("text/plain".into()),
            )
            .await);
        assert_eq!(put.size, 11);
        assert_eq!(put.etag, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(put.content_type.as_deref(), Some("text/plain"));
        assert!(put.last_modified_ms > 0);
        assert_eq!(
            ok(c.get(b(), "a/1".into(), None).await).as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(
            ok(c.get(b(), "a/1".into(), Some((6, 100))).await).as_deref(),
            Some(&b"world"[..])
        );
        assert!(matches!(
            c.get(b(), "a/1".into(), Some((11, 20))).await.unwrap(),
            Err(objects::Error::RangeNotSatisfiable)
        ));
        assert!(matches!(
            c.get(b(), "a/1".into(), Some((5, 2))).await.unwrap(),
            Err(objects::Error::Invalid(_))
        ));
        assert_eq!(ok(c.get(b(), "nope".into(), None).await), None);
        assert_eq!(ok(c.head(b(), "a/1".into()).await).unwrap().size, 11);
        ok(c.put(b(), "a/2".into(), b"x".to_vec(), None).await);
        ok(c.put(b(), "b/1".into(), b"y".to_vec(), None).await);
        let page = ok(c.list(b(), Some("a/".into()), None, 1).await);
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "a/1");
        let rest = ok(c.list(b(), Some("a/".into()), page.next, 0).await);
        let keys: Vec<_> = rest.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a/2"]);
        assert!(ok(c.delete(b(), "a/1".into()).await));
        assert!(!ok(c.delete(b(), "a/1".into()).await));
        assert!(ok(c.head(b(), "a/1".into()).await).is_none());
        assert!(matches!(
            c.put(b(), String::new(), Vec::new(), None).await.unwrap(),
            Err(objects::Error::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn writes_and_deletes_carry_the_invocations_hop() {
        use objects::Host as _;
        let dir = tempfile::tempdir().unwrap();
        let store = nubo_store::Store::open(dir.path()).unwrap();
        let objects = store.objects();
        objects.create_bucket("photos").unwrap();
        objects.watch_buckets(std::collections::BTreeSet::from(["photos".to_owned()]));
        let mut c = ObjCtx::new(
            Some(Arc::new(ObjBindings::new(
                Some(objects.clone()),
                &["photos".to_owned()],
            ))),
            5,
            None,
        );
        ok(c.put("photos".into(), "k".into(), b"v".to_vec(), None)
            .await);
        assert!(ok(c.delete("photos".into(), "k".into()).await));
        let events = objects.object_events(10).unwrap();
        let hops: Vec<u32> = events.iter().map(|e| e.hop).collect();
        assert_eq!(hops, [5, 5]);
    }

    #[tokio::test]
    async fn unbound_buckets_are_refused_with_the_fix() {
        use objects::Host as _;
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(dir.path(), &["photos"]);
        match c.get("private".into(), "k".into(), None).await.unwrap() {
            Err(objects::Error::NotBound(message)) => {
                assert!(message.contains("buckets = [\"private\"]"), "{message}");
            }
            other => panic!("expected not-bound, got {other:?}"),
        }
        let mut none = ObjCtx::new(None, 0, None);
        assert!(matches!(
            none.list("photos".into(), None, None, 0).await.unwrap(),
            Err(objects::Error::NotBound(_))
        ));
    }
}
