//! A KMS API request as a caller sends it to the agent: any body, read as
//! Sign's fields, its KeyId resolved and its message built for each key
//! spec, and as Encrypt's or Decrypt's algorithm. An error or a well-formed
//! answer: a record or an alias that is what the KeyId said, a DIGEST
//! exactly as long as its algorithm's hash, an OAEP hash KMS names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_agent::kms_api_parse::{encryption_algorithm, key_ref, sign_request, KeyRef};
use nekms_keys::{KeySpec, OaepHash, Payload};

const SPECS: [KeySpec; 7] =
    [KeySpec::Secp256k1, KeySpec::P256, KeySpec::P384, KeySpec::Ed25519, KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096];

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = std::str::from_utf8(data) {
        check_ref(id);
    }
    let Ok(fields) = nekms_kms::request::Request::parse(data) else { return };
    if let Ok(id) = fields.key_id("KeyId") {
        check_ref(id);
    }
    for spec in [KeySpec::Rsa2048, KeySpec::P256] {
        match encryption_algorithm(&fields, spec) {
            Ok((OaepHash::Sha1, a)) => assert_eq!(a, "RSAES_OAEP_SHA_1"),
            Ok((OaepHash::Sha256, a)) => assert_eq!(a, "RSAES_OAEP_SHA_256"),
            Ok(other) => panic!("KMS names no {other:?}"),
            Err(_) => {}
        }
    }
    let Ok(algorithm) = fields.str("SigningAlgorithm") else { return };
    for spec in SPECS {
        if let Ok((_, payload)) = sign_request(&fields, spec, algorithm) {
            match payload {
                Payload::Digest(d) => assert!(matches!(d.len(), 32 | 48 | 64)),
                Payload::Message(m) => assert!(!m.is_empty() && m.len() <= 4096),
                _ => panic!("a KMS request is a message or a digest"),
            }
        }
    }
});

fn check_ref(id: &str) {
    match key_ref(id, "us-east-1", "111122223333") {
        Ok(KeyRef::Alias(a)) => assert!(a.starts_with("alias/") && a.len() > 6 && id.ends_with(&a)),
        Ok(KeyRef::Record(r)) => assert!(!r.is_empty() || id.is_empty()),
        Err(_) => assert!(id.starts_with("arn:aws:kms:") || id == "alias/"),
    }
}
