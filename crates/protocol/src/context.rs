//! Encryption contexts: the reserved `nekms:` namespace and the contexts the
//! enclave makes for its own material.
//!
//! Everything the enclave seals for itself carries context keys in the
//! `nekms:` namespace: a record's data key ([`record_context`]) and an
//! administrator's import ciphertext ([`import_context`]). KMS refuses a
//! Decrypt whose context differs from the one the ciphertext was made with,
//! so refusing reserved keys on every path that returns plaintext to a
//! caller ([`check_caller_context`]) keeps that material off those paths.
//! The check folds case (ASCII and Unicode), so `NEKMS:key-id` or
//! `Nekms:key-id` is refused too, though KMS itself would tell them apart.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::Deserializer;

use crate::record::Origin;
use crate::spec::KeySpec;

/// The namespace every context key of nekms's own material starts with.
pub const RESERVED_PREFIX: &str = "nekms:";
/// A record's name.
pub const KEY_ID: &str = "nekms:key-id";
/// A record's key spec.
pub const KEY_SPEC: &str = "nekms:key-spec";
/// `generated` or `imported`: how the record's key came to be.
pub const ORIGIN: &str = "nekms:origin";
/// `import` on an administrator's import ciphertext.
pub const PURPOSE: &str = "nekms:purpose";
pub const PURPOSE_IMPORT: &str = "import";
/// The context an administrator encrypts the validator signer's anchor
/// credentials with: this purpose, and the table (as the measured
/// configuration names it) under [`ANCHOR_TABLE`], so credentials made for
/// one table are never taken for another.
pub const PURPOSE_ANCHOR_CREDENTIALS: &str = "privval-anchor-credentials";
pub const ANCHOR_TABLE: &str = "nekms:anchor-table";
/// What a record's key may do, when it is not plain signing: present only on
/// RSA keys made to decrypt too ([`USAGE_SIGN_DECRYPT`]) or only
/// ([`USAGE_DECRYPT`]), and on consensus keys, which only the validator
/// signer uses ([`USAGE_PRIVVAL`]).
pub const USAGE: &str = "nekms:usage";
pub const USAGE_SIGN_DECRYPT: &str = "sign,decrypt";
pub const USAGE_DECRYPT: &str = "decrypt";
pub const USAGE_PRIVVAL: &str = "privval";
/// On a migrated record only: `<hex SHA-256 of the approved statement>.<hex
/// manifest leaf hash>`, binding the record's data key to its approval.
pub const MIGRATION: &str = "nekms:migration";

/// What a key is made for, fixed when it is made: bound into its record's
/// data-key context and, for an imported key, into the administrator's
/// import ciphertext, so that it is never granted later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    /// Signing through the general Sign and the PKCS#11 module.
    #[default]
    Sign,
    /// An RSA key that decrypts too (a PKCS#11 token's `--decrypt`).
    SignDecrypt,
    /// An RSA key that only decrypts, RSAES-OAEP (AWS KMS's
    /// `ENCRYPT_DECRYPT`): the general Sign refuses it, and no PKCS#11
    /// token takes it, so it computes no signature by any name.
    Decrypt,
    /// A validator's consensus key (Ed25519 or secp256k1): signed with only
    /// by the validator signer, under its double-sign rules; the general
    /// Sign, the agent and PKCS#11 refuse it.
    Privval,
}

impl Usage {
    /// The value of [`USAGE`] in a context, if any.
    pub fn context_value(self) -> Option<&'static str> {
        match self {
            Usage::Sign => None,
            Usage::SignDecrypt => Some(USAGE_SIGN_DECRYPT),
            Usage::Decrypt => Some(USAGE_DECRYPT),
            Usage::Privval => Some(USAGE_PRIVVAL),
        }
    }

    /// Whether a key of this usage signs through the general Sign.
    pub fn signs(self) -> bool {
        matches!(self, Usage::Sign | Usage::SignDecrypt)
    }

    /// Whether a key of this usage decrypts.
    pub fn decrypts(self) -> bool {
        matches!(self, Usage::SignDecrypt | Usage::Decrypt)
    }

    /// From the request flags `decrypt` and `privval`; both at once is refused.
    pub fn from_flags(decrypt: bool, privval: bool) -> Result<Usage, String> {
        match (decrypt, privval) {
            (false, false) => Ok(Usage::Sign),
            (true, false) => Ok(Usage::SignDecrypt),
            (false, true) => Ok(Usage::Privval),
            (true, true) => Err("a key is made to decrypt or as a consensus key, not both".into()),
        }
    }

    /// Whether a key of `spec` may be made with this usage.
    pub fn check_spec(self, spec: KeySpec) -> Result<(), String> {
        match self {
            Usage::Sign => Ok(()),
            Usage::SignDecrypt | Usage::Decrypt if spec.is_rsa() => Ok(()),
            Usage::SignDecrypt | Usage::Decrypt => Err(format!("a {spec} key does not decrypt; only RSA keys may be made with decrypt")),
            Usage::Privval if matches!(spec, KeySpec::Ed25519 | KeySpec::Secp256k1) => Ok(()),
            Usage::Privval => Err(format!("a consensus key is ed25519 or secp256k1, not {spec}")),
        }
    }

    /// The usage a record's context states, if it is one a key of `spec` may carry.
    pub fn of_context(context: &BTreeMap<String, String>, spec: KeySpec) -> Result<Usage, String> {
        let usage = match context.get(USAGE).map(String::as_str) {
            None => Usage::Sign,
            Some(USAGE_SIGN_DECRYPT) => Usage::SignDecrypt,
            Some(USAGE_DECRYPT) => Usage::Decrypt,
            Some(USAGE_PRIVVAL) => Usage::Privval,
            Some(other) => return Err(format!("{USAGE}={other:?} is no usage nekms makes")),
        };
        usage.check_spec(spec).map(|()| usage)
    }
}

/// Most pairs a caller's encryption context may hold.
pub const MAX_PAIRS: usize = 64;
/// Most bytes of keys and values together (KMS's own limit is 8 KiB).
pub const MAX_BYTES: usize = 8192;

/// `KEY=VALUE` arguments (the command line's `--context`) as an encryption
/// context; an empty key or a key given twice is refused.
pub fn parse_pairs(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut context = BTreeMap::new();
    for kv in items {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                if context.insert(k.to_owned(), v.to_owned()).is_some() {
                    return Err(format!("rule duplicate-context-key: encryption-context key {k:?} is given twice"));
                }
            }
            _ => return Err(format!("{kv:?}: an encryption context pair is KEY=VALUE")),
        }
    }
    Ok(context)
}

/// Whether `key` is in the reserved namespace, whatever its casing.
pub fn is_reserved(key: &str) -> bool {
    let head: String = key.trim_start().chars().take(RESERVED_PREFIX.len() + 2).collect();
    head.to_lowercase().starts_with(RESERVED_PREFIX) || head.to_ascii_lowercase().starts_with(RESERVED_PREFIX)
}

/// Why a context is refused; the message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error(
        "rule reserved-context: encryption-context key {0:?} is in nekms's reserved namespace (nekms:*, any casing); material the enclave seals for itself never takes a path that returns plaintext"
    )]
    Reserved(String),
    #[error("rule context-size: an encryption context holds at most {MAX_PAIRS} pairs and {MAX_BYTES} bytes; this one has {pairs} pairs and {bytes} bytes")]
    TooLarge { pairs: usize, bytes: usize },
    #[error("rule context-size: an encryption-context key is never empty")]
    EmptyKey,
}

/// The checks every caller-supplied context passes: size, and no reserved key.
pub fn check_caller_context(context: &BTreeMap<String, String>) -> Result<(), ContextError> {
    let bytes: usize = context.iter().map(|(k, v)| k.len() + v.len()).sum();
    if context.len() > MAX_PAIRS || bytes > MAX_BYTES {
        return Err(ContextError::TooLarge { pairs: context.len(), bytes });
    }
    if context.keys().any(|k| k.is_empty()) {
        return Err(ContextError::EmptyKey);
    }
    match context.keys().find(|k| is_reserved(k)) {
        Some(k) => Err(ContextError::Reserved(k.clone())),
        None => Ok(()),
    }
}

/// A record's data-key context: the caller's entries (checked) plus the
/// reserved ones binding id, spec and origin.
pub fn record_context(
    key_id: &str,
    spec: KeySpec,
    origin: Origin,
    extra: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ContextError> {
    check_caller_context(extra)?;
    let mut context = extra.clone();
    context.insert(KEY_ID.into(), key_id.into());
    context.insert(KEY_SPEC.into(), spec.as_str().into());
    context.insert(ORIGIN.into(), origin.as_str().into());
    Ok(context)
}

/// The context of an import ciphertext made for the record `key_id` of
/// `spec` (so one secret cannot be imported as keys of several kinds), plus
/// the administrator's own (non-reserved) entries.
pub fn import_context(key_id: &str, spec: KeySpec, extra: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ContextError> {
    import_context_with_usage(key_id, spec, extra, Usage::Sign)
}

/// The same, for a key the administrator makes to decrypt as well as sign,
/// or as a consensus key: [`USAGE`] is then in the context too, so a
/// ciphertext made for a signing key cannot be imported again as one that
/// decrypts, nor a consensus key's as a key the general Sign uses.
pub fn import_context_with_usage(
    key_id: &str,
    spec: KeySpec,
    extra: &BTreeMap<String, String>,
    usage: Usage,
) -> Result<BTreeMap<String, String>, ContextError> {
    check_caller_context(extra)?;
    let mut context = import_context_inner(key_id, spec, extra);
    if let Some(v) = usage.context_value() {
        context.insert(USAGE.into(), v.into());
    }
    Ok(context)
}

fn import_context_inner(key_id: &str, spec: KeySpec, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut context = extra.clone();
    context.insert(PURPOSE.into(), PURPOSE_IMPORT.into());
    context.insert(KEY_ID.into(), key_id.into());
    context.insert(KEY_SPEC.into(), spec.as_str().into());
    context
}

/// Deserialize a map of strings, refusing a key given twice (JSON and CBOR
/// decoders otherwise keep the last one silently).
pub fn unique_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Unique;
    impl<'de> Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of strings to strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.len() >= MAX_PAIRS * 4 {
                    return Err(serde::de::Error::custom(format!("rule context-size: more than {MAX_PAIRS} encryption-context pairs")));
                }
                if out.insert(k.clone(), v).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "rule duplicate-context-key: encryption-context key {k:?} is given twice"
                    )));
                }
            }
            Ok(out)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }
    d.deserialize_any(Unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reserved_keys_are_refused_in_any_casing() {
        // U+212A KELVIN SIGN lowercases to an ASCII k.
        for k in ["nekms:key-id", "NEKMS:key-id", "Nekms:origin", "nEkMs:x", " nekms:key-id", "nekms:", "ne\u{212A}ms:key-id"] {
            assert!(matches!(check_caller_context(&ctx(&[(k, "v")])), Err(ContextError::Reserved(_))), "{k:?}");
        }
        for k in ["nekms", "nekmsx:a", "app:nekms:key-id", "purpose"] {
            assert!(check_caller_context(&ctx(&[(k, "v")])).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn oversized_and_empty_contexts_are_refused() {
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(matches!(check_caller_context(&many), Err(ContextError::TooLarge { pairs: 65, .. })));
        assert!(matches!(check_caller_context(&ctx(&[("k", &"v".repeat(9000))])), Err(ContextError::TooLarge { .. })));
        assert_eq!(check_caller_context(&ctx(&[("", "v")])), Err(ContextError::EmptyKey));
    }

    #[test]
    fn the_enclave_contexts_bind_their_purpose() {
        let r = record_context("a", KeySpec::P256, Origin::Generated, &ctx(&[("app", "x")])).unwrap();
        assert_eq!(r, ctx(&[("app", "x"), (KEY_ID, "a"), (KEY_SPEC, "p256"), (ORIGIN, "generated")]));
        let i = import_context("a", KeySpec::Ed25519, &BTreeMap::new()).unwrap();
        assert_eq!(i, ctx(&[(KEY_ID, "a"), (KEY_SPEC, "ed25519"), (PURPOSE, "import")]));
        assert!(record_context("a", KeySpec::P256, Origin::Imported, &ctx(&[("NEKMS:origin", "generated")])).is_err());
    }

    #[test]
    fn a_key_given_twice_is_refused_when_decoding() {
        #[derive(serde::Deserialize, Debug)]
        struct W {
            #[serde(deserialize_with = "unique_map")]
            c: BTreeMap<String, String>,
        }
        assert!(serde_json::from_str::<W>(r#"{"c": {"a": "1", "a": "2"}}"#).unwrap_err().to_string().contains("duplicate-context-key"));
        assert_eq!(serde_json::from_str::<W>(r#"{"c": {"a": "1", "b": "2"}}"#).unwrap().c.len(), 2);
    }
}
