//! Admin endpoints of the object storage: list, create and delete buckets, page through a
//! bucket's objects, and write, read (whole or by byte range), inspect and delete one object.
//! Object bodies stream both ways through a blocking thread; none is held in memory whole.

use crate::admin::{ApiError, Gw, gw};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use nubo_control::objects::{ObjectError, ObjectMeta, Objects, PutOptions};
use nubo_core::api::v1::{BucketInfo, BucketList, ObjectInfo, ObjectList};
use nubo_core::limits::MAX_LIST_OBJECTS;
use nubo_core::{ErrorCode, rfc3339};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Objects one listing returns when the request does not say.
const DEFAULT_LIST_LIMIT: usize = 1_000;

/// Prefix of request and response headers carrying user metadata.
pub(crate) const META_HEADER_PREFIX: &str = "x-nubo-meta-";

/// Chunks in flight between the request body and the blocking writer, or the file and the
/// response. Bounds the memory one transfer holds to a few frames.
const CHANNEL_CHUNKS: usize = 8;

/// Bytes read from an object file at a time when answering.
const READ_CHUNK: usize = 256 * 1024;

const INTERNAL: &str = "Nubo failed while handling the request; the server log has details";

fn object_error(e: ObjectError) -> ApiError {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "object storage admin request failed");
        return ApiError::Plain(code, INTERNAL.into());
    }
    ApiError::Plain(code, e.to_string())
}

fn panicked(e: tokio::task::JoinError) -> ApiError {
    tracing::error!(error = %e, "object storage admin request panicked");
    ApiError::Plain(ErrorCode::Internal, INTERNAL.into())
}

fn objects(w: &Gw) -> Result<Objects, ApiError> {
    Ok(gw(w)?.control.store().objects())
}

/// Runs a blocking object storage call off the async threads.
async fn blocking<T: Send + 'static>(
    w: &Gw,
    f: impl FnOnce(Objects) -> Result<T, ObjectError> + Send + 'static,
) -> Result<T, ApiError> {
    let objects = objects(w)?;
    tokio::task::spawn_blocking(move || f(objects))
        .await
        .map_err(panicked)?
        .map_err(object_error)
}

fn bucket_to_wire(b: nubo_control::objects::BucketInfo) -> BucketInfo {
    BucketInfo {
        name: b.name,
        objects: b.objects,
        bytes: b.bytes,
        created_at: rfc3339(b.created_at),
    }
}

fn object_to_wire(o: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: o.key,
        size: o.size,
        etag: o.etag,
        last_modified: rfc3339(o.last_modified),
        content_type: o.content_type,
    }
}

/// `GET /buckets`: every bucket with its object count and bytes.
pub(crate) async fn list_buckets(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let buckets = blocking(&w, |o| o.buckets()).await?;
    Ok(axum::Json(BucketList {
        buckets: buckets.into_iter().map(bucket_to_wire).collect(),
    }))
}

/// `PUT /buckets/{bucket}`: creates the bucket (201), or answers the existing one (200).
pub(crate) async fn create_bucket(
    State(w): State<Gw>,
    Path(bucket): Path<String>,
) -> Result<Response, ApiError> {
    let (created, info) = blocking(&w, move |o| {
        let created = o.create_bucket(&bucket)?;
        let info = o
            .bucket(&bucket)?
            .ok_or(ObjectError::NoSuchBucket(bucket))?;
        Ok((created, info))
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(bucket_to_wire(info))).into_response())
}

/// `DELETE /buckets/{bucket}`: deletes an empty bucket (409 `bucket_not_empty` otherwise).
pub(crate) async fn delete_bucket(
    State(w): State<Gw>,
    Path(bucket): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&w, move |o| o.delete_bucket(&bucket)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    prefix: Option<String>,
    delimiter: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /buckets/{bucket}/objects?prefix=&delimiter=&after=&limit=`: one page in key order.
pub(crate) async fn list_objects(
    State(w): State<Gw>,
    Path(bucket): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_OBJECTS {
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!(
                "limit {limit} is out of range; ask for 1 to {MAX_LIST_OBJECTS} objects a page"
            ),
        ));
    }
    let name = bucket.clone();
    let page = blocking(&w, move |o| {
        o.list(
            &name,
            q.prefix.as_deref().filter(|p| !p.is_empty()),
            q.delimiter.as_deref().filter(|d| !d.is_empty()),
            q.after.as_deref().filter(|a| !a.is_empty()),
            limit,
        )
    })
    .await?;
    Ok(axum::Json(ObjectList {
        bucket,
        objects: page.objects.into_iter().map(object_to_wire).collect(),
        common_prefixes: page.common_prefixes,
        next: page.next,
    }))
}

/// The content type and `x-nubo-meta-*` headers of a request, as put options.
fn put_options(headers: &HeaderMap) -> Result<PutOptions, ApiError> {
    let text = |name: &str, v: &HeaderValue| {
        v.to_str().map(str::to_string).map_err(|_| {
            ApiError::Plain(
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
            user_metadata.insert(meta.to_string(), text(name.as_str(), value)?);
        }
    }
    Ok(PutOptions {
        content_type,
        user_metadata,
        hop: 0,
    })
}

/// `PUT /buckets/{bucket}/objects/{key}`: writes the request body as the object, streaming it
/// to disk. `content-type` and `x-nubo-meta-*` headers become its metadata. Answers the etag.
pub(crate) async fn put_object(
    State(w): State<Gw>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let opts = put_options(&headers)?;
    let objects = objects(&w)?;
    // `Err(())` tells the writer the body broke off: it discards what it has.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, ()>>(CHANNEL_CHUNKS);
    // The writer checks the bucket, key and metadata before anything is read, so a request
    // that cannot succeed is refused without taking its body; it ends (dropping `rx`) on the
    // first error, which stops the reading below.
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<ObjectMeta>, ObjectError> {
        nubo_control::objects::validate_key(&key)?;
        nubo_control::objects::validate_options(&opts)?;
        if objects.bucket(&bucket)?.is_none() {
            return Err(ObjectError::NoSuchBucket(bucket));
        }
        let mut pending = objects.begin_put()?;
        while let Some(chunk) = rx.blocking_recv() {
            match chunk {
                Ok(chunk) => pending.write(&chunk)?,
                // Dropping `pending` removes its temporary file.
                Err(()) => return Ok(None),
            }
        }
        Ok(Some(pending.commit(&bucket, &key, opts)?))
    });
    let mut body = body;
    let mut failed: Option<String> = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                    && tx.send(Ok(data)).await.is_err()
                {
                    // The writer stopped: its error is the answer.
                    break;
                }
            }
            Some(Err(e)) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(why) = failed {
        // Fails only when the writer already stopped, which commits nothing either.
        let _ = tx.send(Err(())).await;
        drop(tx);
        let _ = writer.await;
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!("reading the object's body failed: {why}; send it again"),
        ));
    }
    drop(tx);
    let meta = writer.await.map_err(panicked)?.map_err(object_error)?;
    let Some(meta) = meta else {
        return Err(ApiError::Plain(ErrorCode::Internal, INTERNAL.into()));
    };
    let mut resp = (StatusCode::OK, axum::Json(object_to_wire(meta.clone()))).into_response();
    set_header(&mut resp, header::ETAG, &format!("\"{}\"", meta.etag));
    Ok(resp)
}

/// A `Range` request header, as far as it is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `bytes=a-b` or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`. Anything else (other units, several ranges,
/// bad syntax) is ignored as HTTP allows, and the whole object is served.
fn parse_range(v: &str) -> Option<RangeSpec> {
    let spec = v.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return b.parse().ok().map(RangeSpec::Suffix);
    }
    let first: u64 = a.parse().ok()?;
    if b.is_empty() {
        return Some(RangeSpec::From(first, None));
    }
    let last: u64 = b.parse().ok()?;
    (last >= first).then_some(RangeSpec::From(first, Some(last)))
}

/// Formats `t` as an HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`).
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // `2024-05-01T12:34:56.789Z`: take the civil date and time from the RFC 3339 form.
    let s = rfc3339(t);
    let month: usize = s.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        s.get(8..10).unwrap_or("01"),
        MONTHS[month.clamp(1, 12) - 1],
        s.get(0..4).unwrap_or("1970"),
        s.get(11..19).unwrap_or("00:00:00"),
    )
}

fn set_header(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The headers describing `meta`: etag, last-modified, content type and user metadata.
fn describe(resp: &mut Response, meta: &ObjectMeta) {
    set_header(resp, header::ETAG, &format!("\"{}\"", meta.etag));
    set_header(resp, header::LAST_MODIFIED, &http_date(meta.last_modified));
    set_header(
        resp,
        header::CONTENT_TYPE,
        meta.content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (name, value) in &meta.user_metadata {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(format!("{META_HEADER_PREFIX}{name}")),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
}

fn object_not_found(bucket: &str, key: &str) -> ApiError {
    let shown: String = key.chars().take(80).collect();
    object_error(ObjectError::NoSuchKey {
        bucket: bucket.to_string(),
        key: shown,
    })
}

/// `GET /buckets/{bucket}/objects/{key}`: the object's bytes, streamed; `Range: bytes=a-b`
/// answers 206 with that part.
pub(crate) async fn get_object(
    State(w): State<Gw>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let (b, k) = (bucket.clone(), key.clone());
    let opened = blocking(&w, move |o| {
        let range = match range {
            None => None,
            Some(RangeSpec::From(first, last)) => Some((first, last)),
            Some(RangeSpec::Suffix(n)) => {
                let Some(meta) = o.head(&b, &k)? else {
                    return Ok(None);
                };
                if n == 0 || meta.size == 0 {
                    return Err(ObjectError::RangeNotSatisfiable {
                        start: meta.size,
                        size: meta.size,
                    });
                }
                Some((meta.size.saturating_sub(n), None))
            }
        };
        Ok(o.open(&b, &k, range)?
            .map(|(meta, reader)| (meta, reader, range)))
    })
    .await?;
    let Some((meta, reader, range)) = opened else {
        return Err(object_not_found(&bucket, &key));
    };
    let len = reader.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            let chunk = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let stop = chunk.is_err();
            // A closed channel means the client went away.
            if tx.blocking_send(chunk).is_err() || stop {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    describe(&mut resp, &meta);
    set_header(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    if let Some((first, _)) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = first + len.saturating_sub(1);
        set_header(
            &mut resp,
            header::CONTENT_RANGE,
            &format!("bytes {first}-{last}/{}", meta.size),
        );
    }
    Ok(resp)
}

/// `HEAD /buckets/{bucket}/objects/{key}`: the headers a GET would answer, no body.
pub(crate) async fn head_object(
    State(w): State<Gw>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (b, k) = (bucket.clone(), key.clone());
    let Some(meta) = blocking(&w, move |o| o.head(&b, &k)).await? else {
        return Err(object_not_found(&bucket, &key));
    };
    let mut resp = Response::new(Body::empty());
    describe(&mut resp, &meta);
    set_header(&mut resp, header::CONTENT_LENGTH, &meta.size.to_string());
    Ok(resp)
}

/// `DELETE /buckets/{bucket}/objects/{key}`: 204 when deleted, 404 when there was none.
pub(crate) async fn delete_object(
    State(w): State<Gw>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (b, k) = (bucket.clone(), key.clone());
    if blocking(&w, move |o| o.delete(&b, &k)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(object_not_found(&bucket, &key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeSpec::From(0, Some(9))));
        assert_eq!(parse_range("bytes=5-"), Some(RangeSpec::From(5, None)));
        assert_eq!(parse_range("bytes=-3"), Some(RangeSpec::Suffix(3)));
        for ignored in ["bytes=9-5", "bytes=0-1,4-5", "items=0-1", "bytes=x-"] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn http_dates() {
        // RFC 9110's example date.
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn openapi_documents_the_object_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let paths = &doc["paths"];
        for (path, method) in [
            ("/_nubo/api/v1/buckets", "get"),
            ("/_nubo/api/v1/buckets/{bucket}", "put"),
            ("/_nubo/api/v1/buckets/{bucket}", "delete"),
            ("/_nubo/api/v1/buckets/{bucket}/objects", "get"),
            ("/_nubo/api/v1/buckets/{bucket}/objects/{key}", "put"),
            ("/_nubo/api/v1/buckets/{bucket}/objects/{key}", "get"),
            ("/_nubo/api/v1/buckets/{bucket}/objects/{key}", "head"),
            ("/_nubo/api/v1/buckets/{bucket}/objects/{key}", "delete"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
        for name in ["BucketInfo", "BucketList", "ObjectInfo", "ObjectList"] {
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "schema {name}"
            );
        }
    }
}
