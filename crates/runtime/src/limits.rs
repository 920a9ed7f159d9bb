//! Concurrency limits: per-function slots, the server-wide cap with reserved capacity, bounded
//! FIFO waiting, and 429 `throttled` when a request cannot wait.
//!
//! Every invocation holds a [`Permit`] from admission until its instance has ended and its
//! response body was fully sent or dropped. The uncontended path is two compare-and-swaps and
//! a load; mutexes are taken only to wait, to wake waiters, and on load and retain.
//!
//! Accounting: a function with `reserve = true` draws only from its own `max_concurrency`,
//! which is taken out of the server cap; every other function draws from its own
//! `max_concurrency` *and* from the capacity they share (`cap - reserved`). A load whose
//! reservations would exceed the cap is refused.

use nubo_core::api::v1::{FunctionLoad, LoadMetrics, ServerLoad};
use nubo_core::engine::CodeError;
use nubo_core::manifest::ConcurrencySpec;
use nubo_core::{ErrorCode, FunctionTarget, InvokeError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Seconds a throttled client is asked to wait (`Retry-After`). Short on purpose: slots free
/// up as fast as invocations end, and clients are expected to add jitter.
pub(crate) const THROTTLED_RETRY_AFTER_SECS: u32 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server-wide limiter: the shared capacity and the registry of per-function limits.
pub(crate) struct Limiter {
    pool: Arc<Pool>,
    registry: Mutex<Registry>,
}

/// The capacity unreserved functions share. Hot: touched by every unreserved invocation.
struct Pool {
    /// The server-wide cap.
    cap: u32,
    /// Slots of the shared capacity in use.
    in_use: AtomicU32,
    /// `cap - reserved`, updated on load and retain.
    capacity: AtomicU32,
    /// Functions with a request waiting for a shared slot (their own limit had room), in the
    /// order they started waiting.
    starved: Mutex<VecDeque<Weak<FunctionLimit>>>,
    /// Length of `starved`, read without the lock on release.
    starved_len: AtomicUsize,
    /// Requests throttled since start, all functions.
    throttled: AtomicU64,
}

#[derive(Default)]
struct Registry {
    functions: HashMap<(Arc<str>, Arc<str>), Entry>,
    /// Load counter: the entry with the highest value is the most recently loaded.
    seq: u64,
}

/// The loaded revisions of one function and their settings.
struct Entry {
    limit: Arc<FunctionLimit>,
    /// revision → (load sequence, settings).
    revisions: BTreeMap<u64, (u64, ConcurrencySpec)>,
}

impl Entry {
    /// The settings of the most recently loaded revision, with its number.
    fn effective(&self) -> Option<(u64, ConcurrencySpec)> {
        self.revisions
            .iter()
            .max_by_key(|(_, (seq, _))| *seq)
            .map(|(rev, (_, spec))| (*rev, *spec))
    }
}

/// The outcome of [`Limiter::register`]: each function's limit, in order, and what to restore
/// if the load fails after all.
pub(crate) struct Registration {
    pub(crate) limits: Vec<Arc<FunctionLimit>>,
    pub(crate) previous: Vec<(FunctionTarget, Option<(u64, ConcurrencySpec)>)>,
}

/// Why a slot could not be taken at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The function is at its `max_concurrency`.
    Function,
    /// The capacity unreserved functions share is used up.
    Server,
}

/// One function's limit, shared by all its loaded revisions.
pub(crate) struct FunctionLimit {
    app: Arc<str>,
    function: Arc<str>,
    pool: Arc<Pool>,
    max: AtomicU32,
    reserve: AtomicBool,
    queue_depth: AtomicU32,
    queue_timeout_ms: AtomicU64,
    /// The revision whose settings are in force (for the figures).
    revision: AtomicU64,
    in_flight: AtomicU32,
    /// Length of `queue`, read without the lock.
    queued: AtomicU32,
    throttled: AtomicU64,
    instances: AtomicU32,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    grant: tokio::sync::oneshot::Sender<Permit>,
}

/// A slot of a function (and, for unreserved functions, of the shared capacity). Dropping it
/// gives the slot to the next waiter or back to the pool.
pub(crate) struct Permit {
    limit: Arc<FunctionLimit>,
    /// Whether it also holds a slot of the shared capacity.
    shared: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("function", &self.limit.function)
            .field("shared", &self.shared)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.release(self.shared);
    }
}

impl Limiter {
    /// A limiter allowing `cap` invocations at once, server-wide.
    pub(crate) fn new(cap: u32) -> Limiter {
        Limiter {
            pool: Arc::new(Pool {
                cap,
                in_use: AtomicU32::new(0),
                capacity: AtomicU32::new(cap),
                starved: Mutex::new(VecDeque::new()),
                starved_len: AtomicUsize::new(0),
                throttled: AtomicU64::new(0),
            }),
            registry: Mutex::new(Registry::default()),
        }
    }

    /// Registers the settings of newly loaded revisions (the most recently loaded revision's
    /// settings apply to the whole function) and returns each one's limit, in order. Refuses,
    /// changing nothing, when the reservations would exceed the server cap.
    pub(crate) fn register(
        &self,
        functions: &[(FunctionTarget, ConcurrencySpec)],
    ) -> Result<Registration, CodeError> {
        let mut reg = lock(&self.registry);
        // The settings in force after the load, per function, to check reservations first.
        let mut after: HashMap<(Arc<str>, Arc<str>), ConcurrencySpec> = reg
            .functions
            .iter()
            .filter_map(|(k, e)| e.effective().map(|(_, s)| (k.clone(), s)))
            .collect();
        for (t, spec) in functions {
            after.insert((t.app.clone(), t.function.clone()), *spec);
        }
        let reserved: u64 = after
            .values()
            .filter(|s| s.reserve)
            .map(|s| u64::from(s.max_concurrency))
            .sum();
        let cap = self.pool.cap;
        // Only a load that adds reservations can be refused for them: after a retain brought
        // back an older, larger reservation the sum may already exceed the cap, and unrelated
        // loads must still succeed.
        if reserved > u64::from(cap)
            && reserved > u64::from(reserved_sum(&reg))
            && let Some((t, spec)) = functions.iter().find(|(_, s)| s.reserve)
        {
            let others = reserved.saturating_sub(u64::from(spec.max_concurrency));
            return Err(CodeError {
                function: t.function.to_string(),
                code: ErrorCode::InvalidManifest,
                message: format!(
                    "reserve = true with max_concurrency = {} would reserve {reserved} of the \
                     server's {cap} concurrent invocations ({others} are reserved by other \
                     functions); lower max_concurrency, set reserve = false, or raise the \
                     server's cap (NUBO_MAX_CONCURRENCY)",
                    spec.max_concurrency
                ),
            });
        }
        let mut limits = Vec::with_capacity(functions.len());
        let mut previous = Vec::with_capacity(functions.len());
        for (t, spec) in functions {
            reg.seq += 1;
            let seq = reg.seq;
            let key = (t.app.clone(), t.function.clone());
            previous.push((
                t.clone(),
                reg.functions
                    .get(&key)
                    .and_then(|e| e.revisions.get(&t.revision).copied()),
            ));
            let entry = reg.functions.entry(key).or_insert_with(|| Entry {
                limit: Arc::new(FunctionLimit::new(
                    t.app.clone(),
                    t.function.clone(),
                    self.pool.clone(),
                )),
                revisions: BTreeMap::new(),
            });
            entry.revisions.insert(t.revision, (seq, *spec));
            entry.limit.apply(t.revision, spec);
            limits.push(entry.limit.clone());
        }
        self.set_capacity(&reg);
        drop(reg);
        self.wake_all();
        Ok(Registration { limits, previous })
    }

    /// Forgets the settings of `app`'s revisions not in `keep`; a function left with no
    /// loaded revision gives its reservation back.
    pub(crate) fn retain(&self, app: &str, keep: &[u64]) {
        self.forget(|t_app, rev| t_app == app && !keep.contains(&rev));
    }

    /// Undoes a registration whose load failed: each revision's settings go back to what they
    /// were before (none, for revisions that were not loaded).
    pub(crate) fn unregister(
        &self,
        previous: Vec<(FunctionTarget, Option<(u64, ConcurrencySpec)>)>,
    ) {
        let mut reg = lock(&self.registry);
        for (t, before) in previous {
            let key = (t.app.clone(), t.function.clone());
            if let Some(entry) = reg.functions.get_mut(&key) {
                match before {
                    Some(b) => entry.revisions.insert(t.revision, b),
                    None => entry.revisions.remove(&t.revision),
                };
            }
        }
        Self::settle(&mut reg);
        self.set_capacity(&reg);
        drop(reg);
        self.wake_all();
    }

    fn forget(&self, drop_it: impl Fn(&str, u64) -> bool) {
        let mut reg = lock(&self.registry);
        for ((app, _), entry) in &mut reg.functions {
            entry.revisions.retain(|rev, _| !drop_it(app, *rev));
        }
        Self::settle(&mut reg);
        self.set_capacity(&reg);
        drop(reg);
        self.wake_all();
    }

    /// Removes functions without loaded revisions and re-applies the settings in force.
    fn settle(reg: &mut Registry) {
        reg.functions.retain(|_, e| !e.revisions.is_empty());
        for entry in reg.functions.values() {
            if let Some((rev, spec)) = entry.effective() {
                entry.limit.apply(rev, &spec);
            }
        }
    }

    fn set_capacity(&self, reg: &Registry) {
        let reserved = reserved_sum(reg);
        self.pool
            .capacity
            .store(self.pool.cap.saturating_sub(reserved), Ordering::SeqCst);
    }

    /// Lets waiters re-check after settings changed (a limit may have grown).
    fn wake_all(&self) {
        let limits: Vec<Arc<FunctionLimit>> = lock(&self.registry)
            .functions
            .values()
            .map(|e| e.limit.clone())
            .collect();
        for limit in limits {
            if limit.queued.load(Ordering::SeqCst) > 0 {
                limit.dispatch();
            }
        }
        self.pool.wake_starved();
    }

    /// The figures served at `/_nubo/api/v1/metrics`.
    pub(crate) fn metrics(&self) -> LoadMetrics {
        let reg = lock(&self.registry);
        let mut functions: Vec<FunctionLoad> =
            reg.functions.values().map(|e| e.limit.figures()).collect();
        functions.sort_by(|a, b| (&a.app, &a.function).cmp(&(&b.app, &b.function)));
        let reserved = reserved_sum(&reg);
        drop(reg);
        let shared_in_use = self.pool.in_use.load(Ordering::Relaxed);
        let reserved_in_use: u32 = functions
            .iter()
            .filter(|f| f.reserve)
            .map(|f| f.in_flight)
            .sum();
        LoadMetrics {
            server: ServerLoad {
                in_use: shared_in_use.saturating_add(reserved_in_use),
                cap: self.pool.cap,
                reserved,
                shared_in_use,
                shared_cap: self.pool.capacity.load(Ordering::Relaxed),
                throttled: self.pool.throttled.load(Ordering::Relaxed),
            },
            functions,
        }
    }
}

/// The capacity reserved by the settings in force.
fn reserved_sum(reg: &Registry) -> u32 {
    let sum: u64 = reg
        .functions
        .values()
        .filter_map(Entry::effective)
        .filter(|(_, s)| s.reserve)
        .map(|(_, s)| u64::from(s.max_concurrency))
        .sum();
    u32::try_from(sum).unwrap_or(u32::MAX)
}

impl Pool {
    fn try_take(&self) -> bool {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            if cur >= capacity {
                return false;
            }
            match self.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn release(&self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.starved_len.load(Ordering::SeqCst) > 0 {
            self.wake_starved();
        }
    }

    fn mark_starved(&self, limit: &Arc<FunctionLimit>) {
        let mut starved = lock(&self.starved);
        let me = Arc::downgrade(limit);
        if !starved.iter().any(|w| w.ptr_eq(&me)) {
            starved.push_back(me);
        }
        self.starved_len.store(starved.len(), Ordering::SeqCst);
        drop(starved);
        // A shared slot may have been freed between the failed take and the mark.
        if self.in_use.load(Ordering::SeqCst) < self.capacity.load(Ordering::SeqCst) {
            self.wake_starved();
        }
    }

    /// Gives freed shared slots to functions waiting for them, oldest first. Functions still
    /// short of a slot mark themselves again.
    fn wake_starved(&self) {
        let waiting: Vec<Weak<FunctionLimit>> = {
            let mut starved = lock(&self.starved);
            self.starved_len.store(0, Ordering::SeqCst);
            starved.drain(..).collect()
        };
        for limit in waiting.iter().filter_map(Weak::upgrade) {
            limit.dispatch();
        }
    }
}

impl FunctionLimit {
    fn new(app: Arc<str>, function: Arc<str>, pool: Arc<Pool>) -> FunctionLimit {
        let d = ConcurrencySpec::default();
        FunctionLimit {
            app,
            function,
            pool,
            max: AtomicU32::new(d.max_concurrency),
            reserve: AtomicBool::new(d.reserve),
            queue_depth: AtomicU32::new(d.queue_depth),
            queue_timeout_ms: AtomicU64::new(d.queue_timeout_ms),
            revision: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            throttled: AtomicU64::new(0),
            instances: AtomicU32::new(0),
            queue: Mutex::new(Queue::default()),
        }
    }

    fn apply(&self, revision: u64, spec: &ConcurrencySpec) {
        self.max.store(spec.max_concurrency, Ordering::SeqCst);
        self.reserve.store(spec.reserve, Ordering::SeqCst);
        self.queue_depth.store(spec.queue_depth, Ordering::SeqCst);
        self.queue_timeout_ms
            .store(spec.queue_timeout_ms, Ordering::SeqCst);
        self.revision.store(revision, Ordering::Relaxed);
    }

    /// Takes a slot of the function and, unless it is reserved, of the shared capacity.
    fn try_take(&self) -> Result<bool, Full> {
        let max = self.max.load(Ordering::Relaxed);
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return Err(Full::Function);
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.reserve.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if self.pool.try_take() {
            Ok(true)
        } else {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Err(Full::Server)
        }
    }

    fn release(self: &Arc<Self>, shared: bool) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.dispatch();
        }
        if shared {
            self.pool.release();
        }
    }

    /// A slot at once when one is free and nobody waits; otherwise waits in FIFO order, at
    /// most `queue_timeout`, for one. Throttled when the queue is full or the wait runs out.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Permit, InvokeError> {
        if self.queued.load(Ordering::Relaxed) == 0
            && let Ok(shared) = self.try_take()
        {
            return Ok(Permit {
                limit: self.clone(),
                shared,
            });
        }
        self.wait().await
    }

    async fn wait(self: &Arc<Self>) -> Result<Permit, InvokeError> {
        let (grant, mut granted) = tokio::sync::oneshot::channel();
        let id = {
            let mut q = lock(&self.queue);
            if q.waiters.len() >= self.queue_depth.load(Ordering::Relaxed) as usize {
                drop(q);
                return Err(self.throttle());
            }
            q.next_id += 1;
            let id = q.next_id;
            q.waiters.push_back(Waiter { id, grant });
            self.queued.store(
                u32::try_from(q.waiters.len()).unwrap_or(u32::MAX),
                Ordering::SeqCst,
            );
            id
        };
        // Leaves the queue if this future is dropped (the client went away) or times out.
        let mut guard = WaitGuard {
            limit: self,
            id,
            done: false,
        };
        // A slot may have been freed between the failed take and joining the queue.
        self.dispatch();
        let timeout =
            std::time::Duration::from_millis(self.queue_timeout_ms.load(Ordering::Relaxed));
        match tokio::time::timeout(timeout, &mut granted).await {
            Ok(Ok(permit)) => {
                guard.done = true;
                Ok(permit)
            }
            // Only `leave` drops a waiter's sender, and only for its own waiter: not reached.
            // Answered as throttled all the same, so load never turns into a 5xx.
            Ok(Err(_)) => {
                guard.done = true;
                Err(self.throttle())
            }
            Err(_elapsed) => {
                guard.done = true;
                if self.leave(id) {
                    return Err(self.throttle());
                }
                // Granted just as the wait ran out: use the slot.
                match granted.try_recv() {
                    Ok(permit) => Ok(permit),
                    Err(_) => Err(self.throttle()),
                }
            }
        }
    }

    /// Removes waiter `id` from the queue; false when it was already granted a slot.
    fn leave(&self, id: u64) -> bool {
        let mut q = lock(&self.queue);
        match q.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                q.waiters.remove(i);
                self.queued.store(
                    u32::try_from(q.waiters.len()).unwrap_or(u32::MAX),
                    Ordering::SeqCst,
                );
                true
            }
            None => false,
        }
    }

    fn throttle(&self) -> InvokeError {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.pool.throttled.fetch_add(1, Ordering::Relaxed);
        InvokeError::Throttled {
            retry_after_secs: THROTTLED_RETRY_AFTER_SECS,
        }
    }

    /// Counts a request throttled elsewhere (every instance slot of the pool was busy).
    pub(crate) fn count_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.pool.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(self: &Arc<Self>) {
        let mut spare: Option<Permit> = None;
        let mut starved = false;
        let mut q = lock(&self.queue);
        while !q.waiters.is_empty() {
            let permit = match spare.take() {
                Some(p) => p,
                None => match self.try_take() {
                    Ok(shared) => Permit {
                        limit: self.clone(),
                        shared,
                    },
                    Err(full) => {
                        starved = full == Full::Server;
                        break;
                    }
                },
            };
            let Some(waiter) = q.waiters.pop_front() else {
                spare = Some(permit);
                break;
            };
            self.queued.store(
                u32::try_from(q.waiters.len()).unwrap_or(u32::MAX),
                Ordering::SeqCst,
            );
            // A waiter that went away gives the slot straight to the next one.
            if let Err(back) = waiter.grant.send(permit) {
                spare = Some(back);
            }
        }
        drop(q);
        // Released outside the lock: the release may dispatch again.
        drop(spare);
        if starved {
            self.pool.mark_starved(self);
        }
    }

    /// Counts a live instance until the returned guard drops.
    pub(crate) fn instance(self: &Arc<Self>) -> InstanceGuard {
        self.instances.fetch_add(1, Ordering::Relaxed);
        InstanceGuard(self.clone())
    }

    fn figures(&self) -> FunctionLoad {
        FunctionLoad {
            app: self.app.to_string(),
            function: self.function.to_string(),
            revision: self.revision.load(Ordering::Relaxed),
            max_concurrency: self.max.load(Ordering::Relaxed),
            reserve: self.reserve.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            queue_timeout_ms: self.queue_timeout_ms.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            instances: self.instances.load(Ordering::Relaxed),
        }
    }
}

/// Removes a waiter that stopped waiting (its future was dropped) from the queue.
struct WaitGuard<'a> {
    limit: &'a Arc<FunctionLimit>,
    id: u64,
    done: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limit.leave(self.id);
        }
    }
}

/// A live instance of a function, counted in its figures.
pub(crate) struct InstanceGuard(Arc<FunctionLimit>);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        self.0.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
