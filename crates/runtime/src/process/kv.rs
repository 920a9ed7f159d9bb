//! The key-value HTTP API of process functions: `/nubo/v1/kv/...` served on a worker's own
//! Runtime API listener (so only that worker reaches it), scoped to the stores its function
//! binds in the manifest (`kv = ["carts"]`).
//!
//! `GET|HEAD|PUT|DELETE /nubo/v1/kv/{store}/{key}`, `POST …/{key}/increment`, `POST
//! …/{key}/cas`, `GET /nubo/v1/kv/{store}?prefix=&cursor=&limit=` (list) and `POST
//! /nubo/v1/kv/{store}:batch-get|batch-set|batch-delete`. Keys are percent-decoded from the
//! path, so `a%2Fb` and `a/b` both name the key `a/b`. Errors are Nubo's JSON errors
//! `{"error":{"code","message"}}`. `docs/kv.md` documents it for function authors.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use nubo_core::ErrorCode;
use nubo_core::limits::{MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES};
use nubo_store::kv::{Kv, KvError};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use std::time::Duration;

/// Where the API is served on the worker's Runtime API listener.
pub(crate) const PREFIX: &str = "/nubo/v1/kv";

/// Largest JSON request body (batches, increment, compare-and-swap) and largest sum of the
/// values one batch-get returns: bounds what one worker makes the server hold for a single
/// request. A bigger batch is split by the caller.
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Response header of `GET` carrying the value's version, to pass to compare-and-swap.
const VERSION_HEADER: &str = "nubo-kv-version";

type KvResponse = Response<Full<Bytes>>;

/// The stores one function's workers may reach: the server's key-value stores and the names
/// the function binds.
pub(crate) struct KvScope {
    /// `None` on a runtime built without a store (unit tests of other parts).
    kv: Option<Kv>,
    /// The function's name in the manifest, for the fix in a "not bound" error.
    function: String,
    /// The stores its `kv` list names.
    bound: Vec<String>,
}

impl KvScope {
    /// The scope of `function`, which binds the stores `bound`.
    pub(crate) fn new(kv: Option<Kv>, function: &str, bound: Vec<String>) -> KvScope {
        KvScope {
            kv,
            function: function.to_owned(),
            bound,
        }
    }

    /// A scope that reaches no store.
    pub(crate) fn none() -> KvScope {
        KvScope::new(None, "", Vec::new())
    }
}

/// A request that cannot be served: a public error code and a message naming the fix.
/// Shared with the object storage API (`objects`).
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::BadRequest, message)
    }

    pub(super) fn into_response(self) -> KvResponse {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &body)
    }
}

impl From<KvError> for Failure {
    fn from(e: KvError) -> Failure {
        let code = e.code();
        if code == ErrorCode::Internal {
            // The store's own failure: logged here, not shown with its internals.
            tracing::warn!(error = %e, "key-value store failed");
            return Failure::new(
                code,
                "the key-value store failed; the server log has details",
            );
        }
        Failure::new(code, e.to_string())
    }
}

/// One operation of the API, on a store.
#[derive(Debug, PartialEq)]
enum Op {
    Get(String),
    Head(String),
    Put(String),
    Delete(String),
    Increment(String),
    Cas(String),
    List,
    BatchGet,
    BatchSet,
    BatchDelete,
}

/// Serves one request whose path starts with [`PREFIX`].
pub(crate) async fn handle(scope: &KvScope, req: Request<Incoming>) -> KvResponse {
    match serve(scope, req).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

async fn serve(scope: &KvScope, req: Request<Incoming>) -> Result<KvResponse, Failure> {
    let (store, op) = parse(req.method(), req.uri().path())?;
    if !scope.bound.contains(&store) {
        return Err(not_bound(scope, &store));
    }
    let Some(kv) = scope.kv.clone() else {
        return Err(Failure::new(
            ErrorCode::Internal,
            "this server runs without key-value stores; start it with its data directory \
             (nubo server) to use them",
        ));
    };
    let query = Query::parse(req.uri().query())?;
    match op {
        Op::Get(key) => {
            query.only(&[])?;
            let found = blocking(move || kv.get_versioned(&store, &key)).await?;
            match found {
                Some(v) => {
                    let mut response = bytes_response(StatusCode::OK, Bytes::from(v.value));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    response
                        .headers_mut()
                        .insert(VERSION_HEADER, HeaderValue::from(v.version));
                    Ok(response)
                }
                None => Err(Failure::new(
                    ErrorCode::KvKeyNotFound,
                    "the store has no such key (never set, deleted, or its ttl passed)",
                )),
            }
        }
        Op::Head(key) => {
            query.only(&[])?;
            let exists = blocking(move || kv.exists(&store, &key)).await?;
            let status = if exists {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            Ok(bytes_response(status, Bytes::new()))
        }
        Op::Put(key) => {
            query.only(&["ttl"])?;
            let ttl = query.get("ttl").map(parse_ttl).transpose()?;
            let value = read_value(req.into_body()).await?;
            blocking(move || kv.set(&store, &key, &value, ttl)).await?;
            Ok(bytes_response(StatusCode::NO_CONTENT, Bytes::new()))
        }
        Op::Delete(key) => {
            query.only(&[])?;
            blocking(move || kv.delete(&store, &key)).await?;
            Ok(bytes_response(StatusCode::NO_CONTENT, Bytes::new()))
        }
        Op::List => {
            query.only(&["prefix", "cursor", "limit"])?;
            let prefix = query.get("prefix").map(str::to_owned);
            let cursor = query.get("cursor").map(str::to_owned);
            let limit = query
                .get("limit")
                .map(parse_limit)
                .transpose()?
                .unwrap_or(MAX_KV_LIST_LIMIT);
            let page =
                blocking(move || kv.list_keys(&store, prefix.as_deref(), cursor.as_deref(), limit))
                    .await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "keys": page.keys, "cursor": page.cursor }),
            ))
        }
        Op::Increment(key) => {
            query.only(&[])?;
            let body: Option<IncrementBody> = read_json(req.into_body()).await?;
            let delta = body.and_then(|b| b.delta).unwrap_or(1);
            let value = blocking(move || kv.increment(&store, &key, delta)).await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "value": value }),
            ))
        }
        Op::Cas(key) => {
            query.only(&[])?;
            let body: CasBody = required(read_json(req.into_body()).await?)?;
            let value = one_value(body.value, body.value_base64, "the cas body")?;
            let expected = body.expected_version;
            let swapped =
                blocking(move || kv.compare_and_swap(&store, &key, expected, &value)).await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "swapped": swapped }),
            ))
        }
        Op::BatchGet => {
            query.only(&[])?;
            let body: KeysBody = required(read_json(req.into_body()).await?)?;
            let keys = body.keys.clone();
            let values = blocking(move || kv.get_many(&store, &keys)).await?;
            let total: usize = values.iter().flatten().map(Vec::len).sum();
            if total > MAX_JSON_BYTES {
                return Err(Failure::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the values of this batch add up to {total} bytes, more than one \
                         batch-get returns ({MAX_JSON_BYTES}); ask for fewer keys at a time"
                    ),
                ));
            }
            let items: Vec<serde_json::Value> = body
                .keys
                .iter()
                .zip(values)
                .map(|(key, value)| {
                    serde_json::json!({
                        "key": key,
                        "value_base64": value.map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
                    })
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "items": items }),
            ))
        }
        Op::BatchSet => {
            query.only(&[])?;
            let body: ItemsBody = required(read_json(req.into_body()).await?)?;
            let mut items = Vec::with_capacity(body.items.len());
            for (i, item) in body.items.into_iter().enumerate() {
                let value = one_value(item.value, item.value_base64, &format!("items[{i}]"))?;
                items.push((item.key, value));
            }
            blocking(move || kv.set_many(&store, &items)).await?;
            Ok(bytes_response(StatusCode::NO_CONTENT, Bytes::new()))
        }
        Op::BatchDelete => {
            query.only(&[])?;
            let body: KeysBody = required(read_json(req.into_body()).await?)?;
            blocking(move || kv.delete_many(&store, &body.keys)).await?;
            Ok(bytes_response(StatusCode::NO_CONTENT, Bytes::new()))
        }
    }
}

/// The store and the operation a request names.
fn parse(method: &Method, path: &str) -> Result<(String, Op), Failure> {
    let usage = "use /nubo/v1/kv/{store}/{key} (GET, HEAD, PUT, DELETE), \
                 /nubo/v1/kv/{store}/{key}/increment or /cas (POST), /nubo/v1/kv/{store} (GET: \
                 list keys) or /nubo/v1/kv/{store}:batch-get, :batch-set, :batch-delete (POST)";
    let not_found = || {
        Failure::new(
            ErrorCode::NotFound,
            format!("{path} is not a key-value API path; {usage}"),
        )
    };
    let rest = path
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let (store_part, key_part) = rest.split_once('/').unwrap_or((rest, ""));
    let store_part = decode(store_part, "store name")?;
    let (store, action) = match store_part.split_once(':') {
        Some((store, action)) => (store.to_owned(), Some(action.to_owned())),
        None => (store_part, None),
    };
    if store.is_empty() {
        return Err(not_found());
    }
    let wrong_method = |allowed: &str| {
        Failure::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    };
    let op = match action.as_deref() {
        Some(action) => {
            if !key_part.is_empty() {
                return Err(not_found());
            }
            let op = match action {
                "batch-get" => Op::BatchGet,
                "batch-set" => Op::BatchSet,
                "batch-delete" => Op::BatchDelete,
                _ => return Err(not_found()),
            };
            if method != Method::POST {
                return Err(wrong_method("POST"));
            }
            op
        }
        None if key_part.is_empty() => {
            if method != Method::GET {
                return Err(wrong_method("GET (to list keys), or name a key"));
            }
            Op::List
        }
        None => match *method {
            Method::GET => Op::Get(key(key_part)?),
            Method::HEAD => Op::Head(key(key_part)?),
            Method::PUT => Op::Put(key(key_part)?),
            Method::DELETE => Op::Delete(key(key_part)?),
            Method::POST => {
                let (k, action) = key_part.rsplit_once('/').ok_or_else(not_found)?;
                let k = key(k)?;
                match action {
                    "increment" => Op::Increment(k),
                    "cas" => Op::Cas(k),
                    _ => return Err(not_found()),
                }
            }
            _ => {
                return Err(wrong_method(
                    "GET, HEAD, PUT, DELETE, or POST to …/increment or …/cas",
                ));
            }
        },
    };
    Ok((store, op))
}

/// A key from its (percent-encoded) path.
fn key(raw: &str) -> Result<String, Failure> {
    let key = decode(raw, "key")?;
    if key.is_empty() {
        return Err(Failure::bad("the key is empty; name a key after the store"));
    }
    Ok(key)
}

pub(super) fn decode(raw: &str, what: &str) -> Result<String, Failure> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            Failure::bad(format!(
                "the {what} is not UTF-8 once percent-decoded; percent-encode its UTF-8 bytes"
            ))
        })
}

fn not_bound(scope: &KvScope, store: &str) -> Failure {
    Failure::new(
        ErrorCode::KvStoreNotBound,
        format!(
            "function \"{}\" does not bind the key-value store \"{store}\"; add kv = [\"{store}\"] \
             to [function.{}] in nubo.toml and deploy again",
            scope.function, scope.function
        ),
    )
}

/// The query parameters of a request, form-decoded (`+` is a space).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Result<Query, Failure> {
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(&name.replace('+', " "), "query parameter name")?;
            let value = decode(&value.replace('+', " "), "query parameter value")?;
            params.push((name, value));
        }
        Ok(Query(params))
    }

    /// Refuses parameters other than `allowed` (a misspelt one would otherwise be ignored).
    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), Failure> {
        match self
            .0
            .iter()
            .find(|(name, _)| !allowed.contains(&name.as_str()))
        {
            None => Ok(()),
            Some((name, _)) if allowed.is_empty() => Err(Failure::bad(format!(
                "unknown query parameter \"{name}\": this request takes none"
            ))),
            Some((name, _)) => Err(Failure::bad(format!(
                "unknown query parameter \"{name}\": this request takes {}",
                allowed.join(", ")
            ))),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_ttl(raw: &str) -> Result<Duration, Failure> {
    let ttl = nubo_core::parse_duration(raw).map_err(|e| Failure::bad(format!("ttl: {e}")))?;
    if ttl.is_zero() {
        return Err(Failure::bad(
            "ttl is zero; give a positive duration like \"30s\", or leave it out to keep the key",
        ));
    }
    Ok(ttl)
}

fn parse_limit(raw: &str) -> Result<usize, Failure> {
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_KV_LIST_LIMIT).contains(&n) => Ok(n),
        _ => Err(Failure::bad(format!(
            "limit {raw:?} is not a number from 1 to {MAX_KV_LIST_LIMIT}; page with cursor for more"
        ))),
    }
}

/// Body of `…/increment`; an empty body adds 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    delta: Option<i64>,
}

/// Body of `…/cas`: the version the value must still have (`null`: the key must be absent)
/// and the new value, as text (`value`) or base64 (`value_base64`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    expected_version: Option<u64>,
    value: Option<String>,
    value_base64: Option<String>,
}

/// Body of `:batch-get` and `:batch-delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    keys: Vec<String>,
}

/// Body of `:batch-set`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsBody {
    items: Vec<Item>,
}

/// One key and value of `:batch-set`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
}

/// The value given as exactly one of text or base64.
fn one_value(text: Option<String>, b64: Option<String>, what: &str) -> Result<Vec<u8>, Failure> {
    match (text, b64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| Failure::bad(format!("{what}: value_base64 is not base64 ({e})"))),
        (Some(_), Some(_)) => Err(Failure::bad(format!(
            "{what} gives both value and value_base64; give one"
        ))),
        (None, None) => Err(Failure::bad(format!(
            "{what} has no value; give \"value\" (text) or \"value_base64\""
        ))),
    }
}

/// Runs a store call on the blocking pool (the store is SQLite).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KvError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(Failure::from),
        Err(e) => {
            tracing::warn!(error = %e, "a key-value call did not finish");
            Err(Failure::new(
                ErrorCode::Internal,
                "the key-value call did not finish; the server log has details",
            ))
        }
    }
}

/// A `PUT` body, at most [`MAX_KV_VALUE_BYTES`].
async fn read_value(body: Incoming) -> Result<Vec<u8>, Failure> {
    match Limited::new(body, MAX_KV_VALUE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Failure::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the value is larger than {MAX_KV_VALUE_BYTES} bytes, the most one key holds; \
                 store it in smaller pieces under several keys"
            ),
        )),
        Err(_) => Err(Failure::bad("the request body could not be read")),
    }
}

/// A JSON body of at most [`MAX_JSON_BYTES`]; `None` when the body is empty.
async fn read_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<Option<T>, Failure> {
    let bytes = match Limited::new(body, MAX_JSON_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Failure::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {MAX_JSON_BYTES} bytes; split the batch"),
            ));
        }
        Err(_) => return Err(Failure::bad("the request body could not be read")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Failure::bad(format!("the request body is not the expected JSON: {e}")))
}

/// A JSON body that must be there.
fn required<T>(body: Option<T>) -> Result<T, Failure> {
    body.ok_or_else(|| Failure::bad("the request body is empty; send a JSON object"))
}

pub(super) fn bytes_response(status: StatusCode, body: Bytes) -> KvResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> KvResponse {
    let mut response = bytes_response(status, Bytes::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &Method, path: &str) -> Result<(String, Op), ErrorCode> {
        parse(method, path).map_err(|f| f.code)
    }

    #[test]
    fn paths_name_a_store_and_an_operation() {
        let s = |op: Op| Ok(("carts".to_owned(), op));
        assert_eq!(
            op(&Method::GET, "/nubo/v1/kv/carts/a"),
            s(Op::Get("a".into()))
        );
        assert_eq!(
            op(&Method::GET, "/nubo/v1/kv/carts/a%2Fb%20c"),
            s(Op::Get("a/b c".into()))
        );
        // An unencoded slash is part of the key too.
        assert_eq!(
            op(&Method::PUT, "/nubo/v1/kv/carts/a/b"),
            s(Op::Put("a/b".into()))
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts/a/b/increment"),
            s(Op::Increment("a/b".into()))
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts/n%2Fcas/cas"),
            s(Op::Cas("n/cas".into()))
        );
        assert_eq!(op(&Method::GET, "/nubo/v1/kv/carts"), s(Op::List));
        assert_eq!(op(&Method::GET, "/nubo/v1/kv/carts/"), s(Op::List));
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts:batch-get"),
            s(Op::BatchGet)
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts%3Abatch-delete"),
            s(Op::BatchDelete)
        );
        assert_eq!(
            op(&Method::HEAD, "/nubo/v1/kv/carts/k"),
            s(Op::Head("k".into()))
        );
        assert_eq!(
            op(&Method::DELETE, "/nubo/v1/kv/carts/k"),
            s(Op::Delete("k".into()))
        );
    }

    #[test]
    fn bad_paths_and_methods_are_refused() {
        assert_eq!(op(&Method::GET, "/nubo/v1/kv"), Err(ErrorCode::NotFound));
        assert_eq!(op(&Method::GET, "/nubo/v1/kv/"), Err(ErrorCode::NotFound));
        assert_eq!(op(&Method::GET, "/nubo/v1/kvx/a"), Err(ErrorCode::NotFound));
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts/a"),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts/a/bump"),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts:batch-nope"),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(
            op(&Method::GET, "/nubo/v1/kv/carts:batch-get"),
            Err(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            op(&Method::PUT, "/nubo/v1/kv/carts"),
            Err(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            op(&Method::PATCH, "/nubo/v1/kv/carts/a"),
            Err(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(
            op(&Method::GET, "/nubo/v1/kv/carts/%FF"),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            op(&Method::POST, "/nubo/v1/kv/carts//increment"),
            Err(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn queries_are_form_decoded_and_checked() {
        let q = Query::parse(Some("prefix=a+b%2Fc&limit=10")).unwrap();
        assert_eq!(q.get("prefix"), Some("a b/c"));
        assert_eq!(q.get("limit"), Some("10"));
        assert!(q.only(&["prefix", "limit"]).is_ok());
        let e = q.only(&["prefix"]).unwrap_err();
        assert!(e.message.contains("\"limit\""), "{}", e.message);
        assert!(parse_limit("0").is_err());
        assert!(parse_limit(&(MAX_KV_LIST_LIMIT + 1).to_string()).is_err());
        assert_eq!(parse_limit("5").unwrap(), 5);
        assert_eq!(parse_ttl("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("30").is_err());
    }

    #[test]
    fn values_are_text_or_base64_never_both() {
        assert_eq!(one_value(Some("hi".into()), None, "x").unwrap(), b"hi");
        assert_eq!(one_value(None, Some("aGk=".into()), "x").unwrap(), b"hi");
        assert!(one_value(None, Some("!!".into()), "x").is_err());
        assert!(one_value(Some("a".into()), Some("YQ==".into()), "x").is_err());
        assert!(one_value(None, None, "x").is_err());
    }

    #[test]
    fn unbound_stores_name_the_fix() {
        let scope = KvScope::new(None, "api", vec!["carts".into()]);
        let f = not_bound(&scope, "users");
        assert_eq!(f.code, ErrorCode::KvStoreNotBound);
        assert!(
            f.message.contains("add kv = [\"users\"] to [function.api]"),
            "{}",
            f.message
        );
    }

    /// The API served by a real worker Runtime API server over loopback, on a real store.
    mod served {
        use crate::process::api::{self, Channel, Job};
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        use tokio::net::{TcpListener, TcpStream};

        /// Upper bound on any wait here.
        const PATIENCE: Duration = Duration::from_secs(15);

        struct Served {
            addr: std::net::SocketAddr,
            server: tokio::task::JoinHandle<()>,
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
            let kv = store.kv();
            kv.ensure_store("carts").unwrap();
            kv.ensure_store("users").unwrap();
            let scope = super::KvScope::new(
                Some(kv),
                "api",
                bound.iter().map(|s| (*s).to_owned()).collect(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (jobs, receiver) = tokio::sync::mpsc::channel(1);
            let channel = Arc::new(Channel::new(receiver, Instant::now()).with_kv(Arc::new(scope)));
            let server = tokio::spawn(api::serve(listener, channel));
            Served {
                addr,
                server,
                _jobs: jobs,
                _dir: dir,
            }
        }

        async fn call(
            addr: std::net::SocketAddr,
            method: &str,
            path: &str,
            body: &[u8],
        ) -> (u16, http::HeaderMap, Bytes) {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .header("host", addr.to_string())
                .body(Full::new(Bytes::copy_from_slice(body)))
                .unwrap();
            let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
                .await
                .expect("the API answers in time")
                .unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, headers, body)
        }

        fn json(body: &[u8]) -> serde_json::Value {
            serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
        }

        #[tokio::test]
        async fn a_bound_store_answers_every_operation() {
            let s = served(&["carts"]).await;
            let a = s.addr;
            assert_eq!(
                call(a, "PUT", "/nubo/v1/kv/carts/a%2Fb%20c", b"v1").await.0,
                204
            );
            let (status, headers, body) = call(a, "GET", "/nubo/v1/kv/carts/a/b%20c", b"").await;
            assert_eq!(status, 200);
            assert_eq!(&body[..], b"v1");
            assert_eq!(headers["content-type"], "application/octet-stream");
            let version: u64 = headers["nubo-kv-version"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();

            let (status, _, body) = call(a, "GET", "/nubo/v1/kv/carts/nope", b"").await;
            assert_eq!(status, 404);
            assert_eq!(json(&body)["error"]["code"], "kv_key_not_found");
            assert_eq!(call(a, "HEAD", "/nubo/v1/kv/carts/nope", b"").await.0, 404);
            assert_eq!(
                call(a, "HEAD", "/nubo/v1/kv/carts/a%2Fb%20c", b"").await.0,
                200
            );

            let inc = "/nubo/v1/kv/carts/n/increment";
            assert_eq!(
                json(&call(a, "POST", inc, br#"{"delta":5}"#).await.2)["value"],
                5
            );
            assert_eq!(json(&call(a, "POST", inc, b"").await.2)["value"], 6);

            let cas = "/nubo/v1/kv/carts/a%2Fb%20c/cas";
            let stale = format!(r#"{{"expected_version":{},"value":"x"}}"#, version + 1);
            assert_eq!(
                json(&call(a, "POST", cas, stale.as_bytes()).await.2)["swapped"],
                false
            );
            let fresh = format!(r#"{{"expected_version":{version},"value_base64":"djI="}}"#);
            assert_eq!(
                json(&call(a, "POST", cas, fresh.as_bytes()).await.2)["swapped"],
                true
            );
            assert_eq!(
                &call(a, "GET", "/nubo/v1/kv/carts/a%2Fb%20c", b"").await.2[..],
                b"v2"
            );

            let (status, _, body) = call(a, "GET", "/nubo/v1/kv/carts?prefix=a&limit=5", b"").await;
            assert_eq!(status, 200);
            assert_eq!(
                json(&body),
                serde_json::json!({"keys": ["a/b c"], "cursor": null})
            );

            let set = br#"{"items":[{"key":"x","value":"1"},{"key":"y","value":"2"}]}"#;
            assert_eq!(
                call(a, "POST", "/nubo/v1/kv/carts:batch-set", set).await.0,
                204
            );
            let (_, _, body) = call(
                a,
                "POST",
                "/nubo/v1/kv/carts:batch-get",
                br#"{"keys":["x","z"]}"#,
            )
            .await;
            assert_eq!(
                json(&body),
                serde_json::json!({"items": [
                    {"key": "x", "value_base64": "MQ=="},
                    {"key": "z", "value_base64": null}
                ]})
            );
            let del = br#"{"keys":["x","y"]}"#;
            assert_eq!(
                call(a, "POST", "/nubo/v1/kv/carts:batch-delete", del)
                    .await
                    .0,
                204
            );
            assert_eq!(call(a, "HEAD", "/nubo/v1/kv/carts/y", b"").await.0, 404);

            assert_eq!(
                call(a, "DELETE", "/nubo/v1/kv/carts/a%2Fb%20c", b"")
                    .await
                    .0,
                204
            );
            // Deleting is idempotent: an absent key is 204 too.
            assert_eq!(
                call(a, "DELETE", "/nubo/v1/kv/carts/a%2Fb%20c", b"")
                    .await
                    .0,
                204
            );
        }

        #[tokio::test]
        async fn stores_not_bound_and_bad_input_are_refused_with_the_fix() {
            let s = served(&["carts"]).await;
            let a = s.addr;
            // `users` exists but this function does not bind it.
            let (status, headers, body) = call(a, "GET", "/nubo/v1/kv/users/k", b"").await;
            assert_eq!(status, 403);
            assert_eq!(headers["content-type"], "application/json");
            let e = json(&body);
            assert_eq!(e["error"]["code"], "kv_store_not_bound");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(r#"add kv = ["users"] to [function.api]"#),
                "{message}"
            );
            let (status, _, body) = call(a, "PUT", "/nubo/v1/kv/carts/k?tll=3s", b"v").await;
            assert_eq!(status, 400);
            assert!(
                json(&body)["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("tll")
            );
            let too_big = vec![b'x'; nubo_core::limits::MAX_KV_VALUE_BYTES + 1];
            let (status, _, body) = call(a, "PUT", "/nubo/v1/kv/carts/k", &too_big).await;
            assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
            assert_eq!(call(a, "HEAD", "/nubo/v1/kv/carts/k", b"").await.0, 404);
            assert_eq!(call(a, "PUT", "/nubo/v1/kv/carts/t", b"text").await.0, 204);
            let (status, _, body) = call(
                a,
                "POST",
                "/nubo/v1/kv/carts/t/increment",
                br#"{"delta":1}"#,
            )
            .await;
            assert_eq!(status, 409);
            assert_eq!(json(&body)["error"]["code"], "kv_not_a_number");
            let (status, _, body) = call(
                a,
                "POST",
                "/nubo/v1/kv/carts/t/cas",
                br#"{"expected":1,"value":"x"}"#,
            )
            .await;
            assert_eq!(status, 400);
            assert!(
                json(&body)["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("expected")
            );
            // The Runtime API itself is still served beside it.
            let (status, _, _) = call(a, "GET", "/2018-06-01/runtime/restore/next", b"").await;
            assert_eq!(status, 200);
        }

        #[tokio::test]
        async fn a_ttl_expires_the_key() {
            let s = served(&["carts"]).await;
            let a = s.addr;
            assert_eq!(
                call(a, "PUT", "/nubo/v1/kv/carts/brief?ttl=200ms", b"v")
                    .await
                    .0,
                204
            );
            assert_eq!(
                call(a, "PUT", "/nubo/v1/kv/carts/kept?ttl=1h", b"v")
                    .await
                    .0,
                204
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(call(a, "GET", "/nubo/v1/kv/carts/brief", b"").await.0, 404);
            assert_eq!(call(a, "GET", "/nubo/v1/kv/carts/kept", b"").await.0, 200);
        }
    }
}
