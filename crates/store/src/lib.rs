//! `nekms-store`: where the parent keeps key records.
//!
//! A record ([`nekms_keys::KeyRecord`]) is public data: the public key, the
//! KMS-encrypted data key, the sealed private key and metadata. The store
//! never sees a private key, so it needs no secrecy, only integrity and
//! durability: a record is written once ([`KeyStore::create`] refuses an id
//! that exists), read back exactly, listed in pages, and deleted on request.
//!
//! Deletion is scheduled, as KMS schedules a key's: a record pending
//! deletion stays in the store until its date, but [`KeyStore::get`]
//! refuses it ([`StoreError::PendingDeletion`]), so nothing on the parent
//! signs with it, and [`KeyStore::cancel_deletion`] brings it back; past
//! its date it is deleted at the next access. A listing reports damaged
//! items beside the good records instead of failing for all of them.
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

pub mod alias;
mod dynamodb;
pub mod meta;
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
    /// A read-only command on a store that does not exist: nothing was created.
    #[error("there is no key store at {0} (nothing was created; check --store, or make a key there first)")]
    Missing(String),
    /// The record is scheduled for deletion (seconds since the epoch).
    #[error("key {key_id:?} is scheduled for deletion at {} and signs nothing; `nekms key cancel-deletion {key_id}` keeps it", rfc3339(*.at))]
    PendingDeletion { key_id: String, at: u64 },
}

/// Seconds since the epoch in RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, in seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A stored item that does not read back as a record, as a listing reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    pub key_id: String,
    pub reason: String,
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
    /// Items of this page that do not read back as records, with the reason.
    pub damaged: Vec<Damaged>,
    /// Records of this page scheduled for deletion, and when.
    pub pending_deletion: std::collections::BTreeMap<String, u64>,
    /// Pass back to get the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// A record and its deletion date, if one is scheduled.
pub type Entry = (KeyRecord, Option<u64>);

/// A place for key records.
pub trait KeyStore: Send + Sync {
    /// Write a new record; [`StoreError::Exists`] if its id is taken.
    fn create(&self, record: &KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The record and its deletion date, pending or not (a record past its date is deleted, and `None`).
    fn entry(&self, key_id: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;
    /// Records in key-id order (SQLite) or table order (DynamoDB), at most `limit` items a page
    /// (damaged ones counted); records past their deletion date are deleted, not listed.
    fn list(&self, after: Option<&str>, limit: usize) -> impl Future<Output = Result<Page, StoreError>> + Send;
    /// Whether a record was there to delete.
    fn delete(&self, key_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Set (`Some`) or clear (`None`) a record's deletion date; whether the record was there.
    fn set_deletion(&self, key_id: &str, at: Option<u64>) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The record to use: [`StoreError::PendingDeletion`] while one is scheduled.
    fn get(&self, key_id: &str) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        async move {
            match self.entry(key_id).await? {
                Some((record, None)) => Ok(Some(record)),
                Some((_, Some(at))) => Err(StoreError::PendingDeletion { key_id: key_id.to_owned(), at }),
                None => Ok(None),
            }
        }
    }
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

    /// As [`Store::open`], for reading only: a SQLite file that does not
    /// exist is [`StoreError::Missing`], and nothing is created.
    pub async fn open_existing(url: &StoreUrl, endpoint: Option<&str>) -> Result<Store, StoreError> {
        if let StoreUrl::Sqlite(path) = url {
            if !path.is_file() {
                return Err(StoreError::Missing(url.to_string()));
            }
        }
        Store::open(url, endpoint).await
    }
}

impl KeyStore for Store {
    async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.create(record).await,
            Store::DynamoDb(s) => s.create(record).await,
        }
    }
    async fn entry(&self, key_id: &str) -> Result<Option<Entry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.entry(key_id).await,
            Store::DynamoDb(s) => s.entry(key_id).await,
        }
    }
    async fn set_deletion(&self, key_id: &str, at: Option<u64>) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.set_deletion(key_id, at).await,
            Store::DynamoDb(s) => s.set_deletion(key_id, at).await,
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

/// Every record that reads back (damaged items and pending deletions are
/// left out: see [`KeyStore::list`] for them), `page_size` per request.
pub async fn list_all<S: KeyStore>(store: &S, page_size: usize) -> Result<Vec<KeyRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), page_size).await?;
        out.extend(page.records.into_iter().filter(|r| !page.pending_deletion.contains_key(&r.key_id)));
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
