//! `*` and `?` wildcards, as actions, resources, `...Like` operators and
//! ARN operators take them.

/// `*` and `?` wildcards; `fold` compares ASCII case-insensitively.
pub(super) fn glob(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    glob_marked(pattern, &|_| true, text, fold)
}

/// [`glob`], where `wild(i)` says whether a `*` or `?` at `pattern[i]` is a
/// wildcard or a literal character.
pub(super) fn glob_marked(pattern: &[u8], wild: &dyn Fn(usize) -> bool, text: &[u8], fold: bool) -> bool {
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
