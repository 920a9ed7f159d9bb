//! The object storage HTTP API of process functions: `/nubo/v1/obj/...` served on a worker's own
//! Runtime API listener (so only that worker reaches it), scoped to the buckets its function
//! binds in the manifest (`buckets = ["uploads"]`).
//!
//! `GET|HEAD|PUT|DELETE /nubo/v1/obj/{bucket}/{key}` and `GET
//! /nubo/v1/obj/{bucket}?prefix=&delimiter=&after=&limit=` (list). Keys are percent-decoded
//! from the path, so `a%2Fb` and `a/b` both name the key `a/b`. Bodies stream both ways: a
//! `PUT` goes chunk by chunk into a [`PendingPut`] on the blocking pool, a `GET` is read from
//! the object's file in chunks as the worker takes them, so an object of gigabytes never sits
//! in memory. Puts and deletes carry the trigger hop count of the worker's invocation in flight,
//! so the object events they cause run one hop further. Errors are Nubo's JSON errors
//! `{"error":{"code","message"}}`. `docs/objects.md` documents it for function authors.

use super::kv::{Failure, Query, bytes_response, decode, json_response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use nubo_core::ErrorCode;
use nubo_core::api::v1::{ObjectInfo, ObjectList};
use nubo_core::limits::{MAX_LIST_OBJECTS, MAX_OBJECT_BYTES};
use nubo_store::objects::{
    ObjectError, ObjectMeta, Objects, PendingPut, PutOptions, validate_key, validate_options,
};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Where the API is served on the worker's Runtime API listener.
pub(crate) const PREFIX: &str = "/nubo/v1/obj";

/// Request and response headers carrying user metadata (`x-nubo-meta-owner: ann`), as on the
/// admin API.
const META_HEADER_PREFIX: &str = "x-nubo-meta-";

/// Bytes read from an object's file per chunk of a `GET`.
const READ_CHUNK: usize = 256 * 1024;

/// Chunks buffered between the file and the worker (`GET`) or the worker and the file (`PUT`).
/// Small, so a slow side slows the other down instead of growing memory: at most this many
/// chunks are held per request.
const STREAM_CHUNKS: usize = 4;

/// The body of an answer: a buffered one, or an object's bytes streamed from its file.
pub(crate) type ObjBody = Either<Full<Bytes>, ObjectStream>;

type ObjResponse = Response<ObjBody>;

/// The buckets one function's workers may reach: the server's object storage and the names the
/// function binds.
pub(crate) struct ObjScope {
    /// `None` on a runtime built without a store (unit tests of other parts).
    objects: Option<Objects>,
    /// The function's name in the manifest, for the fix in a "not bound" error.
    function: String,
    /// The buckets its `buckets` list names.
    bound: Vec<String>,
}

impl ObjScope {
    /// The scope of `function`, which binds the buckets `bound`.
    pub(crate) fn new(objects: Option<Objects>, function: &str, bound: Vec<String>) -> ObjScope {
        ObjScope {
            objects,
            function: function.to_owned(),
            bound,
        }
    }

    /// A scope that reaches no bucket.
    pub(crate) fn none() -> ObjScope {
        ObjScope::new(None, "", Vec::new())
    }
}

/// The public error for a store error; internal failures are logged, not shown.
#[expect(
    clippy::needless_pass_by_value,
    reason = "taken by value to be passed to map_err as a function"
)]
fn failure(e: ObjectError) -> Failure {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::warn!(error = %e, "object storage failed");
        return Failure::new(code, "object storage failed; the server log has details");
    }
    Failure::new(code, e.to_string())
}

/// One operation of the API, on a bucket.
#[derive(Debug, PartialEq)]
enum Op {
    Get(String),
    Head(String),
    Put(String),
    Delete(String),
    List,
}

/// Serves one request whose path starts with [`PREFIX`]; its writes and deletes carry `hop`
/// and the invocation's `traceparent`.
pub(crate) async fn handle(
    scope: &ObjScope,
    hop: u32,
    traceparent: Option<String>,
    req: Request<Incoming>,
) -> ObjResponse {
    match serve(scope, hop, traceparent, req).await {
        Ok(response) => response,
        Err(e) => e.into_response().map(Either::Left),
    }
}

async fn serve(
    scope: &ObjScope,
    hop: u32,
    traceparent: Option<String>,
    req: Request<Incoming>,
) -> Result<ObjResponse, Failure> {
    let (bucket, op) = parse(req.method(), req.uri().path())?;
    if !scope.bound.contains(&bucket) {
        return Err(not_bound(scope, &bucket));
    }
    let Some(objects) = scope.objects.clone() else {
        return Err(Failure::new(
            ErrorCode::Internal,
            "this server runs without object storage; start it with its data directory \
             (nubo server) to use buckets",
        ));
    };
    let query = Query::parse(req.uri().query())?;
    match op {
        Op::Get(key) => {
            query.only(&[])?;
            get(objects, bucket, key, req.headers()).await
        }
        Op::Head(key) => {
            query.only(&[])?;
            let found = blocking(move || objects.head(&bucket, &key)).await?;
            let Some(meta) = found else {
                return Ok(buffered(StatusCode::NOT_FOUND, Bytes::new()));
            };
            let mut response = buffered(StatusCode::OK, Bytes::new());
            describe(response.headers_mut(), &meta);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
            Ok(response)
        }
        Op::Put(key) => {
            query.only(&[])?;
            put(objects, bucket, key, hop, traceparent, req).await
        }
        Op::Delete(key) => {
            query.only(&[])?;
            blocking(move || objects.delete_traced(&bucket, &key, hop, traceparent.as_deref()))
                .await?;
            Ok(buffered(StatusCode::NO_CONTENT, Bytes::new()))
        }
        Op::List => {
            query.only(&["prefix", "delimiter", "after", "limit"])?;
            let param = |name: &str| query.get(name).filter(|v| !v.is_empty()).map(str::to_owned);
            let (prefix, delimiter, after) = (param("prefix"), param("delimiter"), param("after"));
            let limit = query
                .get("limit")
                .map(parse_limit)
                .transpose()?
                .unwrap_or(MAX_LIST_OBJECTS);
            let name = bucket.clone();
            let page = blocking(move || {
                objects.list(
                    &name,
                    prefix.as_deref(),
                    delimiter.as_deref(),
                    after.as_deref(),
                    limit,
                )
            })
            .await?;
            let list = ObjectList {
                bucket,
                objects: page.objects.into_iter().map(info).collect(),
                common_prefixes: page.common_prefixes,
                next: page.next,
            };
            let body = serde_json::to_value(&list).unwrap_or_default();
            Ok(json_response(StatusCode::OK, &body).map(Either::Left))
        }
    }
}

/// `GET`: the object, or the byte range asked for, streamed from its file.
async fn get(
    objects: Objects,
    bucket: String,
    key: String,
    headers: &HeaderMap,
) -> Result<ObjResponse, Failure> {
    let range = headers
        .get(header::RANGE)
        .map(|v| parse_range(v.to_str().unwrap_or("")))
        .transpose()?;
    let opened = tokio::task::spawn_blocking(move || {
        let range = match range {
            None => None,
            Some(Range::From(first, last)) => Some((first, last)),
            Some(Range::Suffix(n)) => {
                // The last `n` bytes: their start depends on the size.
                let Some(meta) = objects.head(&bucket, &key)? else {
                    return Ok(None);
                };
                if n == 0 {
                    return Err(ObjectError::RangeNotSatisfiable {
                        start: meta.size,
                        size: meta.size,
                    });
                }
                Some((meta.size.saturating_sub(n), None))
            }
        };
        objects
            .open(&bucket, &key, range)
            .map(|found| found.map(|(meta, reader)| (meta, reader, range)))
    })
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "an object read did not start");
        Failure::new(
            ErrorCode::Internal,
            "the object read did not start; the server log has details",
        )
    })?;
    let (meta, reader, range) = match opened {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(Failure::new(
                ErrorCode::ObjectNotFound,
                "the bucket has no object with that key",
            ));
        }
        Err(e @ ObjectError::RangeNotSatisfiable { size, .. }) => {
            let mut response = failure(e).into_response().map(Either::Left);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
        Err(e) => return Err(failure(e)),
    };
    let len = reader.len();
    let mut response = Response::new(Either::Right(ObjectStream::start(reader)));
    describe(response.headers_mut(), &meta);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((first, _)) = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = first + len.saturating_sub(1);
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", meta.size)) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

/// `PUT`: the body streamed into a [`PendingPut`] on the blocking pool, then committed.
async fn put(
    objects: Objects,
    bucket: String,
    key: String,
    hop: u32,
    traceparent: Option<String>,
    req: Request<Incoming>,
) -> Result<ObjResponse, Failure> {
    let opts = put_options(req.headers(), hop)?;
    validate_key(&key).map_err(failure)?;
    validate_options(&opts).map_err(failure)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_OBJECT_BYTES) {
        return Err(Failure::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the object is larger than {MAX_OBJECT_BYTES} bytes, the most one put stores; \
                 split it into several objects"
            ),
        ));
    }
    let (chunks, mut received) = mpsc::channel::<Piece>(STREAM_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || {
        if objects.bucket(&bucket)?.is_none() {
            return Err(ObjectError::NoSuchBucket(bucket));
        }
        let mut pending: PendingPut = objects.begin_put()?;
        pending.set_traceparent(traceparent);
        loop {
            match received.blocking_recv() {
                Some(Piece::Data(chunk)) => pending.write(&chunk)?,
                Some(Piece::End) => return pending.commit(&bucket, &key, opts).map(Some),
                // The body broke off: the pending put is dropped, so nothing is stored.
                None => return Ok(None),
            }
        }
    });
    let mut body = req.into_body();
    let mut broken = false;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && chunks.send(Piece::Data(data)).await.is_err()
                {
                    // The writer stopped (an error it reports below).
                    break;
                }
            }
            Some(Err(_)) => {
                broken = true;
                break;
            }
            None => {
                let _ = chunks.send(Piece::End).await;
                break;
            }
        }
    }
    drop(chunks);
    let written = match writer.await {
        Ok(result) => result.map_err(failure)?,
        Err(e) => {
            tracing::warn!(error = %e, "an object put did not finish");
            return Err(Failure::new(
                ErrorCode::Internal,
                "the object put did not finish; the server log has details",
            ));
        }
    };
    let Some(meta) = written.filter(|_| !broken) else {
        return Err(Failure::bad(
            "the request body could not be read to its end; nothing was stored, send it again",
        ));
    };
    let body = serde_json::to_value(info(meta.clone())).unwrap_or_default();
    let mut response = json_response(StatusCode::OK, &body).map(Either::Left);
    describe(response.headers_mut(), &meta);
    Ok(response)
}

/// What the body reader hands the writer of a `PUT`.
enum Piece {
    Data(Bytes),
    /// The body ended: commit.
    End,
}

/// The content type and `x-nubo-meta-*` headers of a request, as put options at trigger hop
/// `hop`.
fn put_options(headers: &HeaderMap, hop: u32) -> Result<PutOptions, Failure> {
    let text = |name: &str, v: &HeaderValue| {
        v.to_str().map(str::to_owned).map_err(|_| {
            Failure::new(
                ErrorCode::InvalidObjectKey,
                format!("header {name} is not visible ASCII text; send it as plain text"),
            )
        })
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| text("content-type", v))
        .transpose()?;
    let mut user_metadata = BTreeMap::new();
    for (name, value) in headers {
        if let Some(meta) = name.as_str().strip_prefix(META_HEADER_PREFIX) {
            user_metadata.insert(meta.to_owned(), text(name.as_str(), value)?);
        }
    }
    Ok(PutOptions {
        content_type,
        user_metadata,
        hop,
    })
}

/// Sets the headers describing `meta`: etag, content type, last-modified, user metadata.
fn describe(headers: &mut HeaderMap, meta: &ObjectMeta) {
    let mut set = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    };
    set("etag", &format!("\"{}\"", meta.etag));
    set(
        "content-type",
        meta.content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    set("last-modified", &http_date(meta.last_modified));
    set("accept-ranges", "bytes");
    for (name, value) in &meta.user_metadata {
        set(&format!("{META_HEADER_PREFIX}{name}"), value);
    }
}

/// An object as listed (the admin API's shape).
fn info(meta: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.key,
        size: meta.size,
        etag: meta.etag,
        last_modified: nubo_core::rfc3339(meta.last_modified),
        content_type: meta.content_type,
    }
}

/// Formats `t` as an HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`), from its RFC 3339 form.
fn http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let stamp = nubo_core::rfc3339(t); // 2024-05-01T12:34:56.789Z
    let month = stamp
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 12);
    format!(
        "{}, {} {} {} {} GMT",
        WEEKDAYS[(days % 7) as usize],
        stamp.get(8..10).unwrap_or("01"),
        MONTHS[month - 1],
        stamp.get(0..4).unwrap_or("1970"),
        stamp.get(11..19).unwrap_or("00:00:00"),
    )
}

/// A `Range` header's one range of bytes.
#[derive(Debug, PartialEq)]
enum Range {
    /// `bytes=first-last` or `bytes=first-` (to the end).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

fn parse_range(raw: &str) -> Result<Range, Failure> {
    let bad = || {
        Failure::bad(format!(
            "range {raw:?} is not one byte range; send bytes=FIRST-LAST, bytes=FIRST- or \
             bytes=-COUNT (one range per request)"
        ))
    };
    let spec = raw.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (first, last) = spec.split_once('-').ok_or_else(bad)?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return last.parse().map(Range::Suffix).map_err(|_| bad());
    }
    let first: u64 = first.parse().map_err(|_| bad())?;
    if last.is_empty() {
        return Ok(Range::From(first, None));
    }
    let last: u64 = last.parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok(Range::From(first, Some(last)))
}

fn parse_limit(raw: &str) -> Result<usize, Failure> {
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIST_OBJECTS).contains(&n) => Ok(n),
        _ => Err(Failure::bad(format!(
            "limit {raw:?} is not a number from 1 to {MAX_LIST_OBJECTS}; page with after for more"
        ))),
    }
}

/// The bucket and the operation a request names.
fn parse(method: &Method, path: &str) -> Result<(String, Op), Failure> {
    let usage = "use /nubo/v1/obj/{bucket}/{key} (GET, HEAD, PUT, DELETE) or /nubo/v1/obj/{bucket} \
                 (GET: list objects)";
    let not_found = || {
        Failure::new(
            ErrorCode::NotFound,
            format!("{path} is not an object storage API path; {usage}"),
        )
    };
    let rest = path
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = decode(bucket, "bucket name")?;
    if bucket.is_empty() {
        return Err(not_found());
    }
    let wrong_method = |allowed: &str| {
        Failure::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    };
    if key.is_empty() {
        if method != Method::GET {
            return Err(wrong_method("GET (to list objects), or name a key"));
        }
        return Ok((bucket, Op::List));
    }
    let key = decode(key, "key")?;
    let op = match *method {
        Method::GET => Op::Get(key),
        Method::HEAD => Op::Head(key),
        Method::PUT => Op::Put(key),
        Method::DELETE => Op::Delete(key),
        _ => return Err(wrong_method("GET, HEAD, PUT or DELETE")),
    };
    Ok((bucket, op))
}

fn not_bound(scope: &ObjScope, bucket: &str) -> Failure {
    Failure::new(
        ErrorCode::BucketNotBound,
        format!(
            "function \"{}\" does not bind the bucket \"{bucket}\"; add buckets = [\"{bucket}\"] \
             to [function.{}] in nubo.toml and deploy again",
            scope.function, scope.function
        ),
    )
}

/// Runs a store call on the blocking pool (SQLite and file IO).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ObjectError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(failure),
        Err(e) => {
            tracing::warn!(error = %e, "an object storage call did not finish");
            Err(Failure::new(
                ErrorCode::Internal,
                "the object storage call did not finish; the server log has details",
            ))
        }
    }
}

fn buffered(status: StatusCode, body: Bytes) -> ObjResponse {
    bytes_response(status, body).map(Either::Left)
}

/// An object's bytes on their way to the worker: a blocking task reads the file in chunks
/// into a small channel, this body hands them to hyper. It yields exactly the object's (or the
/// range's) length, or ends with an error if the file yields less.
pub(crate) struct ObjectStream {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl ObjectStream {
    /// Starts reading `reader` on the blocking pool. The reading stops when the response is
    /// dropped (the worker went away).
    fn start(mut reader: nubo_store::objects::ObjectReader) -> ObjectStream {
        let remaining = reader.len();
        let (sender, chunks) = mpsc::channel(STREAM_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let mut left = reader.len();
            while left > 0 {
                let mut buf =
                    vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
                let read = match reader.read(&mut buf) {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the object's file ended early",
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                if sender.blocking_send(read).is_err() || failed {
                    return;
                }
            }
        });
        ObjectStream { chunks, remaining }
    }
}

impl Body for ObjectStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object's reader stopped early",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn op(method: &Method, path: &str) -> Result<(String, Op), ErrorCode> {
        parse(method, path).map_err(|f| f.code)
    }

    #[test]
    fn paths_name_a_bucket_and_an_operation() {
        let s = |op: Op| Ok(("photos".to_owned(), op));
        assert_eq!(
            op(&Method::GET, "/nubo/v1/obj/photos/a"),
            s(Op::Get("a".into()))
        );
        assert_eq!(
            op(&Method::PUT, "/nubo/v1/obj/photos/a/b%20c"),
            s(Op::Put("a/b c".into()))
        );
        assert_eq!(
            op(&Method::HEAD, "/nubo/v1/obj/photos/a%2Fb"),
            s(Op::Head("a/b".into()))
        );
        assert_eq!(
            op(&Method::DELETE, "/nubo/v1/obj/photos/k"),
            s(Op::Delete("k".into()))
        );
        assert_eq!(op(&Method::GET, "/nubo/v1/obj/photos"), s(Op::List));
        assert_eq!(op(&Method::GET, "/nubo/v1/obj/photos/"), s(Op::List));
        assert_eq!(op(&Method::GET, "/nubo/v1/obj"), Err(ErrorCode::NotFound));
        assert_eq!(
            op(&Method::GET, "/nubo/v1/objx/a"),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(
            op(&Method::PUT, "/nubo/v1/obj/photos"),
            Err(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/obj/photos/a"),
            Err(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            op(&Method::GET, "/nubo/v1/obj/photos/%FF"),
            Err(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn ranges_are_one_byte_range() {
        assert_eq!(parse_range("bytes=0-9").unwrap(), Range::From(0, Some(9)));
        assert_eq!(parse_range("bytes=5-").unwrap(), Range::From(5, None));
        assert_eq!(parse_range("bytes=-3").unwrap(), Range::Suffix(3));
        for bad in [
            "bytes=9-0",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(784_887_151);
        assert_eq!(http_date(t), "Tue, 15 Nov 1994 08:12:31 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn unbound_buckets_name_the_fix() {
        let scope = ObjScope::new(None, "api", vec!["photos".into()]);
        let f = not_bound(&scope, "private");
        assert_eq!(f.code, ErrorCode::BucketNotBound);
        assert!(
            f.message
                .contains("add buckets = [\"private\"] to [function.api]"),
            "{}",
            f.message
        );
    }

    /// The API served by a real worker Runtime API server over loopback, on a real store.
    pub(in crate::process) mod served {
        use crate::process::api::{self, Channel, Job};
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};
        use sha2::{Digest, Sha256};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        use tokio::net::{TcpListener, TcpStream};

        /// Upper bound on any wait here.
        const PATIENCE: Duration = Duration::from_secs(30);

        struct Served {
            addr: std::net::SocketAddr,
            server: tokio::task::JoinHandle<()>,
            objects: nubo_store::objects::Objects,
            _jobs: tokio::sync::mpsc::Sender<Job>,
            _dir: tempfile::TempDir,
        }

        impl Drop for Served {
            fn drop(&mut self) {
                self.server.abort();
            }
        }

        async fn served(bound: &[&str]) -> Served {
            let dir = tempfile::tempdir().unwrap();
            let store = nubo_store::Store::open(dir.path()).unwrap();
            let objects = store.objects();
            objects.create_bucket("photos").unwrap();
            objects.create_bucket("private").unwrap();
            let scope = super::ObjScope::new(
                Some(objects.clone()),
                "api",
                bound.iter().map(|s| (*s).to_owned()).collect(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (jobs, receiver) = tokio::sync::mpsc::channel(1);
            let channel =
                Arc::new(Channel::new(receiver, Instant::now()).with_objects(Arc::new(scope)));
            let server = tokio::spawn(api::serve(listener, channel));
            Served {
                addr,
                server,
                objects,
                _jobs: jobs,
                _dir: dir,
            }
        }

        /// One request to the worker-side API at `addr`: status, headers, body.
        pub(in crate::process) async fn call(
            addr: std::net::SocketAddr,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Vec<u8>,
        ) -> (u16, http::HeaderMap, Bytes) {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut request = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .header("host", addr.to_string());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::from(body))).unwrap();
            let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
                .await
                .expect("the API answers in time")
                .unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
                .await
                .expect("the body arrives in time")
                .unwrap()
                .to_bytes();
            (status, headers, body)
        }

        fn json(body: &[u8]) -> serde_json::Value {
            serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
        }

        #[tokio::test]
        async fn a_bound_bucket_answers_every_operation() {
            let s = served(&["photos"]).await;
            let a = s.addr;
            let headers = [("content-type", "text/plain"), ("x-nubo-meta-owner", "ann")];
            let (status, h, body) = call(
                a,
                "PUT",
                "/nubo/v1/obj/photos/a%2Fb%20c",
                &headers,
                b"hello world".to_vec(),
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert_eq!(h["etag"], "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
            assert_eq!(json(&body)["size"], 11);
            // Seen by the store itself, metadata included.
            let meta = s.objects.head("photos", "a/b c").unwrap().unwrap();
            assert_eq!(meta.user_metadata["owner"], "ann");

            let (status, h, body) =
                call(a, "GET", "/nubo/v1/obj/photos/a/b%20c", &[], vec![]).await;
            assert_eq!(status, 200);
            assert_eq!(&body[..], b"hello world");
            assert_eq!(h["content-type"], "text/plain");
            assert_eq!(h["content-length"], "11");
            assert_eq!(h["x-nubo-meta-owner"], "ann");
            assert!(h["last-modified"].to_str().unwrap().ends_with(" GMT"));

            let range = [("range", "bytes=6-")];
            let (status, h, body) =
                call(a, "GET", "/nubo/v1/obj/photos/a/b%20c", &range, vec![]).await;
            assert_eq!(status, 206);
            assert_eq!(&body[..], b"world");
            assert_eq!(h["content-range"], "bytes 6-10/11");
            let suffix = [("range", "bytes=-3")];
            let (status, _, body) =
                call(a, "GET", "/nubo/v1/obj/photos/a/b%20c", &suffix, vec![]).await;
            assert_eq!((status, &body[..]), (206, &b"rld"[..]));
            let past = [("range", "bytes=11-")];
            let (status, h, body) =
                call(a, "GET", "/nubo/v1/obj/photos/a/b%20c", &past, vec![]).await;
            assert_eq!(status, 416);
            assert_eq!(h["content-range"], "bytes */11");
            assert_eq!(json(&body)["error"]["code"], "range_not_satisfiable");

            let (status, h, _) = call(a, "HEAD", "/nubo/v1/obj/photos/a/b%20c", &[], vec![]).await;
            assert_eq!((status, h["content-length"].to_str().unwrap()), (200, "11"));
            assert_eq!(
                call(a, "HEAD", "/nubo/v1/obj/photos/nope", &[], vec![])
                    .await
                    .0,
                404
            );
            let (status, _, body) = call(a, "GET", "/nubo/v1/obj/photos/nope", &[], vec![]).await;
            assert_eq!(status, 404);
            assert_eq!(json(&body)["error"]["code"], "object_not_found");

            for key in ["a/x", "a/y/1", "b"] {
                assert_eq!(
                    call(
                        a,
                        "PUT",
                        &format!("/nubo/v1/obj/photos/{key}"),
                        &[],
                        b"1".to_vec()
                    )
                    .await
                    .0,
                    200
                );
            }
            let (status, _, body) = call(
                a,
                "GET",
                "/nubo/v1/obj/photos?prefix=a%2F&delimiter=%2F&limit=10",
                &[],
                vec![],
            )
            .await;
            assert_eq!(status, 200);
            let page = json(&body);
            let keys: Vec<&str> = page["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["key"].as_str().unwrap())
                .collect();
            assert_eq!(keys, ["a/b c", "a/x"]);
            assert_eq!(page["common_prefixes"], serde_json::json!(["a/y/"]));
            let (_, _, body) = call(a, "GET", "/nubo/v1/obj/photos?limit=1", &[], vec![]).await;
            let page = json(&body);
            assert_eq!(page["objects"][0]["key"], "a/b c");
            assert_eq!(page["next"], "a/b c");

            assert_eq!(
                call(a, "DELETE", "/nubo/v1/obj/photos/b", &[], vec![])
                    .await
                    .0,
                204
            );
            assert_eq!(
                call(a, "DELETE", "/nubo/v1/obj/photos/b", &[], vec![])
                    .await
                    .0,
                204
            );
            assert!(s.objects.head("photos", "b").unwrap().is_none());
        }

        #[tokio::test]
        async fn large_objects_stream_both_ways() {
            let s = served(&["photos"]).await;
            // 5 MiB of varied bytes: many chunks each way.
            let data: Vec<u8> = (0..5 * 1024 * 1024u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            let digest = hex(&Sha256::digest(&data));
            let (status, _, body) =
                call(s.addr, "PUT", "/nubo/v1/obj/photos/big", &[], data.clone()).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert_eq!(
                s.objects.head("photos", "big").unwrap().unwrap().digest,
                digest
            );
            let (status, _, body) =
                call(s.addr, "GET", "/nubo/v1/obj/photos/big", &[], vec![]).await;
            assert_eq!(status, 200);
            assert_eq!(body.len(), data.len());
            assert_eq!(hex(&Sha256::digest(&body)), digest);
        }

        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }

        #[tokio::test]
        async fn unbound_buckets_and_bad_input_are_refused_with_the_fix() {
            let s = served(&["photos"]).await;
            let a = s.addr;
            let (status, _, body) =
                call(a, "PUT", "/nubo/v1/obj/private/k", &[], b"v".to_vec()).await;
            assert_eq!(status, 403);
            let e = json(&body);
            assert_eq!(e["error"]["code"], "bucket_not_bound");
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(r#"add buckets = ["private"] to [function.api]"#)
            );
            assert!(s.objects.head("private", "k").unwrap().is_none());
            let (status, _, body) =
                call(a, "GET", "/nubo/v1/obj/photos?perfix=a", &[], vec![]).await;
            assert_eq!(status, 400);
            assert!(
                json(&body)["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("perfix")
            );
            let (status, _, body) = call(
                a,
                "PUT",
                "/nubo/v1/obj/photos/k",
                &[("x-nubo-meta-bad!name", "v")],
                b"v".to_vec(),
            )
            .await;
            assert!(status == 400, "{status} {}", String::from_utf8_lossy(&body));
            let long = "k".repeat(nubo_core::limits::MAX_OBJECT_KEY_BYTES + 1);
            let (status, _, body) = call(
                a,
                "PUT",
                &format!("/nubo/v1/obj/photos/{long}"),
                &[],
                b"v".to_vec(),
            )
            .await;
            assert_eq!(status, 400);
            assert_eq!(json(&body)["error"]["code"], "invalid_object_key");
            let (status, _, _) = call(
                a,
                "GET",
                "/nubo/v1/obj/photos/k",
                &[("range", "bytes=0-1,3-4")],
                vec![],
            )
            .await;
            assert_eq!(status, 400);
        }
    }
}
