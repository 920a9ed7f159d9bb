//! The secrets store: values round-trip through encryption, the database file never holds
//! them, a wrong key is refused with a clear message, listings carry names only, and the
//! snapshot generation moves with every change.

use nubo_store::Store;
use nubo_store::secrets::SecretError;

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A value that would be found in the file if it were stored in plaintext.
const VALUE: &[u8] = b"postgres://shop:hunter2-very-secret@db.internal/shop";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of the database and its write-ahead log.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["nubo.db", "nubo.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            all.extend(bytes);
        }
    }
    all
}

#[test]
fn values_round_trip_and_never_reach_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let secrets = store.secrets_with_key(Some(KEY_A)).unwrap();
        assert!(!secrets.is_set("shop", "db_url"));
        assert_eq!(secrets.generation("shop"), 0);
        secrets.set("shop", "db_url", VALUE).unwrap();
        secrets.set("shop", "api_token", b"tok").unwrap();
        assert_eq!(secrets.get("shop", "db_url").unwrap().as_slice(), VALUE);
        assert!(secrets.is_set("shop", "db_url"));
        // The same handle comes back from the store, sharing its snapshot.
        assert!(store.secrets().unwrap().is_set("shop", "api_token"));
        // Apps do not see each other's secrets.
        assert!(secrets.get("other", "db_url").is_none());
    }
    assert!(
        !contains(&database_bytes(dir.path()), VALUE),
        "the database holds the plaintext"
    );
    assert!(!contains(&database_bytes(dir.path()), b"hunter2"));

    // Reopened with the same key, the values decrypt again.
    let store = Store::open(dir.path()).unwrap();
    let secrets = store.secrets_with_key(Some(KEY_A)).unwrap();
    assert_eq!(secrets.get("shop", "db_url").unwrap().as_slice(), VALUE);
    assert_eq!(
        secrets.app("shop").unwrap().get("api_token"),
        Some(&b"tok"[..])
    );
}

#[test]
fn a_wrong_key_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let secrets = store.secrets_with_key(Some(KEY_A)).unwrap();
        secrets.set("shop", "db_url", VALUE).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let err = store.secrets_with_key(Some(KEY_B)).unwrap_err();
    assert!(matches!(err, SecretError::WrongKey { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("does not match"), "{message}");
    assert!(message.contains("NUBO_SECRET_KEY"), "{message}");
    assert!(!contains(message.as_bytes(), VALUE));

    // A key that is not 64 hex characters is refused before anything is opened.
    let err = store.secrets_with_key(Some("abc")).unwrap_err();
    assert!(err.to_string().contains("64 hex characters"), "{err}");
}

#[test]
fn the_key_file_is_generated_private_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("secret.key");
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .secrets_with_key(None)
            .unwrap()
            .set("shop", "db_url", VALUE)
            .unwrap();
    }
    let text = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(text.trim_end().len(), 64, "{text:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode {mode:o}");

        // Readable by others: refused, naming the fix.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.secrets_with_key(None).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The file's key is the one the secrets were written with.
    let store = Store::open(dir.path()).unwrap();
    let secrets = store.secrets_with_key(Some(text.trim_end())).unwrap();
    assert_eq!(secrets.get("shop", "db_url").unwrap().as_slice(), VALUE);

    // A truncated key file is refused.
    std::fs::write(&key_path, &text[..20]).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store.secrets_with_key(None).unwrap_err();
    assert!(err.to_string().contains("64 hex characters"), "{err}");
}

#[test]
fn names_never_expose_values_and_generations_move() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let secrets = store.secrets_with_key(Some(KEY_A)).unwrap();
    secrets.set("shop", "db_url", VALUE).unwrap();
    secrets.set("shop", "api_token", b"tok-123456").unwrap();
    let g1 = secrets.generation("shop");
    assert!(g1 > 0);

    let names = secrets.names("shop").unwrap();
    let listed: Vec<&str> = names.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed, ["api_token", "db_url"]);
    let debug = format!("{names:?} {secrets:?} {:?}", secrets.app("shop").unwrap());
    assert!(!contains(debug.as_bytes(), VALUE), "{debug}");
    assert!(!debug.contains("tok-123456"), "{debug}");

    secrets.set("shop", "db_url", b"new value").unwrap();
    let g2 = secrets.generation("shop");
    assert!(g2 > g1);
    assert_eq!(
        secrets.get("shop", "db_url").unwrap().as_slice(),
        b"new value"
    );

    assert!(secrets.delete("shop", "db_url").unwrap());
    assert!(!secrets.delete("shop", "db_url").unwrap());
    assert!(secrets.generation("shop") > g2);
    assert!(!secrets.is_set("shop", "db_url"));
    assert_eq!(secrets.names("shop").unwrap().len(), 1);
}

#[test]
fn bad_names_and_large_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let secrets = store.secrets_with_key(Some(KEY_A)).unwrap();
    let err = secrets.set("shop", "DB URL", b"x").unwrap_err();
    assert_eq!(err.code(), nubo_core::ErrorCode::InvalidSecret);
    let big = vec![b'x'; nubo_core::limits::MAX_SECRET_VALUE_BYTES + 1];
    let err = secrets.set("shop", "big", &big).unwrap_err();
    assert!(err.to_string().contains("64 KiB"), "{err}");
    assert!(secrets.names("shop").unwrap().is_empty());
}
