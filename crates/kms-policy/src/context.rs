//! The facts of one request: the caller, the action, the resource, and the
//! condition keys.

use std::collections::BTreeMap;

/// The facts of one request that policies are evaluated against.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The caller (`arn:aws:iam::ACCOUNT:role/NAME`, `...:user/NAME`, `...:root`).
    pub principal_arn: String,
    /// The caller's account.
    pub account: String,
    /// `kms:Decrypt` and so on.
    pub action: String,
    /// The key ARN.
    pub resource: String,
    /// Condition keys, names in lower case; multi-valued keys have several values.
    keys: BTreeMap<String, Vec<String>>,
}

impl RequestContext {
    pub fn new(principal_arn: &str, account: &str, action: &str, resource: &str) -> RequestContext {
        let mut ctx = RequestContext {
            principal_arn: principal_arn.to_owned(),
            account: account.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            keys: BTreeMap::new(),
        };
        ctx.set("aws:PrincipalArn", role_of_session(principal_arn).unwrap_or_else(|| principal_arn.to_owned()));
        ctx.set("aws:PrincipalAccount", account);
        // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-principaltype
        let kind = if principal_arn == format!("arn:aws:iam::{account}:root") {
            "Account"
        } else if principal_arn.contains(":assumed-role/") || principal_arn.contains(":role/") {
            "AssumedRole"
        } else {
            "User"
        };
        ctx.set("aws:PrincipalType", kind);
        ctx.set("kms:CallerAccount", account);
        ctx
    }

    /// Set a single-valued condition key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(normalise_key(key), vec![value.into()]);
    }

    /// Set a multi-valued condition key.
    pub fn set_many(&mut self, key: &str, values: Vec<String>) {
        self.keys.insert(normalise_key(key), values);
    }

    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&normalise_key(key)).map(Vec::as_slice)
    }

    /// The request's encryption context, from its `kms:EncryptionContext:` keys
    /// (which keep the context keys' case).
    pub fn encryption_context(&self) -> std::collections::BTreeMap<String, String> {
        const EC: &str = "kms:encryptioncontext:";
        self.keys.iter().filter_map(|(k, v)| Some((k.strip_prefix(EC)?.to_owned(), v.first()?.clone()))).collect()
    }

    pub(super) fn is_account_root(&self) -> bool {
        self.principal_arn == format!("arn:aws:iam::{}:root", self.account)
    }
}

/// Condition key names are case-insensitive, except the context key inside
/// `kms:EncryptionContext:<key>`, which is matched as written.
fn normalise_key(key: &str) -> String {
    const EC: &str = "kms:encryptioncontext:";
    let lower = key.to_ascii_lowercase();
    if lower.starts_with(EC) && key.len() > EC.len() {
        format!("{EC}{}", &key[EC.len()..])
    } else {
        lower
    }
}

/// `arn:aws:iam::ACCOUNT:role/NAME` for an assumed-role session ARN.
fn role_of_session(arn: &str) -> Option<String> {
    let rest = arn.strip_prefix("arn:aws:sts::")?;
    let (acct, session) = rest.split_once(":assumed-role/")?;
    let (role, _) = session.split_once('/')?;
    Some(format!("arn:aws:iam::{acct}:role/{role}"))
}
