//! Policy variables (`${aws:username}` and the like) in condition values
//! and resources.

use super::RequestContext;

/// A policy value with its variables substituted: the text, and for each
/// byte whether it came from the policy itself (so `*` and `?` there are
/// wildcards). `${*}`, `${?}` and `${$}` stand for those characters taken
/// literally; `${key, 'default'}` gives a default. None when a variable
/// names a key the request lacks (or holds several values) and has no
/// default: the value then matches nothing.
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
pub(super) fn substitute(value: &str, ctx: &RequestContext) -> Option<(String, Vec<bool>)> {
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
pub(super) fn variable_keys(value: &str) -> Vec<String> {
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
