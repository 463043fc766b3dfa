//! `nekms-kms-policy`: key policies and identity policies, parsed and
//! evaluated the way AWS does, and read back in plain words
//! ([`check`], `nekms policy check`). The local KMS authorizes with it; the
//! parent's CLI checks policies with it without linking the local KMS.
//! [`templates`] are the custody key policies nekms writes; the enclave
//! links them to recognise a migration target's policy.
//!
//! - A request is allowed when some statement allows it and no statement
//!   denies it: an explicit `Deny` always wins.
//! - A key policy statement naming the account (`arn:aws:iam::ACCOUNT:root`
//!   or `ACCOUNT`) allows the account's root user directly and delegates to
//!   IAM for everyone else in the account: their identity policies must allow
//!   the action too. A key policy without such a statement locks out even the
//!   root user.
//! - `Action`/`NotAction` and `Resource`/`NotResource` take `*` and `?`
//!   wildcards, case-insensitively for actions.
//! - Conditions: every operator and every key within it must hold (AND); any
//!   one of a key's values suffices (OR). A key absent from the request makes
//!   a positive operator fail and a negated one (`StringNot...`) hold;
//!   `...IfExists` makes any operator hold when the key is absent; but under
//!   a set operator an absent key makes `ForAnyValue:` false and
//!   `ForAllValues:` true, whatever the operator. `Null` tests presence, its
//!   values ORed. Condition key names are case-insensitive.

mod analysis;
pub mod check;
mod condition;
mod context;
mod evaluate;
mod operators;
mod parse;
pub mod templates;
mod variables;
mod wildcard;

pub use context::RequestContext;
pub use evaluate::{evaluate, evaluate_identity, Decision};
pub use parse::check_unique_keys;

use condition::Condition;

/// Why a policy document is refused (`MalformedPolicyDocumentException`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// Longest policy document accepted (KMS's limit is 32 KiB).
pub const MAX_POLICY: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Principals {
    /// No `Principal` element: an identity policy.
    Implicit,
    Any,
    Aws(Vec<String>),
    /// `Service`, `Federated`...: never an IAM caller of the emulator.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    Only(Vec<String>),
    AllBut(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    principals: Principals,
    actions: Matcher,
    resources: Matcher,
    /// Resource patterns hold policy variables to substitute.
    resource_variables: bool,
    conditions: Vec<Condition>,
}

/// A parsed policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// The policy KMS attaches when CreateKey gives none: the account delegates to IAM.
pub fn default_key_policy(account: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    }))
    .expect("JSON")
}
