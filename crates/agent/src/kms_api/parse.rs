//! The KMS API's parsing of what a caller sends, apart from any state (and
//! fuzzed: `fuzz/fuzz_targets/kms_api_request.rs`): a KeyId as a record or
//! an alias, a Sign or Verify request as a scheme and a payload, and an
//! Encrypt or Decrypt request's algorithm.

use nekms_keys::{Hash, KeySpec, OaepHash, Payload, Scheme};
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::Request as Fields;

/// What a KeyId names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key record, by name (a key id or a key ARN).
    Record(String),
    /// An alias, `alias/...` (an alias name or an alias ARN).
    Alias(String),
}

/// A KeyId as KMS takes it (a key id, a key ARN, an alias name, an alias
/// ARN); ARNs must be of `region` and `account`. A key ARN names a record
/// whatever its name looks like.
pub fn key_ref(key_id: &str, region: &str, account: &str) -> Result<KeyRef, KmsError> {
    let Some(rest) = key_id.strip_prefix("arn:aws:kms:") else {
        return match key_id.strip_prefix("alias/") {
            Some("") => Err(KmsError::not_found("Alias alias/ is not found.")),
            Some(_) => Ok(KeyRef::Alias(key_id.to_owned())),
            None => Ok(KeyRef::Record(key_id.to_owned())),
        };
    };
    let mut p = rest.splitn(3, ':');
    let (r, a, resource) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
    if r != region || a != account {
        return Err(KmsError::not_found(format!("Invalid arn {key_id}: not this region and account")));
    }
    match resource.strip_prefix("key/") {
        Some(name) if !name.is_empty() => Ok(KeyRef::Record(name.to_owned())),
        None if resource.len() > "alias/".len() && resource.starts_with("alias/") => Ok(KeyRef::Alias(resource.to_owned())),
        _ => Err(KmsError::not_found(format!("Invalid arn {key_id}"))),
    }
}

/// KMS's largest RAW message.
const MAX_MESSAGE: usize = 4096;

/// The scheme KMS's `algorithm` names for a key of `spec`, and the length a DIGEST must have
/// (`None`: the algorithm takes only RAW messages).
pub fn scheme_for(spec: KeySpec, algorithm: &str) -> Result<(Scheme, Option<usize>), KmsError> {
    let rsa = |h: &str| match h {
        "256" => Some((Hash::Sha256, 32)),
        "384" => Some((Hash::Sha384, 48)),
        "512" => Some((Hash::Sha512, 64)),
        _ => None,
    };
    let found = match (spec, algorithm) {
        (KeySpec::P256 | KeySpec::Secp256k1, "ECDSA_SHA_256") => Some((Scheme::EcdsaDer, Some(32))),
        (KeySpec::P384, "ECDSA_SHA_384") => Some((Scheme::EcdsaDer, Some(48))),
        (KeySpec::Ed25519, "ED25519_SHA_512") => Some((Scheme::Ed25519, None)),
        (s, a) if s.is_rsa() => match (a.strip_prefix("RSASSA_PKCS1_V1_5_SHA_"), a.strip_prefix("RSASSA_PSS_SHA_")) {
            (Some(h), _) => rsa(h).map(|(h, n)| (Scheme::RsaPkcs1(h), Some(n))),
            (_, Some(h)) => rsa(h).map(|(h, n)| (Scheme::RsaPss(h), Some(n))),
            _ => None,
        },
        _ => None,
    };
    found.ok_or_else(|| {
        KmsError::key_usage(format!(
            "SigningAlgorithm {algorithm} is not valid for a {} key; use one of {}",
            crate::kms_api::keys::kms_spec(spec),
            crate::kms_api::keys::signing_algorithms(spec).join(", ")
        ))
    })
}

/// The scheme and payload a Sign or Verify request names: its Message as MessageType says.
pub fn sign_request(f: &Fields, spec: KeySpec, algorithm: &str) -> Result<(Scheme, Payload), KmsError> {
    let message = f.blob("Message", 1, MAX_MESSAGE)?;
    let (scheme, digest_len) = scheme_for(spec, algorithm)?;
    let payload = match f.opt_str("MessageType")?.unwrap_or("RAW") {
        "RAW" => Payload::Message(message.to_vec()),
        "DIGEST" => match digest_len {
            Some(n) if message.len() == n => Payload::Digest(message.to_vec()),
            Some(n) => return Err(KmsError::validation(format!("a DIGEST for {algorithm} is {n} bytes, not {}", message.len()))),
            None => return Err(KmsError::validation(format!("{algorithm} signs RAW messages only"))),
        },
        "EXTERNAL_MU" => return Err(KmsError::unsupported("MessageType EXTERNAL_MU is for ML-DSA keys")),
        other => return Err(KmsError::validation(format!("MessageType {other} is not RAW or DIGEST"))),
    };
    Ok((scheme, payload))
}

/// The OAEP hash an Encrypt or Decrypt request's EncryptionAlgorithm names
/// for an RSA key of `spec`: KMS's `RSAES_OAEP_SHA_1` and `RSAES_OAEP_SHA_256`.
pub fn encryption_algorithm(f: &Fields, spec: KeySpec) -> Result<(OaepHash, &str), KmsError> {
    match f.opt_str("EncryptionAlgorithm")?.unwrap_or("SYMMETRIC_DEFAULT") {
        a @ "RSAES_OAEP_SHA_1" => Ok((OaepHash::Sha1, a)),
        a @ "RSAES_OAEP_SHA_256" => Ok((OaepHash::Sha256, a)),
        a @ ("SYMMETRIC_DEFAULT" | "SM2PKE") => Err(KmsError::key_usage(format!(
            "Algorithm {a} is incompatible with key spec {}; use RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256",
            crate::kms_api::keys::kms_spec(spec)
        ))),
        other => Err(KmsError::validation(format!("EncryptionAlgorithm {other} is not RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256"))),
    }
}
