//! The real AWS attestation documents verify against the real AWS root at
//! their own timestamp, and every kind of damage is named precisely.

use std::path::PathBuf;

use nekms_attestation::{pki, CertError, DecodeError, Pcr48, Verifier, VerifyError, VerifyOptions, AWS_NITRO_ROOT_G1_PEM};
use time::{Duration, OffsetDateTime};

struct Vector {
    file: &'static str,
    module_id: &'static str,
    timestamp: u64,
    pcr0: &'static str,
}

const ZERO: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

const VECTORS: &[Vector] = &[
    Vector {
        file: "attestation-evervault.cbor",
        module_id: "i-0918f6c55e3b61d89-enc018aa8b8e2285d13",
        timestamp: 1695049410860,
        pcr0: ZERO,
    },
    Vector {
        file: "attestation-evervault-beta.cbor",
        module_id: "i-020b6af9246d90e92-enc0183d09086c24190",
        timestamp: 1665651482136,
        pcr0: "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
    },
    Vector {
        file: "attestation-evervault-beta-debug.cbor",
        module_id: "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1",
        timestamp: 1665582606081,
        pcr0: ZERO,
    },
    Vector {
        file: "attestation-blocky-nitrite.cbor",
        module_id: "i-0a22e5c5f24d22174-enc0191cceb4289903f",
        timestamp: 1725719859545,
        pcr0: "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a",
    },
    Vector {
        file: "attestation-blocky-nitrite-debug.cbor",
        module_id: "i-0a22e5c5f24d22174-enc0191ccebaf8feaba",
        timestamp: 1725719886508,
        pcr0: ZERO,
    },
];

fn load(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap()
}

#[test]
fn every_real_document_verifies_at_its_own_timestamp() {
    let verifier = Verifier::aws();
    for v in VECTORS {
        let bytes = load(v.file);
        let verified = verifier.verify(&bytes, &VerifyOptions::at(at(v.timestamp))).unwrap_or_else(|e| panic!("{}: {e}", v.file));
        let doc = &verified.document;
        assert_eq!(doc.module_id, v.module_id, "{}", v.file);
        assert_eq!(doc.timestamp, v.timestamp);
        assert_eq!(doc.digest, "SHA384");
        assert_eq!(doc.pcrs.len(), 16);
        assert_eq!(doc.pcrs[&0].to_hex(), v.pcr0, "{}", v.file);
        assert_eq!(verified.chain.len(), 5, "root, three intermediates, leaf");
        assert!(verified.chain[0].subject.contains("aws.nitro-enclaves"));
    }
}

#[test]
fn the_agpl_qos_vector_verifies_when_shared_testdata_is_present() {
    let dir = std::env::var_os("NEKMS_SHARED_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"));
    let Ok(bytes) = std::fs::read(dir.join("attestation-qos.cbor")) else {
        eprintln!("skipped: {} has no attestation-qos.cbor", dir.display());
        return;
    };
    let verified = Verifier::aws().verify(&bytes, &VerifyOptions::at(at(1657117102484))).unwrap();
    assert_eq!(verified.document.module_id, "i-07e25f3bada361dec-enc0181d3dff86da785");
    assert_eq!(
        verified.document.pcrs[&0].to_hex(),
        "f8bb0133c427bc49aa39f6811a01077ce9ab7e635fa1f5439c9c8bf99754f8230e41b09426b0e595eebdc4d6ed4bc3b6"
    );
    assert_eq!(verified.document.public_key.as_ref().unwrap().len(), 800);
}

#[test]
fn optional_fields_come_out_as_the_nsm_signed_them() {
    let v = Verifier::aws();
    let d = v.verify(&load("attestation-evervault-beta-debug.cbor"), &VerifyOptions::at(at(1665582606081))).unwrap();
    assert_eq!(d.document.public_key.as_deref(), Some(&b"my super secret key"[..]));
    assert_eq!(d.document.user_data.as_deref(), Some(&b"hello, world!"[..]));
    assert_eq!(d.document.nonce, None);

    let d = v.verify(&load("attestation-blocky-nitrite.cbor"), &VerifyOptions::at(at(1725719859545))).unwrap();
    for field in [&d.document.public_key, &d.document.user_data, &d.document.nonce] {
        assert_eq!(field.as_deref(), Some(&[1u8; 1024][..]), "1024-byte fields are what real NSMs sign");
    }
}

#[test]
fn a_real_document_is_expired_three_hours_after_its_timestamp() {
    let v = &VECTORS[3];
    let err = Verifier::aws().verify(&load(v.file), &VerifyOptions::at(at(v.timestamp + 4 * 3600 * 1000))).unwrap_err();
    match &err {
        VerifyError::Certificate { which, error: CertError::Expired { .. }, .. } => {
            assert_eq!(which, "leaf certificate")
        }
        other => panic!("expected leaf expiry, got {other}"),
    }
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn a_real_document_is_not_yet_valid_before_its_certificates() {
    let v = &VECTORS[0];
    let err = Verifier::aws().verify(&load(v.file), &VerifyOptions::at(at(v.timestamp) - Duration::days(60))).unwrap_err();
    assert!(matches!(&err, VerifyError::Certificate { error: CertError::NotYetValid { .. }, .. }), "expected not-yet-valid, got {err}");
}

#[test]
fn a_changed_payload_byte_breaks_the_signature() {
    let v = &VECTORS[1];
    let mut bytes = load(v.file);
    // Change one character of the module id, which sits inside the signed payload.
    let pos = bytes.windows(v.module_id.len()).position(|w| w == v.module_id.as_bytes()).unwrap();
    bytes[pos + 5] ^= 0x01;
    let err = Verifier::aws().verify(&bytes, &VerifyOptions::at(at(v.timestamp))).unwrap_err();
    assert_eq!(err, VerifyError::Signature);
    assert!(err.to_string().contains("COSE signature does not verify"));
}

#[test]
fn a_changed_signature_byte_is_refused() {
    let v = &VECTORS[1];
    let mut bytes = load(v.file);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    assert_eq!(Verifier::aws().verify(&bytes, &VerifyOptions::at(at(v.timestamp))).unwrap_err(), VerifyError::Signature);
}

#[test]
fn a_real_document_is_refused_against_the_development_root() {
    let root = pki::generate_root(OffsetDateTime::now_utc()).unwrap();
    let verifier = Verifier::from_pem(&root.cert_pem).unwrap();
    let v = &VECTORS[0];
    let err = verifier.verify(&load(v.file), &VerifyOptions::at(at(v.timestamp))).unwrap_err();
    match &err {
        VerifyError::UntrustedRoot { found, pinned } => {
            assert!(found.contains("aws.nitro-enclaves"), "{found}");
            assert!(pinned.contains("nekms development root"), "{pinned}");
        }
        other => panic!("expected an untrusted root, got {other}"),
    }
}

#[test]
fn a_wrong_expected_pcr_names_the_register_and_both_values() {
    let v = &VECTORS[1];
    let good: Pcr48 = v.pcr0.parse().unwrap();
    let opts = VerifyOptions::at(at(v.timestamp)).expect_pcr(0, good);
    Verifier::aws().verify(&load(v.file), &opts).expect("right PCR0 passes");

    let opts = VerifyOptions::at(at(v.timestamp)).expect_pcr(0, Pcr48::ZERO);
    let err = Verifier::aws().verify(&load(v.file), &opts).unwrap_err();
    assert_eq!(err, VerifyError::PcrMismatch { index: 0, expected: ZERO.into(), actual: v.pcr0.into() });
    assert!(err.to_string().starts_with("PCR0 is f4d48b81"), "{err}");

    let opts = VerifyOptions::at(at(v.timestamp)).expect_pcr(20, Pcr48::ZERO);
    let err = Verifier::aws().verify(&load(v.file), &opts).unwrap_err();
    assert!(matches!(err, VerifyError::PcrMismatch { index: 20, ref actual, .. } if actual == "absent"));
}

#[test]
fn a_wrong_expected_nonce_is_refused() {
    let v = &VECTORS[0];
    let bytes = load(v.file);
    let opts = VerifyOptions::at(at(v.timestamp));
    let nonce = Verifier::aws().verify(&bytes, &opts).unwrap().document.nonce.unwrap();
    assert_eq!(nonce.len(), 256);
    Verifier::aws().verify(&bytes, &opts.clone().expect_nonce(nonce.clone())).expect("right nonce passes");

    let mut wrong = nonce;
    wrong[0] ^= 1;
    let err = Verifier::aws().verify(&bytes, &opts.clone().expect_nonce(wrong)).unwrap_err();
    assert!(matches!(err, VerifyError::NonceMismatch { .. }), "{err}");

    // A document without a nonce fails an expectation of one.
    let v = &VECTORS[2];
    let err = Verifier::aws().verify(&load(v.file), &VerifyOptions::at(at(v.timestamp)).expect_nonce(vec![1, 2, 3])).unwrap_err();
    assert_eq!(err, VerifyError::NonceMismatch { expected: "010203".into(), actual: "absent".into() });
}

#[test]
fn max_age_refuses_stale_documents() {
    let v = &VECTORS[3];
    let mut opts = VerifyOptions::at(at(v.timestamp + 10 * 60 * 1000));
    opts.max_age = Some(std::time::Duration::from_secs(300));
    let err = Verifier::aws().verify(&load(v.file), &opts).unwrap_err();
    assert!(matches!(err, VerifyError::TooOld { age_ms: 600_000, max_ms: 300_000 }), "{err}");
}

#[test]
fn the_built_in_root_is_the_aws_root_g1() {
    let der = pki::pem_certificate_der(AWS_NITRO_ROOT_G1_PEM).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    assert_eq!(hex::encode(digest), "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b");
    // And it is cabundle[0] of every real document.
    for v in VECTORS {
        let cose = nekms_attestation::CoseSign1::decode(&load(v.file)).unwrap();
        let doc = nekms_attestation::AttestationDocument::decode(&cose.payload).unwrap();
        assert_eq!(doc.cabundle[0], der, "{}", v.file);
    }
}

#[test]
fn real_documents_are_untagged_and_still_decode() {
    let bytes = load(VECTORS[0].file);
    assert_eq!(bytes[0], 0x84, "a bare 4-element array");
    let cose = nekms_attestation::CoseSign1::decode(&bytes).unwrap();
    // Re-encoding with tag 18 gives the same document.
    let tagged = cose.encode_tagged();
    assert_eq!(&tagged[..2], &[0xd2, 0x84]);
    let v = &VECTORS[0];
    Verifier::aws().verify(&tagged, &VerifyOptions::at(at(v.timestamp))).unwrap();
    // Any other tag is refused.
    let mut other = tagged;
    other[0] = 0xd1;
    assert_eq!(Verifier::aws().verify(&other, &VerifyOptions::now()).unwrap_err(), VerifyError::Decode(DecodeError::WrongTag(17)));
}
