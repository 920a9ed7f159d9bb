//! Admin endpoints of the key-value stores: list and create stores, page through keys, and
//! read, write and delete one key's value as raw bytes.

use crate::admin::{ApiError, Gw, gw};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use nubo_control::kv::{Kv, KvError, StoreInfo};
use nubo_core::api::v1::{KvKeyPage, KvStoreInfo, KvStoreList};
use nubo_core::limits::{MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES};
use nubo_core::{ErrorCode, rfc3339};
use serde::Deserialize;

/// Keys one listing returns when the request does not say.
const DEFAULT_LIST_LIMIT: usize = 100;

fn kv_error(e: KvError) -> ApiError {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "key-value admin request failed");
        return ApiError::Plain(
            code,
            "Nubo failed while handling the request; the server log has details".into(),
        );
    }
    ApiError::Plain(code, e.to_string())
}

/// Runs a blocking key-value call off the async threads.
async fn blocking<T: Send + 'static>(
    w: &Gw,
    f: impl FnOnce(Kv) -> Result<T, KvError> + Send + 'static,
) -> Result<T, ApiError> {
    let kv = gw(w)?.control.store().kv();
    tokio::task::spawn_blocking(move || f(kv))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "key-value admin request panicked");
            ApiError::Plain(
                ErrorCode::Internal,
                "Nubo failed while handling the request; the server log has details".into(),
            )
        })?
        .map_err(kv_error)
}

fn to_wire(s: StoreInfo) -> KvStoreInfo {
    KvStoreInfo {
        name: s.name,
        keys: s.keys,
        bytes: s.bytes,
        created_at: rfc3339(s.created_at),
    }
}

/// `GET /kv`: every store with its key count and bytes.
pub(crate) async fn list_stores(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let stores = blocking(&w, |kv| kv.stores()).await?;
    Ok(axum::Json(KvStoreList {
        stores: stores.into_iter().map(to_wire).collect(),
    }))
}

/// `PUT /kv/{store}`: creates the store (nothing changes when it exists) and answers it.
pub(crate) async fn create_store(
    State(w): State<Gw>,
    Path(store): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = store.clone();
    let info = blocking(&w, move |kv| {
        kv.ensure_store(&name)?;
        Ok(kv.stores()?.into_iter().find(|s| s.name == name))
    })
    .await?;
    // Just created, and stores are never deleted, so it is there.
    let info =
        info.ok_or_else(|| ApiError::Plain(ErrorCode::KvStoreNotFound, store_gone(&store)))?;
    Ok(axum::Json(to_wire(info)))
}

fn store_gone(store: &str) -> String {
    KvError::NoSuchStore(store.to_string()).to_string()
}

#[derive(Deserialize)]
pub(crate) struct KeysQuery {
    prefix: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /kv/{store}/keys?prefix=&cursor=&limit=`: one page of keys in byte order.
pub(crate) async fn list_keys(
    State(w): State<Gw>,
    Path(store): Path<String>,
    Query(q): Query<KeysQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_KV_LIST_LIMIT {
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!("limit {limit} is out of range; ask for 1 to {MAX_KV_LIST_LIMIT} keys a page"),
        ));
    }
    let name = store.clone();
    let page = blocking(&w, move |kv| {
        kv.list_keys(&name, q.prefix.as_deref(), q.cursor.as_deref(), limit)
    })
    .await?;
    Ok(axum::Json(KvKeyPage {
        store,
        keys: page.keys,
        cursor: page.cursor,
    }))
}

/// `GET /kv/{store}/keys/{key}`: the value as raw bytes.
pub(crate) async fn get_key(
    State(w): State<Gw>,
    Path((store, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (s, k) = (store.clone(), key.clone());
    match blocking(&w, move |kv| kv.get(&s, &k)).await? {
        Some(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        None => Err(key_not_found(&store, &key)),
    }
}

#[derive(Deserialize)]
pub(crate) struct PutQuery {
    ttl: Option<String>,
}

/// `PUT /kv/{store}/keys/{key}?ttl=10m`: sets the value to the request body.
pub(crate) async fn put_key(
    State(w): State<Gw>,
    Path((store, key)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let ttl = match q.ttl.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            nubo_core::parse_duration(t)
                .map_err(|e| ApiError::Plain(ErrorCode::BadRequest, format!("ttl: {e}")))?,
        ),
    };
    // Read one byte past the limit so a value over it is refused without reading it all.
    let value = match Limited::new(body, MAX_KV_VALUE_BYTES + 1).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(kv_error(KvError::ValueTooLarge {
                len: MAX_KV_VALUE_BYTES + 1,
            }));
        }
        Err(e) => {
            return Err(ApiError::Plain(
                ErrorCode::BadRequest,
                format!("reading the value failed: {e}; send it again"),
            ));
        }
    };
    blocking(&w, move |kv| kv.set(&store, &key, &value, ttl)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /kv/{store}/keys/{key}`: 204 when deleted, 404 when there was no such key.
pub(crate) async fn delete_key(
    State(w): State<Gw>,
    Path((store, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (s, k) = (store.clone(), key.clone());
    if blocking(&w, move |kv| kv.delete(&s, &k)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(key_not_found(&store, &key))
    }
}

fn key_not_found(store: &str, key: &str) -> ApiError {
    let shown: String = key.chars().take(80).collect();
    ApiError::Plain(
        ErrorCode::KvKeyNotFound,
        format!(
            "key-value store {store:?} has no key {shown:?} (it was never set, was deleted, or its TTL passed)"
        ),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_the_kv_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let paths = &doc["paths"];
        for (path, method) in [
            ("/_nubo/api/v1/kv", "get"),
            ("/_nubo/api/v1/kv/{store}", "put"),
            ("/_nubo/api/v1/kv/{store}/keys", "get"),
            ("/_nubo/api/v1/kv/{store}/keys/{key}", "get"),
            ("/_nubo/api/v1/kv/{store}/keys/{key}", "put"),
            ("/_nubo/api/v1/kv/{store}/keys/{key}", "delete"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
        for name in ["KvStoreInfo", "KvStoreList", "KvKeyPage"] {
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "schema {name}"
            );
        }
    }
}
