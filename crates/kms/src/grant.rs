//! Grants: what they allow, and how their constraints match a request.
//!
//! A grant gives one principal (the grantee) some operations on one key, in
//! addition to what the key policy and IAM allow. It can only allow: an
//! explicit Deny in the key policy or an identity policy still wins, and a
//! grant carries no condition keys, so a Recipient (attestation) condition in
//! the key policy does not bind a grantee unless the policy states it as a
//! Deny. That is why nekms's custody policy denies Decrypt without a trusted
//! image to every principal and denies CreateGrant outright.
//!
//! Rules, from the AWS KMS Developer Guide ("Grants in AWS KMS",
//! <https://docs.aws.amazon.com/kms/latest/developerguide/grants.html>) and
//! the API reference for CreateGrant and GrantConstraints
//! (<https://docs.aws.amazon.com/kms/latest/APIReference/API_GrantConstraints.html>):
//! - the operations must be ones a grant can carry and that the key's type
//!   supports (no Sign on a symmetric key, no GenerateDataKey on an
//!   asymmetric one);
//! - encryption-context constraints apply only to operations that take an
//!   encryption context, are refused on keys whose operations take none, hold
//!   at most 8 pairs each, and compare keys case-insensitively and values
//!   exactly;
//! - a grantee with CreateGrant may only create grants that are no wider
//!   (a subset of the operations) and at least as strict.

use serde::{Deserialize, Serialize};

use crate::blob::EncryptionContext;
use crate::model::{KeySpec, KeyUsage};

/// The operations a grant can name.
pub const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// Operations that take an encryption context: the only ones a constraint binds.
const CONTEXT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

/// Most pairs in one constraint, and the longest value.
pub const MAX_CONSTRAINT_PAIRS: usize = 8;
pub const MAX_CONSTRAINT_VALUE: usize = 384;

/// Most grants one key may have (the AWS quota).
pub const MAX_GRANTS_PER_KEY: usize = 50_000;

/// A grant's encryption-context constraint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    #[serde(rename = "EncryptionContextEquals", default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<EncryptionContext>,
    #[serde(rename = "EncryptionContextSubset", default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<EncryptionContext>,
}

/// One grant, serialised exactly as ListGrants returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Grant {
    /// The key's ARN.
    pub key_id: String,
    pub grant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub creation_date: f64,
    pub grantee_principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    pub issuing_account: String,
    pub operations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
}

/// The operations a key of this kind supports in a grant.
pub fn supported_operations(spec: KeySpec, usage: KeyUsage) -> &'static [&'static str] {
    match (spec, usage) {
        (KeySpec::SymmetricDefault, _) => &[
            "Decrypt",
            "Encrypt",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "ReEncryptFrom",
            "ReEncryptTo",
            "GenerateDataKeyPair",
            "GenerateDataKeyPairWithoutPlaintext",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
        (_, KeyUsage::SignVerify) => &["Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey"],
        (_, KeyUsage::KeyAgreement) => &["DeriveSharedSecret", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey"],
        (_, KeyUsage::EncryptDecrypt) => {
            &["Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey"]
        }
    }
}

fn lower_keys(ctx: &EncryptionContext) -> Vec<(String, &str)> {
    ctx.iter().map(|(k, v)| (k.to_lowercase(), v.as_str())).collect()
}

/// Every pair of `wanted` is in `have` (keys case-insensitive, values exact).
fn contains(have: &EncryptionContext, wanted: &EncryptionContext) -> bool {
    let have = lower_keys(have);
    wanted.iter().all(|(k, v)| {
        let k = k.to_lowercase();
        have.iter().any(|(hk, hv)| *hk == k && hv == v)
    })
}

fn same(a: &EncryptionContext, b: &EncryptionContext) -> bool {
    a.len() == b.len() && contains(a, b) && contains(b, a)
}

impl Constraints {
    /// Whether a request with encryption context `ctx` satisfies the constraint.
    pub fn admits(&self, ctx: &EncryptionContext) -> bool {
        self.equals.as_ref().is_none_or(|eq| same(ctx, eq)) && self.subset.as_ref().is_none_or(|sub| contains(ctx, sub))
    }

    /// Whether every context this constraint admits, `parent` admits too.
    pub fn at_least_as_strict_as(&self, parent: &Constraints) -> bool {
        let equals_ok = parent.equals.as_ref().is_none_or(|pe| self.equals.as_ref().is_some_and(|e| same(e, pe)));
        let subset_ok = parent.subset.as_ref().is_none_or(|ps| {
            self.equals.as_ref().is_some_and(|e| contains(e, ps)) || self.subset.as_ref().is_some_and(|s| contains(s, ps))
        });
        equals_ok && subset_ok
    }

    /// The constraint type names, for `kms:GrantConstraintType`.
    pub fn type_names(&self) -> Vec<String> {
        let mut out = vec![];
        if self.equals.is_some() {
            out.push("EncryptionContextEquals".to_owned());
        }
        if self.subset.is_some() {
            out.push("EncryptionContextSubset".to_owned());
        }
        out
    }

    /// Every pair named by the constraint (for `kms:EncryptionContext:` on CreateGrant).
    pub fn pairs(&self) -> EncryptionContext {
        let mut out = self.subset.clone().unwrap_or_default();
        out.extend(self.equals.clone().unwrap_or_default());
        out
    }
}

impl Grant {
    /// Whether this grant allows `operation` (without the `kms:` prefix) for
    /// a request whose encryption context is `ctx`.
    pub fn allows(&self, operation: &str, ctx: &EncryptionContext) -> bool {
        if !self.operations.iter().any(|o| o == operation) {
            return false;
        }
        match &self.constraints {
            Some(c) if CONTEXT_OPERATIONS.contains(&operation) => c.admits(ctx),
            _ => true,
        }
    }

    /// Whether a grant asked for under this one is no wider and at least as strict.
    pub fn covers(&self, operations: &[String], constraints: Option<&Constraints>) -> bool {
        let ops = operations.iter().all(|o| self.operations.contains(o));
        let strict = match (&self.constraints, constraints) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(parent), Some(child)) => child.at_least_as_strict_as(parent),
        };
        ops && strict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn grant(ops: &[&str], constraints: Option<Constraints>) -> Grant {
        Grant {
            key_id: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
            grant_id: "g".into(),
            name: None,
            creation_date: 0.0,
            grantee_principal: "arn:aws:iam::111122223333:role/app".into(),
            retiring_principal: None,
            issuing_account: "arn:aws:iam::111122223333:root".into(),
            operations: ops.iter().map(|s| s.to_string()).collect(),
            constraints,
        }
    }

    // Row per documented behaviour of GrantConstraints (API reference,
    // API_GrantConstraints.html): Equals is the whole context, Subset is
    // "includes", keys compare case-insensitively, values exactly, and the
    // constraint does not apply to operations without a context.
    #[test]
    fn constraints_match_as_aws_documents() {
        let eq = Constraints { equals: Some(ctx(&[("app", "billing")])), subset: None };
        let sub = Constraints { equals: None, subset: Some(ctx(&[("app", "billing")])) };
        type Row<'a> = (&'a Constraints, &'a [(&'a str, &'a str)], bool, &'a str);
        let rows: &[Row] = &[
            (&eq, &[("app", "billing")], true, "Equals: the same context"),
            (&eq, &[("APP", "billing")], true, "Equals: keys are not case sensitive"),
            (&eq, &[("app", "Billing")], false, "Equals: values are case sensitive"),
            (&eq, &[("app", "billing"), ("x", "y")], false, "Equals: an extra pair"),
            (&eq, &[], false, "Equals: no context"),
            (&sub, &[("app", "billing"), ("x", "y")], true, "Subset: the request includes the pairs"),
            (&sub, &[("App", "billing")], true, "Subset: keys are not case sensitive"),
            (&sub, &[("x", "y")], false, "Subset: a pair is missing"),
            (&sub, &[], false, "Subset: no context"),
        ];
        for (c, request, want, why) in rows {
            assert_eq!(c.admits(&ctx(request)), *want, "{why}");
        }
        let g = grant(&["Decrypt", "DescribeKey", "RetireGrant"], Some(eq.clone()));
        assert!(g.allows("Decrypt", &ctx(&[("app", "billing")])));
        assert!(!g.allows("Decrypt", &ctx(&[])));
        assert!(g.allows("DescribeKey", &ctx(&[])), "DescribeKey takes no context: the constraint does not apply");
        assert!(!g.allows("Encrypt", &ctx(&[("app", "billing")])), "not a granted operation");
    }

    #[test]
    fn a_grant_made_under_a_grant_is_no_wider_and_at_least_as_strict() {
        let sub = Constraints { equals: None, subset: Some(ctx(&[("app", "billing")])) };
        let parent = grant(&["Decrypt", "CreateGrant"], Some(sub.clone()));
        let ops = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parent.covers(&ops(&["Decrypt"]), Some(&sub)));
        assert!(!parent.covers(&ops(&["Decrypt", "Encrypt"]), Some(&sub)), "wider operations");
        assert!(!parent.covers(&ops(&["Decrypt"]), None), "no constraint under a constrained grant");
        let narrower = Constraints { equals: None, subset: Some(ctx(&[("APP", "billing"), ("team", "a")])) };
        assert!(parent.covers(&ops(&["Decrypt"]), Some(&narrower)));
        let exact = Constraints { equals: Some(ctx(&[("app", "billing"), ("x", "1")])), subset: None };
        assert!(parent.covers(&ops(&["Decrypt"]), Some(&exact)), "an Equals that includes the Subset is stricter");
        let other = Constraints { equals: None, subset: Some(ctx(&[("app", "payroll")])) };
        assert!(!parent.covers(&ops(&["Decrypt"]), Some(&other)));
        let eq_parent = grant(&["Decrypt", "CreateGrant"], Some(exact.clone()));
        assert!(!eq_parent.covers(&ops(&["Decrypt"]), Some(&narrower)), "a Subset is looser than an Equals");
        assert!(grant(&["Decrypt", "CreateGrant"], None).covers(&ops(&["Decrypt"]), None));
    }

    #[test]
    fn a_grant_round_trips_in_list_grants_shape() {
        let g = grant(&["Decrypt"], Some(Constraints { equals: None, subset: Some(ctx(&[("a", "b")])) }));
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(v["Constraints"]["EncryptionContextSubset"]["a"], "b");
        assert_eq!(v["GranteePrincipal"], "arn:aws:iam::111122223333:role/app");
        assert!(v.get("Name").is_none() && v.get("RetiringPrincipal").is_none());
        assert_eq!(serde_json::from_value::<Grant>(v).unwrap(), g);
    }
}
