//! `nekms-store`: where the parent keeps key records.
//!
//! A record ([`nekms_keys::KeyRecord`]) is public data: the public key, the
//! KMS-encrypted data key, the sealed private key and metadata. The store
//! never sees a private key, so it needs no secrecy, only integrity and
//! durability: a record is written once ([`KeyStore::create`] refuses an id
//! that exists), read back exactly, listed in pages, and deleted on request.
//!
//! Two backends behind [`KeyStore`], picked at start-up by a URL
//! ([`StoreUrl`]): `sqlite:PATH` (the default) and `dynamodb:TABLE` (with an
//! optional endpoint for moto or DynamoDB Local).
//!
//! ```no_run
//! # async fn f(record: nekms_keys::KeyRecord) -> Result<(), nekms_store::StoreError> {
//! use nekms_store::{KeyStore, Store};
//! let store = Store::open(&"sqlite:/tmp/keys.db".parse().unwrap(), None).await?;
//! store.create(&record).await?;
//! let again = store.get(&record.key_id).await?.expect("just written");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod dynamodb;
mod sqlite;

use nekms_keys::RecordExt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

pub use dynamodb::DynamoStore;
use nekms_keys::KeyRecord;
pub use sqlite::SqliteStore;

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Records are never overwritten.
    #[error("a key named {0:?} already exists; records are never overwritten (delete it first)")]
    Exists(String),
    /// The backend could not be reached or refused for a transient reason: try again.
    #[error("the key store is unavailable (retry later): {0}")]
    Unavailable(String),
    /// A stored item that does not read back as a record.
    #[error("stored record {key_id:?} is damaged: {reason}")]
    Corrupt { key_id: String, reason: String },
    #[error("the key store refused: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<KeyRecord>,
    /// Pass back to get the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// A place for key records.
pub trait KeyStore: Send + Sync {
    /// Write a new record; [`StoreError::Exists`] if its id is taken.
    fn create(&self, record: &KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(&self, key_id: &str) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;
    /// Records in key-id order (SQLite) or table order (DynamoDB), at most `limit` a page.
    fn list(&self, after: Option<&str>, limit: usize) -> impl Future<Output = Result<Page, StoreError>> + Send;
    /// Whether a record was there to delete.
    fn delete(&self, key_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Where records live: `sqlite:PATH` or `dynamodb:TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    DynamoDb(String),
}

impl FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreUrl, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a file path (sqlite:/var/lib/nekms/keys.db)".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some(table) = s.strip_prefix("dynamodb:") {
            let ok = (3..=255).contains(&table.len()) && table.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok {
                return Err(format!("{table:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)"));
            }
            return Ok(StoreUrl::DynamoDb(table.into()));
        }
        Err(format!("{s:?} is not a store; use sqlite:PATH or dynamodb:TABLE"))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreUrl::DynamoDb(t) => write!(f, "dynamodb:{t}"),
        }
    }
}

/// The store picked at start-up; the rest of the code sees only [`KeyStore`].
pub enum Store {
    Sqlite(SqliteStore),
    DynamoDb(DynamoStore),
}

impl Store {
    /// Open `url`. For DynamoDB, `endpoint` overrides the SDK's endpoint
    /// (moto, DynamoDB Local); credentials and region come from the SDK's
    /// default chain.
    pub async fn open(url: &StoreUrl, endpoint: Option<&str>) -> Result<Store, StoreError> {
        Ok(match url {
            StoreUrl::Sqlite(path) => Store::Sqlite(SqliteStore::open(path)?),
            StoreUrl::DynamoDb(table) => Store::DynamoDb(DynamoStore::from_env(table, endpoint).await),
        })
    }
}

impl KeyStore for Store {
    async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.create(record).await,
            Store::DynamoDb(s) => s.create(record).await,
        }
    }
    async fn get(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(key_id).await,
            Store::DynamoDb(s) => s.get(key_id).await,
        }
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(after, limit).await,
            Store::DynamoDb(s) => s.list(after, limit).await,
        }
    }
    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete(key_id).await,
            Store::DynamoDb(s) => s.delete(key_id).await,
        }
    }
}

/// Every record, `page_size` per request.
pub async fn list_all<S: KeyStore>(store: &S, page_size: usize) -> Result<Vec<KeyRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), page_size).await?;
        out.extend(page.records);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Records read back are checked the way the enclave will check them, so a
/// damaged item is reported where it is found.
pub(crate) fn checked(record: KeyRecord) -> Result<KeyRecord, StoreError> {
    record.check().map_err(|e| StoreError::Corrupt { key_id: record.key_id.clone(), reason: e.to_string() })?;
    Ok(record)
}
