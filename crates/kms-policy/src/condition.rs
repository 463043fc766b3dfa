//! One condition (an operator, a key and its values), and whether it holds
//! for a request.

use super::operators::Op;
use super::variables::substitute;
use super::RequestContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SetOp {
    Single,
    ForAnyValue,
    ForAllValues,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Condition {
    pub(super) op: Op,
    pub(super) set: SetOp,
    pub(super) if_exists: bool,
    /// As written, for messages.
    pub(super) key: String,
    pub(super) values: Vec<String>,
    /// Values hold policy variables to substitute (Version 2012-10-17, a
    /// string or ARN operator, and `${` in some value).
    pub(super) variables: bool,
}

impl Condition {
    pub(super) fn holds(&self, ctx: &RequestContext) -> bool {
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
