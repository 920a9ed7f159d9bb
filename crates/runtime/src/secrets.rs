//! Delivery of an app's secrets to its functions: the variables of `env = { X = { secret =
//! "name" } }` resolved from the secrets snapshot at each wasm invocation and at each process
//! worker's spawn, so a changed secret reaches new invocations without a redeploy; and the
//! mask that keeps the values out of captured logs.
//!
//! Secret values are read from a lock-free snapshot (no SQLite, no decryption on the request
//! path). A value that is not UTF-8 reaches the environment with its invalid bytes replaced
//! (U+FFFD): environments and `wasi:config/store` carry text.

use nubo_store::secrets::{AppSecrets, Secrets};
use nubo_telemetry::Invocation;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime_wasi_config::WasiConfigVariables;

/// One function's secret variables: which secret each names.
pub(crate) struct SecretEnv {
    secrets: Option<Secrets>,
    app: Arc<str>,
    /// Variable → secret name, from the manifest.
    vars: Box<[(String, String)]>,
}

impl SecretEnv {
    /// The secret variables of a function of `app`; `None` when it names no secret.
    pub(crate) fn new(
        secrets: Option<&Secrets>,
        app: &Arc<str>,
        secret_env: &BTreeMap<String, String>,
    ) -> Option<Arc<SecretEnv>> {
        (!secret_env.is_empty()).then(|| {
            Arc::new(SecretEnv {
                secrets: secrets.cloned(),
                app: Arc::clone(app),
                vars: secret_env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        })
    }

    /// The app's secrets now (a snapshot load).
    pub(crate) fn current(&self) -> Option<Arc<AppSecrets>> {
        self.secrets.as_ref().and_then(|s| s.app(&self.app))
    }

    /// The generation of the app's secrets now: a worker started under another one has stale
    /// values.
    pub(crate) fn generation(&self) -> u64 {
        self.secrets.as_ref().map_or(0, |s| s.generation(&self.app))
    }

    /// Appends the variables whose secret is set in `current` to `env`, replacing a plain
    /// variable of the same name. A secret deleted since the deploy leaves its variable unset.
    pub(crate) fn extend(&self, current: Option<&AppSecrets>, env: &mut Vec<(String, String)>) {
        let Some(current) = current else {
            return;
        };
        for (var, name) in &self.vars {
            if let Some(value) = current.get(name) {
                let value = String::from_utf8_lossy(value).into_owned();
                match env.iter_mut().find(|(k, _)| k == var) {
                    Some(slot) => slot.1 = value,
                    None => env.push((var.clone(), value)),
                }
            }
        }
    }
}

/// The environment and `wasi:config/store` variables of one wasm invocation: the function's
/// own when it names no secret (shared, nothing allocated), else those plus its secrets as
/// they are now. Masks the secret values in the invocation's logs.
pub(crate) fn for_invocation<'a>(
    env: &'a [(String, String)],
    config: &Arc<WasiConfigVariables>,
    secret_env: Option<&SecretEnv>,
    invocation: Option<&Invocation>,
) -> (Cow<'a, [(String, String)]>, Arc<WasiConfigVariables>) {
    let Some(secret_env) = secret_env else {
        return (Cow::Borrowed(env), Arc::clone(config));
    };
    let current = secret_env.current();
    if let (Some(current), Some(invocation)) = (&current, invocation)
        && !current.log_mask().is_empty()
    {
        invocation.set_log_mask(Arc::clone(current.log_mask()));
    }
    let mut all = env.to_vec();
    secret_env.extend(current.as_deref(), &mut all);
    let config = Arc::new(all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
    (Cow::Owned(all), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_follow_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = nubo_store::Store::open(dir.path()).unwrap();
        let secrets = store.secrets_with_key(Some(&"ab".repeat(32))).unwrap();
        let app: Arc<str> = "shop".into();
        let vars = BTreeMap::from([("DB_URL".to_string(), "db_url".to_string())]);
        let secret_env = SecretEnv::new(Some(&secrets), &app, &vars).unwrap();
        assert!(SecretEnv::new(Some(&secrets), &app, &BTreeMap::new()).is_none());

        let plain = vec![("MODE".to_string(), "prod".to_string())];
        let config = Arc::new(WasiConfigVariables::new());
        // Not set yet: the variable is absent.
        let (env, _) = for_invocation(&plain, &config, Some(&secret_env), None);
        assert_eq!(env.len(), 1);

        secrets.set("shop", "db_url", b"postgres://one").unwrap();
        let g1 = secret_env.generation();
        let (env, _) = for_invocation(&plain, &config, Some(&secret_env), None);
        assert!(env.contains(&("DB_URL".into(), "postgres://one".into())));

        secrets.set("shop", "db_url", b"postgres://two").unwrap();
        assert!(secret_env.generation() > g1);
        let (env, _) = for_invocation(&plain, &config, Some(&secret_env), None);
        assert!(env.contains(&("DB_URL".into(), "postgres://two".into())));
        assert!(env.contains(&("MODE".into(), "prod".into())));
    }
}
