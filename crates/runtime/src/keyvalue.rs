//! The host side of `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`): buckets are the
//! function's bound key-value stores (`kv = [...]` in the manifest), backed by
//! `nubo_store::kv::Kv`.
//!
//! `store.open` succeeds only for a store the function binds; anything else is refused with
//! `access-denied` and a line in the invocation's log naming the manifest fix. The store calls
//! are blocking SQLite, so each runs on tokio's blocking pool while the guest waits.
//!
//! The WIT in `keyvalue/wit/` is the 0.2.0-draft release, as shipped by wasmtime 48;
//! `draft2` serves the 0.2.0-draft2 release over the same stores.

use nubo_core::limits::{MAX_KV_BATCH, MAX_KV_KEYS_PER_STORE, MAX_KV_LIST_LIMIT};
use nubo_store::kv::{Kv, KvError, check_key};
use nubo_telemetry::{Invocation, Stream};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

pub(crate) mod draft2;

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/keyvalue/wit",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Pages of `list-keys` one bucket handle may hand out. The WIT's cursor is a number, so each
/// page's last key is remembered under it; this bounds that memory (about 1 KiB per page) while
/// still letting a guest walk the largest store in full.
const MAX_LIST_PAGES: usize = (MAX_KV_KEYS_PER_STORE / MAX_KV_LIST_LIMIT as u64) as usize + 1;

/// Most value bytes one `get-many` returns. A batch may name `MAX_KV_BATCH` keys of up to
/// `MAX_KV_VALUE_BYTES` each (1 GiB): keys are read a few at a time and the call fails once the
/// values pass this, so one guest cannot make the host hold more than this plus one chunk.
const MAX_GET_MANY_BYTES: usize = 16 * 1024 * 1024;

/// Keys read per store call in `get-many` (at most this many values beyond the cap are held).
const GET_MANY_CHUNK: usize = 16;

/// What a loaded function may reach: the server's stores and the names it binds.
pub(crate) struct KvBindings {
    kv: Option<Kv>,
    stores: Box<[String]>,
}

impl KvBindings {
    /// The bindings of a function that names `stores` in its manifest, against `kv` (`None`
    /// when the server has no key-value stores).
    pub(crate) fn new(kv: Option<Kv>, stores: &[String]) -> KvBindings {
        KvBindings {
            kv,
            stores: stores.into(),
        }
    }
}

/// Per-invocation key-value state: the function's bindings and where refusals are logged.
pub(crate) struct KvCtx {
    bindings: Option<Arc<KvBindings>>,
    invocation: Option<Invocation>,
}

impl KvCtx {
    /// State for one invocation; `bindings` is `None` for a function that binds no store.
    pub(crate) fn new(bindings: Option<Arc<KvBindings>>, invocation: Option<&Invocation>) -> KvCtx {
        KvCtx {
            bindings,
            invocation: invocation.cloned(),
        }
    }

    fn log(&self, line: &str) {
        if let Some(invocation) = &self.invocation {
            invocation.write_log(Stream::Stderr, line.as_bytes());
        }
    }
}

/// An open bucket: one of the function's bound stores.
pub struct Bucket {
    kv: Kv,
    store: Arc<str>,
    /// The last key of each `list-keys` page handed out; cursor `n` resumes after entry `n - 1`.
    pages: Vec<String>,
}

/// The view the generated host traits are implemented on.
pub(crate) struct KvView<'a> {
    ctx: &'a KvCtx,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    /// A view over an invocation's key-value state and its resource table.
    pub(crate) fn new(ctx: &'a KvCtx, table: &'a mut ResourceTable) -> KvView<'a> {
        KvView { ctx, table }
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds the `wasi:keyvalue/imports` interfaces to `linker`.
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

impl KvView<'_> {
    /// The store handle and name behind `bucket`.
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(Kv, Arc<str>)> {
        let b = self.table.get(bucket)?;
        Ok((b.kv.clone(), Arc::clone(&b.store)))
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        match self.open_bucket(identifier) {
            Ok(bucket) => Ok(Ok(self.table.push(bucket)?)),
            Err(OpenError::NotBound) => Ok(Err(store::Error::AccessDenied)),
            Err(OpenError::NoStores(message)) => Ok(Err(store::Error::Other(message))),
        }
    }
}

/// Why `open` failed, in terms both WIT releases map to their own error type.
enum OpenError {
    /// The function does not bind the store (logged with the manifest fix).
    NotBound,
    /// The server has no key-value stores.
    NoStores(String),
}

impl KvView<'_> {
    /// The bucket for `identifier` when the function binds it; a refusal is logged in the
    /// invocation's log with the fix.
    fn open_bucket(&self, identifier: String) -> Result<Bucket, OpenError> {
        let bound = self
            .ctx
            .bindings
            .as_ref()
            .filter(|b| b.stores.contains(&identifier));
        let Some(bindings) = bound else {
            self.ctx.log(&format!(
                "[nubo] key-value store \"{identifier}\" is not bound to this function: add it \
                 to the function in nubo.toml (kv = [\"{identifier}\"]) and redeploy\n"
            ));
            return Err(OpenError::NotBound);
        };
        let Some(kv) = &bindings.kv else {
            self.ctx.log(&format!(
                "[nubo] key-value store \"{identifier}\" cannot be opened: this server has no \
                 key-value stores (start it with a data directory)\n"
            ));
            return Err(OpenError::NoStores(
                "this server has no key-value stores: start it with a data directory".to_owned(),
            ));
        };
        Ok(Bucket {
            kv: kv.clone(),
            store: Arc::from(identifier),
            pages: Vec::new(),
        })
    }
}

/// Each key asked with its value, when present.
type Values = Vec<(String, Option<Vec<u8>>)>;

/// Reads `keys` of `store` a few at a time, stopping with a message once their values pass
/// [`MAX_GET_MANY_BYTES`]. Blocking.
fn read_many(kv: &Kv, store: &str, keys: &[String]) -> Result<Result<Values, String>, KvError> {
    let mut found = Vec::with_capacity(keys.len());
    let mut bytes = 0usize;
    for chunk in keys.chunks(GET_MANY_CHUNK) {
        for (key, value) in chunk.iter().zip(kv.get_many(store, chunk)?) {
            bytes += value.as_ref().map_or(0, Vec::len);
            found.push((key.clone(), value));
        }
        if bytes > MAX_GET_MANY_BYTES {
            return Ok(Err(format!(
                "the values of this get-many total more than {MAX_GET_MANY_BYTES} bytes \
                 (16 MiB): ask for fewer keys at a time"
            )));
        }
    }
    Ok(Ok(found))
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
        cursor: Option<u64>,
    ) -> KvResult<store::KeyResponse> {
        let (kv, name) = self.bucket(&bucket)?;
        let after = match cursor {
            None | Some(0) => None,
            Some(n) => {
                let pages = &self.table.get(&bucket)?.pages;
                match usize::try_from(n - 1).ok().and_then(|i| pages.get(i)) {
                    Some(key) => Some(key.clone()),
                    None => {
                        return Ok(Err(store::Error::Other(format!(
                            "unknown list-keys cursor {n}: pass a cursor returned by an \
                             earlier list-keys on the same bucket"
                        ))));
                    }
                }
            }
        };
        let page =
            match blocking(move || kv.list_keys(&name, None, after.as_deref(), MAX_KV_LIST_LIMIT))
                .await?
            {
                Ok(page) => page,
                Err(e) => return Ok(Err(e)),
            };
        let cursor = match page.cursor {
            None => None,
            Some(last) => {
                let pages = &mut self.table.get_mut(&bucket)?.pages;
                if pages.len() >= MAX_LIST_PAGES {
                    return Ok(Err(store::Error::Other(format!(
                        "more than {MAX_LIST_PAGES} list-keys pages on one bucket handle: open \
                         the store again to start over"
                    ))));
                }
                pages.push(last);
                Some(pages.len() as u64)
            }
        };
        Ok(Ok(store::KeyResponse {
            keys: page.keys,
            cursor,
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
        delta: u64,
    ) -> KvResult<u64> {
        let (kv, name) = self.bucket(&bucket)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "increment delta {delta} is larger than the largest counter value ({}): \
                 counters are signed 64-bit numbers",
                i64::MAX
            ))));
        };
        let sum = match blocking(move || kv.increment(&name, &key, delta)).await? {
            Ok(sum) => sum,
            Err(e) => return Ok(Err(e)),
        };
        // The WIT's counters are unsigned; a value driven negative through the admin API or a
        // process function cannot be returned.
        Ok(u64::try_from(sum).map_err(|_| {
            store::Error::Other(format!(
                "the counter is now {sum}, which wasi:keyvalue cannot return (its counters are \
                 unsigned): reset the key to a number of 0 or more"
            ))
        }))
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        let (kv, name) = self.bucket(&bucket)?;
        let values = blocking(move || {
            // The whole batch is checked first (key count and key limits), as one call would.
            if keys.len() > MAX_KV_BATCH {
                return Err(KvError::BatchTooLarge { len: keys.len() });
            }
            keys.iter().try_for_each(|k| check_key(k))?;
            read_many(&kv, &name, &keys)
        })
        .await?;
        // This release answers only the keys that exist.
        Ok(values.and_then(|v| {
            v.map(|all| {
                all.into_iter()
                    .map(|(key, value)| value.map(|v| (key, v)))
                    .collect()
            })
            .map_err(store::Error::Other)
        }))
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
