//! Limits that bound what one user can make the server do. Each names the threat it bounds.

/// Default cap on a request body delivered to a function. Bounds memory a client can make a
/// function buffer; larger bodies are answered 413 `payload_too_large`.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 * 1024 * 1024;

/// Cap on one deploy upload (all components of an app together). Bounds disk and the time
/// spent hashing and compiling untrusted input.
pub const MAX_DEPLOY_BYTES: u64 = 256 * 1024 * 1024;

/// Cap on one component's size. Bounds compile time and memory for a single function.
pub const MAX_COMPONENT_BYTES: u64 = 128 * 1024 * 1024;

/// Cap on the log bytes kept per invocation; output past it is replaced by one marker line.
/// Bounds memory and disk a chatty (or hostile) function can consume.
pub const MAX_LOG_BYTES_PER_INVOCATION: usize = 64 * 1024;

/// Cap on the number of log lines kept per invocation (see [`MAX_LOG_BYTES_PER_INVOCATION`]).
pub const MAX_LOG_LINES_PER_INVOCATION: usize = 1_000;

/// Cap on one log line; longer lines are cut. Bounds a function printing without newlines.
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// Largest `memory` a function may ask for. Bounds the virtual address space of a pool slot.
pub const MAX_FUNCTION_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

/// Smallest `memory` a function may ask for: one wasm page.
pub const MIN_FUNCTION_MEMORY: u64 = 64 * 1024;

/// Longest `timeout` a function may ask for (as Lambda's 15 minutes).
pub const MAX_FUNCTION_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// Smallest `memory` a process function may ask for: below this no common language runtime
/// starts.
pub const MIN_PROCESS_MEMORY: u64 = 32 * 1024 * 1024;

/// Largest `memory` a process function may ask for (as Lambda's 10,240 MB).
pub const MAX_PROCESS_MEMORY: u64 = 10 * 1024 * 1024 * 1024;

/// Default `idle_timeout` of a process function's workers: idle workers stop after this, so
/// functions scale to zero.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// Longest `idle_timeout`. Bounds how long an unused worker holds memory.
pub const MAX_IDLE_TIMEOUT_MS: u64 = 24 * 3_600_000;

/// Default size of a process worker's private `/tmp`. Its pages count against the worker's
/// memory cap, so it stays well under the default `memory`.
pub const DEFAULT_TMP_BYTES: u64 = 64 * 1024 * 1024;

/// Largest `tmp` (as Lambda's 10,240 MB of ephemeral storage).
pub const MAX_TMP_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Most arguments in a process function's `command`, and the longest one in bytes.
pub const MAX_COMMAND_ARGS: usize = 64;
/// See [`MAX_COMMAND_ARGS`].
pub const MAX_COMMAND_ARG_BYTES: usize = 4096;

/// Most key-value stores one function may bind (`kv = [...]`).
pub const MAX_KV_BINDINGS: usize = 16;

/// Most object storage buckets one function may bind (`buckets = [...]`).
pub const MAX_BUCKET_BINDINGS: usize = 16;

/// Most queues one function may bind (`queues = [...]`) to publish to.
pub const MAX_QUEUE_BINDINGS: usize = 16;

/// Most triggers one app may declare, all kinds together.
pub const MAX_TRIGGERS_PER_APP: usize = 64;

/// Most messages a queue trigger delivers in one batch.
pub const MAX_QUEUE_BATCH: u32 = 100;

/// Longest a queue trigger waits to fill a batch.
pub const MAX_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// How many trigger deliveries one chain of events may pass through before Nubo stops it as
/// a loop (an object written by the function it triggers, a queue feeding its own publisher).
pub const MAX_TRIGGER_HOPS: u32 = 16;

/// Default function memory limit.
pub const DEFAULT_FUNCTION_MEMORY: u64 = 128 * 1024 * 1024;

/// Default function timeout.
pub const DEFAULT_FUNCTION_TIMEOUT_MS: u64 = 30_000;

/// Cap on the number of functions in one app. Bounds pool slots and compile work per deploy.
pub const MAX_FUNCTIONS_PER_APP: usize = 256;

/// Cap on the number of routes in one app. Bounds route table size and ambiguity checks.
pub const MAX_ROUTES_PER_APP: usize = 1_024;

/// Cap on the manifest's size. Bounds parser work on untrusted input.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Cap on environment variables per function, and on their total size.
pub const MAX_ENV_VARS: usize = 256;
/// See [`MAX_ENV_VARS`].
pub const MAX_ENV_BYTES: usize = 64 * 1024;

/// Default `max_concurrency` of a function: invocations of it that may run at once.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;

/// Largest `max_concurrency` a function may ask for. Bounds what one function's manifest can
/// claim of a server (the server-wide cap bounds it further).
pub const MAX_FUNCTION_CONCURRENCY: u32 = 100_000;

/// Default `queue_depth`: requests that may wait for a slot of a function at its limit.
pub const DEFAULT_QUEUE_DEPTH: u32 = 100;

/// Largest `queue_depth`. Bounds the connections and request heads a burst can make the
/// server hold while they wait (past it, requests are answered 429 at once).
pub const MAX_QUEUE_DEPTH: u32 = 10_000;

/// Default `queue_timeout`: how long a request waits for a slot before it is answered 429.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 10_000;

/// Longest `queue_timeout`. Bounds how long a waiting request holds its connection.
pub const MAX_QUEUE_TIMEOUT_MS: u64 = 60_000;

/// Default server-wide cap on invocations running at once (`NUBO_MAX_CONCURRENCY`).
/// Bounds the instances, memory and CPU all functions together can take from the machine.
pub const DEFAULT_SERVER_MAX_CONCURRENCY: u32 = 1_000;

/// Default `retry.max_attempts` of async invocations: the first attempt and two retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest `retry.max_attempts`.
pub const MAX_MAX_ATTEMPTS: u32 = 100;
/// Default `retry.max_age`: an async invocation not done 6 hours after it was accepted goes
/// to the dead-letter queue.
pub const DEFAULT_MAX_EVENT_AGE_MS: u64 = 6 * 3600 * 1000;
/// Largest `retry.max_age` (14 days).
pub const MAX_MAX_EVENT_AGE_MS: u64 = 14 * 24 * 3600 * 1000;
/// Default `retry.backoff`: the delay before the first retry (then doubling, with jitter).
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1_000;
/// Largest `retry.backoff`.
pub const MAX_RETRY_BACKOFF_MS: u64 = 3600 * 1000;

/// Cap on the unpacked size of a process function's code archive (all entries together, as
/// their headers declare it and as unpacking enforces it). Bounds the disk one revision can
/// take; Lambda's own cap on unzipped code is 250 MB.
pub const MAX_PROCESS_CODE_BYTES: u64 = 512 * 1024 * 1024;

/// Cap on the entries (files, folders and links) in one code archive. Bounds the inodes and
/// the time spent unpacking a deploy; a large `node_modules` holds some tens of thousands.
pub const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// Highest unpacked-to-compressed size ratio of a code archive entry, and of the archive as a
/// whole, once it unpacks to more than [`COMPRESSION_RATIO_FLOOR_BYTES`]. Bounds zip bombs:
/// real code compresses well under 20:1, a bomb by thousands.
pub const MAX_COMPRESSION_RATIO: u64 = 200;

/// Unpacked size below which [`MAX_COMPRESSION_RATIO`] is not enforced: small files of
/// repeated bytes (padding, blank lines) legitimately compress far better than 200:1, and
/// at this size they cannot fill a disk.
pub const COMPRESSION_RATIO_FLOOR_BYTES: u64 = 1024 * 1024;

/// Longest key-value key, in bytes of UTF-8. Bounds the index and the memory one key listing
/// takes; Cloudflare KV allows 512 bytes, DynamoDB 1 KiB (a partition and sort key together).
pub const MAX_KV_KEY_BYTES: usize = 1024;

/// Largest key-value value. Bounds the memory one get or set holds in the server and in a
/// guest, and keeps large objects in the object store where they belong.
pub const MAX_KV_VALUE_BYTES: usize = 1024 * 1024;

/// Most keys one key-value store holds. Bounds the disk a function writing keys in a loop can
/// fill; expired keys count until they are purged.
pub const MAX_KV_KEYS_PER_STORE: u64 = 1_000_000;

/// Most keys one batch operation (get-many, set-many, delete-many) names. Bounds the size of
/// one transaction and of the answer.
pub const MAX_KV_BATCH: usize = 1_000;

/// Most keys one key listing returns (later keys by cursor). Bounds the answer and the time
/// the read holds its connection.
pub const MAX_KV_LIST_LIMIT: usize = 1_000;

/// Longest object key, in bytes of UTF-8 (S3's limit). Bounds the index, the paths of listings
/// and the memory one listing page takes.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// Largest object written in one put (S3's limit for a single PUT). Bounds the disk one request
/// can fill before it is refused; larger objects are uploaded in parts.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Largest part of a multipart upload (S3's limit). Bounds the disk one part request can fill.
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Smallest part of a multipart upload, except the last (S3's rule). Bounds the number of part
/// files a large object is assembled from, and so the work of completing it.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// Highest part number of a multipart upload (parts are numbered 1 to this, S3's limit). Bounds
/// the rows and temporary files one upload can create.
pub const MAX_PARTS: u32 = 10_000;

/// Most bytes of user metadata (names and values of `x-amz-meta-*` / `x-nubo-meta-*` together)
/// one object carries (S3's limit). Bounds the metadata row and every HEAD answer.
pub const MAX_USER_METADATA_BYTES: usize = 2 * 1024;

/// Most objects (plus common prefixes) one listing page returns (S3's limit); later ones by
/// cursor. Bounds the answer and the time the read holds its connection.
pub const MAX_LIST_OBJECTS: usize = 1_000;

/// Largest secret value. Bounds the memory the decrypted snapshot holds per secret and what one
/// value adds to a function's environment; certificates and keys fit, files belong in buckets.
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;

/// Most secrets one app holds. Bounds the snapshot every server keeps decrypted in memory and
/// the admin listing.
pub const MAX_SECRETS_PER_APP: usize = 256;

/// Most outbound requests (`wasi:http` from a guest, allowed or refused) one invocation may
/// make. Bounds how far one request can be amplified into traffic towards other hosts (a guest
/// looping on a remote call, or used as a scanner); a process function's proxy counts the same.
pub const MAX_OUTBOUND_REQUESTS: u64 = 100;

/// Longest wait for one outbound request to connect and answer its status line (connect plus
/// first byte), capped further by the function's remaining time. Bounds how long a slow or
/// silent remote host holds an invocation's slot and a pooled connection attempt.
pub const OUTBOUND_REQUEST_TIMEOUT_MS: u64 = 30_000;
