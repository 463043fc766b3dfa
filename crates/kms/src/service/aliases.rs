//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use serde_json::{json, Value};

use crate::error::KmsError;
use crate::model::{KeyState, KeyUsage};
use crate::policy::{evaluate_identity, Decision};
use crate::store::StoredKey;

use super::authorization::denied;
use super::{epoch, Call};

impl Call<'_> {
    fn alias_name(&self) -> Result<String, KmsError> {
        let name = self.req.str_len("AliasName", 1, 256)?.ok_or_else(|| KmsError::constraint("AliasName", "Member must not be null"))?;
        if !name.starts_with("alias/") || name.len() == "alias/".len() {
            return Err(KmsError::validation("Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"));
        }
        if name.starts_with("alias/aws/") {
            return Err(KmsError::new(
                "NotAuthorizedException",
                "Cannot create, update or delete an alias that begins with alias/aws/; that namespace is reserved for AWS",
            ));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)) {
            return Err(KmsError::constraint("AliasName", "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"));
        }
        Ok(name.to_owned())
    }

    fn alias_arn(&self, name: &str) -> String {
        format!("arn:aws:kms:{}:{}:{name}", self.region(), self.account())
    }

    fn target_key(&mut self, action: &str) -> Result<StoredKey, KmsError> {
        let target = self.req.key_id("TargetKeyId")?.to_owned();
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(KmsError::validation("TargetKeyId must be a key id or key ARN, not an alias"));
        }
        let key = self.key(&target)?;
        self.authorize(&key, action, &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        Ok(key)
    }

    /// Alias permissions are on the alias as well as the key; the alias
    /// resource is governed by identity policies.
    fn authorize_alias(&mut self, action: &str, name: &str) -> Result<(), KmsError> {
        let arn = self.alias_arn(name);
        let ctx = self.context(action, &arn);
        match evaluate_identity(self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            d => Err(denied(self.caller, action, &arn, &d)),
        }
    }

    pub(super) fn create_alias(&mut self) -> Result<Value, KmsError> {
        let name = self.alias_name()?;
        self.authorize_alias("kms:CreateAlias", &name)?;
        let key = self.target_key("kms:CreateAlias")?;
        self.store().create_alias(&name, &key.metadata.key_id, epoch(self.now)).map_err(|e| match e {
            crate::store::StoreError::AliasExists(_) => {
                KmsError::new("AlreadyExistsException", format!("An alias with the name {} already exists", self.alias_arn(&name)))
            }
            e => e.into(),
        })?;
        Ok(json!({}))
    }

    pub(super) fn update_alias(&mut self) -> Result<Value, KmsError> {
        let name = self.alias_name()?;
        self.authorize_alias("kms:UpdateAlias", &name)?;
        let old =
            self.store().resolve(&name)?.ok_or_else(|| KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(&name))))?;
        let old = self.store().key(&old)?.ok_or_else(|| KmsError::internal("alias points at a missing key"))?;
        self.authorize(&old, "kms:UpdateAlias", &|_| {})?;
        let key = self.target_key("kms:UpdateAlias")?;
        if key.metadata.key_usage != old.metadata.key_usage
            || key.metadata.key_spec.is_rsa() != old.metadata.key_spec.is_rsa() && key.metadata.key_usage != KeyUsage::SignVerify
        {
            return Err(KmsError::validation("The new target key must have the same key usage and type as the current one"));
        }
        self.store().update_alias(&name, &key.metadata.key_id)?;
        Ok(json!({}))
    }

    pub(super) fn delete_alias(&mut self) -> Result<Value, KmsError> {
        let name = self.alias_name()?;
        self.authorize_alias("kms:DeleteAlias", &name)?;
        let key_id =
            self.store().resolve(&name)?.ok_or_else(|| KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(&name))))?;
        let key = self.store().key(&key_id)?.ok_or_else(|| KmsError::internal("alias points at a missing key"))?;
        self.authorize(&key, "kms:DeleteAlias", &|_| {})?;
        self.store().delete_alias(&name)?;
        Ok(json!({}))
    }

    pub(super) fn list_aliases(&mut self) -> Result<Value, KmsError> {
        let key_id = match self.req.str_len("KeyId", 1, 2048)? {
            Some(id) => {
                let id = id.to_owned();
                let key = self.key(&id)?;
                self.authorize(&key, "kms:ListAliases", &|_| {})?;
                Some(key.metadata.key_id)
            }
            None => {
                self.authorize_identity("kms:ListAliases", &|_| {})?;
                None
            }
        };
        let aliases: Vec<Value> = self
            .store()
            .aliases(key_id.as_deref())?
            .into_iter()
            .map(|a| json!({"AliasName": a.name, "AliasArn": self.alias_arn(&a.name), "TargetKeyId": a.key_id, "CreationDate": a.creation_date, "LastUpdatedDate": a.creation_date}))
            .collect();
        self.page(aliases, "Aliases", 100, 50)
    }
}
