//! The host side of `wasi:keyvalue@0.2.0-draft2`, the release Spin 3 components import, next
//! to 0.2.0-draft: the same stores, bindings and refusals, plus what draft2 changed — string
//! cursors, signed counters and compare-and-swap through the `cas` resource, which maps onto
//! the store's key versions (a swap writes only if the key's version is still the one `cas.new`
//! read, so it cannot succeed against a value it never saw).
//!
//! The WIT in `wit-draft2/` is the 0.2.0-draft2 release (`wasi:keyvalue` of 2024-10-17).

use super::{Bucket, HasKv, KvView};
use nubo_core::limits::{MAX_KV_BATCH, MAX_KV_LIST_LIMIT};
use nubo_store::kv::{Kv, KvError, Versioned, check_key};
use std::sync::Arc;
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/keyvalue/wit-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A compare-and-swap in progress: the key and what `cas.new` (or a failed swap) read of it.
pub struct Cas {
    kv: Kv,
    store: Arc<str>,
    key: String,
    seen: Option<Versioned>,
}

/// Adds the draft2 `wasi:keyvalue/imports` interfaces to `linker`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKv>(linker, view)?;
    atomics::add_to_linker::<_, HasKv>(linker, view)?;
    batch::add_to_linker::<_, HasKv>(linker, view)?;
    Ok(())
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

/// The WIT error for a store error; limit errors keep their message, which names the fix.
fn wit_error(error: KvError) -> store::Error {
    match error {
        KvError::NoSuchStore(_) => store::Error::NoSuchStore,
        other => store::Error::Other(other.to_string()),
    }
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KvError> + Send + 'static,
) -> KvResult<T> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => Ok(result.map_err(wit_error)),
        Err(e) => Err(wasmtime::Error::msg(format!(
            "a key-value store call failed: {e}"
        ))),
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        match self.open_bucket(identifier) {
            Ok(bucket) => Ok(Ok(self.table.push(bucket)?)),
            Err(super::OpenError::NotBound) => Ok(Err(store::Error::AccessDenied)),
            Err(super::OpenError::NoStores(message)) => Ok(Err(store::Error::Other(message))),
        }
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.get(&name, &key)).await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.set(&name, &key, &value, None)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<()> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.delete(&name, &key).map(|_existed| ())).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<bool> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.exists(&name, &key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> KvResult<store::KeyResponse> {
        let (kv, name) = self.bucket(&bucket)?;
        // Draft2's cursor is a string: the last key of the previous page, so it works across
        // invocations too.
        let page =
            blocking(move || kv.list_keys(&name, None, cursor.as_deref(), MAX_KV_LIST_LIMIT))
                .await?;
        Ok(page.map(|page| store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> KvResult<i64> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.increment(&name, &key, delta)).await
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let Cas {
            kv,
            store: name,
            key,
            seen,
        } = self.table.delete(cas)?;
        let expected = seen.as_ref().map(|v| v.version);
        let (kv2, name2, key2) = (kv.clone(), Arc::clone(&name), key.clone());
        let swapped =
            match blocking(move || kv2.compare_and_swap(&name2, &key2, expected, &value)).await? {
                Ok(swapped) => swapped,
                Err(e) => return Ok(Err(atomics::CasError::StoreError(e))),
            };
        if swapped {
            return Ok(Ok(()));
        }
        // Someone wrote the key since it was read: hand back a handle on its current value,
        // so a retry loop compares against what is there now.
        let (kv2, name2, key2) = (kv.clone(), Arc::clone(&name), key.clone());
        let seen = match blocking(move || kv2.get_versioned(&name2, &key2)).await? {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(atomics::CasError::StoreError(e))),
        };
        let again = self.table.push(Cas {
            kv,
            store: name,
            key,
            seen,
        })?;
        Ok(Err(atomics::CasError::CasFailed(again)))
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<Resource<Cas>> {
        let (kv, name) = self.bucket(&bucket)?;
        let (kv2, name2, key2) = (kv.clone(), Arc::clone(&name), key.clone());
        let seen = match blocking(move || kv2.get_versioned(&name2, &key2)).await? {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(Cas {
            kv,
            store: name,
            key,
            seen,
        })?))
    }

    async fn current(&mut self, cas: Resource<Cas>) -> KvResult<Option<Vec<u8>>> {
        Ok(Ok(self
            .table
            .get(&cas)?
            .seen
            .as_ref()
            .map(|v| v.value.clone())))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<(String, Option<Vec<u8>>)>> {
        let (kv, name) = self.bucket(&bucket)?;
        let values = blocking(move || {
            if keys.len() > MAX_KV_BATCH {
                return Err(KvError::BatchTooLarge { len: keys.len() });
            }
            keys.iter().try_for_each(|k| check_key(k))?;
            super::read_many(&kv, &name, &keys)
        })
        .await?;
        Ok(values.and_then(|v| v.map_err(store::Error::Other)))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.set_many(&name, &key_values)).await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> KvResult<()> {
        let (kv, name) = self.bucket(&bucket)?;
        blocking(move || kv.delete_many(&name, &keys)).await
    }
}
