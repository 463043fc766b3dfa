//! Key policies and identity policies, evaluated the way AWS does.
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

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a policy document is refused (`MalformedPolicyDocumentException`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(m.into()))
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    NotIpAddress,
    ArnEquals,
    ArnLike,
    ArnNotEquals,
    ArnNotLike,
    Null,
}

/// The operator families AWS documents, with what a policy value must look like.
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
impl Op {
    fn parse(name: &str) -> Option<Op> {
        use Op::*;
        Some(match name {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringEqualsIgnoreCase" => StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => StringNotEqualsIgnoreCase,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "NumericEquals" => NumericEquals,
            "NumericNotEquals" => NumericNotEquals,
            "NumericLessThan" => NumericLessThan,
            "NumericLessThanEquals" => NumericLessThanEquals,
            "NumericGreaterThan" => NumericGreaterThan,
            "NumericGreaterThanEquals" => NumericGreaterThanEquals,
            "DateEquals" => DateEquals,
            "DateNotEquals" => DateNotEquals,
            "DateLessThan" => DateLessThan,
            "DateLessThanEquals" => DateLessThanEquals,
            "DateGreaterThan" => DateGreaterThan,
            "DateGreaterThanEquals" => DateGreaterThanEquals,
            "Bool" => Bool,
            "BinaryEquals" => BinaryEquals,
            "IpAddress" => IpAddress,
            "NotIpAddress" => NotIpAddress,
            "ArnEquals" => ArnEquals,
            "ArnLike" => ArnLike,
            "ArnNotEquals" => ArnNotEquals,
            "ArnNotLike" => ArnNotLike,
            "Null" => Null,
            _ => return None,
        })
    }

    fn negated(self) -> bool {
        use Op::*;
        matches!(
            self,
            StringNotEquals
                | StringNotEqualsIgnoreCase
                | StringNotLike
                | NumericNotEquals
                | DateNotEquals
                | NotIpAddress
                | ArnNotEquals
                | ArnNotLike
        )
    }

    /// A policy value this operator cannot compare with is a malformed policy.
    fn check_value(self, value: &str) -> Result<(), String> {
        use Op::*;
        let ok = match self {
            NumericEquals | NumericNotEquals | NumericLessThan | NumericLessThanEquals | NumericGreaterThan | NumericGreaterThanEquals => {
                number(value).is_some()
            }
            DateEquals | DateNotEquals | DateLessThan | DateLessThanEquals | DateGreaterThan | DateGreaterThanEquals => {
                date(value).is_some()
            }
            Bool => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
            Null => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
            BinaryEquals => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value).is_ok(),
            IpAddress | NotIpAddress => cidr(value).is_some(),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value:?} is not a value {self:?} compares"))
        }
    }

    /// Does one request value match one policy value (before negation)?
    /// A request value of the wrong kind matches nothing.
    fn matches(self, request: &str, policy: &str) -> bool {
        self.matches_marked(request, policy, &|_| true)
    }

    /// Whether policy variables are substituted in this operator's values:
    /// string and ARN operators only.
    /// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
    fn takes_variables(self) -> bool {
        use Op::*;
        matches!(
            self,
            StringEquals
                | StringNotEquals
                | StringEqualsIgnoreCase
                | StringNotEqualsIgnoreCase
                | StringLike
                | StringNotLike
                | ArnEquals
                | ArnLike
                | ArnNotEquals
                | ArnNotLike
        )
    }

    /// As [`Op::matches`]; `wild(i)` says whether a `*` or `?` at byte `i`
    /// of `policy` is a wildcard (false where it came from a variable or
    /// from `${*}`/`${?}`).
    fn matches_marked(self, request: &str, policy: &str, wild: &dyn Fn(usize) -> bool) -> bool {
        use Op::*;
        let numbers = || number(request).zip(number(policy));
        let dates = || date(request).zip(date(policy));
        match self {
            StringEquals | StringNotEquals => request == policy,
            StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => request.eq_ignore_ascii_case(policy),
            StringLike | StringNotLike => glob_marked(policy.as_bytes(), wild, request.as_bytes(), false),
            NumericEquals | NumericNotEquals => numbers().is_some_and(|(r, p)| r == p),
            NumericLessThan => numbers().is_some_and(|(r, p)| r < p),
            NumericLessThanEquals => numbers().is_some_and(|(r, p)| r <= p),
            NumericGreaterThan => numbers().is_some_and(|(r, p)| r > p),
            NumericGreaterThanEquals => numbers().is_some_and(|(r, p)| r >= p),
            DateEquals | DateNotEquals => dates().is_some_and(|(r, p)| r == p),
            DateLessThan => dates().is_some_and(|(r, p)| r < p),
            DateLessThanEquals => dates().is_some_and(|(r, p)| r <= p),
            DateGreaterThan => dates().is_some_and(|(r, p)| r > p),
            DateGreaterThanEquals => dates().is_some_and(|(r, p)| r >= p),
            Bool => request.eq_ignore_ascii_case(policy),
            BinaryEquals => request == policy,
            IpAddress | NotIpAddress => {
                request.parse::<std::net::IpAddr>().ok().zip(cidr(policy)).is_some_and(|(ip, net)| in_cidr(ip, net))
            }
            ArnEquals | ArnNotEquals | ArnLike | ArnNotLike => arn_matches(request, policy, wild),
            Null => unreachable!("Null tests presence"),
        }
    }
}

fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// ISO 8601 (RFC 3339) or seconds since the epoch, as IAM takes dates.
fn date(s: &str) -> Option<i128> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t.unix_timestamp_nanos());
    }
    if let Ok(d) = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")) {
        return Some(d.midnight().assume_utc().unix_timestamp_nanos());
    }
    s.parse::<i64>().ok().map(|secs| i128::from(secs) * 1_000_000_000)
}

fn cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<std::net::IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<std::net::IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn in_cidr(ip: std::net::IpAddr, (net, len): (std::net::IpAddr, u8)) -> bool {
    let bits = |a: std::net::IpAddr| -> (u128, u32) {
        match a {
            std::net::IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            std::net::IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let ((a, wa), (b, wb)) = (bits(ip), bits(net));
    if wa != wb {
        return false;
    }
    let shift = wa - u32::from(len);
    len == 0 || (a >> shift) == (b >> shift)
}

/// ARN operators compare the six colon-separated parts each on its own, with
/// `*` and `?` wildcards, case-sensitively.
fn arn_matches(request: &str, policy: &str, wild: &dyn Fn(usize) -> bool) -> bool {
    let r: Vec<&str> = request.splitn(6, ':').collect();
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in policy.match_indices(':').take(5) {
        parts.push((start, &policy[start..i]));
        start = i + 1;
    }
    parts.push((start, &policy[start..]));
    r.len() == 6
        && parts.len() == 6
        && r.iter().zip(&parts).all(|(r, (off, p))| glob_marked(p.as_bytes(), &|i| wild(off + i), r.as_bytes(), false))
}

/// A policy value with its variables substituted: the text, and for each
/// byte whether it came from the policy itself (so `*` and `?` there are
/// wildcards). `${*}`, `${?}` and `${$}` stand for those characters taken
/// literally; `${key, 'default'}` gives a default. None when a variable
/// names a key the request lacks (or holds several values) and has no
/// default: the value then matches nothing.
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
fn substitute(value: &str, ctx: &RequestContext) -> Option<(String, Vec<bool>)> {
    let (mut text, mut wild) = (String::new(), Vec::new());
    let mut push = |s: &str, w: bool, text: &mut String| {
        text.push_str(s);
        wild.extend(std::iter::repeat_n(w, s.len()));
    };
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let Some(end) = rest[i + 2..].find('}') else { break };
        push(&rest[..i], true, &mut text);
        let (name, default) = variable(&rest[i + 2..i + 2 + end]);
        match name {
            "*" | "?" | "$" => push(name, false, &mut text),
            key => match (ctx.get(key), default) {
                (Some([v]), _) => push(v, false, &mut text),
                (_, Some(d)) => push(d, false, &mut text),
                _ => return None,
            },
        }
        rest = &rest[i + 2 + end + 1..];
    }
    push(rest, true, &mut text);
    Some((text, wild))
}

/// `key` or `key, 'default'` inside `${...}`.
fn variable(inner: &str) -> (&str, Option<&str>) {
    if let Some((k, d)) = inner.split_once(',') {
        let d = d.trim();
        if d.len() >= 2 && d.starts_with('\'') && d.ends_with('\'') {
            return (k.trim(), Some(&d[1..d.len() - 1]));
        }
    }
    (inner.trim(), None)
}

/// The condition keys a value's variables name.
fn variable_keys(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let Some(end) = rest[i + 2..].find('}') else { break };
        let (name, _) = variable(&rest[i + 2..i + 2 + end]);
        if !matches!(name, "*" | "?" | "$") {
            out.push(name.to_owned());
        }
        rest = &rest[i + 2 + end + 1..];
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetOp {
    Single,
    ForAnyValue,
    ForAllValues,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    op: Op,
    set: SetOp,
    if_exists: bool,
    /// As written, for messages.
    key: String,
    values: Vec<String>,
    /// Values hold policy variables to substitute (Version 2012-10-17, a
    /// string or ARN operator, and `${` in some value).
    variables: bool,
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

fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => bad(format!("{what} must hold strings")),
            })
            .collect(),
        _ => bad(format!("{what} must be a string or a non-empty list of strings")),
    }
}

fn condition_values(v: &Value, key: &str) -> Result<Vec<String>, PolicyError> {
    let one = |i: &Value| match i {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bad(format!("condition value for {key} must be a string, boolean or number")),
    };
    match v {
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        Value::Array(_) => bad(format!("condition {key} has an empty value list")),
        other => Ok(vec![one(other)?]),
    }
}

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
    fn covers_action(&self, action: &str) -> bool {
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
                    out.push(format!(
                        "{name}: {} names an all-zero PCR, which every debug-mode enclave reports: it admits every debug-mode image",
                        c.key
                    ));
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

    /// Parse a key policy (`key_policy = true`: every statement needs a
    /// Principal) or an identity policy (no Principal allowed).
    pub fn parse(text: &str, key_policy: bool) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY {
            return bad(format!("policy is {} bytes; the limit is {MAX_POLICY}", text.len()));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| PolicyError(format!("policy is not valid JSON: {e}")))?;
        let Value::Object(doc) = doc else { return bad("policy must be a JSON object") };
        if let Some(v) = doc.get("Version") {
            if v != "2012-10-17" && v != "2008-10-17" {
                return bad(format!("unsupported policy Version {v}"));
            }
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(s)) if !s.is_empty() => s.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            _ => return bad("policy needs a Statement (an object or a non-empty list)"),
        };
        // Policy variables are recognised only in Version 2012-10-17; otherwise `${...}` is literal text.
        let variables = doc.get("Version").is_some_and(|v| v == "2012-10-17");
        let statements =
            statements.iter().enumerate().map(|(i, s)| parse_statement(i, s, key_policy, variables)).collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }
}

fn parse_statement(i: usize, s: &Value, key_policy: bool, variables: bool) -> Result<Statement, PolicyError> {
    let Value::Object(s) = s else { return bad(format!("Statement {i} must be an object")) };
    for k in s.keys() {
        if !matches!(
            k.as_str(),
            "Sid" | "Effect" | "Principal" | "NotPrincipal" | "Action" | "NotAction" | "Resource" | "NotResource" | "Condition"
        ) {
            return bad(format!("Statement {i} has unknown element {k:?}"));
        }
    }
    if s.contains_key("NotPrincipal") {
        return bad(format!("Statement {i}: NotPrincipal is not supported in key policies"));
    }
    let sid = s.get("Sid").and_then(Value::as_str).map(str::to_owned);
    let effect = match s.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => return bad(format!("Statement {i}: Effect must be \"Allow\" or \"Deny\"")),
    };
    let principals = match (s.get("Principal"), key_policy) {
        (None, false) => Principals::Implicit,
        (None, true) => return bad(format!("Statement {i}: a key policy statement needs a Principal")),
        (Some(_), false) => return bad(format!("Statement {i}: identity policies take no Principal")),
        (Some(Value::String(star)), true) if star == "*" => Principals::Any,
        (Some(Value::Object(m)), true) if !m.is_empty() => match m.get("AWS") {
            Some(v) => {
                let arns = strings(v, "Principal.AWS")?;
                if arns.iter().any(|a| a == "*") {
                    Principals::Any
                } else {
                    Principals::Aws(arns)
                }
            }
            None => Principals::Other,
        },
        _ => return bad(format!("Statement {i}: Principal must be \"*\" or an object such as {{\"AWS\": ARN}}")),
    };
    let actions = match (s.get("Action"), s.get("NotAction")) {
        (Some(a), None) => Matcher::Only(strings(a, "Action")?),
        (None, Some(a)) => Matcher::AllBut(strings(a, "NotAction")?),
        _ => return bad(format!("Statement {i} needs exactly one of Action and NotAction")),
    };
    let resources = match (s.get("Resource"), s.get("NotResource")) {
        (Some(r), None) => Matcher::Only(strings(r, "Resource")?),
        (None, Some(r)) => Matcher::AllBut(strings(r, "NotResource")?),
        (None, None) => Matcher::Only(vec!["*".into()]),
        _ => return bad(format!("Statement {i} has both Resource and NotResource")),
    };
    let mut conditions = Vec::new();
    match s.get("Condition") {
        None => {}
        Some(Value::Object(ops)) => {
            for (name, body) in ops {
                let (set, rest) = match name.split_once(':') {
                    Some(("ForAnyValue", r)) => (SetOp::ForAnyValue, r),
                    Some(("ForAllValues", r)) => (SetOp::ForAllValues, r),
                    Some(_) => return bad(format!("Statement {i}: unknown condition set operator in {name:?}")),
                    None => (SetOp::Single, name.as_str()),
                };
                let (base, if_exists) = match rest.strip_suffix("IfExists") {
                    Some(b) => (b, true),
                    None => (rest, false),
                };
                let op = Op::parse(base).ok_or_else(|| PolicyError(format!("Statement {i}: unsupported condition operator {name:?}")))?;
                if op == Op::Null && if_exists {
                    return bad(format!("Statement {i}: NullIfExists is not an operator"));
                }
                let Value::Object(keys) = body else { return bad(format!("Statement {i}: {name} must map keys to values")) };
                for (key, v) in keys {
                    let values = condition_values(v, key)?;
                    for value in &values {
                        op.check_value(value).map_err(|e| PolicyError(format!("Statement {i}: {name} {key}: {e}")))?;
                    }
                    let variables = variables && op.takes_variables() && values.iter().any(|v| v.contains("${"));
                    conditions.push(Condition { op, set, if_exists, key: key.clone(), values, variables });
                }
            }
        }
        Some(_) => return bad(format!("Statement {i}: Condition must be an object")),
    }
    let resource_variables = variables && matches!(&resources, Matcher::Only(r) | Matcher::AllBut(r) if r.iter().any(|r| r.contains("${")));
    Ok(Statement { sid, effect, principals, actions, resources, resource_variables, conditions })
}

/// `*` and `?` wildcards; `fold` compares ASCII case-insensitively.
fn glob(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    glob_marked(pattern, &|_| true, text, fold)
}

/// [`glob`], where `wild(i)` says whether a `*` or `?` at `pattern[i]` is a
/// wildcard or a literal character.
fn glob_marked(pattern: &[u8], wild: &dyn Fn(usize) -> bool, text: &[u8], fold: bool) -> bool {
    let eq = |a: u8, b: u8| if fold { a.eq_ignore_ascii_case(&b) } else { a == b };
    let is_star = |p: usize| pattern[p] == b'*' && wild(p);
    let is_any = |p: usize| pattern[p] == b'?' && wild(p);
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (is_any(p) || (!is_star(p) && eq(pattern[p], text[t]))) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && is_star(p) {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    (p..pattern.len()).all(is_star)
}

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
    pub fn encryption_context(&self) -> crate::blob::EncryptionContext {
        const EC: &str = "kms:encryptioncontext:";
        self.keys.iter().filter_map(|(k, v)| Some((k.strip_prefix(EC)?.to_owned(), v.first()?.clone()))).collect()
    }

    fn is_account_root(&self) -> bool {
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

impl Condition {
    fn holds(&self, ctx: &RequestContext) -> bool {
        let present = ctx.get(&self.key).filter(|v| !v.is_empty());
        if self.op == Op::Null {
            // The values are ORed like any other: ["true", "false"] always holds.
            // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_Null
            return self.values.iter().any(|v| if v.eq_ignore_ascii_case("true") { present.is_none() } else { present.is_some() });
        }
        let Some(request) = present else {
            // An absent key: a set operator decides first, whatever the operator and
            // IfExists say (ForAnyValue: false, ForAllValues: true); a single-valued
            // operator holds only if negated or ...IfExists.
            // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
            return match self.set {
                SetOp::ForAnyValue => false,
                SetOp::ForAllValues => true,
                SetOp::Single => self.if_exists || self.op.negated(),
            };
        };
        let substituted: Vec<Option<(String, Vec<bool>)>> =
            if self.variables { self.values.iter().map(|v| substitute(v, ctx)).collect() } else { Vec::new() };
        let matches = |r: &str, i: usize| match substituted.get(i) {
            None => self.op.matches(r, &self.values[i]),
            Some(None) => false,
            Some(Some((text, wild))) => self.op.matches_marked(r, text, &|b| wild[b]),
        };
        let one = |r: &String| {
            let any = (0..self.values.len()).any(|i| matches(r, i));
            if self.op.negated() {
                !any
            } else {
                any
            }
        };
        match self.set {
            SetOp::ForAllValues => request.iter().all(one),
            SetOp::Single | SetOp::ForAnyValue => {
                if self.op.negated() && self.set == SetOp::Single {
                    request.iter().all(one)
                } else {
                    request.iter().any(one)
                }
            }
        }
    }
}

/// `arn:aws:iam::ACCOUNT:role/NAME` for an assumed-role session ARN.
fn role_of_session(arn: &str) -> Option<String> {
    let rest = arn.strip_prefix("arn:aws:sts::")?;
    let (acct, session) = rest.split_once(":assumed-role/")?;
    let (role, _) = session.split_once('/')?;
    Some(format!("arn:aws:iam::{acct}:role/{role}"))
}

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

fn is_account_principal(pattern: &str, account: &str) -> bool {
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
