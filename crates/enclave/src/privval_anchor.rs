//! The validator signer's freshness anchor: one DynamoDB item per key and
//! chain holding the newest state record, written by the enclave with a
//! conditional write (the counter it last saw) under credentials only the
//! enclave holds (an IAM identity allowed GetItem, PutItem and UpdateItem
//! on the table, imported as a KMS ciphertext only this image can open).
//!
//! The parent relays the traffic (through its proxy, TLS end to end in
//! production) but cannot write the item: its instance role has no write
//! access to the table, and it never sees the credentials. So it cannot
//! roll the state back, and two enclaves given one key serialise on the
//! item: the one whose conditional write fails reads the item again and
//! decides once more against it.

use std::sync::RwLock;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use nekms_kms_client::{ChannelHttpClient, TlsRoots};
use nekms_transport::Address;
use zeroize::Zeroizing;

pub use nekms_keys::context::{ANCHOR_TABLE, PURPOSE_ANCHOR_CREDENTIALS};

pub struct Anchor {
    pub table: String,
    endpoint: Option<String>,
    region: String,
    http: ChannelHttpClient,
    client: RwLock<Option<(aws_sdk_dynamodb::Client, String)>>,
}

/// How a conditional write ended.
pub enum Written {
    Done,
    /// The item's counter was not the one expected: another writer got there first.
    Moved,
}

fn sdk_error<E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> String {
    match &e {
        SdkError::ServiceError(s) => {
            let m = s.err();
            format!("DynamoDB: {}: {}", m.code().unwrap_or("error"), nekms_kms_client::first_line(m.message().unwrap_or_default()))
        }
        _ => format!("DynamoDB: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)),
    }
}

impl Anchor {
    pub fn new(table: String, endpoint: Option<String>, region: String, proxy: &Address, roots: TlsRoots) -> anyhow::Result<Anchor> {
        let http = ChannelHttpClient::new(proxy.clone(), roots).map_err(anyhow::Error::msg)?;
        Ok(Anchor { table, endpoint, region, http, client: RwLock::new(None) })
    }

    /// Install the anchor's credentials (opened inside the enclave).
    pub fn set_credentials(&self, access_key_id: String, secret: Zeroizing<String>) {
        let creds = Credentials::new(access_key_id.clone(), secret.as_str(), None, None, "nekms-privval-anchor");
        let mut b = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(creds)
            .http_client(self.http.clone());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some((aws_sdk_dynamodb::Client::from_conf(b.build()), access_key_id));
    }

    pub fn access_key_id(&self) -> Option<String> {
        self.client.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, id)| id.clone())
    }

    fn client(&self) -> Result<aws_sdk_dynamodb::Client, String> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
            .ok_or_else(|| "the anchor has no credentials yet (nekms privval anchor credentials)".to_string())
    }

    /// The item's record, read consistently.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let out = self
            .client()?
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(name.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.item.and_then(|mut i| i.remove("record")) {
            Some(AttributeValue::B(b)) => Ok(Some(b.into_inner())),
            Some(_) => Err(format!("the anchor item {name} holds no record")),
            None => Ok(None),
        }
    }

    /// Create the item; `false` if it exists already.
    pub async fn create(&self, name: &str, counter: u64, record: Vec<u8>) -> Result<bool, String> {
        let r = self
            .client()?
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(name.to_owned()))
            .item("counter", AttributeValue::N(counter.to_string()))
            .item("record", AttributeValue::B(Blob::new(record)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// Replace the item's record if its counter is still `previous`.
    pub async fn update(&self, name: &str, previous: u64, counter: u64, record: Vec<u8>) -> Result<Written, String> {
        let r = self
            .client()?
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(name.to_owned()))
            .update_expression("SET #c = :c, #r = :r")
            .condition_expression("#c = :p")
            .expression_attribute_names("#c", "counter")
            .expression_attribute_names("#r", "record")
            .expression_attribute_values(":c", AttributeValue::N(counter.to_string()))
            .expression_attribute_values(":p", AttributeValue::N(previous.to_string()))
            .expression_attribute_values(":r", AttributeValue::B(Blob::new(record)))
            .send()
            .await;
        match r {
            Ok(_) => Ok(Written::Done),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(Written::Moved),
            Err(e) => Err(sdk_error(e)),
        }
    }
}
