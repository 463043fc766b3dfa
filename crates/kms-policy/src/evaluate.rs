//! Deciding a request: the key policy, the identity policies, and
//! delegation from the one to the other.

use super::variables::substitute;
use super::wildcard::{glob, glob_marked};
use super::{Effect, Matcher, Policy, Principals, RequestContext, Statement};

fn principal_matches(pattern: &str, ctx: &RequestContext) -> bool {
    if pattern == ctx.principal_arn {
        return true;
    }
    // A bare account id means that account's root.
    if pattern.len() == 12 && pattern.bytes().all(|b| b.is_ascii_digit()) {
        return ctx.principal_arn == format!("arn:aws:iam::{pattern}:root");
    }
    // A role matches its sessions.
    if let Some(rest) = ctx.principal_arn.strip_prefix("arn:aws:sts::") {
        if let Some((acct, session)) = rest.split_once(":assumed-role/") {
            if let Some((role, _)) = session.split_once('/') {
                return pattern == format!("arn:aws:iam::{acct}:role/{role}");
            }
        }
    }
    false
}

pub(super) fn is_account_principal(pattern: &str, account: &str) -> bool {
    pattern == account || pattern == format!("arn:aws:iam::{account}:root")
}

impl Statement {
    fn covers_request(&self, ctx: &RequestContext) -> bool {
        let action = match &self.actions {
            Matcher::Only(a) => a.iter().any(|p| glob(p.as_bytes(), ctx.action.as_bytes(), true)),
            Matcher::AllBut(a) => !a.iter().any(|p| glob(p.as_bytes(), ctx.action.as_bytes(), true)),
        };
        let resource_matches = |p: &String| {
            if !self.resource_variables {
                return glob(p.as_bytes(), ctx.resource.as_bytes(), false);
            }
            substitute(p, ctx).is_some_and(|(text, wild)| glob_marked(text.as_bytes(), &|b| wild[b], ctx.resource.as_bytes(), false))
        };
        let resource = match &self.resources {
            Matcher::Only(r) => r.iter().any(resource_matches),
            Matcher::AllBut(r) => !r.iter().any(resource_matches),
        };
        action && resource && self.conditions.iter().all(|c| c.holds(ctx))
    }
}

/// How a request was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A Deny statement matched (its Sid, when it has one).
    ExplicitDeny {
        sid: Option<String>,
        in_key_policy: bool,
    },
    /// Nothing allowed it.
    ImplicitDeny,
}

/// Evaluate a request against the key policy and the caller's identity
/// policies.
pub fn evaluate(key_policy: &Policy, identity: &[Policy], ctx: &RequestContext) -> Decision {
    let mut direct_allow = false;
    let mut delegated = false;
    for s in &key_policy.statements {
        let who = match &s.principals {
            Principals::Any => Who::Direct,
            Principals::Aws(arns) => {
                if arns.iter().any(|a| principal_matches(a, ctx)) {
                    Who::Direct
                } else if arns.iter().any(|a| is_account_principal(a, &ctx.account)) {
                    Who::Account
                } else {
                    Who::Nobody
                }
            }
            Principals::Implicit | Principals::Other => Who::Nobody,
        };
        if who == Who::Nobody || !s.covers_request(ctx) {
            continue;
        }
        match (s.effect, who) {
            (Effect::Deny, _) => return Decision::ExplicitDeny { sid: s.sid.clone(), in_key_policy: true },
            (Effect::Allow, Who::Direct) => direct_allow = true,
            (Effect::Allow, _) => delegated = true,
        }
    }
    let mut identity_allow = false;
    if delegated || direct_allow {
        match identity_statements(identity, ctx) {
            Err(deny) => return deny,
            Ok(allow) => identity_allow = allow,
        }
    }
    if direct_allow || (delegated && (identity_allow || ctx.is_account_root())) {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Direct,
    Account,
    Nobody,
}

/// Whether identity policies allow the request; `Err` with the decision when one denies it.
fn identity_statements(identity: &[Policy], ctx: &RequestContext) -> Result<bool, Decision> {
    let mut allow = false;
    for s in identity.iter().flat_map(|p| &p.statements) {
        if s.covers_request(ctx) {
            match s.effect {
                Effect::Deny => return Err(Decision::ExplicitDeny { sid: s.sid.clone(), in_key_policy: false }),
                Effect::Allow => allow = true,
            }
        }
    }
    Ok(allow)
}

/// Evaluate a request that names no key (CreateKey, ListKeys, ListAliases,
/// GenerateRandom): only identity policies apply, and the account root may
/// do anything.
pub fn evaluate_identity(identity: &[Policy], ctx: &RequestContext) -> Decision {
    let allow = match identity_statements(identity, ctx) {
        Err(deny) => return deny,
        Ok(allow) => allow,
    };
    if allow || ctx.is_account_root() {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}
