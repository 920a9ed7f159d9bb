//! The live state: each app's loaded revisions with their traffic weights, each revision's own
//! route table, and the global route table that finds the app of a request, compiled by pure
//! functions.

use crate::stats::RequestWindow;
use arc_swap::ArcSwap;
use nubo_core::manifest::Manifest;
use nubo_core::{
    FunctionTarget, MethodSet, RouteError, RoutePattern, RouteTable, RouteTableBuilder, Segment,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One loaded revision of an app.
#[derive(Debug)]
pub struct LiveRevision {
    /// App name.
    pub app: Arc<str>,
    /// Revision number.
    pub revision: u64,
    /// When it was deployed.
    pub deployed_at: SystemTime,
    /// Its manifest.
    pub manifest: Manifest,
    /// Code digest per function.
    pub digests: BTreeMap<String, String>,
    /// Its own routes: a request that chose this revision is routed here.
    pub routes: RouteTable<Arc<RouteTarget>>,
    /// Requests and errors it answered over the last 5 minutes (counted by the gateway).
    pub stats: RequestWindow,
    /// When it was last pinned or last lost its traffic (Unix seconds): an unweighted revision
    /// stays loaded for a while after that.
    last_used: AtomicU64,
}

impl LiveRevision {
    /// Builds a revision's live form, compiling its own route table (nothing is loaded: the
    /// control plane loads its code into the engine).
    pub fn new(
        app: Arc<str>,
        revision: u64,
        deployed_at: SystemTime,
        manifest: Manifest,
        digests: BTreeMap<String, String>,
    ) -> Result<LiveRevision, RouteError> {
        let routes = compile_revision_routes(&app, revision, &manifest)?;
        Ok(LiveRevision {
            app,
            revision,
            deployed_at,
            manifest,
            digests,
            routes,
            stats: RequestWindow::new(),
            last_used: AtomicU64::new(unix_secs()),
        })
    }

    /// The dispatch target of one of its functions.
    pub fn target(&self, function: &str) -> Option<FunctionTarget> {
        target_of(&self.app, self.revision, &self.manifest, function)
    }

    /// Marks it as used now (a pinned request, or it just lost its traffic).
    pub fn touch(&self) {
        self.last_used.store(unix_secs(), Ordering::Relaxed);
    }

    /// Seconds since it was last used.
    pub(crate) fn idle_secs(&self) -> u64 {
        unix_secs().saturating_sub(self.last_used.load(Ordering::Relaxed))
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn target_of(
    app: &Arc<str>,
    revision: u64,
    m: &Manifest,
    function: &str,
) -> Option<FunctionTarget> {
    let (name, _) = m.functions.get_key_value(function)?;
    Some(FunctionTarget {
        app: app.clone(),
        function: name.as_str().into(),
        revision,
    })
}

/// An app's traffic at one moment: immutable, swapped whole on every change.
#[derive(Debug)]
pub struct AppState {
    /// The app's generation (see the store).
    pub generation: u64,
    /// Revisions with weight > 0, highest weight first; weights sum to 100. Never empty.
    pub split: Vec<(Arc<LiveRevision>, u8)>,
    /// Running sums of the weights, for the weighted pick.
    cumulative: Vec<u8>,
    /// Loaded revisions that take no traffic: deployed with `--no-traffic`, pinned recently,
    /// or weighted until recently (so a request that chose one just before a change still
    /// finds it loaded).
    pub staged: BTreeMap<u64, Arc<LiveRevision>>,
}

impl AppState {
    /// Builds a state; `split` should be non-empty, highest weight first, summing to 100.
    pub fn new(
        generation: u64,
        split: Vec<(Arc<LiveRevision>, u8)>,
        staged: BTreeMap<u64, Arc<LiveRevision>>,
    ) -> AppState {
        let mut sum = 0u8;
        let cumulative = split
            .iter()
            .map(|(_, w)| {
                sum = sum.saturating_add(*w);
                sum
            })
            .collect();
        AppState {
            generation,
            split,
            cumulative,
            staged,
        }
    }

    /// The revision with the most traffic.
    pub fn primary(&self) -> Option<&Arc<LiveRevision>> {
        self.split.first().map(|(r, _)| r)
    }

    /// Whether more than one revision takes traffic (then responses carry an affinity cookie).
    pub fn is_split(&self) -> bool {
        self.split.len() > 1
    }

    /// The weighted pick for a roll uniformly drawn from `0..100`.
    pub fn pick(&self, roll: u8) -> Option<&Arc<LiveRevision>> {
        let i = self.cumulative.iter().position(|&c| roll < c);
        i.or_else(|| self.split.len().checked_sub(1))
            .and_then(|i| self.split.get(i))
            .map(|(r, _)| r)
    }

    /// `revision` if it takes traffic.
    pub fn weighted(&self, revision: u64) -> Option<&Arc<LiveRevision>> {
        self.split
            .iter()
            .find(|(r, w)| r.revision == revision && *w > 0)
            .map(|(r, _)| r)
    }

    /// `revision` if it is loaded (weighted or staged).
    pub fn loaded(&self, revision: u64) -> Option<&Arc<LiveRevision>> {
        self.weighted(revision)
            .or_else(|| self.staged.get(&revision))
    }

    /// The weight of `revision` (0 when it takes none).
    pub fn weight(&self, revision: u64) -> u8 {
        self.split
            .iter()
            .find(|(r, _)| r.revision == revision)
            .map_or(0, |(_, w)| *w)
    }

    /// Every loaded revision number.
    pub(crate) fn loaded_numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.split.iter().map(|(r, _)| r.revision).collect();
        v.extend(self.staged.keys());
        v
    }
}

/// A deployed app: its name and its current [`AppState`], swapped atomically.
#[derive(Debug)]
pub struct LiveApp {
    /// App name.
    pub name: Arc<str>,
    state: ArcSwap<AppState>,
}

impl LiveApp {
    pub(crate) fn new(name: Arc<str>, state: AppState) -> LiveApp {
        LiveApp {
            name,
            state: ArcSwap::from_pointee(state),
        }
    }

    /// The current state. Lock-free; the snapshot stays valid while held.
    pub fn state(&self) -> arc_swap::Guard<Arc<AppState>> {
        self.state.load()
    }

    /// The current state, owned.
    pub fn state_full(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    pub(crate) fn set_state(&self, state: AppState) {
        self.state.store(Arc::new(state));
    }
}

/// What a route leads to.
#[derive(Debug)]
pub struct RouteTarget {
    /// The function to run.
    pub target: FunctionTarget,
    /// Largest request body accepted.
    pub max_request_body: u64,
}

/// The global route table: finds the app a request belongs to. An app's entries are the union
/// of the routes of every revision that takes traffic (one entry per route shape, with the
/// union of their methods), so conflicts across apps are checked against all of them.
#[derive(Debug, Default)]
pub struct Routes {
    /// The table.
    pub table: RouteTable<Arc<LiveApp>>,
}

fn route_label(methods: &MethodSet, path: &str, app: &str) -> String {
    match methods {
        MethodSet::Any => format!("\"{path}\" of app {app:?}"),
        m => format!("{m} \"{path}\" of app {app:?}"),
    }
}

/// Compiles one revision's own route table; ambiguity within it is an error.
pub(crate) fn compile_revision_routes(
    app: &Arc<str>,
    revision: u64,
    manifest: &Manifest,
) -> Result<RouteTable<Arc<RouteTarget>>, RouteError> {
    let mut b = RouteTableBuilder::new();
    for r in &manifest.routes {
        let Some(spec) = manifest.functions.get(&r.function) else {
            continue;
        };
        let Some(target) = target_of(app, revision, manifest, &r.function) else {
            continue;
        };
        let methods = MethodSet::parse(&r.methods)?;
        let pattern = RoutePattern::parse(&r.path)?;
        let label = route_label(&methods, &r.path, app);
        b.add(
            methods,
            pattern,
            Arc::new(RouteTarget {
                target,
                max_request_body: spec.max_request_body,
            }),
            label,
        )?;
    }
    Ok(b.build())
}

/// A pattern's shape: per segment a literal or `None` for a parameter, and the wildcard flag.
/// Two patterns of one shape match the same paths.
type Shape = (Vec<Option<String>>, bool);

fn shape(p: &RoutePattern) -> Shape {
    let segs = p
        .segments
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => Some(l.to_string()),
            Segment::Param(_) => None,
        })
        .collect();
    (segs, p.wildcard)
}

fn union(a: MethodSet, b: MethodSet) -> MethodSet {
    match (a, b) {
        (MethodSet::Only(mut x), MethodSet::Only(y)) => {
            x.extend(y);
            x.sort();
            x.dedup();
            MethodSet::Only(x)
        }
        _ => MethodSet::Any,
    }
}

/// Compiles the global table from each app and the manifests of its weighted revisions.
/// Routes of one app never conflict with each other here (a path two of its revisions serve
/// is one entry); a route ambiguous with another app's is an error naming both apps.
pub(crate) fn compile_global<'a>(
    apps: impl Iterator<Item = (Arc<LiveApp>, Vec<&'a Manifest>)>,
) -> Result<Routes, RouteError> {
    let mut b = RouteTableBuilder::new();
    for (app, manifests) in apps {
        let mut shapes: BTreeMap<Shape, (MethodSet, RoutePattern, String)> = BTreeMap::new();
        for m in manifests {
            for r in &m.routes {
                let methods = MethodSet::parse(&r.methods)?;
                let pattern = RoutePattern::parse(&r.path)?;
                match shapes.entry(shape(&pattern)) {
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let (old, _, _) = e.get_mut();
                        let merged = union(std::mem::replace(old, MethodSet::Any), methods);
                        *old = merged;
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert((methods, pattern, r.path.clone()));
                    }
                }
            }
        }
        for (_, (methods, pattern, path)) in shapes {
            let label = route_label(&methods, &path, &app.name);
            b.add(methods, pattern, app.clone(), label)?;
        }
    }
    Ok(Routes { table: b.build() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(app: &str, routes: &[(&str, &str)]) -> Manifest {
        let mut text = format!("[app]\nname = \"{app}\"\n[function.f]\nsource = \"f.wasm\"\n");
        for (methods, path) in routes {
            let methods = if methods.is_empty() {
                String::new()
            } else {
                format!("methods = [\"{methods}\"]\n")
            };
            text.push_str(&format!(
                "[[route]]\npath = \"{path}\"\nfunction = \"f\"\n{methods}"
            ));
        }
        nubo_core::manifest::parse(&text).unwrap()
    }

    fn rev(app: &str, n: u64, m: &Manifest) -> Arc<LiveRevision> {
        Arc::new(
            LiveRevision::new(app.into(), n, SystemTime::now(), m.clone(), BTreeMap::new())
                .unwrap(),
        )
    }

    #[test]
    fn weighted_pick_follows_the_running_sums() {
        let m = manifest("shop", &[]);
        let state = AppState::new(
            1,
            vec![(rev("shop", 2, &m), 90), (rev("shop", 3, &m), 10)],
            BTreeMap::new(),
        );
        let mut counts = [0u32; 2];
        for roll in 0..100u8 {
            let r = state.pick(roll).unwrap().revision;
            counts[usize::from(r == 3)] += 1;
        }
        assert_eq!(counts, [90, 10]);
        assert!(state.is_split());
        assert_eq!(state.weight(3), 10);
        assert!(state.weighted(4).is_none());
    }

    #[test]
    fn global_table_merges_an_apps_revisions_and_refuses_other_apps_overlaps() {
        let a1 = manifest("a", &[("GET", "/users/:id")]);
        let a2 = manifest("a", &[("POST", "/users/:name"), ("", "/only-new")]);
        let slot = Arc::new(LiveApp::new(
            "a".into(),
            AppState::new(1, vec![(rev("a", 1, &a1), 100)], BTreeMap::new()),
        ));
        let routes = compile_global(std::iter::once((slot.clone(), vec![&a1, &a2]))).unwrap();
        assert!(routes.table.lookup("GET", "/users/1").is_ok());
        assert!(routes.table.lookup("POST", "/users/1").is_ok());
        assert!(routes.table.lookup("PUT", "/users/1").is_err());
        assert!(routes.table.lookup("GET", "/only-new").is_ok());

        let b = manifest("b", &[("POST", "/users/:x")]);
        let other = Arc::new(LiveApp::new(
            "b".into(),
            AppState::new(1, vec![(rev("b", 1, &b), 100)], BTreeMap::new()),
        ));
        let err =
            compile_global([(slot, vec![&a1, &a2]), (other, vec![&b])].into_iter()).unwrap_err();
        assert!(err.to_string().contains("of app \"b\""), "{err}");
        assert!(err.to_string().contains("of app \"a\""), "{err}");
    }
}
