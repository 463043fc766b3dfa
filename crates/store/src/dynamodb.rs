//! DynamoDB: one item per record, `key_id` the partition key. Writes are
//! conditional (`attribute_not_exists(key_id)`), reads strongly consistent,
//! listings paginated with Scan's LastEvaluatedKey.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use nekms_keys::{KeyRecord, KeySpec, Origin};

use crate::alias::{Alias, DYNAMO_PREFIX};
use crate::{checked, Damaged, Entry, KeyStore, Page, StoreError};

/// An item's deletion date, if one is scheduled.
fn deletion_of(item: &Item) -> Result<Option<u64>, StoreError> {
    match item.get("deletion_date") {
        None => Ok(None),
        Some(AttributeValue::N(n)) => n.parse().map(Some).map_err(|_| StoreError::Corrupt {
            key_id: item.get("key_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
            reason: format!("deletion_date {n:?} is not a number"),
        }),
        Some(_) => Err(StoreError::Corrupt {
            key_id: item.get("key_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
            reason: "deletion_date is not a number".into(),
        }),
    }
}

fn entry_of(item: &Item) -> Result<Entry, StoreError> {
    let record = from_item(item).and_then(checked)?;
    Ok((record, deletion_of(item)?))
}

type Item = HashMap<String, AttributeValue>;

/// Key records in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn sdk_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    table: &str,
    e: SdkError<E, R>,
) -> StoreError {
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let detail = std::error::Error::source(&e).map(|s| format!("{s}")).unwrap_or_else(|| e.to_string());
            StoreError::Unavailable(format!("DynamoDB did not answer: {detail}"))
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown");
            let message = s.err().message().unwrap_or_default();
            match code {
                "ResourceNotFoundException" => StoreError::Backend(format!(
                    "table {table} does not exist (create it with `nekms store create-table --store dynamodb:{table}`)"
                )),
                "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "ThrottlingException"
                | "InternalServerError"
                | "ServiceUnavailable" => StoreError::Unavailable(format!("{code}: {message}")),
                _ => StoreError::Backend(format!("{code}: {message}")),
            }
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn to_item(r: &KeyRecord) -> Item {
    let mut item = Item::new();
    item.insert("key_id".into(), AttributeValue::S(r.key_id.clone()));
    item.insert("spec".into(), AttributeValue::S(r.spec.as_str().into()));
    item.insert("public_key".into(), AttributeValue::B(Blob::new(r.public_key.clone())));
    item.insert("kms_key_id".into(), AttributeValue::S(r.kms_key_id.clone()));
    item.insert(
        "encryption_context".into(),
        AttributeValue::M(r.encryption_context.iter().map(|(k, v)| (k.clone(), AttributeValue::S(v.clone()))).collect()),
    );
    item.insert("encrypted_data_key".into(), AttributeValue::B(Blob::new(r.encrypted_data_key.clone())));
    item.insert("sealed_private_key".into(), AttributeValue::B(Blob::new(r.sealed_private_key.clone())));
    item.insert("origin".into(), AttributeValue::S(r.origin.as_str().into()));
    item.insert("created_at".into(), AttributeValue::N(r.created_at.to_string()));
    if let Some(proof) = &r.migration {
        item.insert("migration".into(), AttributeValue::B(Blob::new(proof.clone())));
    }
    if let Some(doc) = &r.attestation {
        item.insert("attestation".into(), AttributeValue::B(Blob::new(doc.clone())));
    }
    item
}

fn from_item(item: &Item) -> Result<KeyRecord, StoreError> {
    let key_id = match item.get("key_id") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => return Err(StoreError::Corrupt { key_id: "?".into(), reason: "an item without a string key_id".into() }),
    };
    let corrupt = |reason: String| StoreError::Corrupt { key_id: key_id.clone(), reason };
    let s = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(corrupt(format!("{name} is missing or not a string"))),
    };
    let b = |name: &str| match item.get(name) {
        Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
        _ => Err(corrupt(format!("{name} is missing or not binary"))),
    };
    let spec = s("spec")?.parse::<KeySpec>().map_err(|e| corrupt(e.to_string()))?;
    let origin = s("origin")?.parse::<Origin>().map_err(&corrupt)?;
    let encryption_context = match item.get("encryption_context") {
        Some(AttributeValue::M(m)) => m
            .iter()
            .map(|(k, v)| match v {
                AttributeValue::S(v) => Ok((k.clone(), v.clone())),
                _ => Err(corrupt(format!("encryption_context.{k} is not a string"))),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        _ => return Err(corrupt("encryption_context is missing or not a map".into())),
    };
    let created_at = match item.get("created_at") {
        Some(AttributeValue::N(n)) => n.parse().map_err(|_| corrupt(format!("created_at {n:?} is not a number")))?,
        _ => return Err(corrupt("created_at is missing or not a number".into())),
    };
    let attestation = match item.get("attestation") {
        None => None,
        Some(AttributeValue::B(v)) => Some(v.as_ref().to_vec()),
        Some(_) => return Err(corrupt("attestation is not binary".into())),
    };
    let migration = match item.get("migration") {
        None => None,
        Some(AttributeValue::B(v)) => Some(v.as_ref().to_vec()),
        Some(_) => return Err(corrupt("migration is not binary".into())),
    };
    Ok(KeyRecord {
        key_id: key_id.clone(),
        spec,
        public_key: b("public_key")?,
        kms_key_id: s("kms_key_id")?,
        encryption_context,
        encrypted_data_key: b("encrypted_data_key")?,
        sealed_private_key: b("sealed_private_key")?,
        origin,
        created_at,
        attestation,
        migration,
    })
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore { client, table: table.into() }
    }

    /// A client from the SDK's default chain (region falls back to
    /// us-east-1), with `endpoint` if given, short connect and operation
    /// timeouts, and the SDK's standard retries.
    pub async fn from_env(table: &str, endpoint: Option<&str>) -> DynamoStore {
        let region = aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region).timeout_config(timeouts).load().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&shared);
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        DynamoStore::new(Client::from_conf(config.build()), table)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Create the table (on-demand capacity) and wait until it is active.
    /// An existing table with the right key is accepted.
    pub async fn create_table(&self) -> Result<bool, StoreError> {
        let attr =
            AttributeDefinition::builder().attribute_name("key_id").attribute_type(ScalarAttributeType::S).build().expect("all fields set");
        let key = KeySchemaElement::builder().attribute_name("key_id").key_type(KeyType::Hash).build().expect("all fields set");
        let created = match self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => true,
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => false,
            Err(e) => return Err(sdk_error(&self.table, e)),
        };
        for _ in 0..120 {
            let d = self.client.describe_table().table_name(&self.table).send().await.map_err(|e| sdk_error(&self.table, e))?;
            let table = d.table();
            let schema = table.map(|t| t.key_schema()).unwrap_or_default();
            if !(schema.len() == 1 && schema[0].attribute_name() == "key_id") {
                return Err(StoreError::Backend(format!(
                    "table {} exists with another key schema; nekms needs key_id as its only key",
                    self.table
                )));
            }
            if table.and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(created);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::Unavailable(format!("table {} did not become active within a minute", self.table)))
    }
}

fn alias_of(item: &Item) -> Option<Alias> {
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(Alias {
        name: s("key_id")?.strip_prefix(DYNAMO_PREFIX)?.to_owned(),
        target: s("alias_target")?,
        created: n("created"),
        updated: n("updated"),
    })
}

impl DynamoStore {
    pub(crate) async fn meta(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(format!("{}{key_id}", crate::meta::DYNAMO_PREFIX)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(&self.table, e))?;
        Ok(out.item().and_then(|i| i.get("meta")).and_then(|v| v.as_s().ok()).cloned())
    }

    pub(crate) async fn put_meta(&self, key_id: &str, meta: String) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("key_id", AttributeValue::S(format!("{}{key_id}", crate::meta::DYNAMO_PREFIX)))
            .item("meta", AttributeValue::S(meta))
            .send()
            .await
            .map_err(|e| sdk_error(&self.table, e))?;
        Ok(())
    }

    pub(crate) async fn alias(&self, name: &str) -> Result<Option<Alias>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(format!("{DYNAMO_PREFIX}{name}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(&self.table, e))?;
        Ok(out.item().and_then(alias_of))
    }

    pub(crate) async fn put_alias(&self, a: &Alias, replacing: Option<&str>) -> Result<bool, StoreError> {
        let item = HashMap::from([
            ("key_id".to_string(), AttributeValue::S(format!("{DYNAMO_PREFIX}{}", a.name))),
            ("alias_target".to_string(), AttributeValue::S(a.target.clone())),
            ("created".to_string(), AttributeValue::N(a.created.to_string())),
            ("updated".to_string(), AttributeValue::N(a.updated.to_string())),
        ]);
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = match replacing {
            Some(old) => put.condition_expression("alias_target = :old").expression_attribute_values(":old", AttributeValue::S(old.into())),
            None => put.condition_expression("attribute_not_exists(key_id)"),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => match replacing {
                Some(_) => Ok(false),
                None => Err(StoreError::Exists(a.name.clone())),
            },
            Err(e) => Err(sdk_error(&self.table, e)),
        }
    }

    pub(crate) async fn delete_alias(&self, name: &str, target: &str) -> Result<bool, StoreError> {
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(format!("{DYNAMO_PREFIX}{name}")))
            .condition_expression("alias_target = :t")
            .expression_attribute_values(":t", AttributeValue::S(target.into()))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(sdk_error(&self.table, e)),
        }
    }

    pub(crate) async fn aliases(&self) -> Result<Vec<Alias>, StoreError> {
        let mut all = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(key_id, :p)")
                .expression_attribute_values(":p", AttributeValue::S(DYNAMO_PREFIX.into()))
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error(&self.table, e))?;
            all.extend(out.items().iter().filter_map(alias_of));
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(all),
            }
        }
    }
}

impl KeyStore for DynamoStore {
    async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        match self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(record)))
            .condition_expression("attribute_not_exists(key_id)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(StoreError::Exists(record.key_id.clone()))
            }
            Err(e) => Err(sdk_error(&self.table, e)),
        }
    }

    async fn entry(&self, key_id: &str) -> Result<Option<Entry>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(key_id.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(&self.table, e))?;
        match out.item().map(entry_of).transpose()? {
            Some((_, Some(at))) if at <= crate::now() => {
                self.delete(key_id).await?;
                Ok(None)
            }
            entry => Ok(entry),
        }
    }

    async fn set_deletion(&self, key_id: &str, at: Option<u64>) -> Result<bool, StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(key_id.into()))
            .condition_expression("attribute_exists(key_id)");
        let update = match at {
            Some(at) => {
                update.update_expression("SET deletion_date = :d").expression_attribute_values(":d", AttributeValue::N(at.to_string()))
            }
            None => update.update_expression("REMOVE deletion_date"),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(sdk_error(&self.table, e)),
        }
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, 1000);
        let mut page = Page::default();
        let mut read = 0;
        let mut last_read: Option<String> = None;
        let mut expired = Vec::new();
        let mut start = after.map(|a| HashMap::from([("key_id".to_string(), AttributeValue::S(a.into()))]));
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .limit((limit - read) as i32)
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error(&self.table, e))?;
            for item in out.items() {
                read += 1;
                let key_id = item.get("key_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                last_read = Some(key_id.clone());
                if key_id.starts_with('#') {
                    continue; // an alias or a key's metadata, not a record
                }
                match entry_of(item) {
                    Ok((_, Some(at))) if at <= crate::now() => expired.push(key_id),
                    Ok((record, at)) => {
                        if let Some(at) = at {
                            page.pending_deletion.insert(key_id, at);
                        }
                        page.records.push(record);
                    }
                    Err(StoreError::Corrupt { reason, .. }) => page.damaged.push(Damaged { key_id, reason }),
                    Err(e) => return Err(e),
                }
            }
            let last = out.last_evaluated_key().and_then(|k| k.get("key_id")).and_then(|v| v.as_s().ok()).cloned();
            match last {
                // A page can come back short (1 MB of reads); keep going until full or done.
                Some(l) if read < limit => start = Some(HashMap::from([("key_id".to_string(), AttributeValue::S(l))])),
                last => {
                    for key_id in expired {
                        self.delete(&key_id).await?;
                    }
                    page.next = last.and(last_read);
                    return Ok(page);
                }
            }
        }
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("key_id", AttributeValue::S(key_id.into()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error(&self.table, e))?;
        Ok(out.attributes().is_some())
    }
}
