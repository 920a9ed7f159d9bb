//! The live state: which revision of each app serves, and the route table compiled from all of
//! them by a pure function.

use nubo_core::manifest::Manifest;
use nubo_core::{
    FunctionTarget, MethodSet, RouteError, RoutePattern, RouteTable, RouteTableBuilder,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// One app's serving revision.
#[derive(Debug, Clone)]
pub struct LiveApp {
    /// App name.
    pub name: Arc<str>,
    /// Serving revision.
    pub revision: u64,
    /// When that revision was deployed.
    pub deployed_at: SystemTime,
    /// Its manifest.
    pub manifest: Manifest,
    /// Code digest per function.
    pub digests: BTreeMap<String, String>,
}

impl LiveApp {
    /// The dispatch target of one of its functions.
    pub fn target(&self, function: &str) -> Option<FunctionTarget> {
        let (name, _) = self.manifest.functions.get_key_value(function)?;
        Some(FunctionTarget {
            app: self.name.clone(),
            function: name.as_str().into(),
            revision: self.revision,
        })
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

/// The compiled route table with the apps it was built from.
#[derive(Debug, Default)]
pub struct Routes {
    /// The table.
    pub table: RouteTable<Arc<RouteTarget>>,
}

/// Compiles the route table of a set of apps; ambiguity within or across apps is an error that
/// names both routes and their apps.
pub(crate) fn compile_routes<'a>(
    apps: impl Iterator<Item = &'a LiveApp>,
) -> Result<Routes, RouteError> {
    let mut b = RouteTableBuilder::new();
    for app in apps {
        for r in &app.manifest.routes {
            let Some(spec) = app.manifest.functions.get(&r.function) else {
                continue;
            };
            let Some(target) = app.target(&r.function) else {
                continue;
            };
            let methods = MethodSet::parse(&r.methods)?;
            let pattern = RoutePattern::parse(&r.path)?;
            let label = match &methods {
                MethodSet::Any => format!("\"{}\" of app {:?}", r.path, &*app.name),
                m => format!("{m} \"{}\" of app {:?}", r.path, &*app.name),
            };
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
    }
    Ok(Routes { table: b.build() })
}
