//! Key management: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription; and the
//! checks of a key's state and usage that the other operations make.

use serde_json::{json, Value};

use crate::crypto;
use crate::error::KmsError;
use crate::model::{KeyMetadata, KeySpec, KeyState, KeyUsage};
use crate::policy::{default_key_policy, Policy};
use crate::store::StoredKey;

use super::policies::refuse_unmodelled;
use super::{epoch, usage_name, uuid, Call};

impl Call<'_> {
    pub(super) fn create_key(&mut self) -> Result<Value, KmsError> {
        let usage = match self.req.opt_str("KeyUsage")? {
            None | Some("ENCRYPT_DECRYPT") => KeyUsage::EncryptDecrypt,
            Some("SIGN_VERIFY") => KeyUsage::SignVerify,
            Some("KEY_AGREEMENT") => KeyUsage::KeyAgreement,
            Some("GENERATE_VERIFY_MAC") => {
                return Err(KmsError::unsupported("HMAC keys (GENERATE_VERIFY_MAC) are not implemented by this KMS"))
            }
            Some(u) => {
                return Err(KmsError::constraint(
                    "KeyUsage",
                    format!(
                    "Member must satisfy enum value set: [ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT] (got {u:?})"
                ),
                ))
            }
        };
        let spec_name = match (self.req.opt_str("KeySpec")?, self.req.opt_str("CustomerMasterKeySpec")?) {
            (Some(_), Some(_)) => {
                return Err(KmsError::validation(
                    "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.",
                ))
            }
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => "SYMMETRIC_DEFAULT",
        };
        let spec = KeySpec::parse(spec_name).ok_or_else(|| {
            KmsError::constraint("KeySpec", format!("Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1] (got {spec_name:?}; HMAC, SM2 and ML-DSA specs are not implemented here)"))
        })?;
        if spec.is_rsa() && usage == KeyUsage::EncryptDecrypt {
            return Err(KmsError::unsupported("RSA keys for ENCRYPT_DECRYPT are not implemented by this KMS; use SYMMETRIC_DEFAULT"));
        }
        if !spec.allows(usage) {
            return Err(KmsError::validation(format!("KeyUsage {} is not compatible with KeySpec {}", usage_name(usage), spec.name())));
        }
        match self.req.opt_str("Origin")? {
            None | Some("AWS_KMS") => {}
            Some(o) => return Err(KmsError::unsupported(format!("Origin {o} is not supported by this KMS; only AWS_KMS"))),
        }
        if self.req.opt_bool("MultiRegion")? == Some(true) {
            return Err(KmsError::unsupported("multi-Region keys are not supported by this KMS"));
        }
        if self.req.has("CustomKeyStoreId") || self.req.has("XksKeyId") {
            return Err(KmsError::unsupported("custom key stores are not supported by this KMS"));
        }
        let description = self.req.str_len("Description", 0, 8192)?.unwrap_or("").to_owned();
        let tags = self.req.tags("Tags")?;
        let policy_text = match self.req.str_len("Policy", 1, 32768)? {
            Some(p) => p.to_owned(),
            None => default_key_policy(self.account()),
        };
        let policy = Policy::parse(&policy_text, true).map_err(|e| KmsError::new("MalformedPolicyDocumentException", e.to_string()))?;
        refuse_unmodelled(&policy)?;
        let bypass = self.req.opt_bool("BypassPolicyLockoutSafetyCheck")?.unwrap_or(false);
        let spec_for_ctx = spec.name();
        self.authorize_identity("kms:CreateKey", &|ctx| {
            ctx.set("kms:KeySpec", spec_for_ctx);
            ctx.set("kms:BypassPolicyLockoutSafetyCheck", if bypass { "true" } else { "false" });
        })?;
        let key_id = uuid();
        let meta = KeyMetadata::new(self.account(), self.region(), &key_id, spec, usage, &description, epoch(self.now));
        if !bypass {
            self.lockout_check(&policy, &meta.arn)?;
        }
        let material = match (spec, usage) {
            (KeySpec::SymmetricDefault, _) => crypto::random(32),
            (_, KeyUsage::KeyAgreement) => crypto::generate_agreement(spec)?.private_pkcs8,
            _ => crypto::generate(spec)?.private_pkcs8,
        };
        self.store().insert_key(&meta, &policy_text, &tags, &material)?;
        self.audit.resources.push(meta.arn.clone());
        Ok(json!({ "KeyMetadata": meta }))
    }

    pub(super) fn describe_key(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let key = self.authorized_key("KeyId", "kms:DescribeKey", &|_| {})?;
        Ok(json!({ "KeyMetadata": key.metadata }))
    }

    pub(super) fn list_keys(&mut self) -> Result<Value, KmsError> {
        self.authorize_identity("kms:ListKeys", &|_| {})?;
        let keys: Vec<Value> = self.store().list_keys()?.into_iter().map(|(id, arn)| json!({"KeyId": id, "KeyArn": arn})).collect();
        self.page(keys, "Keys", 1000, 100)
    }

    pub(super) fn set_enabled(&mut self, enabled: bool) -> Result<Value, KmsError> {
        let action = if enabled { "kms:EnableKey" } else { "kms:DisableKey" };
        let mut key = self.authorized_key("KeyId", action, &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        key.metadata.enabled = enabled;
        key.metadata.key_state = if enabled { KeyState::Enabled } else { KeyState::Disabled };
        self.store().update_metadata(&key.metadata)?;
        Ok(json!({}))
    }

    pub(super) fn schedule_deletion(&mut self) -> Result<Value, KmsError> {
        let days = self.req.opt_int("PendingWindowInDays", 7, 30)?.unwrap_or(30);
        let mut key = self.authorized_key("KeyId", "kms:ScheduleKeyDeletion", &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        let when = epoch(self.now + time::Duration::days(days));
        key.metadata.key_state = KeyState::PendingDeletion;
        key.metadata.enabled = false;
        key.metadata.deletion_date = Some(when);
        self.store().update_metadata(&key.metadata)?;
        Ok(json!({"KeyId": key.metadata.arn, "DeletionDate": when, "KeyState": "PendingDeletion", "PendingWindowInDays": days}))
    }

    pub(super) fn cancel_deletion(&mut self) -> Result<Value, KmsError> {
        let mut key = self.authorized_key("KeyId", "kms:CancelKeyDeletion", &|_| {})?;
        if key.metadata.key_state != KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is not pending deletion.", key.metadata.arn)));
        }
        key.metadata.key_state = KeyState::Disabled;
        key.metadata.deletion_date = None;
        self.store().update_metadata(&key.metadata)?;
        Ok(json!({"KeyId": key.metadata.arn}))
    }

    pub(super) fn update_description(&mut self) -> Result<Value, KmsError> {
        let description = self
            .req
            .str_len("Description", 0, 8192)?
            .ok_or_else(|| KmsError::constraint("Description", "Member must not be null"))?
            .to_owned();
        let mut key = self.authorized_key("KeyId", "kms:UpdateKeyDescription", &|_| {})?;
        key.metadata.description = description;
        self.store().update_metadata(&key.metadata)?;
        Ok(json!({}))
    }

    // ---- key state and usage ----

    pub(super) fn usable(&self, key: &StoredKey) -> Result<(), KmsError> {
        match key.metadata.key_state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::new("DisabledException", format!("{} is disabled.", key.metadata.arn))),
            KeyState::PendingDeletion => Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn))),
        }
    }

    pub(super) fn expect_usage(&self, key: &StoredKey, usage: KeyUsage, op: &str) -> Result<(), KmsError> {
        if key.metadata.key_usage != usage {
            return Err(KmsError::key_usage(format!(
                "{} key usage is {} which is not valid for {op}.",
                key.metadata.arn,
                usage_name(key.metadata.key_usage)
            )));
        }
        Ok(())
    }

    pub(super) fn symmetric(&self, key: &StoredKey, op: &str) -> Result<(), KmsError> {
        self.usable(key)?;
        self.expect_usage(key, KeyUsage::EncryptDecrypt, op)?;
        if key.metadata.key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::key_usage(format!("{} is not a symmetric key; {op} needs one", key.metadata.arn)));
        }
        Ok(())
    }
}
