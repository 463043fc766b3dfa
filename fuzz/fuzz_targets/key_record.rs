//! Bytes the parent's store or a caller hands back as public key material:
//! record JSON (with its origin document checked as the enclave checks it,
//! and its encryption context as the parent-decrypt rules check one),
//! SubjectPublicKeyInfo (DER or PEM), ECDSA signatures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_keys::{ecdsa_der_to_fixed, ecdsa_fixed_to_der, KeyRecord, PublicKey, RecordExt};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<KeyRecord>(data) {
        if let Ok(public) = record.check() {
            assert_eq!(public.spec(), record.spec);
        }
        let _ = record.cache_digest();
        let verifier = nekms_attestation::Verifier::aws();
        // Nothing the fuzzer makes is signed by AWS's root: the check must refuse, never panic.
        assert!(nekms_keys::origin::verify_origin(
            &record,
            &verifier,
            &nekms_keys::origin::TrustedImages::by_pcr0(&[nekms_attestation::Pcr48::ZERO])
        )
        .is_err());
        let _ = nekms_keys::context::check_caller_context(&record.encryption_context);
    }
    if let Ok(public) = PublicKey::parse(data) {
        let again = PublicKey::from_spki(public.spki()).expect("a parsed key's SPKI parses");
        assert_eq!(again, public);
    }
    for size in [32, 48] {
        if let Some(fixed) = ecdsa_der_to_fixed(data, size) {
            assert_eq!(fixed.len(), 2 * size);
            assert_eq!(ecdsa_der_to_fixed(&ecdsa_fixed_to_der(&fixed), size), Some(fixed));
        }
    }
});
