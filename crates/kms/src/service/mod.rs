//! The KMS operations.
//!
//! Every operation resolves its key (id, ARN, alias name or alias ARN),
//! authorizes the caller against the key policy and the caller's identity
//! policies (with the request's condition keys, including the verified
//! Recipient's PCRs), checks the key's state and usage, and only then does
//! any work. Errors carry KMS's exception names; none contains key material.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::audit::AuditFacts;
use crate::crypto;
use crate::error::KmsError;
use crate::grant::Grant;
use crate::model::KeyUsage;
use crate::policy::Policy;
use crate::recipient::{Recipient, RecipientPolicy};
use crate::request::Request;
use crate::sigv4::Credential;
use crate::store::{Store, StoredKey};

/// Largest Plaintext for Encrypt, and Message for Sign/Verify.
pub const MAX_PLAINTEXT: usize = 4096;

/// A principal of the emulated account.
#[derive(Clone, Debug)]
pub struct Principal {
    pub credential: Credential,
    pub identity_policies: Vec<Policy>,
    /// `aws:PrincipalTag/<key>`.
    pub tags: std::collections::BTreeMap<String, String>,
    /// `aws:userid`; derived from the ARN when None.
    pub user_id: Option<String>,
}

/// What the local KMS is configured with.
#[derive(Clone, Debug)]
pub struct KmsConfig {
    pub region: String,
    pub account: String,
    /// Access key id -> principal.
    pub principals: HashMap<String, Principal>,
    pub recipient: RecipientPolicy,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal_arn: String,
    pub access_key_id: String,
    pub source_ip: String,
    pub secure_transport: bool,
}

/// The local KMS: configuration and state.
pub struct Kms {
    pub config: KmsConfig,
    store: Store,
    /// Parsed key policies by key id, with the text they were parsed from.
    policies: Mutex<HashMap<String, (String, std::sync::Arc<Policy>)>>,
}

/// Every operation this KMS implements, in the service's names.
pub const OPERATIONS: &[&str] = &[
    "CancelKeyDeletion",
    "CreateAlias",
    "CreateGrant",
    "CreateKey",
    "Decrypt",
    "DeleteAlias",
    "DeriveSharedSecret",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "EnableKey",
    "EnableKeyRotation",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetPublicKey",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncrypt",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateKeyDescription",
    "Verify",
];

mod aliases;
mod asymmetric;
mod authorization;
mod grants;
mod keys;
mod policies;
mod rotation;
mod symmetric;
mod tags;

pub use authorization::derived_user_id;

/// A random (version 4) UUID, as KMS uses for key ids and request ids.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&crypto::random(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn epoch(t: OffsetDateTime) -> f64 {
    (t.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0
}

/// One request being handled.
struct Call<'a> {
    kms: &'a Kms,
    caller: &'a Caller,
    req: Request,
    now: OffsetDateTime,
    audit: &'a mut AuditFacts,
    /// The grant that allowed the last authorization, when the policies did not.
    via_grant: Option<Grant>,
}

impl Kms {
    /// Open the state in `data_dir`.
    pub fn open(data_dir: &Path, config: KmsConfig) -> Result<Kms, crate::store::StoreError> {
        Ok(Kms { config, store: Store::open(data_dir)?, policies: Mutex::new(HashMap::new()) })
    }

    /// Look up an access key (for SigV4).
    pub fn credential(&self, access_key_id: &str) -> Option<Credential> {
        self.config.principals.get(access_key_id).map(|p| p.credential.clone())
    }

    /// Handle operation `op` for `caller`. Fills `audit` as it learns facts.
    pub fn call(&self, op: &str, caller: &Caller, body: &[u8], now: OffsetDateTime, audit: &mut AuditFacts) -> Result<Value, KmsError> {
        let req = Request::parse(body)?;
        let mut c = Call { kms: self, caller, req, now, audit, via_grant: None };
        c.record_parameters(op);
        match op {
            "CreateKey" => c.create_key(),
            "DescribeKey" => c.describe_key(),
            "ListKeys" => c.list_keys(),
            "EnableKey" => c.set_enabled(true),
            "DisableKey" => c.set_enabled(false),
            "ScheduleKeyDeletion" => c.schedule_deletion(),
            "CancelKeyDeletion" => c.cancel_deletion(),
            "UpdateKeyDescription" => c.update_description(),
            "CreateAlias" => c.create_alias(),
            "UpdateAlias" => c.update_alias(),
            "DeleteAlias" => c.delete_alias(),
            "ListAliases" => c.list_aliases(),
            "GetKeyPolicy" => c.get_key_policy(),
            "PutKeyPolicy" => c.put_key_policy(),
            "ListKeyPolicies" => c.list_key_policies(),
            "TagResource" => c.tag_resource(),
            "UntagResource" => c.untag_resource(),
            "ListResourceTags" => c.list_resource_tags(),
            "Encrypt" => c.encrypt(),
            "Decrypt" => c.decrypt(),
            "ReEncrypt" => c.re_encrypt(),
            "GenerateDataKey" => c.generate_data_key(true),
            "GenerateDataKeyWithoutPlaintext" => c.generate_data_key(false),
            "GenerateDataKeyPair" => c.generate_data_key_pair(true),
            "GenerateDataKeyPairWithoutPlaintext" => c.generate_data_key_pair(false),
            "GenerateRandom" => c.generate_random(),
            "Sign" => c.sign(),
            "Verify" => c.verify(),
            "GetPublicKey" => c.get_public_key(),
            "DeriveSharedSecret" => c.derive_shared_secret(),
            "EnableKeyRotation" => c.set_rotation(true),
            "DisableKeyRotation" => c.set_rotation(false),
            "GetKeyRotationStatus" => c.get_rotation_status(),
            "RotateKeyOnDemand" => c.rotate_on_demand(),
            "ListKeyRotations" => c.list_key_rotations(),
            "CreateGrant" => c.create_grant(),
            "ListGrants" => c.list_grants(),
            "ListRetirableGrants" => c.list_retirable_grants(),
            "RetireGrant" => c.retire_grant(),
            "RevokeGrant" => c.revoke_grant(),
            other => Err(KmsError::new("UnknownOperationException", format!("Operation {other} is not supported by this KMS"))),
        }
    }

    fn policy_of(&self, key: &StoredKey) -> Result<std::sync::Arc<Policy>, KmsError> {
        let mut cache = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((text, p)) = cache.get(&key.metadata.key_id) {
            if *text == key.policy {
                return Ok(p.clone());
            }
        }
        let parsed = std::sync::Arc::new(
            Policy::parse(&key.policy, true).map_err(|e| KmsError::internal(format!("the stored key policy does not parse: {e}")))?,
        );
        cache.insert(key.metadata.key_id.clone(), (key.policy.clone(), parsed.clone()));
        Ok(parsed)
    }

    fn identity_policies(&self, caller: &Caller) -> &[Policy] {
        self.config.principals.get(&caller.access_key_id).map(|p| p.identity_policies.as_slice()).unwrap_or(&[])
    }
}

impl Call<'_> {
    fn record_parameters(&mut self, op: &str) {
        // Only these scalar, non-secret members (never Plaintext, CiphertextBlob,
        // Message, Signature, PublicKey, Recipient or Policy); names in
        // CloudTrail's lower camel case.
        let mut m = Map::new();
        for name in [
            "KeyId",
            "AliasName",
            "TargetKeyId",
            "KeySpec",
            "KeyUsage",
            "NumberOfBytes",
            "KeyPairSpec",
            "EncryptionAlgorithm",
            "SigningAlgorithm",
            "MessageType",
            "PolicyName",
            "PendingWindowInDays",
            "Description",
            "DestinationKeyId",
            "SourceKeyId",
            "KeyAgreementAlgorithm",
            "GrantId",
            "GranteePrincipal",
            "RetiringPrincipal",
            "Name",
        ] {
            if let Ok(Some(v)) = self.req.opt_str(name).map(|o| o.map(str::to_owned)) {
                m.insert(camel(name), v.into());
            } else if let Ok(Some(v)) = self.req.opt_int(name, i64::MIN, i64::MAX) {
                m.insert(camel(name), v.into());
            }
        }
        if let Ok(ctx) = self.req.context("EncryptionContext") {
            if !ctx.is_empty() {
                m.insert("encryptionContext".into(), json!(ctx));
            }
        }
        self.audit.request_parameters = m;
        self.audit.read_only =
            op.starts_with("Describe") || op.starts_with("List") || op.starts_with("Get") && !op.starts_with("GenerateDataKey");
    }

    fn account(&self) -> &str {
        &self.kms.config.account
    }

    fn region(&self) -> &str {
        &self.kms.config.region
    }

    fn store(&self) -> &Store {
        &self.kms.store
    }

    fn recipient(&mut self) -> Result<Option<Recipient>, KmsError> {
        let r = Recipient::from_request(&self.req, &self.kms.config.recipient, self.now)?;
        if let Some(r) = &r {
            self.audit.recipient = Some(r.audit_fields());
        }
        Ok(r)
    }

    /// The Recipient, refused on operations that return no plaintext.
    fn recipient_unless(&mut self, without_plaintext: bool, op: &str) -> Result<Option<Recipient>, KmsError> {
        if without_plaintext {
            if self.req.has("Recipient") {
                return Err(KmsError::validation(format!("{op} does not take a Recipient")));
            }
            return Ok(None);
        }
        self.recipient()
    }

    fn dry_run(&self) -> Result<(), KmsError> {
        if self.req.opt_bool("DryRun")? == Some(true) {
            return Err(KmsError::new("DryRunOperationException", "The request would have succeeded, but the DryRun option is set."));
        }
        Ok(())
    }

    fn page(&self, items: Vec<Value>, name: &str, max: i64, default: i64) -> Result<Value, KmsError> {
        let limit = self.req.opt_int("Limit", 1, max)?.unwrap_or(default) as usize;
        let start = match self.req.opt_str("Marker")? {
            None => 0,
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= items.len())
                .ok_or_else(|| KmsError::new("InvalidMarkerException", "Invalid marker"))?,
        };
        let end = (start + limit).min(items.len());
        let mut out = json!({ name: items[start..end].to_vec(), "Truncated": end < items.len() });
        if end < items.len() {
            out["NextMarker"] = end.to_string().into();
        }
        Ok(out)
    }
}

fn usage_name(u: KeyUsage) -> &'static str {
    match u {
        KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
        KeyUsage::SignVerify => "SIGN_VERIFY",
        KeyUsage::KeyAgreement => "KEY_AGREEMENT",
    }
}

fn camel(name: &str) -> String {
    let mut c = name.chars();
    c.next().map(|f| f.to_lowercase().chain(c).collect()).unwrap_or_default()
}
