//! What a Lambda runtime expects to find: its environment, its function ARN, request and
//! trace ids in the formats real clients parse.

use nubo_core::FunctionTarget;
use nubo_core::manifest::FunctionSpec;
use std::time::{SystemTime, UNIX_EPOCH};

/// Placeholder credentials for runtimes and SDKs that refuse to start without any. They grant
/// nothing: Nubo has no AWS account behind them. A manifest's own values replace them.
const PLACEHOLDER_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "NUBOPLACEHOLDERKEYID"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "nubo-placeholder-secret-not-a-credential",
    ),
    ("AWS_SESSION_TOKEN", "nubo-placeholder-session-token"),
];

/// `{app}-{function}`: the Lambda function name a runtime sees.
pub(crate) fn function_name(target: &FunctionTarget) -> String {
    format!("{}-{}", target.app, target.function)
}

/// `arn:aws:lambda:{region}:000000000000:function:{app}-{fn}:{revision}`.
pub(crate) fn arn(region: &str, target: &FunctionTarget) -> String {
    format!(
        "arn:aws:lambda:{region}:000000000000:function:{}:{}",
        function_name(target),
        target.revision
    )
}

/// The environment every worker of a function gets (the per-worker log stream name and
/// initialization type are added at spawn). The manifest's `env` wins over all of it.
pub(crate) fn base(
    target: &FunctionTarget,
    spec: &FunctionSpec,
    region: &str,
) -> Vec<(String, String)> {
    let name = function_name(target);
    let handler = spec
        .process
        .handler
        .clone()
        .or_else(|| spec.process.argv().last().cloned())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("AWS_LAMBDA_FUNCTION_NAME".into(), name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            (spec.memory / (1024 * 1024)).to_string(),
        ),
        (
            "AWS_LAMBDA_FUNCTION_VERSION".into(),
            target.revision.to_string(),
        ),
        ("_HANDLER".into(), handler),
        ("AWS_REGION".into(), region.to_owned()),
        ("AWS_DEFAULT_REGION".into(), region.to_owned()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".into(),
            format!("/aws/lambda/{name}"),
        ),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), ":UTC".into()),
        (
            "LD_LIBRARY_PATH".into(),
            "/var/task/lib:/lib64:/usr/lib64".into(),
        ),
        ("HOME".into(), "/tmp".into()),
    ];
    for (k, v) in PLACEHOLDER_CREDENTIALS {
        env.push((k.into(), v.into()));
    }
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// `YYYY/MM/DD` (UTC) of `time`, as in Lambda log stream names.
pub(crate) fn date_path(time: SystemTime) -> String {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}/{m:02}/{d:02}")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A request id in UUID form (8-4-4-4-12 hex) from 128 bits.
pub(crate) fn request_id(bits: u128) -> String {
    let h = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An X-Ray trace header: `Root=1-{8 hex secs}-{24 hex};Parent={16 hex};Sampled=0`.
pub(crate) fn trace_id(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let a = ulid::Ulid::new().random();
    let b = ulid::Ulid::new().random();
    format!(
        "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
        secs as u32,
        a & ((1u128 << 96) - 1),
        b as u64
    )
}

/// Epoch milliseconds of `time`.
pub(crate) fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date_path(UNIX_EPOCH), "1970/01/01");
        // 2024-02-29 12:00 UTC, a leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_208_000);
        assert_eq!(date_path(leap), "2024/02/29");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(date_path(new_year), "2026/01/01");
    }

    #[test]
    fn ids_have_the_shapes_clients_parse() {
        let id = request_id(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id, "01234567-89ab-cdef-0123-456789abcdef");
        let trace = trace_id(UNIX_EPOCH + Duration::from_secs(0x5e6a_1234));
        let (root, parent) = trace.split_once(";Parent=").unwrap();
        let parts: Vec<&str> = root.trim_start_matches("Root=").split('-').collect();
        assert_eq!(parts[0], "1");
        assert_eq!(parts[1], "5e6a1234");
        assert_eq!(parts[2].len(), 24);
        let (parent, sampled) = parent.split_once(';').unwrap();
        assert_eq!(parent.len(), 16);
        assert_eq!(sampled, "Sampled=0");
    }

    #[test]
    fn manifest_env_wins_and_names_follow_lambda() {
        let target = FunctionTarget {
            app: "shop".into(),
            function: "api".into(),
            revision: 7,
        };
        let mut spec: FunctionSpec = test_spec();
        spec.env.insert("AWS_REGION".into(), "eu-west-1".into());
        spec.env.insert("AWS_ACCESS_KEY_ID".into(), "mine".into());
        spec.env.insert("GREETING".into(), "hi".into());
        let env = base(&target, &spec, "local");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("shop-api"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("7"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("128"));
        assert_eq!(
            get("AWS_LAMBDA_LOG_GROUP_NAME"),
            Some("/aws/lambda/shop-api")
        );
        assert_eq!(get("_HANDLER"), Some("./bootstrap"));
        assert_eq!(get("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("local"));
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("mine"));
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(env.iter().filter(|(n, _)| n == "AWS_REGION").count(), 1);
        assert_eq!(
            arn("local", &target),
            "arn:aws:lambda:local:000000000000:function:shop-api:7"
        );
    }

    fn test_spec() -> FunctionSpec {
        let manifest = nubo_core::manifest::parse(
            "[app]\nname = \"shop\"\n[function.api]\nruntime = \"process\"\nsource = \"code\"\nmemory = \"128MiB\"\n",
        )
        .expect("test manifest parses");
        manifest.functions["api"].clone()
    }
}
