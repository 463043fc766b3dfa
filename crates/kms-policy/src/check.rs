//! `nekms policy check`: what a key policy lets whom do, in plain words, and
//! where it is written in a form AWS evaluates differently from how it reads.
//!
//! It reads the statements as AWS would apply them: an Allow is limited by
//! its conditions, a Deny by its; a statement naming the account root
//! delegates to IAM. It does not know the account's IAM policies, so it
//! says where they decide.

use crate::{Effect, Policy};

/// One finding: `warning` for a policy that does not do what it reads as.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub warning: bool,
    pub text: String,
}

/// What the policy allows and denies for each question that matters to
/// custody, and the forms AWS evaluates differently.
pub fn check(policy: &Policy, account: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let say = |out: &mut Vec<Finding>, warning: bool, text: String| out.push(Finding { warning, text });
    let questions: [(&str, &[&str]); 4] = [
        ("decrypt", &["kms:Decrypt"]),
        (
            "mint ciphertext (Encrypt, GenerateDataKey*, ReEncrypt*)",
            &["kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair", "kms:ReEncryptTo"],
        ),
        ("change the policy", &["kms:PutKeyPolicy"]),
        ("create grants", &["kms:CreateGrant"]),
    ];
    for (what, actions) in questions {
        let allows: Vec<String> = policy.statements_for(Effect::Allow, actions).map(|s| s.describe(account)).collect();
        let denies: Vec<String> = policy.statements_for(Effect::Deny, actions).map(|s| s.describe(account)).collect();
        if allows.is_empty() {
            say(&mut out, false, format!("Who can {what}: nobody (no statement allows it)."));
            continue;
        }
        say(&mut out, false, format!("Who can {what}: {}.", allows.join("; or ")));
        for d in denies {
            say(&mut out, false, format!("  ... except as denied: {d}."));
        }
        if what == "decrypt" && policy.mentions_recipient() && !policy.denied_without_attestation("kms:Decrypt") {
            for s in policy.statements_for(Effect::Allow, actions).filter(|s| !s.requires_attestation()) {
                say(&mut out, true, format!("{} may decrypt without an attestation document (no positive Recipient condition, and no Deny for every principal without one)", s.describe(account)));
            }
        }
        if what == "change the policy" || what == "create grants" {
            if policy.denied_to_everyone(actions[0]) {
                say(&mut out, false, format!("  A Deny for every principal closes it: nobody can {what}."));
            } else {
                say(
                    &mut out,
                    true,
                    format!("whoever can {what} can reopen the key: a custody key denies {} to every principal", actions[0]),
                );
            }
        }
    }
    for w in policy.misleading_forms() {
        say(&mut out, true, w);
    }
    for st in
        policy.statements.iter().filter(|s| s.effect == Effect::Allow && s.principals == crate::Principals::Any && s.conditions.is_empty())
    {
        say(
            &mut out,
            true,
            format!(
                "{} lets any principal of any AWS account use this key, with no condition: name the roles, or add a condition such as \
                 aws:PrincipalAccount",
                st.sid.as_deref().map(|s| format!("statement {s:?}")).unwrap_or_else(|| "a statement".into())
            ),
        );
    }
    let signers: Vec<&String> = policy
        .statements
        .iter()
        .filter(|s| s.effect == Effect::Allow && s.covers_action("kms:Decrypt"))
        .flat_map(|s| &s.conditions)
        .filter(|c| !c.op.negated() && c.key.eq_ignore_ascii_case("kms:RecipientAttestation:PCR8"))
        .flat_map(|c| &c.values)
        .collect();
    if !signers.is_empty() {
        say(
            &mut out,
            false,
            format!(
                "Trust by signer: every image signed with the certificate whose PCR8 is {} passes, whoever built it; whoever holds its \
             signing key can build an image that opens this key (keep that key in KMS or an HSM, never on the parent or a build host). \
             An older signed image with a known flaw stays trusted until custody moves to another key.",
                signers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")
            ),
        );
    }
    // A migration window: an Allow for data keys only, bounded in time.
    for st in policy.statements.iter().filter(|s| s.effect == Effect::Allow && !s.covers_action("kms:Decrypt")) {
        let values = |key: &str| {
            st.conditions
                .iter()
                .filter(|c| !c.op.negated() && c.key.eq_ignore_ascii_case(key))
                .flat_map(|c| c.values.clone())
                .collect::<Vec<_>>()
        };
        let (window_signers, until) = (values("kms:RecipientAttestation:PCR8"), values("aws:CurrentTime"));
        if !window_signers.is_empty() && !until.is_empty() && st.covers_action("kms:GenerateDataKey") {
            let origin = values("kms:EncryptionContext:nekms:origin");
            let records =
                if origin.is_empty() { String::new() } else { format!(" for records whose nekms:origin is {}", origin.join(" or ")) };
            say(
                &mut out,
                false,
                format!(
                    "Migration window: images signed with the certificate whose PCR8 is {} may make data keys{records} until {}, and never \
                     decrypt; they can seal records here for the images this key trusts.",
                    window_signers.join(" or "),
                    until.join(", ")
                ),
            );
        }
    }
    if policy.mentions_recipient() && !policy.denies_reserved_context() {
        say(&mut out, true, "no Deny keeps ciphertexts with nekms's reserved context (nekms:*) from being minted outside the enclave (Encrypt and GenerateDataKey* with kms:EncryptionContextKeys like nekms:*)".into());
    }
    out
}
