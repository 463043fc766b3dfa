//! Reading a policy without a request: which statements cover an action,
//! what they say in plain words, forms that do not decide as they read, and
//! condition keys this KMS does not model.

use super::condition::{Condition, SetOp};
use super::evaluate::is_account_principal;
use super::operators::Op;
use super::variables::variable_keys;
use super::wildcard::glob;
use super::{Effect, Matcher, Policy, Principals, Statement};

/// Condition keys this KMS sets when AWS would (or, like `kms:ViaService`
/// on a direct call, leaves absent exactly when AWS does). Any other key
/// would always be absent here while AWS sets it: [`Policy::unmodelled_keys`].
const MODELLED: &[&str] = &[
    "aws:principalarn",
    "aws:principalaccount",
    "aws:principaltype",
    "aws:userid",
    "aws:username",
    "aws:securetransport",
    "aws:sourceip",
    "aws:requestedregion",
    "aws:currenttime",
    "aws:epochtime",
    "kms:calleraccount",
    "kms:viaservice",
    "kms:grantisforawsresource",
    "kms:grantoperations",
    "kms:granteeprincipal",
    "kms:retiringprincipal",
    "kms:grantconstrainttype",
    "kms:encryptioncontextkeys",
    "kms:recipientattestation:imagesha384",
    "kms:keyspec",
    "kms:keyusage",
    "kms:keyorigin",
    "kms:bypasspolicylockoutsafetycheck",
    "kms:encryptionalgorithm",
    "kms:datakeypairspec",
    "kms:signingalgorithm",
    "kms:messagetype",
    "kms:keyagreementalgorithm",
];

/// Condition keys that hold one value per request: a set operator on them
/// does not read as it seems (ForAnyValue on an absent key is false).
const SINGLE_VALUED_PREFIXES: &[&str] =
    &["kms:recipientattestation:", "aws:principal", "aws:sourceip", "kms:calleraccount", "kms:encryptioncontext:"];

impl Statement {
    pub(crate) fn covers_action(&self, action: &str) -> bool {
        match &self.actions {
            Matcher::Only(a) => a.iter().any(|p| glob(p.as_bytes(), action.as_bytes(), true)),
            Matcher::AllBut(a) => !a.iter().any(|p| glob(p.as_bytes(), action.as_bytes(), true)),
        }
    }

    /// Whether the statement holds only with a Recipient attestation key
    /// compared positively (so never without a document).
    pub fn requires_attestation(&self) -> bool {
        self.conditions.iter().any(|c| {
            c.set == SetOp::Single
                && !c.op.negated()
                && !c.if_exists
                && c.op != Op::Null
                && c.key.to_ascii_lowercase().starts_with("kms:recipientattestation:")
        })
    }

    /// "role/x, when ImageSha384 equals ..." in plain words.
    pub fn describe(&self, account: Option<&str>) -> String {
        let who = match &self.principals {
            Principals::Any => "any principal".to_owned(),
            Principals::Implicit => "the identity this policy is attached to".to_owned(),
            Principals::Other => "a service or federated principal".to_owned(),
            Principals::Aws(arns) => arns
                .iter()
                .map(|a| {
                    if is_account_principal(a, account.unwrap_or_else(|| a.split(':').nth(4).unwrap_or(a)))
                        || a.chars().all(|c| c.is_ascii_digit())
                    {
                        format!("{a} (the account root, and whoever the account's IAM policies allow)")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let when: Vec<String> = self
            .conditions
            .iter()
            .map(|c| {
                let set = match c.set {
                    SetOp::Single => "",
                    SetOp::ForAnyValue => "ForAnyValue:",
                    SetOp::ForAllValues => "ForAllValues:",
                };
                format!("{set}{:?}{} {} {}", c.op, if c.if_exists { "IfExists" } else { "" }, c.key, c.values.join("|"))
            })
            .collect();
        let sid = self.sid.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        if when.is_empty() {
            format!("{who}{sid}, unconditionally")
        } else {
            format!("{who}{sid}, when {}", when.join(" and "))
        }
    }
}

impl Policy {
    /// The statements of `effect` that cover any of `actions`.
    pub fn statements_for<'a>(&'a self, effect: Effect, actions: &'a [&'a str]) -> impl Iterator<Item = &'a Statement> + 'a {
        self.statements.iter().filter(move |s| s.effect == effect && actions.iter().any(|a| s.covers_action(a)))
    }

    /// Whether an unconditional Deny for every principal covers `action`.
    pub fn denied_to_everyone(&self, action: &str) -> bool {
        self.statements
            .iter()
            .any(|s| s.effect == Effect::Deny && s.principals == Principals::Any && s.conditions.is_empty() && s.covers_action(action))
    }

    /// Whether a Deny for every principal refuses `action` whenever an
    /// attestation key is absent or differs (written so AWS applies it).
    pub fn denied_without_attestation(&self, action: &str) -> bool {
        self.statements.iter().any(|s| {
            s.effect == Effect::Deny
                && s.principals == Principals::Any
                && s.covers_action(action)
                && s.conditions.len() == 1
                && s.conditions.iter().all(|c| {
                    c.set == SetOp::Single && c.op.negated() && c.key.to_ascii_lowercase().starts_with("kms:recipientattestation:")
                })
        })
    }

    /// Whether any condition names a Recipient attestation key.
    pub fn mentions_recipient(&self) -> bool {
        self.statements.iter().flat_map(|s| &s.conditions).any(|c| c.key.to_ascii_lowercase().starts_with("kms:recipientattestation:"))
    }

    /// Whether a Deny keeps reserved-context ciphertexts from being minted.
    pub fn denies_reserved_context(&self) -> bool {
        self.statements.iter().any(|s| {
            s.effect == Effect::Deny
                && s.covers_action("kms:Encrypt")
                && s.conditions
                    .iter()
                    .any(|c| c.key.eq_ignore_ascii_case("kms:EncryptionContextKeys") && c.values.iter().any(|v| v.starts_with("nekms:")))
        })
    }

    /// Conditions written in a form AWS evaluates differently from how they read.
    pub fn misleading_forms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in self.statements.iter().enumerate() {
            let name = s.sid.clone().unwrap_or_else(|| format!("statement {i}"));
            for c in &s.conditions {
                let key = c.key.to_ascii_lowercase();
                if c.set == SetOp::ForAnyValue && SINGLE_VALUED_PREFIXES.iter().any(|p| key.starts_with(p)) {
                    out.push(format!(
                        "{name}: ForAnyValue on the single-valued key {}: when the key is absent (no Recipient, say) ForAnyValue is false, so this {} does not apply; write it without ForAnyValue",
                        c.key,
                        if s.effect == Effect::Deny { "Deny" } else { "Allow" }
                    ));
                }
                if key.starts_with("kms:recipientattestation:") && c.values.iter().any(|v| !v.is_empty() && v.bytes().all(|b| b == b'0')) {
                    out.push(if key == "kms:recipientattestation:pcr8" {
                        format!("{name}: {} names an all-zero PCR8, which every unsigned image (and every debug-mode one) reports: it admits them all", c.key)
                    } else {
                        format!(
                            "{name}: {} names an all-zero PCR, which every debug-mode enclave reports: it admits every debug-mode image",
                            c.key
                        )
                    });
                }
            }
            // Several PCRs under one negated operator in a Deny are ANDed: it fires only when all differ.
            let negated_pcrs: Vec<&Condition> = s
                .conditions
                .iter()
                .filter(|c| c.op.negated() && c.set == SetOp::Single && c.key.to_ascii_lowercase().starts_with("kms:recipientattestation:"))
                .collect();
            if s.effect == Effect::Deny && negated_pcrs.len() > 1 {
                out.push(format!(
                    "{name}: a Deny with {} attestation keys under negated operators fires only when every one differs (the keys of a condition are ANDed): an image sharing one of them (the same kernel's PCR1, say) escapes it; give each its own Deny",
                    negated_pcrs.len()
                ));
            }
        }
        out
    }

    /// Condition keys this policy names that this KMS does not model, so
    /// that a policy relying on them is not silently evaluated as if AWS
    /// never set them.
    pub fn unmodelled_keys(&self) -> Vec<String> {
        let mut named: Vec<String> = Vec::new();
        for s in &self.statements {
            for c in &s.conditions {
                named.push(c.key.clone());
                if c.variables {
                    named.extend(c.values.iter().flat_map(|v| variable_keys(v)));
                }
            }
            if s.resource_variables {
                let (Matcher::Only(r) | Matcher::AllBut(r)) = &s.resources;
                named.extend(r.iter().flat_map(|v| variable_keys(v)));
            }
        }
        let mut out: Vec<String> = Vec::new();
        for key in named {
            let lower = key.to_ascii_lowercase();
            let known = MODELLED.contains(&lower.as_str())
                || lower.starts_with("kms:encryptioncontext:")
                || lower.strip_prefix("aws:principaltag/").is_some_and(|t| !t.is_empty())
                || lower.strip_prefix("kms:recipientattestation:pcr").is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n < 32));
            if !known && !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}
