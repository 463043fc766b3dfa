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
use zeroize::Zeroizing;

use crate::audit::AuditFacts;
use crate::blob::{self, EncryptionContext};
use crate::crypto::{self, SigningAlgorithm};
use crate::error::KmsError;
use crate::grant::Grant;
use crate::model::{KeyMetadata, KeySpec, KeyState, KeyUsage};
use crate::policy::{default_key_policy, evaluate, evaluate_identity, Decision, Policy, RequestContext};
use crate::recipient::{Recipient, RecipientPolicy};
use crate::request::{b64, Request};
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

mod grants;

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

fn denied(caller: &Caller, action: &str, resource: &str, decision: &Decision) -> KmsError {
    let why = match decision {
        Decision::ExplicitDeny { in_key_policy: true, .. } => "with an explicit deny in a resource-based policy",
        Decision::ExplicitDeny { in_key_policy: false, .. } => "with an explicit deny in an identity-based policy",
        _ if resource == "*" => "because no identity-based policy allows the action",
        _ => "because no resource-based policy allows the action",
    };
    let resource = if resource == "*" { String::new() } else { format!(" on resource: {resource}") };
    KmsError::new("AccessDeniedException", format!("User: {} is not authorized to perform: {action}{resource} {why}", caller.principal_arn))
}

type SigningRequest = (StoredKey, SigningAlgorithm, Zeroizing<Vec<u8>>, bool);

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

    fn context(&self, action: &str, resource: &str) -> RequestContext {
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
    fn key(&self, id: &str) -> Result<StoredKey, KmsError> {
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
    fn authorized_key(&mut self, member: &str, action: &str, extra: &dyn Fn(&mut RequestContext)) -> Result<StoredKey, KmsError> {
        let id = self.req.key_id(member)?.to_owned();
        let key = self.key(&id)?;
        self.authorize(&key, action, extra)?;
        Ok(key)
    }

    fn authorize(&mut self, key: &StoredKey, action: &str, extra: &dyn Fn(&mut RequestContext)) -> Result<(), KmsError> {
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

    fn authorize_identity(&mut self, action: &str, extra: &dyn Fn(&mut RequestContext)) -> Result<(), KmsError> {
        let mut ctx = self.context(action, "*");
        extra(&mut ctx);
        match evaluate_identity(self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            d => Err(denied(self.caller, action, "*", &d)),
        }
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

    // ---- key state and usage ----

    fn usable(&self, key: &StoredKey) -> Result<(), KmsError> {
        match key.metadata.key_state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::new("DisabledException", format!("{} is disabled.", key.metadata.arn))),
            KeyState::PendingDeletion => Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn))),
        }
    }

    fn expect_usage(&self, key: &StoredKey, usage: KeyUsage, op: &str) -> Result<(), KmsError> {
        if key.metadata.key_usage != usage {
            return Err(KmsError::key_usage(format!(
                "{} key usage is {} which is not valid for {op}.",
                key.metadata.arn,
                usage_name(key.metadata.key_usage)
            )));
        }
        Ok(())
    }

    fn symmetric(&self, key: &StoredKey, op: &str) -> Result<(), KmsError> {
        self.usable(key)?;
        self.expect_usage(key, KeyUsage::EncryptDecrypt, op)?;
        if key.metadata.key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::key_usage(format!("{} is not a symmetric key; {op} needs one", key.metadata.arn)));
        }
        Ok(())
    }

    fn check_encryption_algorithm(&self, member: &str) -> Result<(), KmsError> {
        match self.req.opt_str(member)? {
            None | Some("SYMMETRIC_DEFAULT") => Ok(()),
            Some(a @ ("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE")) => {
                Err(KmsError::key_usage(format!("The encryption algorithm {a} is not valid for a symmetric key")))
            }
            Some(a) => Err(KmsError::constraint(
                member,
                format!(
                    "Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE] (got {a:?})"
                ),
            )),
        }
    }

    fn seal_blob(&self, key: &StoredKey, context: &EncryptionContext, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        let (version, material) = self.store().current_material(&key.metadata.key_id)?;
        let material: &[u8; 32] = material.as_slice().try_into().map_err(|_| KmsError::internal("symmetric material is not 32 bytes"))?;
        Ok(blob::seal(&key.metadata.arn, version, material, context, plaintext))
    }

    /// Open a blob with its key; `expected` is the KeyId the caller named, if any.
    fn open_blob(
        &mut self,
        blob_bytes: &[u8],
        context: &EncryptionContext,
        key_member: &str,
        action: &str,
        extra: &dyn Fn(&mut RequestContext),
    ) -> Result<(StoredKey, Zeroizing<Vec<u8>>), KmsError> {
        let header = blob::peek(blob_bytes)?;
        let key = self.key(&header.key_arn).map_err(|e| match e.kind {
            "NotFoundException" => KmsError::invalid_ciphertext("The ciphertext refers to a key that does not exist in this KMS"),
            _ => e,
        })?;
        if let Some(named) = self.req.str_len(key_member, 1, 2048)? {
            let named = self.key(named)?;
            if named.metadata.key_id != key.metadata.key_id {
                return Err(KmsError::new(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this operation.",
                ));
            }
        }
        self.authorize(&key, action, extra)?;
        self.symmetric(&key, "Decrypt")?;
        let material = self.store().material(&key.metadata.key_id, header.material_version).map_err(|e| match e {
            crate::store::StoreError::NoMaterial(_) => {
                KmsError::invalid_ciphertext("The ciphertext names key material this key does not have")
            }
            e => e.into(),
        })?;
        let material: &[u8; 32] = material.as_slice().try_into().map_err(|_| KmsError::internal("symmetric material is not 32 bytes"))?;
        let plaintext = blob::open(blob_bytes, &header, material, context)?;
        Ok((key, plaintext))
    }

    // ---- key management ----

    fn create_key(&mut self) -> Result<Value, KmsError> {
        let usage = match self.req.opt_str("KeyUsage")? {
            None | Some("ENCRYPT_DECRYPT") => KeyUsage::EncryptDecrypt,
            Some("SIGN_VERIFY") => KeyUsage::SignVerify,
            Some("KEY_AGREEMENT") => KeyUsage::KeyAgreement,
            Some("GENERATE_VERIFY_MAC") => {
                return Err(KmsError::unsupported("HMAC keys (GENERATE_VERIFY_MAC) are not implemented by this KMS"))
            }
            Some(u) => return Err(KmsError::constraint(
                "KeyUsage",
                format!(
                    "Member must satisfy enum value set: [ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT] (got {u:?})"
                ),
            )),
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

    /// KMS refuses a policy that would stop the caller from changing it later.
    fn lockout_check(&self, policy: &Policy, arn: &str) -> Result<(), KmsError> {
        let ctx = self.context("kms:PutKeyPolicy", arn);
        match evaluate(policy, self.kms.identity_policies(self.caller), &ctx) {
            Decision::Allow => Ok(()),
            _ => Err(KmsError::new(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )),
        }
    }

    fn describe_key(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let key = self.authorized_key("KeyId", "kms:DescribeKey", &|_| {})?;
        Ok(json!({ "KeyMetadata": key.metadata }))
    }

    fn list_keys(&mut self) -> Result<Value, KmsError> {
        self.authorize_identity("kms:ListKeys", &|_| {})?;
        let keys: Vec<Value> = self.store().list_keys()?.into_iter().map(|(id, arn)| json!({"KeyId": id, "KeyArn": arn})).collect();
        self.page(keys, "Keys", 1000, 100)
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

    fn set_enabled(&mut self, enabled: bool) -> Result<Value, KmsError> {
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

    fn schedule_deletion(&mut self) -> Result<Value, KmsError> {
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

    fn cancel_deletion(&mut self) -> Result<Value, KmsError> {
        let mut key = self.authorized_key("KeyId", "kms:CancelKeyDeletion", &|_| {})?;
        if key.metadata.key_state != KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is not pending deletion.", key.metadata.arn)));
        }
        key.metadata.key_state = KeyState::Disabled;
        key.metadata.deletion_date = None;
        self.store().update_metadata(&key.metadata)?;
        Ok(json!({"KeyId": key.metadata.arn}))
    }

    fn update_description(&mut self) -> Result<Value, KmsError> {
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

    // ---- aliases ----

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

    fn create_alias(&mut self) -> Result<Value, KmsError> {
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

    fn update_alias(&mut self) -> Result<Value, KmsError> {
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

    fn delete_alias(&mut self) -> Result<Value, KmsError> {
        let name = self.alias_name()?;
        self.authorize_alias("kms:DeleteAlias", &name)?;
        let key_id =
            self.store().resolve(&name)?.ok_or_else(|| KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(&name))))?;
        let key = self.store().key(&key_id)?.ok_or_else(|| KmsError::internal("alias points at a missing key"))?;
        self.authorize(&key, "kms:DeleteAlias", &|_| {})?;
        self.store().delete_alias(&name)?;
        Ok(json!({}))
    }

    fn list_aliases(&mut self) -> Result<Value, KmsError> {
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

    // ---- policies and tags ----

    fn policy_name(&self) -> Result<(), KmsError> {
        match self.req.opt_str("PolicyName")? {
            None | Some("default") => Ok(()),
            Some(other) => Err(KmsError::not_found(format!("No such policy exists: {other}; the only key policy name is \"default\""))),
        }
    }

    fn get_key_policy(&mut self) -> Result<Value, KmsError> {
        self.policy_name()?;
        let key = self.authorized_key("KeyId", "kms:GetKeyPolicy", &|_| {})?;
        Ok(json!({"Policy": key.policy, "PolicyName": "default"}))
    }

    fn put_key_policy(&mut self) -> Result<Value, KmsError> {
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

    fn list_key_policies(&mut self) -> Result<Value, KmsError> {
        self.authorized_key("KeyId", "kms:ListKeyPolicies", &|_| {})?;
        Ok(json!({"PolicyNames": ["default"], "Truncated": false}))
    }

    fn tag_resource(&mut self) -> Result<Value, KmsError> {
        let tags = self.req.tags("Tags")?;
        let key = self.authorized_key("KeyId", "kms:TagResource", &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        self.store().tag(&key.metadata.key_id, &tags)?;
        Ok(json!({}))
    }

    fn untag_resource(&mut self) -> Result<Value, KmsError> {
        let keys = self.req.str_list("TagKeys")?;
        let key = self.authorized_key("KeyId", "kms:UntagResource", &|_| {})?;
        self.store().untag(&key.metadata.key_id, &keys)?;
        Ok(json!({}))
    }

    fn list_resource_tags(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:ListResourceTags", &|_| {})?;
        let tags: Vec<Value> =
            self.store().tags(&key.metadata.key_id)?.into_iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect();
        self.page(tags, "Tags", 50, 50)
    }

    // ---- symmetric cryptography ----

    fn context_keys(context: &EncryptionContext) -> impl Fn(&mut RequestContext) + '_ {
        move |ctx: &mut RequestContext| {
            for (k, v) in context {
                ctx.set(&format!("kms:EncryptionContext:{k}"), v.clone());
            }
            if !context.is_empty() {
                ctx.set_many("kms:EncryptionContextKeys", context.keys().cloned().collect());
            }
        }
    }

    fn encrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let plaintext = self.req.blob("Plaintext", 1, MAX_PLAINTEXT)?;
        let context = self.req.context("EncryptionContext")?;
        self.check_encryption_algorithm("EncryptionAlgorithm")?;
        let keys = Self::context_keys(&context);
        let key = self.authorized_key("KeyId", "kms:Encrypt", &|ctx| {
            keys(ctx);
            ctx.set("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
        })?;
        self.symmetric(&key, "Encrypt")?;
        self.dry_run()?;
        let blob = self.seal_blob(&key, &context, &plaintext)?;
        Ok(json!({"CiphertextBlob": b64(&blob), "KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
    }

    fn decrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let blob_bytes = self.req.blob("CiphertextBlob", 1, blob::MAX_BLOB)?;
        let context = self.req.context("EncryptionContext")?;
        self.check_encryption_algorithm("EncryptionAlgorithm")?;
        let recipient = self.recipient()?;
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let (key, plaintext) = self.open_blob(&blob_bytes, &context, "KeyId", "kms:Decrypt", &|ctx| {
            keys(ctx);
            ctx.set("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.dry_run()?;
        let mut out = json!({"KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"});
        match recipient {
            Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&plaintext)?).into(),
            None => out["Plaintext"] = b64(&plaintext).into(),
        }
        Ok(out)
    }

    fn re_encrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let blob_bytes = self.req.blob("CiphertextBlob", 1, blob::MAX_BLOB)?;
        let source_context = self.req.context("SourceEncryptionContext")?;
        let dest_context = self.req.context("DestinationEncryptionContext")?;
        self.check_encryption_algorithm("SourceEncryptionAlgorithm")?;
        self.check_encryption_algorithm("DestinationEncryptionAlgorithm")?;
        let source_keys = Self::context_keys(&source_context);
        let (source, plaintext) =
            self.open_blob(&blob_bytes, &source_context, "SourceKeyId", "kms:ReEncryptFrom", &|ctx| source_keys(ctx))?;
        let dest_keys = Self::context_keys(&dest_context);
        let dest = self.authorized_key("DestinationKeyId", "kms:ReEncryptTo", &|ctx| dest_keys(ctx))?;
        self.symmetric(&dest, "ReEncrypt")?;
        self.dry_run()?;
        let blob = self.seal_blob(&dest, &dest_context, &plaintext)?;
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "SourceKeyId": source.metadata.arn,
            "KeyId": dest.metadata.arn,
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }

    fn generate_data_key(&mut self, with_plaintext: bool) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let length = match (self.req.opt_str("KeySpec")?, self.req.opt_int("NumberOfBytes", 1, 1024)?) {
            (Some(_), Some(_)) => return Err(KmsError::validation("Please specify either number of bytes or key spec.")),
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (Some(s), None) => {
                return Err(KmsError::constraint("KeySpec", format!("Member must satisfy enum value set: [AES_256, AES_128] (got {s:?})")))
            }
            (None, Some(n)) => n as usize,
            (None, None) => return Err(KmsError::validation("Please specify either number of bytes or key spec.")),
        };
        let context = self.req.context("EncryptionContext")?;
        let recipient = self.recipient_unless(!with_plaintext, "GenerateDataKeyWithoutPlaintext")?;
        let action = if with_plaintext { "kms:GenerateDataKey" } else { "kms:GenerateDataKeyWithoutPlaintext" };
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            keys(ctx);
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.symmetric(&key, "GenerateDataKey")?;
        self.dry_run()?;
        let data_key = crypto::random(length);
        let blob = self.seal_blob(&key, &context, &data_key)?;
        let mut out = json!({"CiphertextBlob": b64(&blob), "KeyId": key.metadata.arn});
        if with_plaintext {
            match recipient {
                Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&data_key)?).into(),
                None => out["Plaintext"] = b64(&data_key).into(),
            }
        }
        Ok(out)
    }

    fn generate_data_key_pair(&mut self, with_plaintext: bool) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let spec_name = self.req.str("KeyPairSpec")?.to_owned();
        let spec = KeySpec::parse(&spec_name).filter(|s| *s != KeySpec::SymmetricDefault).ok_or_else(|| {
            KmsError::constraint("KeyPairSpec", format!("Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1] (got {spec_name:?})"))
        })?;
        let context = self.req.context("EncryptionContext")?;
        let recipient = self.recipient_unless(!with_plaintext, "GenerateDataKeyPairWithoutPlaintext")?;
        let action = if with_plaintext { "kms:GenerateDataKeyPair" } else { "kms:GenerateDataKeyPairWithoutPlaintext" };
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            keys(ctx);
            ctx.set("kms:DataKeyPairSpec", spec.name());
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.symmetric(&key, "GenerateDataKeyPair")?;
        self.dry_run()?;
        let pair = crypto::generate(spec)?;
        let blob = self.seal_blob(&key, &context, &pair.private_pkcs8)?;
        let mut out = json!({
            "PrivateKeyCiphertextBlob": b64(&blob),
            "PublicKey": b64(&pair.public_spki),
            "KeyId": key.metadata.arn,
            "KeyPairSpec": spec.name(),
        });
        if with_plaintext {
            match recipient {
                Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&pair.private_pkcs8)?).into(),
                None => out["PrivateKeyPlaintext"] = b64(&pair.private_pkcs8).into(),
            }
        }
        Ok(out)
    }

    fn generate_random(&mut self) -> Result<Value, KmsError> {
        let n =
            self.req.opt_int("NumberOfBytes", 1, 1024)?.ok_or_else(|| KmsError::constraint("NumberOfBytes", "Member must not be null"))?
                as usize;
        if self.req.has("CustomKeyStoreId") {
            return Err(KmsError::unsupported("custom key stores are not supported by this KMS"));
        }
        let recipient = self.recipient()?;
        let r = recipient.clone();
        self.authorize_identity("kms:GenerateRandom", &|ctx| {
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        let bytes = crypto::random(n);
        Ok(match recipient {
            Some(r) => json!({"CiphertextForRecipient": b64(&r.seal(&bytes)?)}),
            None => json!({"Plaintext": b64(&bytes)}),
        })
    }

    // ---- asymmetric keys ----

    /// Read and authorize a Sign/Verify request: key, algorithm, message, whether it is a digest.
    fn signing(&mut self, action: &str, op: &str) -> Result<SigningRequest, KmsError> {
        self.grant_tokens()?;
        let message = self.req.blob("Message", 1, MAX_PLAINTEXT)?;
        let is_digest = match self.req.opt_str("MessageType")? {
            None | Some("RAW") => false,
            Some("DIGEST") => true,
            Some("EXTERNAL_MU") => {
                return Err(KmsError::unsupported("MessageType EXTERNAL_MU is for ML-DSA keys, which this KMS does not implement"))
            }
            Some(t) => {
                return Err(KmsError::constraint(
                    "MessageType",
                    format!("Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU] (got {t:?})"),
                ))
            }
        };
        let alg_name = self.req.str("SigningAlgorithm")?.to_owned();
        let message_type = if is_digest { "DIGEST" } else { "RAW" };
        let name_for_ctx = alg_name.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            ctx.set("kms:SigningAlgorithm", name_for_ctx.clone());
            ctx.set("kms:MessageType", message_type);
        })?;
        self.usable(&key)?;
        self.expect_usage(&key, KeyUsage::SignVerify, op)?;
        let alg = SigningAlgorithm::for_key(&alg_name, key.metadata.key_spec).ok_or_else(|| {
            KmsError::key_usage(format!("Algorithm {alg_name} is incompatible with key spec {}.", key.metadata.key_spec.name()))
        })?;
        Ok((key, alg, message, is_digest))
    }

    fn sign(&mut self) -> Result<Value, KmsError> {
        let (key, alg, message, is_digest) = self.signing("kms:Sign", "Sign")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let sig = alg.sign(key.metadata.key_spec, &material, &message, is_digest)?;
        Ok(json!({"KeyId": key.metadata.arn, "Signature": b64(&sig), "SigningAlgorithm": alg.name}))
    }

    fn verify(&mut self) -> Result<Value, KmsError> {
        let signature = self.req.blob("Signature", 1, 6144)?;
        let (key, alg, message, is_digest) = self.signing("kms:Verify", "Verify")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let spki = crypto::public_key(key.metadata.key_spec, &material)?;
        if !alg.verify(key.metadata.key_spec, &spki, &message, is_digest, &signature)? {
            return Err(KmsError::new("KMSInvalidSignatureException", "The signature is not valid for this message and key."));
        }
        Ok(json!({"KeyId": key.metadata.arn, "SignatureValid": true, "SigningAlgorithm": alg.name}))
    }

    fn get_public_key(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let key = self.authorized_key("KeyId", "kms:GetPublicKey", &|_| {})?;
        self.usable(&key)?;
        let m = &key.metadata;
        let material = match (m.key_spec, m.key_usage) {
            (KeySpec::SymmetricDefault, _) => {
                return Err(KmsError::unsupported(format!("{} is a symmetric key; it has no public key", m.arn)))
            }
            _ => self.store().material(&m.key_id, 1)?,
        };
        let spki = match m.key_usage {
            KeyUsage::KeyAgreement => crypto::agreement_public_key(m.key_spec, &material)?,
            _ => crypto::public_key(m.key_spec, &material)?,
        };
        let mut out = json!({
            "KeyId": m.arn,
            "PublicKey": b64(&spki),
            "CustomerMasterKeySpec": m.key_spec.name(),
            "KeySpec": m.key_spec.name(),
            "KeyUsage": usage_name(m.key_usage),
        });
        if let Some(a) = &m.signing_algorithms {
            out["SigningAlgorithms"] = json!(a);
        }
        if let Some(a) = &m.key_agreement_algorithms {
            out["KeyAgreementAlgorithms"] = json!(a);
        }
        Ok(out)
    }

    fn derive_shared_secret(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        match self.req.str("KeyAgreementAlgorithm")? {
            "ECDH" => {}
            a => {
                return Err(KmsError::constraint(
                    "KeyAgreementAlgorithm",
                    format!("Member must satisfy enum value set: [ECDH] (got {a:?})"),
                ))
            }
        }
        let peer = self.req.blob("PublicKey", 1, 8192)?;
        let recipient = self.recipient()?;
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", "kms:DeriveSharedSecret", &|ctx| {
            ctx.set("kms:KeyAgreementAlgorithm", "ECDH");
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.usable(&key)?;
        self.expect_usage(&key, KeyUsage::KeyAgreement, "DeriveSharedSecret")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let secret = crypto::derive_shared_secret(key.metadata.key_spec, &material, &peer)?;
        let mut out = json!({"KeyId": key.metadata.arn, "KeyAgreementAlgorithm": "ECDH", "KeyOrigin": "AWS_KMS"});
        match recipient {
            Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&secret)?).into(),
            None => out["SharedSecret"] = b64(&secret).into(),
        }
        Ok(out)
    }

    // ---- rotation ----

    fn rotatable(&self, key: &StoredKey) -> Result<(), KmsError> {
        if key.metadata.key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::unsupported(format!("{} is an asymmetric key; only symmetric keys rotate", key.metadata.arn)));
        }
        self.usable(key)
    }

    fn set_rotation(&mut self, enabled: bool) -> Result<Value, KmsError> {
        let action = if enabled { "kms:EnableKeyRotation" } else { "kms:DisableKeyRotation" };
        let period = self.req.opt_int("RotationPeriodInDays", 90, 2560)?;
        let key = self.authorized_key("KeyId", action, &|_| {})?;
        self.rotatable(&key)?;
        if !enabled && period.is_some() {
            return Err(KmsError::validation("RotationPeriodInDays is only for EnableKeyRotation"));
        }
        self.store().set_rotation(&key.metadata.key_id, enabled)?;
        Ok(json!({}))
    }

    fn get_rotation_status(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:GetKeyRotationStatus", &|_| {})?;
        let mut out = json!({"KeyRotationEnabled": key.rotation_enabled, "KeyId": key.metadata.arn});
        if key.rotation_enabled {
            out["RotationPeriodInDays"] = 365.into();
        }
        Ok(out)
    }

    fn rotate_on_demand(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:RotateKeyOnDemand", &|_| {})?;
        self.rotatable(&key)?;
        self.store().rotate(&key.metadata.key_id, &crypto::random(32))?;
        Ok(json!({"KeyId": key.metadata.key_id}))
    }

    fn list_key_rotations(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:ListKeyRotations", &|_| {})?;
        let (current, _) = self.store().current_material(&key.metadata.key_id)?;
        let rotations: Vec<Value> =
            (2..=current).map(|v| json!({"KeyId": key.metadata.key_id, "RotationType": "ON_DEMAND", "MaterialVersion": v})).collect();
        self.page(rotations, "Rotations", 1000, 100)
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

/// A policy naming a condition key this KMS does not set is refused: here it
/// would always be absent, while AWS sets it, and the two would decide
/// differently.
fn refuse_unmodelled(policy: &Policy) -> Result<(), KmsError> {
    let keys = policy.unmodelled_keys();
    if keys.is_empty() {
        return Ok(());
    }
    Err(KmsError::unsupported(format!(
        "this local KMS does not model the condition key(s) {}: they would always be absent here, while AWS sets them, so the policy would not decide as it does on AWS",
        keys.join(", ")
    )))
}
