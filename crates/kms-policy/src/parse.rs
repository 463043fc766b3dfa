//! Reading a policy document: the JSON, checked once, into a [`Policy`].

use serde_json::Value;

use super::condition::{Condition, SetOp};
use super::operators::Op;
use super::{Effect, Matcher, Policy, PolicyError, Principals, Statement, MAX_POLICY};

fn bad<T>(m: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(m.into()))
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

impl Policy {
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

/// Refuse JSON in which an object names a key twice: serde keeps the last
/// copy, another parser may keep the first, so the policy one reader checks
/// could differ from the one another enforces.
pub fn check_unique_keys(text: &str) -> Result<(), PolicyError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while a.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                if !seen.insert(k.clone()) {
                    return Err(A::Error::custom(format!("the key {k:?} appears twice in one object")));
                }
                m.next_value_seed(Unique)?;
            }
            Ok(())
        }
    }
    let mut d = serde_json::Deserializer::from_str(text);
    Unique.deserialize(&mut d).map_err(|e| PolicyError(format!("policy: {e}")))?;
    d.end().map_err(|e| PolicyError(format!("policy: {e}")))
}

#[cfg(test)]
mod unique_tests {
    #[test]
    fn a_key_twice_in_one_object_is_refused() {
        assert!(super::check_unique_keys(r#"{"a": [{"b": 1, "c": {"d": null}}], "e": "x"}"#).is_ok());
        assert!(super::check_unique_keys(r#"{"a": 1, "a": 2}"#).is_err());
        assert!(super::check_unique_keys(r#"{"S": [{"Effect": "Allow", "Effect": "Deny"}]}"#).is_err());
        assert!(super::check_unique_keys(r#"{"a": 1} x"#).is_err());
    }
}
