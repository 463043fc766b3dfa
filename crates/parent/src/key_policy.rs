//! The key policies nekms writes and documents, and the two-step setup that
//! solves the ordering problem: the enclave's measured configuration names
//! the custody key (so PCR0 depends on the key's ARN), and the key's policy
//! names PCR0.
//!
//! 1. The administrator creates the key with [`bootstrap`]: nobody may use
//!    it; the administrator may only describe it and replace the policy.
//! 2. The enclave's configuration pins the key's ARN; the image is built and
//!    measured (PCR0).
//! 3. The administrator replaces the policy with [`custody`] (or
//!    [`two_enclaves`]), with `BypassPolicyLockoutSafetyCheck`, because the
//!    new policy denies everyone, the administrator included, any further
//!    `PutKeyPolicy`. From then on the policy cannot be reopened.
//!
//! What the final policies say:
//! - Only a Recipient document whose PCR0 is a trusted image may decrypt or
//!   generate data keys (the instance role carries the calls); an explicit
//!   Deny says so for every principal, so no grant made before the final
//!   policy (during the bootstrap) can open the key either.
//! - Nobody may mint custody ciphertexts outside the enclave: Encrypt with a
//!   `nekms:*` context key is denied unless it is the administrator's import
//!   (`nekms:purpose=import`) or the validator signer's anchor credentials
//!   (`nekms:purpose=privval-anchor-credentials`).
//! - PutKeyPolicy, CreateGrant, ReEncrypt*, ReplicateKey, ImportKeyMaterial
//!   and UpdatePrimaryRegion are denied to every principal.
//! - The administrator manages (describe, tags, rotation, enable/disable,
//!   schedule deletion) and encrypts import ciphertexts; nothing else.
//!
//! GenerateRandom is not in these policies: it names no key, so only IAM
//! policies govern it.
//!
//! `nekms-dev` compiles this file as its own `key_policy` module: the
//! development world sets its keys up with the same policies.

use serde_json::{json, Value};

/// Who the policies name.
#[derive(Clone, Debug)]
pub struct Roles {
    /// The instance role that carries the enclave's KMS calls.
    pub instance: String,
    /// The key administrator.
    pub admin: String,
}

impl Roles {
    /// The development world's roles (and the README's examples).
    pub fn standard(account: &str) -> Roles {
        Roles {
            instance: format!("arn:aws:iam::{account}:role/nekms-instance"),
            admin: format!("arn:aws:iam::{account}:role/nekms-key-admin"),
        }
    }
}

/// Step 1: the administrator may look at the key and set its policy once.
pub fn bootstrap(roles: &Roles) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Bootstrap: the administrator sets the final policy once the enclave image is measured",
             "Effect": "Allow", "Principal": {"AWS": roles.admin},
             "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"], "Resource": "*"}
        ]
    })
}

/// What an administrator's ciphertext for the enclave may be: an import
/// (`nekms key encrypt-for-import`) or the validator signer's anchor
/// credentials (`nekms privval anchor encrypt-credentials`). Only the
/// enclave opens either, and it returns neither.
const ADMIN_PURPOSES: [&str; 2] = ["import", "privval-anchor-credentials"];

/// The administrator's statements: manage, and encrypt import ciphertexts.
fn administrator(roles: &Roles) -> Vec<Value> {
    vec![
        json!({"Sid": "Administrator manages the key, never uses it",
               "Effect": "Allow", "Principal": {"AWS": roles.admin},
               "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListKeyPolicies", "kms:ListResourceTags", "kms:ListGrants",
                          "kms:GetKeyRotationStatus", "kms:EnableKeyRotation", "kms:TagResource", "kms:UntagResource",
                          "kms:EnableKey", "kms:DisableKey", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
               "Resource": "*"}),
        json!({"Sid": "Administrator encrypts import ciphertexts (nekms key encrypt-for-import) and the validator signer's anchor credentials",
               "Effect": "Allow", "Principal": {"AWS": roles.admin}, "Action": "kms:Encrypt", "Resource": "*",
               "Condition": {"StringEquals": {"kms:EncryptionContext:nekms:purpose": ADMIN_PURPOSES}}}),
    ]
}

/// The Deny statements every custody policy carries; `pcr0` are the images
/// allowed to generate data keys with a reserved context.
fn guards(roles: &Roles, pcr0: &[String]) -> Vec<Value> {
    vec![
        json!({"Sid": "Nobody reopens the policy, grants, re-encrypts, replicates or replaces the key material",
               "Effect": "Deny", "Principal": {"AWS": "*"},
               "Action": ["kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncrypt*", "kms:ReplicateKey", "kms:ImportKeyMaterial",
                          "kms:UpdatePrimaryRegion"],
               "Resource": "*"}),
        json!({"Sid": "Nothing decrypts or makes data keys outside a trusted enclave image, whatever a grant says",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
               "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}}),
        json!({"Sid": "Reserved-context Encrypt only as an import",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Encrypt", "Resource": "*",
               "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "nekms:*"},
                             "StringNotEquals": {"kms:EncryptionContext:nekms:purpose": ADMIN_PURPOSES}}}),
        json!({"Sid": "Reserved-context Encrypt only by the administrator",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Encrypt", "Resource": "*",
               "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "nekms:*"},
                             "StringNotEquals": {"aws:PrincipalArn": roles.admin}}}),
    ]
}

/// Step 3 for custody: the images `pcr0` (hex; one or more) may decrypt and
/// generate data keys, through the instance role.
pub fn custody(roles: &Roles, pcr0: &[String]) -> Value {
    let mut statements = vec![json!({
        "Sid": "Only inside a trusted enclave image", "Effect": "Allow", "Principal": {"AWS": roles.instance},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}
    })];
    statements.extend(administrator(roles));
    statements.extend(guards(roles, pcr0));
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Step 3 for the two-enclave flow: GenerateDataKey only for the
/// generator's PCR0/1/2, Decrypt only for the signer's. One Deny per
/// PCR: KMS ANDs the keys of one condition, so a single statement naming
/// PCR0/1/2 would let another image with the same kernel (PCR1) through.
pub fn two_enclaves(roles: &Roles, generator: [String; 3], signer: [String; 3]) -> Value {
    let deny = |actions: Value, pcrs: &[String; 3]| -> Vec<Value> {
        pcrs.iter()
            .enumerate()
            .map(|(i, pcr)| {
                json!({"Effect": "Deny", "Principal": {"AWS": roles.instance}, "Action": actions, "Resource": "*",
                       "Condition": {"StringNotEqualsIgnoreCase": {format!("kms:RecipientAttestation:PCR{i}"): pcr}}})
            })
            .collect()
    };
    let mut statements = vec![json!({
        "Sid": "Instance role, within the Deny statements below", "Effect": "Allow", "Principal": {"AWS": roles.instance},
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*"
    })];
    statements.extend(administrator(roles));
    statements.extend(deny(json!("kms:GenerateDataKey"), &generator));
    statements.extend(deny(json!("kms:Decrypt"), &signer));
    statements.extend(guards(roles, &[generator[0].clone(), signer[0].clone()]));
    json!({"Version": "2012-10-17", "Statement": statements})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(policy: &Value, effect: &str, principal: &str) -> Vec<String> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Effect"] == effect && (s["Principal"]["AWS"] == principal || s["Principal"]["AWS"] == "*"))
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn no_template_lets_the_administrator_reopen_the_key() {
        let roles = Roles::standard("111122223333");
        for policy in [
            custody(&roles, &["aa".into()]),
            two_enclaves(&roles, ["a".into(), "b".into(), "c".into()], ["d".into(), "e".into(), "f".into()]),
        ] {
            let allowed = actions(&policy, "Allow", &roles.admin);
            assert!(allowed.iter().all(|a| !a.contains('*')), "no wildcards: {allowed:?}");
            for forbidden in ["kms:PutKeyPolicy", "kms:CreateGrant", "kms:Decrypt", "kms:ReEncryptFrom"] {
                assert!(!allowed.contains(&forbidden.to_owned()), "{forbidden}");
            }
            let denied = actions(&policy, "Deny", &roles.admin);
            for a in ["kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncrypt*", "kms:ReplicateKey", "kms:Decrypt"] {
                assert!(denied.contains(&a.to_owned()), "{a} denied to everyone");
            }
        }
    }
}
