//! The S3 operations Nubo serves, each a translation between s3s's request and response types
//! and [`Objects`]. Store calls run on blocking threads; object bytes stream both ways.

use super::transfer;
use base64::Engine as _;
use nubo_control::objects::{ObjectError, ObjectMeta, Objects, PutOptions};
use nubo_core::ErrorCode;
use nubo_core::limits::{MAX_LIST_OBJECTS, MAX_OBJECT_BYTES, MAX_PART_BYTES};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use std::collections::BTreeMap;

/// The owner every bucket and object is reported under (one key pair, one owner).
const OWNER: &str = "nubo";

/// Keys one DeleteObjects request may name (S3's limit).
const MAX_DELETE_KEYS: usize = 1000;

/// What `encoding-type=url` leaves as is: S3 encodes everything but unreserved characters and
/// `/`; clients decode with form rules, so a literal `+` must not pass unencoded.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The S3 API over the object store.
#[derive(Clone)]
pub(crate) struct NuboS3 {
    pub(crate) objects: Objects,
}

/// The S3 error for a store error; internal failures are logged and answered without detail.
pub(crate) fn s3_error(e: ObjectError) -> S3Error {
    let code = match &e {
        ObjectError::NoSuchBucket(_) => S3ErrorCode::NoSuchBucket,
        ObjectError::BadBucketName(_) => S3ErrorCode::InvalidBucketName,
        ObjectError::BucketNotEmpty(_) => S3ErrorCode::BucketNotEmpty,
        ObjectError::NoSuchKey { .. } => S3ErrorCode::NoSuchKey,
        ObjectError::NoSuchUpload(_) => S3ErrorCode::NoSuchUpload,
        // The store's reasons are stable sentences; S3 has a code for each of these.
        ObjectError::InvalidPart { reason } if reason.contains("must be at least") => {
            S3ErrorCode::EntityTooSmall
        }
        ObjectError::InvalidPart { reason } if reason.contains("ascending order") => {
            S3ErrorCode::InvalidPartOrder
        }
        ObjectError::InvalidPart { .. } => S3ErrorCode::InvalidPart,
        ObjectError::InvalidKey { reason, .. } if reason.contains("longer than") => {
            S3ErrorCode::KeyTooLongError
        }
        ObjectError::InvalidKey { .. } => S3ErrorCode::InvalidArgument,
        ObjectError::BadMetadata { reason } if reason.contains("more than the limit") => {
            S3ErrorCode::MetadataTooLarge
        }
        ObjectError::BadMetadata { .. } => S3ErrorCode::InvalidArgument,
        ObjectError::TooLarge { .. } => S3ErrorCode::EntityTooLarge,
        ObjectError::RangeNotSatisfiable { .. } => S3ErrorCode::InvalidRange,
        _ if e.code() == ErrorCode::Internal => {
            tracing::error!(error = %e, "S3 request failed in the object store");
            return S3Error::with_message(
                S3ErrorCode::InternalError,
                "Nubo failed while handling the request; the server log has details",
            );
        }
        _ => S3ErrorCode::InvalidRequest,
    };
    S3Error::with_message(code, e.to_string())
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    objects: &Objects,
    f: impl FnOnce(Objects) -> Result<T, ObjectError> + Send + 'static,
) -> S3Result<T> {
    let objects = objects.clone();
    tokio::task::spawn_blocking(move || f(objects))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "S3 store call panicked");
            S3Error::with_message(
                S3ErrorCode::InternalError,
                "Nubo failed while handling the request; the server log has details",
            )
        })?
        .map_err(s3_error)
}

fn ok<T>(output: T) -> S3Result<S3Response<T>> {
    Ok(S3Response::new(output))
}

fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER.into()),
        id: Some(OWNER.into()),
    }
}

fn etag(meta: &ObjectMeta) -> ETag {
    ETag::Strong(meta.etag.clone())
}

fn put_options(content_type: Option<String>, metadata: Option<Metadata>) -> PutOptions {
    PutOptions {
        content_type,
        user_metadata: metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect::<BTreeMap<_, _>>(),
        hop: 0,
    }
}

fn metadata(meta: &ObjectMeta) -> Option<Metadata> {
    (!meta.user_metadata.is_empty()).then(|| {
        meta.user_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Refuses a declared body length over `limit` before any byte is read.
fn check_length(declared: Option<i64>, limit: u64, what: &str, fix: &str) -> S3Result<()> {
    match declared {
        Some(n) if n > 0 && n as u64 > limit => Err(S3Error::with_message(
            S3ErrorCode::EntityTooLarge,
            format!("{what} of {n} bytes is larger than the limit of {limit} bytes; {fix}"),
        )),
        _ => Ok(()),
    }
}

/// A max-keys value as a page size: S3's default and cap is 1000; 0 asks for nothing.
fn page_size(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        None => Ok(MAX_LIST_OBJECTS),
        Some(n) if n < 0 => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "max-keys must not be negative",
        )),
        Some(n) => Ok((n as usize).min(MAX_LIST_OBJECTS)),
    }
}

/// What a listing shows of a key, prefix or marker: as is, or percent-encoded when the client
/// asked for `encoding-type=url`.
struct Encoding(bool);

impl Encoding {
    fn new(asked: Option<&EncodingType>) -> S3Result<Encoding> {
        match asked.map(EncodingType::as_str) {
            None => Ok(Encoding(false)),
            Some(EncodingType::URL) => Ok(Encoding(true)),
            Some(other) => Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("encoding-type {other:?} is not supported; use \"url\" or leave it out"),
            )),
        }
    }

    fn show(&self, s: &str) -> String {
        if self.0 {
            utf8_percent_encode(s, URL_ENCODE).to_string()
        } else {
            s.to_owned()
        }
    }

    fn show_opt(&self, s: Option<&str>) -> Option<String> {
        s.map(|s| self.show(s))
    }

    fn output(&self) -> Option<EncodingType> {
        self.0.then(|| EncodingType::from_static(EncodingType::URL))
    }
}

/// A continuation token: the store's "after" cursor, opaque to clients.
fn encode_token(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "the continuation token is not one this server gave out; start the listing again without it",
            )
        })
}

/// One page of a listing, shared by ListObjects and ListObjectsV2.
struct Listing {
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    next: Option<String>,
}

async fn list_page(
    objects: &Objects,
    bucket: &str,
    prefix: Option<String>,
    delimiter: Option<String>,
    after: Option<String>,
    limit: usize,
    enc: &Encoding,
) -> S3Result<Listing> {
    if limit == 0 {
        // Nothing asked for: still report a missing bucket.
        let b = bucket.to_owned();
        blocking(objects, move |o| {
            o.bucket(&b)?
                .map(|_| ())
                .ok_or(ObjectError::NoSuchBucket(b))
        })
        .await?;
        return Ok(Listing {
            objects: Vec::new(),
            prefixes: Vec::new(),
            next: None,
        });
    }
    let b = bucket.to_owned();
    let page = blocking(objects, move |o| {
        o.list(
            &b,
            prefix.as_deref().filter(|p| !p.is_empty()),
            delimiter.as_deref().filter(|d| !d.is_empty()),
            after.as_deref().filter(|a| !a.is_empty()),
            limit,
        )
    })
    .await?;
    Ok(Listing {
        objects: page
            .objects
            .iter()
            .map(|m| Object {
                key: Some(enc.show(&m.key)),
                size: Some(size(m.size)),
                e_tag: Some(etag(m)),
                last_modified: Some(m.last_modified.into()),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                owner: Some(owner()),
                ..Default::default()
            })
            .collect(),
        prefixes: page
            .common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc.show(p)),
            })
            .collect(),
        next: page.next,
    })
}

/// The first byte and last byte (inclusive, or to the end) a Range header asks for.
async fn resolve_range(
    objects: &Objects,
    bucket: &str,
    key: &str,
    range: Option<Range>,
) -> S3Result<Option<(u64, Option<u64>)>> {
    match range {
        None => Ok(None),
        Some(Range::Int { first, last }) => Ok(Some((first, last))),
        Some(Range::Suffix { length }) => {
            // The last `length` bytes: the size decides where they start.
            let (b, k) = (bucket.to_owned(), key.to_owned());
            let meta = blocking(objects, move |o| o.head(&b, &k))
                .await?
                .ok_or_else(|| no_such_key(bucket, key))?;
            if length == 0 || meta.size == 0 {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidRange,
                    format!(
                        "the range asks for the last {length} bytes of an object of {} bytes; ask for at least one byte of a non-empty object",
                        meta.size
                    ),
                ));
            }
            Ok(Some((meta.size.saturating_sub(length), None)))
        }
    }
}

fn no_such_key(bucket: &str, key: &str) -> S3Error {
    s3_error(ObjectError::NoSuchKey {
        bucket: bucket.to_owned(),
        key: key.chars().take(80).collect(),
    })
}

/// Streams `body` into the store through `write`, which runs on a blocking thread with a
/// reader of the body; a body that does not arrive whole leaves nothing behind.
async fn upload<T: Send + 'static>(
    objects: &Objects,
    body: Option<StreamingBlob>,
    write: impl FnOnce(Objects, &mut transfer::UploadReader) -> Result<T, ObjectError> + Send + 'static,
) -> S3Result<T> {
    let (tx, mut reader) = transfer::upload_channel();
    let objects = objects.clone();
    let disk = tokio::task::spawn_blocking(move || write(objects, &mut reader));
    let fed = transfer::pump(body, tx).await;
    let written = disk.await.map_err(|e| {
        tracing::error!(error = %e, "S3 upload panicked");
        S3Error::with_message(
            S3ErrorCode::InternalError,
            "Nubo failed while handling the request; the server log has details",
        )
    })?;
    // The body's own failure explains an interrupted write better than the write's error.
    fed?;
    written.map_err(s3_error)
}

/// Writes what `reader` yields into a new object, committed only when the body ended whole.
fn put_from(
    objects: &Objects,
    reader: &mut transfer::UploadReader,
    bucket: &str,
    key: &str,
    opts: PutOptions,
) -> Result<ObjectMeta, ObjectError> {
    let mut pending = objects.begin_put()?;
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => pending.write(&chunk)?,
            Ok(None) => break,
            Err(source) => {
                // Dropping the pending put discards its temporary file.
                return Err(ObjectError::Io {
                    doing: "receive",
                    path: format!("the body of {key:?}").into(),
                    source,
                });
            }
        }
    }
    pending.commit(bucket, key, opts)
}

#[async_trait::async_trait]
impl S3 for NuboS3 {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = blocking(&self.objects, |o| o.buckets()).await?;
        ok(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(b.created_at.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            owner: Some(owner()),
            ..Default::default()
        })
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        let b = bucket.clone();
        let created = blocking(&self.objects, move |o| o.create_bucket(&b)).await?;
        if !created {
            return Err(S3Error::with_message(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("bucket {bucket:?} already exists and is yours; use it as it is"),
            ));
        }
        ok(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        })
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        blocking(&self.objects, move |o| o.delete_bucket(&bucket)).await?;
        ok(DeleteBucketOutput::default())
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let bucket = req.input.bucket;
        blocking(&self.objects, move |o| {
            o.bucket(&bucket)?
                .map(|_| ())
                .ok_or(ObjectError::NoSuchBucket(bucket))
        })
        .await?;
        ok(HeadBucketOutput::default())
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let bucket = req.input.bucket;
        blocking(&self.objects, move |o| {
            o.bucket(&bucket)?
                .map(|_| ())
                .ok_or(ObjectError::NoSuchBucket(bucket))
        })
        .await?;
        // No location constraint: the default region, whatever region clients sign for.
        ok(GetBucketLocationOutput::default())
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        check_length(
            input.content_length,
            MAX_OBJECT_BYTES,
            "the object",
            "upload it as a multipart upload (parts of 5 MiB to 5 GiB)",
        )?;
        let opts = put_options(input.content_type, input.metadata);
        let (bucket, key) = (input.bucket, input.key);
        // A missing bucket or a bad key fails before the body is read.
        let (b, k) = (bucket.clone(), key.clone());
        blocking(&self.objects, move |o| {
            nubo_control::objects::validate_key(&k)?;
            o.bucket(&b)?
                .map(|_| ())
                .ok_or(ObjectError::NoSuchBucket(b))
        })
        .await?;
        let meta = upload(&self.objects, input.body, move |o, reader| {
            put_from(&o, reader, &bucket, &key, opts)
        })
        .await?;
        ok(PutObjectOutput {
            e_tag: Some(etag(&meta)),
            size: Some(size(meta.size)),
            ..Default::default()
        })
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket, input.key);
        let range = resolve_range(&self.objects, &bucket, &key, input.range).await?;
        let (b, k) = (bucket.clone(), key.clone());
        let (meta, reader) = blocking(&self.objects, move |o| o.open(&b, &k, range))
            .await?
            .ok_or_else(|| no_such_key(&bucket, &key))?;
        let sent = reader.len();
        let content_range = range.map(|(first, _)| {
            let last = (first + sent).saturating_sub(1);
            format!("bytes {first}-{last}/{}", meta.size)
        });
        ok(GetObjectOutput {
            body: Some(transfer::download(reader)),
            content_length: Some(size(sent)),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta)),
            last_modified: Some(meta.last_modified.into()),
            metadata: metadata(&meta),
            ..Default::default()
        })
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let (bucket, key) = (req.input.bucket, req.input.key);
        let (b, k) = (bucket.clone(), key.clone());
        let meta = blocking(&self.objects, move |o| o.head(&b, &k))
            .await?
            .ok_or_else(|| no_such_key(&bucket, &key))?;
        ok(HeadObjectOutput {
            content_length: Some(size(meta.size)),
            accept_ranges: Some("bytes".into()),
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta)),
            last_modified: Some(meta.last_modified.into()),
            metadata: metadata(&meta),
            ..Default::default()
        })
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket, req.input.key);
        // S3 answers a delete of a missing key with success too.
        blocking(&self.objects, move |o| o.delete(&bucket, &key)).await?;
        ok(DeleteObjectOutput::default())
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let quiet = input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        if keys.len() > MAX_DELETE_KEYS {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                format!(
                    "a DeleteObjects request names at most {MAX_DELETE_KEYS} keys; it named {}",
                    keys.len()
                ),
            ));
        }
        let bucket = input.bucket;
        let results = blocking(&self.objects, move |o| {
            // A missing bucket fails the whole request, as in S3.
            if o.bucket(&bucket)?.is_none() {
                return Err(ObjectError::NoSuchBucket(bucket));
            }
            Ok(keys
                .into_iter()
                .map(|k| {
                    let r = o.delete(&bucket, &k);
                    (k, r)
                })
                .collect::<Vec<_>>())
        })
        .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, result) in results {
            match result {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let e = s3_error(e);
                    errors.push(Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(key),
                        message: e.message().map(str::to_owned),
                        version_id: None,
                    });
                }
            }
        }
        ok(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        })
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let enc = Encoding::new(input.encoding_type.as_ref())?;
        let limit = page_size(input.max_keys)?;
        let page = list_page(
            &self.objects,
            &input.bucket,
            input.prefix.clone(),
            input.delimiter.clone(),
            input.marker.clone(),
            limit,
            &enc,
        )
        .await?;
        ok(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc.show(input.prefix.as_deref().unwrap_or(""))),
            delimiter: enc.show_opt(input.delimiter.as_deref()),
            marker: Some(enc.show(input.marker.as_deref().unwrap_or(""))),
            max_keys: Some(limit as i32),
            is_truncated: Some(page.next.is_some()),
            next_marker: enc.show_opt(page.next.as_deref()),
            contents: Some(page.objects),
            common_prefixes: Some(page.prefixes),
            encoding_type: enc.output(),
            ..Default::default()
        })
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let enc = Encoding::new(input.encoding_type.as_ref())?;
        let limit = page_size(input.max_keys)?;
        // A continuation token wins over start-after: it is where the last page stopped.
        let after = match input.continuation_token.as_deref() {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let page = list_page(
            &self.objects,
            &input.bucket,
            input.prefix.clone(),
            input.delimiter.clone(),
            after,
            limit,
            &enc,
        )
        .await?;
        let key_count = page.objects.len() + page.prefixes.len();
        ok(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc.show(input.prefix.as_deref().unwrap_or(""))),
            delimiter: enc.show_opt(input.delimiter.as_deref()),
            max_keys: Some(limit as i32),
            key_count: Some(key_count as i32),
            continuation_token: input.continuation_token,
            start_after: enc.show_opt(input.start_after.as_deref()),
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.as_deref().map(encode_token),
            contents: Some(page.objects),
            common_prefixes: Some(page.prefixes),
            encoding_type: enc.output(),
            ..Default::default()
        })
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = input.copy_source
        else {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "copying from an access point is not supported; name the source as BUCKET/KEY",
            ));
        };
        if version_id.is_some() {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "Nubo buckets are not versioned; copy the source without a versionId",
            ));
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let new_opts = put_options(input.content_type, input.metadata);
        let (bucket, key) = (input.bucket, input.key);
        let (src_bucket, src_key) = (src_bucket.to_string(), src_key.to_string());
        let meta = blocking(&self.objects, move |o| {
            let Some((src, mut reader)) = o.open(&src_bucket, &src_key, None)? else {
                return Err(ObjectError::NoSuchKey {
                    bucket: src_bucket,
                    key: src_key.chars().take(80).collect(),
                });
            };
            let opts = if replace {
                new_opts
            } else {
                PutOptions {
                    content_type: src.content_type,
                    user_metadata: src.user_metadata,
                    hop: 0,
                }
            };
            o.put(&bucket, &key, &mut reader, opts)
        })
        .await?;
        ok(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta)),
                last_modified: Some(meta.last_modified.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let opts = put_options(input.content_type, input.metadata);
        let (bucket, key) = (input.bucket, input.key);
        let (b, k) = (bucket.clone(), key.clone());
        let upload_id = blocking(&self.objects, move |o| o.create_multipart(&b, &k, opts)).await?;
        ok(CreateMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            upload_id: Some(upload_id),
            ..Default::default()
        })
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        check_length(
            input.content_length,
            MAX_PART_BYTES,
            "the part",
            "split the object into more, smaller parts",
        )?;
        let part_number = u32::try_from(input.part_number).map_err(|_| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "part numbers run from 1 to 10000",
            )
        })?;
        let upload_id = input.upload_id;
        let etag = upload(&self.objects, input.body, move |o, reader| {
            o.upload_part(&upload_id, part_number, reader)
        })
        .await?;
        ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        })
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let mut parts = Vec::new();
        for p in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            let (Some(n), Some(tag)) = (p.part_number, p.e_tag) else {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidPart,
                    "every part of CompleteMultipartUpload needs a PartNumber and an ETag",
                ));
            };
            let n = u32::try_from(n).map_err(|_| {
                S3Error::with_message(S3ErrorCode::InvalidPart, "part numbers run from 1 to 10000")
            })?;
            parts.push((n, tag.value().to_owned()));
        }
        if parts.is_empty() {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "CompleteMultipartUpload lists no parts; name every uploaded part with its ETag",
            ));
        }
        let upload_id = input.upload_id;
        let meta = blocking(&self.objects, move |o| {
            o.complete_multipart(&upload_id, &parts)
        })
        .await?;
        ok(CompleteMultipartUploadOutput {
            bucket: Some(meta.bucket.clone()),
            key: Some(meta.key.clone()),
            e_tag: Some(etag(&meta)),
            location: Some(format!("/{}/{}", meta.bucket, meta.key)),
            ..Default::default()
        })
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id;
        blocking(&self.objects, move |o| o.abort_multipart(&upload_id)).await?;
        ok(AbortMultipartUploadOutput::default())
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let enc = Encoding::new(input.encoding_type.as_ref())?;
        let bucket = input.bucket.clone();
        let all = blocking(&self.objects, move |o| o.list_multipart(&bucket)).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input
            .max_uploads
            .map_or(MAX_LIST_OBJECTS, |n| n.clamp(0, 1000) as usize);
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone().unwrap_or_default();
        let mut matching = all.into_iter().filter(|(key, id, _)| {
            key.starts_with(&prefix)
                && (key_marker.is_empty()
                    || key.as_str() > key_marker.as_str()
                    || (key == &key_marker
                        && !id_marker.is_empty()
                        && id.as_str() > id_marker.as_str()))
        });
        let uploads: Vec<_> = matching.by_ref().take(max).collect();
        let truncated = matching.next().is_some();
        let last = uploads.last().cloned();
        ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix.as_deref().map(|p| enc.show(p)),
            key_marker: input.key_marker.as_deref().map(|k| enc.show(k)),
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: last
                .as_ref()
                .filter(|_| truncated)
                .map(|(k, _, _)| enc.show(k)),
            next_upload_id_marker: last.filter(|_| truncated).map(|(_, id, _)| id),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(key, id, started)| MultipartUpload {
                        key: Some(enc.show(&key)),
                        upload_id: Some(id),
                        initiated: Some(started.into()),
                        owner: Some(owner()),
                        initiator: Some(Initiator {
                            display_name: Some(OWNER.into()),
                            id: Some(OWNER.into()),
                        }),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            encoding_type: enc.output(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_strangers_are_refused() {
        for after in ["", "a", "photos/", "ключ with spaces+plus/and%"] {
            assert_eq!(decode_token(&encode_token(after)).unwrap(), after);
        }
        let err = decode_token("not a token!").unwrap_err();
        assert_eq!(*err.code(), S3ErrorCode::InvalidArgument);
    }

    #[test]
    fn url_encoding_keeps_slashes_and_escapes_plus_and_spaces() {
        let enc = Encoding::new(Some(&EncodingType::from_static(EncodingType::URL))).unwrap();
        assert_eq!(enc.show("a b+c/d~e.f"), "a%20b%2Bc/d~e.f");
        assert_eq!(Encoding::new(None).unwrap().show("a b"), "a b");
        assert!(Encoding::new(Some(&EncodingType::from_static("xml"))).is_err());
    }

    #[test]
    fn store_errors_become_s3_codes() {
        let cases = [
            (
                ObjectError::NoSuchBucket("b".into()),
                S3ErrorCode::NoSuchBucket,
            ),
            (
                ObjectError::BucketNotEmpty("b".into()),
                S3ErrorCode::BucketNotEmpty,
            ),
            (
                ObjectError::NoSuchUpload("u".into()),
                S3ErrorCode::NoSuchUpload,
            ),
            (
                ObjectError::RangeNotSatisfiable { start: 9, size: 3 },
                S3ErrorCode::InvalidRange,
            ),
            (
                ObjectError::TooLarge {
                    what: "the object",
                    limit: 1,
                    fix: "split it",
                },
                S3ErrorCode::EntityTooLarge,
            ),
            (
                ObjectError::NoSuchKey {
                    bucket: "b".into(),
                    key: "k".into(),
                },
                S3ErrorCode::NoSuchKey,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(*s3_error(e).code(), code);
        }
        let internal = s3_error(ObjectError::Corrupt("a secret path".into()));
        assert_eq!(*internal.code(), S3ErrorCode::InternalError);
        assert!(!internal.message().unwrap().contains("secret"));
    }

    #[test]
    fn page_sizes_follow_s3() {
        assert_eq!(page_size(None).unwrap(), 1000);
        assert_eq!(page_size(Some(5000)).unwrap(), 1000);
        assert_eq!(page_size(Some(0)).unwrap(), 0);
        assert!(page_size(Some(-1)).is_err());
    }
}
