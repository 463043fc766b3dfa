//! Condition operators: what each compares, and what a policy value for it
//! must look like.

use super::wildcard::glob_marked;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
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
    pub(super) fn parse(name: &str) -> Option<Op> {
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

    pub(super) fn negated(self) -> bool {
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
    pub(super) fn check_value(self, value: &str) -> Result<(), String> {
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
    pub(super) fn matches(self, request: &str, policy: &str) -> bool {
        self.matches_marked(request, policy, &|_| true)
    }

    /// Whether policy variables are substituted in this operator's values:
    /// string and ARN operators only.
    /// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
    pub(super) fn takes_variables(self) -> bool {
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
    pub(super) fn matches_marked(self, request: &str, policy: &str, wild: &dyn Fn(usize) -> bool) -> bool {
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
