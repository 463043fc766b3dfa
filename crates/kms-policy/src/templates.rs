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
//! - Only a Recipient document whose PCR0 is a trusted image, or whose PCR8
//!   is a trusted image signer ([`custody_for`]), may decrypt or
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
//! The development world (`nekms-dev`) sets its keys up with the same
//! policies.

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

/// The Deny statements every custody policy carries; `trust` says which
/// images may decrypt and generate data keys: one Deny per attestation key,
/// since the keys of one negated condition are ANDed (a Deny naming PCR0
/// and PCR8 together would let an image matching either through).
fn guards(roles: &Roles, trust: &ImageTrust) -> Vec<Value> {
    let mut outside = Vec::new();
    if !trust.pcr0.is_empty() {
        outside.push(json!({"Sid": "Nothing decrypts or makes data keys outside a trusted enclave image, whatever a grant says",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
               "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": trust.pcr0}}}));
    }
    if !trust.pcr8.is_empty() {
        outside.push(
            json!({"Sid": "Nothing decrypts or makes data keys outside an image signed by a trusted signer (PCR8), whatever a grant says",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
               "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR8": trust.pcr8}}}),
        );
    }
    let mut guards = vec![json!({"Sid": "Nobody reopens the policy, grants, re-encrypts, replicates or replaces the key material",
               "Effect": "Deny", "Principal": {"AWS": "*"},
               "Action": ["kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncrypt*", "kms:ReplicateKey", "kms:ImportKeyMaterial",
                          "kms:UpdatePrimaryRegion"],
               "Resource": "*"})];
    guards.extend(outside);
    guards.extend([
        json!({"Sid": "Reserved-context Encrypt only as an import",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Encrypt", "Resource": "*",
               "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "nekms:*"},
                             "StringNotEquals": {"kms:EncryptionContext:nekms:purpose": ADMIN_PURPOSES}}}),
        json!({"Sid": "Reserved-context Encrypt only by the administrator",
               "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Encrypt", "Resource": "*",
               "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "nekms:*"},
                             "StringNotEquals": {"aws:PrincipalArn": roles.admin}}}),
    ]);
    guards
}

/// Which enclave images a custody key serves: by image (PCR0, one per
/// build), by signer (PCR8, the hash of the image-signing certificate:
/// every image that certificate's key signs, so a rebuilt image keeps its
/// keys), or both (an image must match both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageTrust {
    /// Trusted PCR0 values, lower-case hex.
    pub pcr0: Vec<String>,
    /// Trusted PCR8 values, lower-case hex.
    pub pcr8: Vec<String>,
}

impl ImageTrust {
    /// The attestation keys an image must match, for an Allow's condition.
    fn allow_condition(&self) -> Value {
        let mut keys = serde_json::Map::new();
        if !self.pcr0.is_empty() {
            keys.insert("kms:RecipientAttestation:ImageSha384".into(), json!(self.pcr0));
        }
        if !self.pcr8.is_empty() {
            keys.insert("kms:RecipientAttestation:PCR8".into(), json!(self.pcr8));
        }
        json!({"StringEqualsIgnoreCase": keys})
    }
}

/// Step 3 for custody: the images `pcr0` (hex; one or more) may decrypt and
/// generate data keys, through the instance role.
pub fn custody(roles: &Roles, pcr0: &[String]) -> Value {
    custody_for(roles, &ImageTrust { pcr0: pcr0.to_vec(), pcr8: Vec::new() })
}

/// The custody policy for images chosen by `trust` (at least one PCR). With
/// PCR8 alone nothing is circular (the signer's certificate is known before
/// the key exists), so the key can be created with this policy at once.
pub fn custody_for(roles: &Roles, trust: &ImageTrust) -> Value {
    assert!(!trust.pcr0.is_empty() || !trust.pcr8.is_empty(), "a custody policy trusts some image");
    let sid = match (trust.pcr0.is_empty(), trust.pcr8.is_empty()) {
        (false, true) => "Only inside a trusted enclave image",
        (true, false) => "Only inside an enclave image signed by a trusted signer (PCR8)",
        _ => "Only inside a trusted enclave image (PCR0) signed by a trusted signer (PCR8)",
    };
    let mut statements = vec![json!({
        "Sid": sid, "Effect": "Allow", "Principal": {"AWS": roles.instance},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
        "Condition": trust.allow_condition()
    })];
    if !trust.pcr8.is_empty() {
        statements.push(instance_reads(roles));
    }
    statements.extend(administrator(roles));
    statements.extend(guards(roles, trust));
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Signer-trust templates let the instance role read the key's metadata,
/// policy and grants: a source enclave checks a migration target with its
/// own credentials before it seals anything under it.
fn instance_reads(roles: &Roles) -> Value {
    json!({"Sid": "The instance reads the key's description, policy and grants (a migrating enclave checks its target)",
           "Effect": "Allow", "Principal": {"AWS": roles.instance},
           "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListGrants"], "Resource": "*"})
}

/// A migration window on a signer-trust target: until `until` (RFC 3339,
/// UTC), images signed by `from_pcr8` (the source enclave's signer) may
/// GenerateDataKey under the target, only with `nekms:origin = migrated`;
/// they never decrypt under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationWindow {
    pub from_pcr8: Vec<String>,
    pub until: String,
}

/// The custody policy for a migration target trusting the signers
/// `trust.pcr8` (only), with a window for the source's signers: the Allow
/// for the source, and the "outside a trusted image" Deny split so that
/// Decrypt stays with the target's signers while GenerateDataKey* admits
/// the source only for migrated records and only before `until`.
pub fn migration_target(roles: &Roles, trust: &ImageTrust, window: &MigrationWindow) -> Value {
    assert!(trust.pcr0.is_empty() && !trust.pcr8.is_empty() && !window.from_pcr8.is_empty(), "a signer-trust target, a source signer");
    let pcr8 = "kms:RecipientAttestation:PCR8";
    let migrated = "kms:EncryptionContext:nekms:origin";
    let deny = |sid: &str, actions: Value, condition: Value| json!({"Sid": sid, "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": actions, "Resource": "*", "Condition": condition});
    let mut both = trust.pcr8.clone();
    both.extend(window.from_pcr8.iter().cloned());
    let mut statements = vec![
        json!({"Sid": "Only inside an enclave image signed by a trusted signer (PCR8)", "Effect": "Allow", "Principal": {"AWS": roles.instance},
               "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*", "Condition": trust.allow_condition()}),
        json!({"Sid": "Migration window: the source signer's image seals migrated records, until the window closes",
               "Effect": "Allow", "Principal": {"AWS": roles.instance}, "Action": "kms:GenerateDataKey", "Resource": "*",
               "Condition": {"StringEqualsIgnoreCase": {pcr8: window.from_pcr8}, "StringEquals": {migrated: "migrated"},
                             "DateLessThan": {"aws:CurrentTime": window.until}}}),
        instance_reads(roles),
    ];
    statements.extend(administrator(roles));
    let mut guards = guards(roles, &ImageTrust::default());
    let rest = guards.split_off(1);
    statements.extend(guards);
    statements.extend([
        deny(
            "Nothing decrypts outside an image signed by a trusted signer (PCR8), whatever a grant says",
            json!("kms:Decrypt"),
            json!({"StringNotEqualsIgnoreCase": {pcr8: trust.pcr8}}),
        ),
        deny(
            "No data keys outside an image of the trusted or the source signer, whatever a grant says",
            json!("kms:GenerateDataKey*"),
            json!({"StringNotEqualsIgnoreCase": {pcr8: both}}),
        ),
        deny(
            "The source signer's data keys only for migrated records",
            json!("kms:GenerateDataKey*"),
            json!({"StringNotEqualsIgnoreCase": {pcr8: trust.pcr8}, "StringNotEquals": {migrated: "migrated"}}),
        ),
        deny(
            "The source signer's data keys only until the window closes",
            json!("kms:GenerateDataKey*"),
            json!({"StringNotEqualsIgnoreCase": {pcr8: trust.pcr8}, "DateGreaterThanEquals": {"aws:CurrentTime": window.until}}),
        ),
    ]);
    statements.extend(rest);
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
    statements.extend(guards(roles, &ImageTrust { pcr0: vec![generator[0].clone(), signer[0].clone()], pcr8: Vec::new() }));
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
            custody_for(&roles, &ImageTrust { pcr0: vec![], pcr8: vec!["bb".into()] }),
            custody_for(&roles, &ImageTrust { pcr0: vec!["aa".into()], pcr8: vec!["bb".into()] }),
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

    /// Every custody template, evaluated as KMS evaluates it, for each
    /// principal, action and Recipient document: only the instance role with
    /// a document from a trusted image decrypts or makes data keys, and
    /// nobody reopens the policy.
    #[test]
    fn the_probe_matrix_admits_exactly_the_trusted_images() {
        use crate::{evaluate, Decision, Policy, RequestContext};
        let roles = Roles::standard("111122223333");
        let (a, b, s, u, zero) = ("aa".repeat(48), "bb".repeat(48), "5a".repeat(48), "0f".repeat(48), "00".repeat(48));
        // (pcr0, pcr8) of a Recipient document, or none.
        let documents: [Option<(&str, &str)>; 6] =
            [None, Some((&a, &s)), Some((&b, &s)), Some((&a, &u)), Some((&b, &zero)), Some((&a, &zero))];
        let templates = [
            ("pcr0", ImageTrust { pcr0: vec![a.clone()], pcr8: vec![] }),
            ("pcr8", ImageTrust { pcr0: vec![], pcr8: vec![s.clone()] }),
            ("both", ImageTrust { pcr0: vec![a.clone()], pcr8: vec![s.clone()] }),
        ];
        for (name, trust) in &templates {
            let policy = Policy::parse(&custody_for(&roles, trust).to_string(), true).unwrap();
            for principal in [roles.instance.as_str(), roles.admin.as_str(), "arn:aws:iam::111122223333:root"] {
                for action in ["kms:Decrypt", "kms:GenerateDataKey", "kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncryptFrom"] {
                    for doc in &documents {
                        let mut ctx = RequestContext::new(principal, "111122223333", action, "arn:aws:kms:us-east-1:111122223333:key/k");
                        if let Some((pcr0, pcr8)) = doc {
                            ctx.set("kms:RecipientAttestation:ImageSha384", *pcr0);
                            ctx.set("kms:RecipientAttestation:PCR0", *pcr0);
                            ctx.set("kms:RecipientAttestation:PCR8", *pcr8);
                        }
                        let trusted = doc.is_some_and(|(pcr0, pcr8)| {
                            (trust.pcr0.is_empty() || trust.pcr0.iter().any(|p| p == pcr0))
                                && (trust.pcr8.is_empty() || trust.pcr8.iter().any(|p| p == pcr8))
                        });
                        let want = principal == roles.instance && matches!(action, "kms:Decrypt" | "kms:GenerateDataKey") && trusted;
                        let got = evaluate(&policy, &[], &ctx) == Decision::Allow;
                        assert_eq!(got, want, "{name}: {principal} {action} {doc:?}");
                    }
                }
            }
        }
    }

    /// A migration target with a window: the target's signer T decrypts and
    /// makes data keys; the source's signer S only makes data keys, only
    /// for migrated records, only before the window closes; nobody else
    /// anything; the instance reads the policy; nobody reopens it.
    #[test]
    fn a_migration_window_admits_the_source_only_to_seal_migrated_records_in_time() {
        use crate::{evaluate, Decision, Policy, RequestContext};
        let roles = Roles::standard("111122223333");
        let (t, s, u, zero) = ("0f".repeat(48), "5a".repeat(48), "33".repeat(48), "00".repeat(48));
        let until = "2030-01-01T00:00:00Z";
        let policy = migration_target(
            &roles,
            &ImageTrust { pcr0: vec![], pcr8: vec![t.clone()] },
            &MigrationWindow { from_pcr8: vec![s.clone()], until: until.into() },
        );
        let policy = Policy::parse(&policy.to_string(), true).unwrap();
        let findings = crate::check::check(&policy, Some("111122223333"));
        assert!(findings.iter().all(|f| !f.warning), "{findings:?}");
        for principal in [roles.instance.as_str(), roles.admin.as_str()] {
            for action in
                ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:PutKeyPolicy", "kms:GetKeyPolicy"]
            {
                for doc in [None, Some(&t), Some(&s), Some(&u), Some(&zero)] {
                    for origin in ["migrated", "generated"] {
                        for now in ["2029-12-31T23:59:59Z", until, "2031-01-01T00:00:00Z"] {
                            let mut ctx =
                                RequestContext::new(principal, "111122223333", action, "arn:aws:kms:us-east-1:111122223333:key/k");
                            if let Some(pcr8) = doc {
                                ctx.set("kms:RecipientAttestation:PCR8", pcr8.as_str());
                            }
                            ctx.set("kms:EncryptionContext:nekms:origin", origin);
                            ctx.set("aws:CurrentTime", now);
                            let instance = principal == roles.instance;
                            let want = match action {
                                "kms:Decrypt" => instance && doc == Some(&t),
                                "kms:GenerateDataKey" => {
                                    instance && (doc == Some(&t) || (doc == Some(&s) && origin == "migrated" && now < until))
                                }
                                "kms:GetKeyPolicy" => true,
                                _ => false,
                            };
                            let got = evaluate(&policy, &[], &ctx) == Decision::Allow;
                            assert_eq!(got, want, "{principal} {action} {doc:?} {origin} {now}");
                        }
                    }
                }
            }
        }
    }
}
