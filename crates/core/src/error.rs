//! The registry of public error codes. Every error a client can see has exactly one entry here:
//! a stable snake_case name, an HTTP status and a one-line meaning. `docs/errors.md` lists them.

macro_rules! error_codes {
    ($($variant:ident => $name:literal, $status:literal, $meaning:literal;)*) => {
        /// A public error code. The name is a stable API: clients match on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(#[doc = $meaning] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable snake_case name sent in error bodies.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// One line saying what the code means.
            pub fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)* }
            }
        }
    };
}

error_codes! {
    RouteNotFound => "route_not_found", 404, "no route of any deployed app matches the request's method and path";
    MethodNotAllowed => "method_not_allowed", 405, "a route matches the path but not the method";
    PayloadTooLarge => "payload_too_large", 413, "the request body is larger than the limit for this endpoint";
    FunctionTimeout => "function_timeout", 504, "the function ran longer than its timeout and was stopped";
    MemoryLimitExceeded => "memory_limit_exceeded", 500, "the function tried to use more memory than its memory limit";
    FunctionTrap => "function_trap", 500, "the function trapped (a panic, unreachable code or an invalid memory access)";
    FunctionNoResponse => "function_no_response", 500, "the function returned without sending a response";
    FunctionCrashed => "function_crashed", 500, "the process function's worker exited during the invocation; the message carries its last log lines";
    FunctionInitFailed => "function_init_failed", 502, "the process function's runtime failed to start (bad handler, import error, crash before its first request)";
    FunctionError => "function_error", 502, "the process function's handler raised an error; the body is the runtime's error document and x-amz-function-error is set";
    FunctionBadResponse => "function_bad_response", 502, "the process function's result is not a valid HTTP response (e.g. statusCode is not a number)";
    FunctionUnavailable => "function_unavailable", 503, "the function's code is not loaded on this server";
    Throttled => "throttled", 429, "the function or server is at its concurrency limit; retry after the Retry-After delay";
    ShuttingDown => "shutting_down", 503, "the server is shutting down and takes no new requests";
    BadRequest => "bad_request", 400, "the request is malformed";
    InvalidManifest => "invalid_manifest", 400, "the app's nubo.toml is invalid";
    InvalidComponent => "invalid_component", 400, "a function's code is not a valid wasi:http component or process archive";
    CompileFailed => "compile_failed", 400, "a function's code could not be compiled within the limits";
    AppNotFound => "app_not_found", 404, "no app with that name is deployed";
    FunctionNotFound => "function_not_found", 404, "the app has no function with that name";
    InvocationNotFound => "invocation_not_found", 404, "no invocation with that id is recorded";
    InvocationNotQueued => "invocation_not_queued", 409, "the async invocation is no longer queued (it runs or ended), so it cannot be cancelled";
    RevisionNotFound => "revision_not_found", 404, "the app has no retained revision with that number";
    InvalidTraffic => "invalid_traffic", 400, "a traffic split or rollout is invalid (weights must name retained revisions once and sum to 100)";
    Conflict => "conflict", 409, "the app changed since the state the request expected; the body carries the current state";
    RolloutInProgress => "rollout_in_progress", 409, "a rollout of the app is running; wait for it to end or abort it first";
    RolloutNotFound => "rollout_not_found", 404, "the app has no rollout running (or none at all)";
    KvStoreNotFound => "kv_store_not_found", 404, "no key-value store with that name exists; bind it in a function's kv = [...] and deploy, or create it with nubo kv create";
    KvKeyNotFound => "kv_key_not_found", 404, "the key-value store has no such key (or it expired)";
    KvInvalidKey => "kv_invalid_key", 400, "a key-value key or store name is invalid (empty, longer than 1024 bytes, holding a NUL) or a batch names more than 1000 keys";
    KvStoreFull => "kv_store_full", 507, "the key-value store holds its maximum of 1000000 keys; delete keys or give them a TTL";
    KvNotANumber => "kv_not_a_number", 409, "the key-value value cannot be incremented: it is not a signed 64-bit decimal number, or the sum would overflow";
    KvStoreNotBound => "kv_store_not_bound", 403, "the function did not bind that key-value store; add it to the function's kv = [...] in nubo.toml and deploy";
    BucketNotFound => "bucket_not_found", 404, "no object storage bucket with that name exists; bind it in a function's buckets = [...] and deploy, or create it with nubo obj mb";
    BucketNotEmpty => "bucket_not_empty", 409, "the bucket still holds objects or unfinished multipart uploads; delete them first";
    BucketNotBound => "bucket_not_bound", 403, "the function did not bind that bucket; add it to the function's buckets = [...] in nubo.toml and deploy";
    InvalidBucketName => "invalid_bucket_name", 400, "the bucket name breaks the S3 naming rules (3 to 63 lowercase letters, digits, dots or hyphens)";
    ObjectNotFound => "object_not_found", 404, "the bucket has no object with that key";
    InvalidObjectKey => "invalid_object_key", 400, "an object key is invalid (empty, longer than 1024 bytes or holding a NUL) or user metadata is too large or malformed";
    RangeNotSatisfiable => "range_not_satisfiable", 416, "the requested byte range starts beyond the end of the object";
    UploadNotFound => "upload_not_found", 404, "no unfinished multipart upload with that id exists (it was completed or aborted)";
    InvalidPart => "invalid_part", 400, "a multipart upload names a part that was not uploaded, whose etag differs, out of order, or smaller than 5 MiB while not the last";
    SecretNotFound => "secret_not_found", 404, "the app has no secret with that name; set it with nubo secrets set APP NAME";
    InvalidSecret => "invalid_secret", 400, "a secret name or value is invalid (names: 1 to 63 lowercase letters, digits, - or _; values: at most 64 KiB) or the app holds its maximum of 256 secrets";
    SecretNotSet => "secret_not_set", 400, "a function's env names a secret that is not set for the app; set it with nubo secrets set APP NAME, then deploy";
    NotFound => "not_found", 404, "no such endpoint";
    Forbidden => "forbidden", 403, "the admin API accepts requests only from loopback unless an admin key is configured";
    Internal => "internal", 500, "Nubo failed while handling the request; the server log has details";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!((400..600).contains(&code.status()));
        }
    }
}

#[cfg(test)]
mod docs_tests {
    use super::ErrorCode;

    /// docs/errors.md must list every code with its status and meaning, so it stays true.
    #[test]
    fn docs_list_every_code() {
        let doc = include_str!("../../../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = format!(
                "| `{}` | {} | {} |",
                code.as_str(),
                code.status(),
                code.meaning()
            );
            assert!(
                doc.contains(&row),
                "docs/errors.md lacks or misstates: {row}"
            );
        }
    }
}
