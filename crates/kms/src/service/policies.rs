//! Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies; and the
//! checks every new key policy passes (CreateKey's too).

use serde_json::{json, Value};

use crate::error::KmsError;
use crate::model::KeyState;
use crate::policy::{evaluate, Decision, Policy};

use super::Call;

impl Call<'_> {
    fn policy_name(&self) -> Result<(), KmsError> {
        match self.req.opt_str("PolicyName")? {
            None | Some("default") => Ok(()),
            Some(other) => Err(KmsError::not_found(format!("No such policy exists: {other}; the only key policy name is \"default\""))),
        }
    }

    pub(super) fn get_key_policy(&mut self) -> Result<Value, KmsError> {
        self.policy_name()?;
        let key = self.authorized_key("KeyId", "kms:GetKeyPolicy", &|_| {})?;
        Ok(json!({"Policy": key.policy, "PolicyName": "default"}))
    }

    pub(super) fn put_key_policy(&mut self) -> Result<Value, KmsError> {
        self.policy_name()?;
        let text =
            self.req.str_len("Policy", 1, 32768)?.ok_or_else(|| KmsError::constraint("Policy", "Member must not be null"))?.to_owned();
        let policy = Policy::parse(&text, true).map_err(|e| KmsError::new("MalformedPolicyDocumentException", e.to_string()))?;
        refuse_unmodelled(&policy)?;
        let bypass = self.req.opt_bool("BypassPolicyLockoutSafetyCheck")?.unwrap_or(false);
        let key = self.authorized_key("KeyId", "kms:PutKeyPolicy", &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        if !bypass {
            self.lockout_check(&policy, &key.metadata.arn)?;
        }
        self.store().set_policy(&key.metadata.key_id, &text)?;
        Ok(json!({}))
    }

    pub(super) fn list_key_policies(&mut self) -> Result<Value, KmsError> {
        self.authorized_key("KeyId", "kms:ListKeyPolicies", &|_| {})?;
        Ok(json!({"PolicyNames": ["default"], "Truncated": false}))
    }

    /// KMS refuses a policy that would stop the caller from changing it later.
    pub(super) fn lockout_check(&self, policy: &Policy, arn: &str) -> Result<(), KmsError> {
        let ctx = self.context("kms:PutKeyPolicy", arn);
        match evaluate(policy, self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            _ => Err(KmsError::new(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )),
        }
    }
}

/// A policy naming a condition key this KMS does not set is refused: here it
/// would always be absent, while AWS sets it, and the two would decide
/// differently.
pub(super) fn refuse_unmodelled(policy: &Policy) -> Result<(), KmsError> {
    let keys = policy.unmodelled_keys();
    if keys.is_empty() {
        return Ok(());
    }
    Err(KmsError::unsupported(format!(
        "this local KMS does not model the condition key(s) {}: they would always be absent here, while AWS sets them, so the policy would not decide as it does on AWS",
        keys.join(", ")
    )))
}
