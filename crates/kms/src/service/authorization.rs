//! Resolving the key a request names and authorizing the caller: the
//! request's condition keys, the key policy and the caller's identity
//! policies, then grants.

use crate::error::KmsError;
use crate::model::KeyState;
use crate::policy::{evaluate, evaluate_identity, Decision, RequestContext};
use crate::store::StoredKey;

use super::{epoch, Call, Caller};

/// `aws:userid` as AWS forms it: the account id for the root user, a
/// unique id (`AIDA...`) for an IAM user, `AROA...:<session>` for a role
/// session. The unique ids are derived from the ARN, so they are stable.
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#principaltable
pub fn derived_user_id(arn: &str, account: &str) -> String {
    let unique = |prefix: &str| {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, arn.as_bytes());
        let tail: String = digest.as_ref().iter().take(17).map(|b| ALPHABET[usize::from(b % 32)] as char).collect();
        format!("{prefix}{tail}")
    };
    if arn == format!("arn:aws:iam::{account}:root") {
        return account.to_owned();
    }
    if let Some(rest) = arn.split_once(":assumed-role/").map(|(_, r)| r) {
        let session = rest.split_once('/').map(|(_, s)| s).unwrap_or(rest);
        return format!("{}:{session}", unique("AROA"));
    }
    if let Some(role) = arn.split_once(":role/").map(|(_, r)| r) {
        let name = role.rsplit('/').next().unwrap_or(role);
        return format!("{}:{name}", unique("AROA"));
    }
    unique("AIDA")
}

pub(super) fn denied(caller: &Caller, action: &str, resource: &str, decision: &Decision) -> KmsError {
    let why = match decision {
        Decision::ExplicitDeny { in_key_policy: true, .. } => "with an explicit deny in a resource-based policy",
        Decision::ExplicitDeny { in_key_policy: false, .. } => "with an explicit deny in an identity-based policy",
        _ if resource == "*" => "because no identity-based policy allows the action",
        _ => "because no resource-based policy allows the action",
    };
    let resource = if resource == "*" { String::new() } else { format!(" on resource: {resource}") };
    KmsError::new("AccessDeniedException", format!("User: {} is not authorized to perform: {action}{resource} {why}", caller.principal_arn))
}

impl Call<'_> {
    pub(super) fn context(&self, action: &str, resource: &str) -> RequestContext {
        let mut ctx = RequestContext::new(&self.caller.principal_arn, self.account(), action, resource);
        ctx.set("aws:SecureTransport", if self.caller.secure_transport { "true" } else { "false" });
        ctx.set("aws:SourceIp", self.caller.source_ip.clone());
        ctx.set("aws:RequestedRegion", self.region().to_owned());
        ctx.set("aws:CurrentTime", self.now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default());
        ctx.set("aws:EpochTime", self.now.unix_timestamp().to_string());
        let principal = self.kms.config.principals.get(&self.caller.access_key_id);
        let user_id =
            principal.and_then(|p| p.user_id.clone()).unwrap_or_else(|| derived_user_id(&self.caller.principal_arn, self.account()));
        ctx.set("aws:userid", user_id);
        if let Some(name) = self.caller.principal_arn.split_once(":user/").map(|(_, n)| n.rsplit('/').next().unwrap_or(n)) {
            ctx.set("aws:username", name.to_owned());
        }
        for (k, v) in principal.map(|p| &p.tags).into_iter().flatten() {
            ctx.set(&format!("aws:PrincipalTag/{k}"), v.clone());
        }
        ctx
    }

    /// Resolve a KeyId to its stored key. Keys past their deletion date are gone.
    pub(super) fn key(&self, id: &str) -> Result<StoredKey, KmsError> {
        let not_found = || {
            if id.starts_with("alias/") || id.contains(":alias/") {
                let arn =
                    if id.starts_with("arn:") { id.to_owned() } else { format!("arn:aws:kms:{}:{}:{id}", self.region(), self.account()) };
                KmsError::not_found(format!("Alias {arn} is not found."))
            } else {
                let arn = if id.starts_with("arn:") {
                    id.to_owned()
                } else {
                    format!("arn:aws:kms:{}:{}:key/{id}", self.region(), self.account())
                };
                KmsError::not_found(format!("Key '{arn}' does not exist"))
            }
        };
        if id.starts_with("arn:") && !id.starts_with(&format!("arn:aws:kms:{}:{}:", self.region(), self.account())) {
            return Err(not_found());
        }
        let key_id = self.store().resolve(id)?.ok_or_else(not_found)?;
        let key = self.store().key(&key_id)?.ok_or_else(not_found)?;
        if key.metadata.key_state == KeyState::PendingDeletion && key.metadata.deletion_date.is_some_and(|d| d <= epoch(self.now)) {
            self.store().delete_key(&key_id)?;
            return Err(not_found());
        }
        Ok(key)
    }

    /// Resolve, authorize, and record the key in the audit event.
    pub(super) fn authorized_key(
        &mut self,
        member: &str,
        action: &str,
        extra: &dyn Fn(&mut RequestContext),
    ) -> Result<StoredKey, KmsError> {
        let id = self.req.key_id(member)?.to_owned();
        let key = self.key(&id)?;
        self.authorize(&key, action, extra)?;
        Ok(key)
    }

    pub(super) fn authorize(&mut self, key: &StoredKey, action: &str, extra: &dyn Fn(&mut RequestContext)) -> Result<(), KmsError> {
        self.audit.resources.push(key.metadata.arn.clone());
        let mut ctx = self.context(action, &key.metadata.arn);
        ctx.set("kms:KeySpec", key.metadata.key_spec.name());
        ctx.set(
            "kms:KeyUsage",
            serde_json::to_value(key.metadata.key_usage).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        );
        ctx.set("kms:KeyOrigin", "AWS_KMS");
        extra(&mut ctx);
        let policy = self.kms.policy_of(key)?;
        self.via_grant = None;
        match evaluate(&policy, self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            // Grants only add permissions: an explicit Deny in the key policy
            // or in the caller's identity policies still wins (the key policy
            // may not delegate to IAM, so its Deny statements were not read yet).
            Decision::ImplicitDeny => {
                if let d @ Decision::ExplicitDeny { .. } = evaluate_identity(self.kms.identity_policies(self.caller), &ctx) {
                    return Err(denied(self.caller, action, &key.metadata.arn, &d));
                }
                match self.grant_for(key, action, &ctx)? {
                    Some(g) => {
                        self.audit.grant_id = Some(g.grant_id.clone());
                        self.via_grant = Some(g);
                        Ok(())
                    }
                    None => Err(denied(self.caller, action, &key.metadata.arn, &Decision::ImplicitDeny)),
                }
            }
            d => Err(denied(self.caller, action, &key.metadata.arn, &d)),
        }
    }

    pub(super) fn authorize_identity(&mut self, action: &str, extra: &dyn Fn(&mut RequestContext)) -> Result<(), KmsError> {
        let mut ctx = self.context(action, "*");
        extra(&mut ctx);
        match evaluate_identity(self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            d => Err(denied(self.caller, action, "*", &d)),
        }
    }
}
