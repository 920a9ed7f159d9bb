//! Choosing an app's revision per request: pinning (`nubo-revision: N` or the `/_rev/N/...`
//! prefix) and the `nubo-affinity` cookie that keeps a client on the revision it first got.

use http::HeaderMap;
use http::header::COOKIE;

/// Cookie that keeps a client on a revision while an app's traffic is split. Its value lists
/// `app.revision` pairs joined by `&` (app names are `[a-z0-9-]`), e.g. `shop.12&blog.3`.
pub const AFFINITY_COOKIE: &str = "nubo-affinity";
/// Path prefix that pins a revision: `/_rev/13/users/1` is `/users/1` on revision 13.
pub const REV_PREFIX: &str = "/_rev/";
/// Most apps one affinity cookie remembers: bounds the header a client sends back.
pub const MAX_AFFINITY_ENTRIES: usize = 16;

/// Splits a `/_rev/N/...` prefix off `path`: `None` when there is none, else the revision and
/// the rest of the path (at least `/`), or an error message for a malformed number.
pub fn strip_rev_prefix(path: &str) -> Option<Result<(u64, &str), String>> {
    let tail = path.strip_prefix(REV_PREFIX)?;
    let (num, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, "/"),
    };
    Some(match num.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((n, rest)),
        _ => Err(format!(
            "invalid revision {num:?} in the path prefix {REV_PREFIX}{num}: use {REV_PREFIX}<revision number>/<path>, e.g. /_rev/13/"
        )),
    })
}

/// Parses the value of a `nubo-revision` request header.
pub fn parse_pin_header(value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            format!(
                "invalid nubo-revision header {:?}: send a revision number, e.g. `nubo-revision: 13`",
                String::from_utf8_lossy(value)
            )
        })
}

/// The raw value of the affinity cookie in the request's `Cookie` headers.
pub fn affinity_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == AFFINITY_COOKIE).then_some(value.trim_matches('"'))
        })
}

fn entries(value: &str) -> impl Iterator<Item = (&str, u64)> {
    value.split('&').filter_map(|e| {
        let (app, rev) = e.rsplit_once('.')?;
        let valid = !app.is_empty()
            && app
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then_some(())?;
        Some((app, rev.parse().ok()?))
    })
}

/// The revision the affinity cookie value names for `app`.
pub fn affinity_for(value: &str, app: &str) -> Option<u64> {
    entries(value).find(|(a, _)| *a == app).map(|(_, r)| r)
}

/// The `Set-Cookie` value that records `app.revision`, keeping the other apps' valid entries
/// of `previous` (newest last, at most [`MAX_AFFINITY_ENTRIES`]).
pub fn set_affinity_cookie(previous: Option<&str>, app: &str, revision: u64) -> String {
    let mut kept: Vec<(&str, u64)> = previous
        .map(|v| entries(v).filter(|(a, _)| *a != app).collect())
        .unwrap_or_default();
    let excess = (kept.len() + 1).saturating_sub(MAX_AFFINITY_ENTRIES);
    kept.drain(..excess);
    let mut value = String::with_capacity(64);
    for (a, r) in kept {
        value.push_str(a);
        value.push('.');
        value.push_str(&r.to_string());
        value.push('&');
    }
    value.push_str(app);
    value.push('.');
    value.push_str(&revision.to_string());
    format!("{AFFINITY_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use nubo_control::{AppState, LiveRevision};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn rev_prefix_is_stripped() {
        assert_eq!(strip_rev_prefix("/users/1"), None);
        assert_eq!(
            strip_rev_prefix("/_rev/13/users/1"),
            Some(Ok((13, "/users/1")))
        );
        assert_eq!(strip_rev_prefix("/_rev/13"), Some(Ok((13, "/"))));
        assert_eq!(strip_rev_prefix("/_rev/13/"), Some(Ok((13, "/"))));
        let err = strip_rev_prefix("/_rev/abc/x").unwrap().unwrap_err();
        assert!(err.contains("\"abc\""), "{err}");
        assert!(strip_rev_prefix("/_rev/0/x").unwrap().is_err());
        assert!(strip_rev_prefix("/_revision/1").is_none());
    }

    #[test]
    fn pin_header_must_be_a_number() {
        assert_eq!(parse_pin_header(b" 12 "), Ok(12));
        assert!(
            parse_pin_header(b"twelve")
                .unwrap_err()
                .contains("nubo-revision: 13")
        );
        assert!(parse_pin_header(b"0").is_err());
    }

    #[test]
    fn affinity_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; nubo-affinity=shop.12&blog.3"),
        );
        let v = affinity_value(&h).unwrap();
        assert_eq!(v, "shop.12&blog.3");
        assert_eq!(affinity_for(v, "shop"), Some(12));
        assert_eq!(affinity_for(v, "blog"), Some(3));
        assert_eq!(affinity_for(v, "other"), None);
        assert_eq!(affinity_for("shop.x&Bad.1&.2", "shop"), None);
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("x=y"));
        h.append(COOKIE, HeaderValue::from_static("nubo-affinity=a-b.7"));
        assert_eq!(
            affinity_value(&h).map(|v| affinity_for(v, "a-b")),
            Some(Some(7))
        );
    }

    #[test]
    fn affinity_cookie_replaces_only_its_app() {
        assert_eq!(
            set_affinity_cookie(None, "shop", 12),
            "nubo-affinity=shop.12; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_affinity_cookie(Some("shop.11&blog.3&junk"), "shop", 12),
            "nubo-affinity=blog.3&shop.12; Path=/; HttpOnly; SameSite=Lax"
        );
        let many: Vec<String> = (0..40).map(|i| format!("app{i}.1")).collect();
        let c = set_affinity_cookie(Some(&many.join("&")), "shop", 2);
        let value = c
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("nubo-affinity=");
        assert_eq!(value.split('&').count(), MAX_AFFINITY_ENTRIES);
        assert!(value.ends_with("shop.2"));
        assert!(!value.contains("app0."), "oldest entries go first");
    }

    #[test]
    fn weighted_pick_matches_the_weights_over_10000_requests() {
        let m = nubo_core::manifest::parse(
            "[app]\nname = \"shop\"\n[function.f]\nsource = \"f.wasm\"\n",
        )
        .unwrap();
        let rev = |n| {
            Arc::new(
                LiveRevision::new(
                    "shop".into(),
                    n,
                    std::time::SystemTime::now(),
                    m.clone(),
                    BTreeMap::new(),
                )
                .unwrap(),
            )
        };
        let state = AppState::new(
            1,
            vec![(rev(3), 70), (rev(2), 20), (rev(1), 10)],
            BTreeMap::new(),
        );
        let mut rng = fastrand::Rng::with_seed(0x6e75_626f);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            let r = state.pick(rng.u8(0..100)).unwrap().revision;
            counts[r as usize] += 1;
        }
        for (rev, weight) in [(3usize, 70.0), (2, 20.0), (1, 10.0)] {
            let share = f64::from(counts[rev]) / 100.0;
            assert!(
                (share - weight).abs() <= 2.0,
                "revision {rev}: {share}% for weight {weight}% ({counts:?})"
            );
        }
    }
}
