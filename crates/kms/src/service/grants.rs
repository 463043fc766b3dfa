//! CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant,
//! grant tokens, and authorization through a grant.
//!
//! Grants here are consistent at once (AWS's are eventually consistent, and
//! a grant token lets a caller use a grant before it has propagated). A token
//! is still checked: one this KMS never issued is `InvalidGrantTokenException`,
//! as on AWS, so code that passes tokens is exercised.

use serde_json::{json, Value};

use super::Call;
use crate::blob::EncryptionContext;
use crate::error::KmsError;
use crate::grant::{
    supported_operations, Constraints, Grant, GRANT_OPERATIONS, MAX_CONSTRAINT_PAIRS, MAX_CONSTRAINT_VALUE, MAX_GRANTS_PER_KEY,
};
use crate::model::KeyState;
use crate::policy::{evaluate_identity, Decision, RequestContext};
use crate::request::{b64, Request};
use crate::store::StoredKey;

fn grant_id_valid(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A principal member: an IAM or STS ARN, an account's root, or a service principal.
fn principal(req: &Request, name: &str) -> Result<Option<String>, KmsError> {
    let Some(p) = req.str_len(name, 1, 256)? else { return Ok(None) };
    let shaped = (p.starts_with("arn:aws:iam::") || p.starts_with("arn:aws:sts::")) && p.split(':').count() == 6
        || p.ends_with(".amazonaws.com") && !p.contains(':');
    if !shaped || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b)) {
        return Err(KmsError::validation(format!(
            "{name} {p:?} is not a valid principal: use the ARN of an AWS account root, IAM user, IAM role or assumed-role session, or a service principal"
        )));
    }
    Ok(Some(p.to_owned()))
}

fn constraint_context(req: &Request, name: &str) -> Result<Option<EncryptionContext>, KmsError> {
    if !req.has(name) {
        return Ok(None);
    }
    let ctx = req.context(name)?;
    if ctx.len() > MAX_CONSTRAINT_PAIRS {
        return Err(KmsError::validation(format!(
            "Constraints.{name} has {} pairs; a grant constraint holds at most {MAX_CONSTRAINT_PAIRS}",
            ctx.len()
        )));
    }
    if let Some((k, _)) = ctx.iter().find(|(k, v)| k.is_empty() || v.chars().count() > MAX_CONSTRAINT_VALUE) {
        return Err(KmsError::validation(format!(
            "Constraints.{name}: the pair {k:?} has an empty key or a value over {MAX_CONSTRAINT_VALUE} characters"
        )));
    }
    Ok(Some(ctx))
}

fn constraints(req: &Request) -> Result<Option<Constraints>, KmsError> {
    let Some(c) = req.object("Constraints")? else { return Ok(None) };
    let c = Constraints {
        equals: constraint_context(&c, "EncryptionContextEquals")?,
        subset: constraint_context(&c, "EncryptionContextSubset")?,
    };
    Ok((c.equals.is_some() || c.subset.is_some()).then_some(c))
}

fn operations(req: &Request) -> Result<Vec<String>, KmsError> {
    if !req.has("Operations") {
        return Err(KmsError::constraint("Operations", "Member must not be null"));
    }
    let mut ops = req.str_list("Operations")?;
    if ops.is_empty() {
        return Err(KmsError::validation("Operations must name at least one operation"));
    }
    if let Some(bad) = ops.iter().find(|o| !GRANT_OPERATIONS.contains(&o.as_str())) {
        return Err(KmsError::constraint(
            "Operations",
            format!("Member must satisfy enum value set: [{}] (got {bad:?})", GRANT_OPERATIONS.join(", ")),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    ops.retain(|o| seen.insert(o.clone()));
    Ok(ops)
}

fn same_operations(a: &[String], b: &[String]) -> bool {
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    set(a) == set(b)
}

impl Call<'_> {
    /// Check `GrantTokens`: each must be one this KMS issued.
    pub(super) fn grant_tokens(&self) -> Result<(), KmsError> {
        for t in self.req.grant_tokens()? {
            if self.store().token_grant(&t)?.is_none() {
                return Err(KmsError::new("InvalidGrantTokenException", "The grant token is not valid: this KMS did not issue it"));
            }
        }
        Ok(())
    }

    fn caller_is(&self, principal: &str, ctx: &RequestContext) -> bool {
        principal == self.caller.principal_arn || ctx.get("aws:PrincipalArn").is_some_and(|p| p.iter().any(|p| p == principal))
    }

    /// A grant of `key` that allows `action` for this caller and request, if any.
    /// A grant to the account (its root ARN) is delegated to IAM: it allows a
    /// caller whose identity policies allow the action.
    pub(super) fn grant_for(&self, key: &StoredKey, action: &str, ctx: &RequestContext) -> Result<Option<Grant>, KmsError> {
        Ok(self.grants_for(key, action, ctx)?.into_iter().next())
    }

    /// Every grant of `key` that allows `action` for this caller and request.
    fn grants_for(&self, key: &StoredKey, action: &str, ctx: &RequestContext) -> Result<Vec<Grant>, KmsError> {
        let mut out = Vec::new();
        let Some(op) = action.strip_prefix("kms:") else { return Ok(out) };
        if !GRANT_OPERATIONS.contains(&op) {
            return Ok(out);
        }
        let context = ctx.encryption_context();
        let root = format!("arn:aws:iam::{}:root", self.account());
        for g in self.store().grants(&key.metadata.key_id)? {
            if !g.allows(op, &context) {
                continue;
            }
            let grantee = self.caller_is(&g.grantee_principal, ctx)
                || g.grantee_principal == root
                    && (self.caller.principal_arn == root
                        || evaluate_identity(self.kms.identity_policies(self.caller), ctx) == Decision::Allow);
            if grantee {
                out.push(g);
            }
        }
        Ok(out)
    }

    pub(super) fn create_grant(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let grantee =
            principal(&self.req, "GranteePrincipal")?.ok_or_else(|| KmsError::constraint("GranteePrincipal", "Member must not be null"))?;
        let retiring = principal(&self.req, "RetiringPrincipal")?;
        let ops = operations(&self.req)?;
        let constraints = constraints(&self.req)?;
        let name = self.req.str_len("Name", 1, 256)?.map(str::to_owned);
        if let Some(n) = &name {
            if !n.bytes().all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b)) {
                return Err(KmsError::constraint("Name", "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"));
            }
        }
        let id = self.req.key_id("KeyId")?.to_owned();
        let key = self.key(&id)?;
        let (g, r, o, c) = (grantee.clone(), retiring.clone(), ops.clone(), constraints.clone());
        self.authorize(&key, "kms:CreateGrant", &move |ctx| {
            ctx.set_many("kms:GrantOperations", o.clone());
            ctx.set("kms:GranteePrincipal", g.clone());
            if let Some(r) = &r {
                ctx.set("kms:RetiringPrincipal", r.clone());
            }
            ctx.set("kms:GrantIsForAWSResource", "false");
            if let Some(c) = &c {
                ctx.set_many("kms:GrantConstraintType", c.type_names());
                let pairs = c.pairs();
                for (k, v) in &pairs {
                    ctx.set(&format!("kms:EncryptionContext:{k}"), v.clone());
                }
                ctx.set_many("kms:EncryptionContextKeys", pairs.keys().cloned().collect());
            }
        })?;
        if let Some(first) = self.via_grant.take() {
            // Any one of the caller's grants that allows CreateGrant may cover the new one.
            let ctx = self.context("kms:CreateGrant", &key.metadata.arn);
            let parents = self.grants_for(&key, "kms:CreateGrant", &ctx)?;
            let parent = parents.iter().find(|p| p.covers(&ops, constraints.as_ref())).cloned().unwrap_or(first);
            if !parent.covers(&ops, constraints.as_ref()) {
                return Err(KmsError::new(
                    "AccessDeniedException",
                    format!(
                        "User: {} is not authorized to perform: kms:CreateGrant on resource: {}: grant {} allows creating only grants with a subset of its operations and constraints at least as strict",
                        self.caller.principal_arn, key.metadata.arn, parent.grant_id
                    ),
                ));
            }
        }
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        let supported = supported_operations(key.metadata.key_spec, key.metadata.key_usage);
        if let Some(op) = ops.iter().find(|o| !supported.contains(&o.as_str())) {
            return Err(KmsError::validation(format!(
                "Grant operation {op} is not valid for {} (a {} key for {}); it supports {}",
                key.metadata.arn,
                key.metadata.key_spec.name(),
                super::usage_name(key.metadata.key_usage),
                supported.join(", ")
            )));
        }
        if constraints.is_some() && key.metadata.key_spec != crate::model::KeySpec::SymmetricDefault {
            return Err(KmsError::validation(format!(
                "Encryption context grant constraints are not valid for {}: its operations take no encryption context",
                key.metadata.arn
            )));
        }
        self.dry_run()?;
        let token = b64(&crate::crypto::random(48));
        // A retried CreateGrant with the same Name and parameters gets the
        // same grant and a new token.
        if name.is_some() {
            let existing = self.store().grants(&key.metadata.key_id)?.into_iter().find(|g| {
                g.name == name
                    && g.grantee_principal == grantee
                    && g.retiring_principal == retiring
                    && same_operations(&g.operations, &ops)
                    && g.constraints == constraints
            });
            if let Some(g) = existing {
                self.store().add_grant_token(&g.grant_id, &token)?;
                return Ok(json!({"GrantToken": token, "GrantId": g.grant_id}));
            }
        }
        let grant = Grant {
            key_id: key.metadata.arn.clone(),
            grant_id: hex::encode(crate::crypto::random(32)),
            name,
            creation_date: super::epoch(self.now),
            grantee_principal: grantee,
            retiring_principal: retiring,
            issuing_account: format!("arn:aws:iam::{}:root", self.account()),
            operations: ops,
            constraints,
        };
        if !self.store().insert_grant(&key.metadata.key_id, &grant, &token, MAX_GRANTS_PER_KEY)? {
            return Err(KmsError::new(
                "LimitExceededException",
                format!("{} already has {MAX_GRANTS_PER_KEY} grants, the most a key may have", key.metadata.arn),
            ));
        }
        self.audit.request_parameters.insert("grantId".into(), grant.grant_id.clone().into());
        Ok(json!({"GrantToken": token, "GrantId": grant.grant_id}))
    }

    pub(super) fn list_grants(&mut self) -> Result<Value, KmsError> {
        let grant_id = self.req.str_len("GrantId", 1, 128)?.map(str::to_owned);
        let grantee = self.req.str_len("GranteePrincipal", 1, 256)?.map(str::to_owned);
        let key = self.authorized_key("KeyId", "kms:ListGrants", &|ctx| ctx.set("kms:GrantIsForAWSResource", "false"))?;
        let grants: Vec<Value> = self
            .store()
            .grants(&key.metadata.key_id)?
            .into_iter()
            .filter(|g| grant_id.as_ref().is_none_or(|id| *id == g.grant_id) && grantee.as_ref().is_none_or(|p| *p == g.grantee_principal))
            .map(|g| serde_json::to_value(g).expect("a grant serialises"))
            .collect();
        self.page(grants, "Grants", 100, 50)
    }

    pub(super) fn list_retirable_grants(&mut self) -> Result<Value, KmsError> {
        let retiring = principal(&self.req, "RetiringPrincipal")?
            .ok_or_else(|| KmsError::constraint("RetiringPrincipal", "Member must not be null"))?;
        self.authorize_identity("kms:ListRetirableGrants", &|_| {})?;
        let grants: Vec<Value> = self
            .store()
            .grants_retirable_by(&retiring)?
            .into_iter()
            .map(|g| serde_json::to_value(g).expect("a grant serialises"))
            .collect();
        self.page(grants, "Grants", 100, 50)
    }

    /// The grant named by `GrantId` (and `KeyId`, which must be its key).
    fn named_grant(&mut self, grant_id: &str, key: Option<&StoredKey>) -> Result<Grant, KmsError> {
        if !grant_id_valid(grant_id) {
            return Err(KmsError::new(
                "InvalidGrantIdException",
                format!("The grant id {grant_id:?} is not valid: grant ids are 64 hexadecimal digits"),
            ));
        }
        let not_found = || KmsError::not_found(format!("Grant ID {grant_id} not found"));
        let (key_id, grant) = self.store().grant(grant_id)?.ok_or_else(not_found)?;
        if key.is_some_and(|k| k.metadata.key_id != key_id) {
            return Err(not_found());
        }
        self.audit.resources.push(grant.key_id.clone());
        Ok(grant)
    }

    /// Who may retire a grant is written in the grant, not in a policy: its
    /// retiring principal, its grantee when it allows RetireGrant, and the
    /// account that issued it.
    pub(super) fn retire_grant(&mut self) -> Result<Value, KmsError> {
        let token = self.req.str_len("GrantToken", 1, 8192)?.map(str::to_owned);
        let grant_id = self.req.str_len("GrantId", 1, 128)?.map(str::to_owned);
        let key_id = self.req.str_len("KeyId", 1, 2048)?.map(str::to_owned);
        let grant = match (token, grant_id, key_id) {
            (Some(t), id, key) => {
                let by_token = self.store().token_grant(&t)?.ok_or_else(|| {
                    KmsError::new("InvalidGrantTokenException", "The grant token is not valid: this KMS did not issue it")
                })?;
                if id.as_ref().is_some_and(|id| *id != by_token) {
                    return Err(KmsError::validation("GrantId does not name the grant the GrantToken was issued for"));
                }
                let key = key.map(|k| self.key(&k)).transpose()?;
                self.named_grant(&by_token, key.as_ref())?
            }
            (None, Some(id), Some(key)) => {
                let key = self.key(&key)?;
                self.named_grant(&id, Some(&key))?
            }
            _ => return Err(KmsError::validation("RetireGrant needs a GrantToken, or a KeyId and a GrantId")),
        };
        let ctx = self.context("kms:RetireGrant", &grant.key_id);
        let root = format!("arn:aws:iam::{}:root", self.account());
        // IAM still applies: an explicit Deny on kms:RetireGrant stops even
        // the retiring principal, and the key's account may give
        // kms:RetireGrant to its principals in identity policies.
        // https://docs.aws.amazon.com/kms/latest/developerguide/grant-delete.html
        let identity = evaluate_identity(self.kms.identity_policies(self.caller), &ctx);
        if let d @ Decision::ExplicitDeny { .. } = identity {
            return Err(super::authorization::denied(self.caller, "kms:RetireGrant", &grant.key_id, &d));
        }
        let in_account = grant.key_id.split(':').nth(4) == Some(self.account());
        let may = grant
            .retiring_principal
            .as_deref()
            .is_some_and(|r| self.caller_is(r, &ctx) || r == root && in_account && identity == Decision::Allow)
            || self.caller_is(&grant.grantee_principal, &ctx) && grant.operations.iter().any(|o| o == "RetireGrant")
            || self.caller.principal_arn == root
            || in_account && identity == Decision::Allow;
        if !may {
            return Err(KmsError::new(
                "AccessDeniedException",
                format!(
                    "User: {} is not authorized to perform: kms:RetireGrant on resource: {}: the grant names the caller neither as its retiring principal nor as a grantee allowed RetireGrant",
                    self.caller.principal_arn, grant.key_id
                ),
            ));
        }
        self.dry_run()?;
        if !self.store().delete_grant(&grant.grant_id)? {
            return Err(KmsError::not_found(format!("Grant ID {} not found", grant.grant_id)));
        }
        Ok(json!({}))
    }

    pub(super) fn revoke_grant(&mut self) -> Result<Value, KmsError> {
        let grant_id =
            self.req.str_len("GrantId", 1, 128)?.ok_or_else(|| KmsError::constraint("GrantId", "Member must not be null"))?.to_owned();
        let key = self.authorized_key("KeyId", "kms:RevokeGrant", &|ctx| ctx.set("kms:GrantIsForAWSResource", "false"))?;
        self.audit.resources.clear();
        let grant = self.named_grant(&grant_id, Some(&key))?;
        self.dry_run()?;
        if !self.store().delete_grant(&grant.grant_id)? {
            return Err(KmsError::not_found(format!("Grant ID {grant_id} not found")));
        }
        Ok(json!({}))
    }
}
