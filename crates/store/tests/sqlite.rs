//! The SQLite store. (DynamoDB is tested against moto's server in tests/python.)

use std::collections::BTreeMap;

use nekms_keys::envelope::seal_record;
use nekms_keys::record::binding_context;
use nekms_keys::{KeyRecord, KeySpec, Origin, PrivateKey};
use nekms_store::{list_all, KeyStore, SqliteStore, StoreError, StoreUrl};

fn record(key_id: &str) -> KeyRecord {
    record_of(key_id, Origin::Generated)
}

fn record_of(key_id: &str, origin: Origin) -> KeyRecord {
    let seed: Vec<u8> = key_id.bytes().cycle().take(64).collect();
    let key = PrivateKey::generate(KeySpec::Secp256k1, &seed).unwrap();
    let mut encryption_context = binding_context(key_id, key.spec(), origin, &BTreeMap::new()).unwrap();
    let migration = (origin == Origin::Migrated).then(|| {
        encryption_context.insert(nekms_keys::context::MIGRATION.into(), "ab.cd".into());
        b"{\"statement\":\"...\"}".to_vec()
    });
    let r = KeyRecord {
        key_id: key_id.into(),
        spec: key.spec(),
        public_key: key.public_key().spki().to_vec(),
        kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
        encryption_context,
        encrypted_data_key: vec![7; 120],
        sealed_private_key: Vec::new(),
        origin,
        created_at: 1_700_000_000,
        attestation: Some(vec![1, 2, 3]),
        migration,
    };
    seal_record(r, &[5u8; 32], &key).unwrap()
}

#[tokio::test]
async fn records_are_written_once_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("sub/keys.db")).unwrap();
    let r = record("u001");
    store.create(&r).await.unwrap();
    assert_eq!(store.get("u001").await.unwrap().unwrap(), r);
    assert!(store.get("u002").await.unwrap().is_none());

    let mut other = record("u001");
    other.created_at += 1;
    assert!(matches!(store.create(&other).await, Err(StoreError::Exists(id)) if id == "u001"));
    assert_eq!(store.get("u001").await.unwrap().unwrap(), r, "a refused write changes nothing");

    // A second handle on the same file (another process) sees the record.
    drop(store);
    let again = SqliteStore::open(&dir.path().join("sub/keys.db")).unwrap();
    assert_eq!(again.get("u001").await.unwrap().unwrap(), r);
    assert!(again.delete("u001").await.unwrap());
    assert!(!again.delete("u001").await.unwrap());
    assert!(again.get("u001").await.unwrap().is_none());
}

#[tokio::test]
async fn listing_pages_through_every_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    for i in (0..7).rev() {
        store.create(&record(&format!("k{i}"))).await.unwrap();
    }
    let first = store.list(None, 3).await.unwrap();
    assert_eq!(first.records.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(), ["k0", "k1", "k2"]);
    let second = store.list(first.next.as_deref(), 3).await.unwrap();
    assert_eq!(second.records[0].key_id, "k3");
    let last = store.list(Some("k5"), 3).await.unwrap();
    assert_eq!(last.records.len(), 1);
    assert!(last.next.is_none());
    assert_eq!(list_all(&store, 2).await.unwrap().len(), 7);
}

#[tokio::test]
async fn a_damaged_row_is_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let store = SqliteStore::open(&path).unwrap();
    store.create(&record("u001")).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE key_records SET spec = 'ed25519' WHERE key_id = 'u001'", []).unwrap();
    let err = store.get("u001").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!err.is_retryable());
    // A listing names it as damaged and still lists every other record, across pages.
    for id in ["u000", "u002", "u003"] {
        store.create(&record(id)).await.unwrap();
    }
    conn.execute("UPDATE key_records SET encryption_context = 'not json' WHERE key_id = 'u002'", []).unwrap();
    let first = store.list(None, 2).await.unwrap();
    assert_eq!(first.records.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(), ["u000"]);
    assert_eq!(first.damaged.iter().map(|d| d.key_id.as_str()).collect::<Vec<_>>(), ["u001"]);
    let second = store.list(first.next.as_deref(), 2).await.unwrap();
    assert_eq!(second.records.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(), ["u003"]);
    assert!(second.damaged[0].key_id == "u002" && second.damaged[0].reason.contains("encryption context"), "{:?}", second.damaged);
    assert_eq!(list_all(&store, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_scheduled_deletion_refuses_use_until_cancelled_and_deletes_at_its_date() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let r = record("d001");
    store.create(&r).await.unwrap();
    let at = nekms_store::now() + 7 * 86_400;
    assert!(store.set_deletion("d001", Some(at)).await.unwrap());
    assert!(!store.set_deletion("nope", Some(at)).await.unwrap());
    let err = store.get("d001").await.unwrap_err();
    assert!(matches!(&err, StoreError::PendingDeletion { key_id, at: a } if key_id == "d001" && *a == at), "{err}");
    assert!(err.to_string().contains("cancel-deletion d001"), "{err}");
    assert_eq!(store.entry("d001").await.unwrap(), Some((r.clone(), Some(at))));
    let page = store.list(None, 10).await.unwrap();
    assert_eq!(page.pending_deletion.get("d001"), Some(&at));
    assert!(list_all(&store, 10).await.unwrap().is_empty(), "list_all leaves pending deletions out");
    assert!(store.set_deletion("d001", None).await.unwrap());
    assert_eq!(store.get("d001").await.unwrap(), Some(r));
    // Past its date, the next access deletes it.
    store.set_deletion("d001", Some(nekms_store::now() - 1)).await.unwrap();
    assert!(store.entry("d001").await.unwrap().is_none());
    assert!(!store.delete("d001").await.unwrap(), "already gone");
    assert_eq!(nekms_store::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(nekms_store::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

#[tokio::test]
async fn reading_a_store_that_does_not_exist_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url: StoreUrl = format!("sqlite:{}", dir.path().join("mistyped/keys.db").display()).parse().unwrap();
    let err = nekms_store::Store::open_existing(&url, None).await.err().unwrap();
    assert!(matches!(err, StoreError::Missing(_)), "{err}");
    assert!(!dir.path().join("mistyped").exists());
}

#[test]
fn store_urls_are_parsed_with_clear_errors() {
    assert_eq!("sqlite:/tmp/k.db".parse::<StoreUrl>().unwrap(), StoreUrl::Sqlite("/tmp/k.db".into()));
    assert_eq!("dynamodb:nekms-keys".parse::<StoreUrl>().unwrap(), StoreUrl::DynamoDb("nekms-keys".into()));
    assert!("dynamodb:a".parse::<StoreUrl>().is_err());
    assert!("postgres://x".parse::<StoreUrl>().unwrap_err().contains("sqlite:PATH"));
}

/// A store written before migrated records existed gains their column on
/// open, and its records read back unchanged; a migrated record's approval
/// is kept byte for byte.
#[tokio::test]
async fn an_older_store_gains_the_migration_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let r = record("old1");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE key_records (key_id TEXT PRIMARY KEY NOT NULL, spec TEXT NOT NULL, public_key BLOB NOT NULL, kms_key_id TEXT NOT NULL,
             encryption_context TEXT NOT NULL, encrypted_data_key BLOB NOT NULL, sealed_private_key BLOB NOT NULL, origin TEXT NOT NULL,
             created_at INTEGER NOT NULL, attestation BLOB) STRICT;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO key_records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rusqlite::params![
                r.key_id,
                r.spec.as_str(),
                r.public_key,
                r.kms_key_id,
                serde_json::to_string(&r.encryption_context).unwrap(),
                r.encrypted_data_key,
                r.sealed_private_key,
                r.origin.as_str(),
                r.created_at as i64,
                r.attestation
            ],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get("old1").await.unwrap().unwrap(), r);
    let migrated = record_of("new1", Origin::Migrated);
    store.create(&migrated).await.unwrap();
    assert_eq!(SqliteStore::open(&path).unwrap().get("new1").await.unwrap().unwrap(), migrated);
}
