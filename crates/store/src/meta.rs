//! What the agent's KMS API keeps about a key besides its record: whether
//! it is enabled, its description and its tags. A SQLite table `key_meta`,
//! or DynamoDB items keyed `#meta#NAME` (no key name holds `#`), which
//! listings of records skip. A key without any is enabled, undescribed and
//! untagged. Each names the record it belongs to by its creation time, so a
//! later record of the same name does not inherit it.

use std::collections::BTreeMap;

use crate::{Store, StoreError};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyMeta {
    /// The record's `created_at`.
    pub record: u64,
    pub disabled: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

pub(crate) const DYNAMO_PREFIX: &str = "#meta#";

impl Store {
    /// The metadata of record `key_id` (made at `created`), or the defaults.
    pub async fn meta(&self, key_id: &str, created: u64) -> Result<KeyMeta, StoreError> {
        let text = match self {
            Store::Sqlite(s) => s.meta(key_id).await?,
            Store::DynamoDb(s) => s.meta(key_id).await?,
        };
        let meta = match text {
            Some(t) => serde_json::from_str::<KeyMeta>(&t)
                .map_err(|e| StoreError::Corrupt { key_id: key_id.to_owned(), reason: format!("its metadata: {e}") })?,
            None => KeyMeta::default(),
        };
        Ok(if meta.record == created { meta } else { KeyMeta { record: created, ..KeyMeta::default() } })
    }

    /// Write the metadata of record `key_id`.
    pub async fn put_meta(&self, key_id: &str, meta: &KeyMeta) -> Result<(), StoreError> {
        let text = serde_json::to_string(meta).expect("metadata serializes");
        match self {
            Store::Sqlite(s) => s.put_meta(key_id, text).await,
            Store::DynamoDb(s) => s.put_meta(key_id, text).await,
        }
    }
}
