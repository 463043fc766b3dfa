//! Hostile and malformed documents: each gets its own error, nothing panics.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use nekms_attestation::pki::{self, sign_payload};
use nekms_attestation::{AttestationDocument, CertError, CoseSign1, DecodeError, Pcr48, Verifier, VerifyError, VerifyOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

fn decode_err(bytes: &[u8]) -> DecodeError {
    match Verifier::aws().verify(bytes, &VerifyOptions::now()).unwrap_err() {
        VerifyError::Decode(e) => e,
        other => panic!("expected a decode error, got {other}"),
    }
}

/// A well-formed payload whose fields the tests then break one at a time.
fn payload() -> AttestationDocument {
    AttestationDocument {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        digest: "SHA384".into(),
        timestamp: 1_700_000_000_000,
        pcrs: (0..16).map(|i| (i, Pcr48::ZERO)).collect(),
        certificate: vec![0x30; 10],
        cabundle: vec![vec![0x30; 10]],
        public_key: None,
        user_data: Some(vec![1, 2, 3]),
        nonce: None,
    }
}

fn cose(payload: Vec<u8>) -> Vec<u8> {
    CoseSign1 { protected: vec![0xa1, 0x01, 0x38, 0x22], payload, signature: vec![0; 96] }.encode_tagged()
}

#[test]
fn garbage_and_truncated_cbor_are_malformed_cbor() {
    assert!(matches!(decode_err(&[]), DecodeError::Cbor { .. }));
    assert!(matches!(decode_err(&[0xff, 0x00]), DecodeError::Cbor { .. } | DecodeError::NotSign1Array(_)));
    let good = cose(payload().encode());
    for cut in [1, 2, 10, good.len() / 2, good.len() - 1] {
        let err = decode_err(&good[..cut]);
        assert!(matches!(err, DecodeError::Cbor { .. }), "cut at {cut}: {err}");
    }
}

#[test]
fn the_wrong_shape_says_what_it_was() {
    assert_eq!(decode_err(&[0xa0]), DecodeError::NotSign1Array("map".into()));
    assert_eq!(decode_err(&[0x83, 0x40, 0xa0, 0x40]), DecodeError::NotSign1Array("an array of 3".into()));
    assert_eq!(decode_err(&[0xc1, 0x84]), DecodeError::WrongTag(1));
}

#[test]
fn only_es384_is_accepted() {
    let es256 = CoseSign1 { protected: vec![0xa1, 0x01, 0x26], payload: payload().encode(), signature: vec![0; 96] };
    assert_eq!(decode_err(&es256.encode_tagged()), DecodeError::UnsupportedAlgorithm(-7));
    let empty = CoseSign1 { protected: vec![0xa0], payload: payload().encode(), signature: vec![0; 96] };
    assert!(matches!(decode_err(&empty.encode_tagged()), DecodeError::ProtectedHeader(m) if m == "no algorithm"));
    let short = CoseSign1 { protected: vec![0xa1, 0x01, 0x38, 0x22], payload: payload().encode(), signature: vec![0; 64] };
    assert_eq!(decode_err(&short.encode_tagged()), DecodeError::SignatureLength(64));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = cose(payload().encode());
    bytes.push(0);
    assert_eq!(decode_err(&bytes), DecodeError::TrailingBytes(1));
}

#[test]
fn a_four_gib_byte_string_header_is_an_error_without_allocation() {
    // Payload declared as a 2^32-1 byte string, followed by almost nothing.
    let bytes = [0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x5a, 0xff, 0xff, 0xff, 0xff, 0x00];
    assert!(matches!(decode_err(&bytes), DecodeError::Cbor { .. }));
    let bytes = [0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(decode_err(&bytes), DecodeError::Cbor { .. }));
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let bytes = vec![0u8; 20_000];
    assert_eq!(decode_err(&bytes), DecodeError::TooLarge { len: 20_000, max: 16 * 1024 });
}

#[test]
fn missing_duplicate_and_unknown_fields_are_named() {
    // Drop "certificate" by encoding a map by hand.
    let mut e = minicbor_map(&[("module_id", Val::Text("m")), ("digest", Val::Text("SHA384"))]);
    assert_eq!(AttestationDocument::decode(&e).unwrap_err(), DecodeError::MissingField("timestamp"));
    e = minicbor_map(&[("module_id", Val::Text("m")), ("module_id", Val::Text("n"))]);
    assert_eq!(AttestationDocument::decode(&e).unwrap_err(), DecodeError::DuplicateField("module_id"));
    e = minicbor_map(&[("favourite_colour", Val::Text("blue"))]);
    assert_eq!(AttestationDocument::decode(&e).unwrap_err(), DecodeError::UnknownField("favourite_colour".into()));
    e = minicbor_map(&[("timestamp", Val::Text("yesterday"))]);
    assert_eq!(
        AttestationDocument::decode(&e).unwrap_err(),
        DecodeError::FieldType { field: "timestamp", expected: "an unsigned integer" }
    );
}

#[test]
fn oversized_optional_fields_are_refused() {
    for (field, min) in [("user_data", 0), ("nonce", 0), ("public_key", 1)] {
        let mut p = payload();
        let big = Some(vec![7u8; 1025]);
        match field {
            "user_data" => p.user_data = big,
            "nonce" => p.nonce = big,
            _ => p.public_key = big,
        }
        assert_eq!(decode_err(&cose(p.encode())), DecodeError::FieldSize { field, len: 1025, min, max: 1024 });
    }
}

#[test]
fn pcrs_of_the_wrong_length_or_index_are_refused() {
    let mut doc = payload();
    doc.pcrs = BTreeMap::new();
    let bytes = doc.encode();
    assert_eq!(AttestationDocument::decode(&bytes).unwrap_err(), DecodeError::FieldSize { field: "pcrs", len: 0, min: 1, max: 32 });

    let pcrs = minicbor_map(&[("pcrs", Val::Raw(vec![0xa1, 0x18, 0x28, 0x41, 0x00]))]);
    assert_eq!(AttestationDocument::decode(&pcrs).unwrap_err(), DecodeError::PcrIndex(40));
    let pcrs = minicbor_map(&[("pcrs", Val::Raw(vec![0xa1, 0x00, 0x42, 0x00, 0x00]))]);
    assert_eq!(AttestationDocument::decode(&pcrs).unwrap_err(), DecodeError::PcrLength { index: 0, len: 2 });
}

#[test]
fn only_sha384_digests_are_accepted() {
    let mut p = payload();
    p.digest = "SHA256".into();
    assert_eq!(decode_err(&cose(p.encode())), DecodeError::UnsupportedDigest("SHA256".into()));
}

#[test]
fn chains_of_the_wrong_length_are_refused() {
    let mut p = payload();
    p.cabundle = vec![];
    assert_eq!(decode_err(&cose(p.encode())), DecodeError::FieldSize { field: "cabundle", len: 0, min: 1, max: 8 });
    p.cabundle = vec![vec![0x30; 10]; 9];
    assert_eq!(decode_err(&cose(p.encode())), DecodeError::FieldSize { field: "cabundle", len: 9, min: 1, max: 8 });
}

// ---- certificate chains built to be wrong ----

fn ca_params(cn: &str, is_ca: IsCa) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = is_ca;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()
}

/// Sign a document whose chain is `root -> intermediates... -> leaf`.
fn document(
    root: &CertifiedIssuer<'_, KeyPair>,
    inters: &[Vec<u8>],
    leaf_params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Vec<u8> {
    let leaf_key = key();
    let leaf = leaf_params.signed_by(&leaf_key, issuer).unwrap();
    let mut cabundle = vec![root.der().to_vec()];
    cabundle.extend(inters.iter().cloned());
    let doc = AttestationDocument { certificate: leaf.der().to_vec(), cabundle, ..payload() };
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &leaf_key.serialize_der()).unwrap();
    sign_payload(&signer, &SystemRandom::new(), doc.encode()).unwrap().encode_tagged()
}

fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "leaf");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p
}

fn cert_err(doc: &[u8], root: &CertifiedIssuer<'_, KeyPair>) -> (String, CertError) {
    let v = Verifier::from_der(vec![root.der().to_vec()]).unwrap();
    match v.verify(doc, &VerifyOptions::now()).unwrap_err() {
        VerifyError::Certificate { which, error, .. } => (which, error),
        other => panic!("expected a certificate error, got {other}"),
    }
}

#[test]
fn a_well_built_chain_verifies() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let inter = CertifiedIssuer::signed_by(ca_params("inter", IsCa::Ca(BasicConstraints::Constrained(0))), key(), &root).unwrap();
    let doc = document(&root, &[inter.der().to_vec()], leaf_params(), &inter);
    Verifier::from_der(vec![root.der().to_vec()]).unwrap().verify(&doc, &VerifyOptions::now()).unwrap();
}

#[test]
fn an_intermediate_that_is_not_a_ca_is_refused() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let inter = CertifiedIssuer::signed_by(ca_params("inter", IsCa::ExplicitNoCa), key(), &root).unwrap();
    let doc = document(&root, &[inter.der().to_vec()], leaf_params(), &inter);
    assert_eq!(cert_err(&doc, &root), ("cabundle[1]".into(), CertError::NotCa));
}

#[test]
fn a_ca_without_key_cert_sign_is_refused() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let mut p = ca_params("inter", IsCa::Ca(BasicConstraints::Unconstrained));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let inter = CertifiedIssuer::signed_by(p, key(), &root).unwrap();
    let doc = document(&root, &[inter.der().to_vec()], leaf_params(), &inter);
    assert_eq!(cert_err(&doc, &root), ("cabundle[1]".into(), CertError::NoKeyCertSign));
}

#[test]
fn a_leaf_that_is_a_ca_is_refused() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let doc = document(&root, &[], ca_params("leaf", IsCa::Ca(BasicConstraints::Unconstrained)), &root);
    assert_eq!(cert_err(&doc, &root), ("leaf certificate".into(), CertError::LeafIsCa));
}

#[test]
fn a_leaf_without_digital_signature_is_refused() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let mut p = leaf_params();
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let doc = document(&root, &[], p, &root);
    assert_eq!(cert_err(&doc, &root), ("leaf certificate".into(), CertError::NoDigitalSignature));
}

#[test]
fn a_path_length_constraint_is_enforced() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let a = CertifiedIssuer::signed_by(ca_params("a", IsCa::Ca(BasicConstraints::Constrained(0))), key(), &root).unwrap();
    let b = CertifiedIssuer::signed_by(ca_params("b", IsCa::Ca(BasicConstraints::Constrained(0))), key(), &a).unwrap();
    let doc = document(&root, &[a.der().to_vec(), b.der().to_vec()], leaf_params(), &b);
    assert_eq!(cert_err(&doc, &root), ("cabundle[1]".into(), CertError::PathLength { allowed: 0, below: 1 }));
}

#[test]
fn a_leaf_from_another_issuer_is_refused() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let inter = CertifiedIssuer::signed_by(ca_params("inter", IsCa::Ca(BasicConstraints::Unconstrained)), key(), &root).unwrap();
    // Same name, different key: the name matches, the signature cannot.
    let impostor = CertifiedIssuer::signed_by(ca_params("inter", IsCa::Ca(BasicConstraints::Unconstrained)), key(), &root).unwrap();
    let doc = document(&root, &[inter.der().to_vec()], leaf_params(), &impostor);
    assert_eq!(cert_err(&doc, &root), ("leaf certificate".into(), CertError::BadSignature));

    let other = CertifiedIssuer::signed_by(ca_params("other", IsCa::Ca(BasicConstraints::Unconstrained)), key(), &root).unwrap();
    let doc = document(&root, &[inter.der().to_vec()], leaf_params(), &other);
    assert!(matches!(cert_err(&doc, &root).1, CertError::IssuerMismatch { .. }));
}

#[test]
fn garbage_in_a_certificate_slot_is_a_certificate_parse_error() {
    let root = CertifiedIssuer::self_signed(ca_params("root", IsCa::Ca(BasicConstraints::Unconstrained)), key()).unwrap();
    let p = AttestationDocument { cabundle: vec![root.der().to_vec(), vec![0x30, 0x03, 0x02, 0x01, 0x00]], ..payload() };
    let v = Verifier::from_der(vec![root.der().to_vec()]).unwrap();
    let err = v.verify(&cose(p.encode()), &VerifyOptions::now()).unwrap_err();
    assert!(matches!(&err, VerifyError::Certificate { which, error: CertError::Parse(_), .. } if which == "cabundle[1]"), "{err}");
}

#[test]
fn a_development_root_is_a_valid_trust_anchor_and_a_leaf_is_not() {
    let now = OffsetDateTime::now_utc();
    let root = pki::generate_root(now).unwrap();
    Verifier::from_pem(&root.cert_pem).unwrap();
    let bad = Verifier::from_der(vec![vec![1, 2, 3]]).unwrap_err();
    assert!(matches!(bad, CertError::Parse(_)));
}

// A tiny hand encoder for maps the typed encoder refuses to produce.
enum Val<'a> {
    Text(&'a str),
    Raw(Vec<u8>),
}

fn minicbor_map(entries: &[(&str, Val<'_>)]) -> Vec<u8> {
    let mut out = vec![0xa0 | entries.len() as u8];
    for (k, v) in entries {
        out.push(0x60 | k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        match v {
            Val::Text(t) => {
                out.push(0x60 | t.len() as u8);
                out.extend_from_slice(t.as_bytes());
            }
            Val::Raw(r) => out.extend_from_slice(r),
        }
    }
    out
}
