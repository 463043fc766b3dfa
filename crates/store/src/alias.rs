//! Aliases: names (`alias/...`, as KMS spells them) that point at a key
//! record, for the agent's KMS API. They live in the same store as the
//! records: a SQLite table `aliases`, or DynamoDB items whose `key_id` is
//! `#alias#NAME` (no key name holds `#`), which listings of records skip.

use crate::{Store, StoreError};

/// One alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// `alias/...`.
    pub name: String,
    /// The key record's id.
    pub target: String,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

/// The DynamoDB item key of an alias.
pub(crate) const DYNAMO_PREFIX: &str = "#alias#";

impl Store {
    /// The alias `name`, if it exists.
    pub async fn alias(&self, name: &str) -> Result<Option<Alias>, StoreError> {
        match self {
            Store::Sqlite(s) => s.alias(name).await,
            Store::DynamoDb(s) => s.alias(name).await,
        }
    }

    /// Write `alias`: a new one ([`StoreError::Exists`] if the name is
    /// taken), or with `replacing`, one that must still point at that target
    /// (`Ok(false)` if it is gone or was moved meanwhile).
    pub async fn put_alias(&self, alias: &Alias, replacing: Option<&str>) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.put_alias(alias, replacing).await,
            Store::DynamoDb(s) => s.put_alias(alias, replacing).await,
        }
    }

    /// Delete the alias `name` if it still points at `target`; whether it did.
    pub async fn delete_alias(&self, name: &str, target: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_alias(name, target).await,
            Store::DynamoDb(s) => s.delete_alias(name, target).await,
        }
    }

    /// Every alias, by name.
    pub async fn aliases(&self) -> Result<Vec<Alias>, StoreError> {
        let mut all = match self {
            Store::Sqlite(s) => s.aliases().await?,
            Store::DynamoDb(s) => s.aliases().await?,
        };
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
