//! The simulator keeps the real NSM's rules.

use nekms_attestation::{pki, Pcr48, Verifier, VerifyOptions};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, ErrorCode, Nsm, NsmError, SimConfig, SimulatedNsm, RANDOM_LEN};
use time::OffsetDateTime;

struct World {
    root_pem: String,
    intermediate: pki::CaMaterial,
}

fn world() -> World {
    let now = OffsetDateTime::now_utc();
    let root = pki::generate_root(now).unwrap();
    let intermediate = pki::generate_intermediate(&root, now).unwrap();
    World { root_pem: root.cert_pem.clone(), intermediate }
}

fn boot(w: &World, config: SimConfig) -> SimulatedNsm {
    SimulatedNsm::boot(config, pki::DocumentSigner::new(&w.root_pem, &w.intermediate).unwrap())
}

fn image() -> Measurement {
    Measurement::of_image(b"nekms-enclave test image", Some(b"config"))
}

fn code(r: Result<impl std::fmt::Debug, NsmError>) -> ErrorCode {
    match r {
        Err(NsmError::Code(c)) => c,
        other => panic!("expected an NSM error code, got {other:?}"),
    }
}

#[test]
fn boot_measures_the_image_and_locks_pcrs_0_to_15() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    assert_eq!(nsm.describe_pcr(0).unwrap().value, image().pcr0);
    assert_eq!(nsm.describe_pcr(1).unwrap().value, image().pcr1);
    assert_eq!(nsm.describe_pcr(2).unwrap().value, image().pcr2);
    let d = nsm.describe().unwrap();
    assert_eq!(d.locked_pcrs, (0..16).collect());
    assert_eq!((d.max_pcrs, d.digest.as_str(), d.version), (32, "SHA384", (1, 0, 0)));
    assert!(nsm.is_simulated());
    for i in 0..16 {
        assert!(nsm.describe_pcr(i).unwrap().locked);
        assert_eq!(code(nsm.extend_pcr(i, b"x")), ErrorCode::ReadOnlyIndex);
    }
    assert!(!nsm.describe_pcr(16).unwrap().locked);
}

#[test]
fn extend_is_sha384_of_old_value_and_data_until_locked() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let after = nsm.extend_pcr(16, b"first").unwrap();
    assert_eq!(after, Pcr48::ZERO.extended(b"first"));
    let after2 = nsm.extend_pcr(16, b"second").unwrap();
    assert_eq!(after2, after.extended(b"second"));
    nsm.lock_pcr(16).unwrap();
    assert_eq!(code(nsm.extend_pcr(16, b"third")), ErrorCode::ReadOnlyIndex);
    assert_eq!(nsm.describe_pcr(16).unwrap(), nekms_nsm::PcrState { locked: true, value: after2 });
    nsm.lock_pcrs(20).unwrap();
    assert_eq!(code(nsm.extend_pcr(19, b"x")), ErrorCode::ReadOnlyIndex);
    nsm.extend_pcr(20, b"x").unwrap();
}

#[test]
fn out_of_range_indexes_are_invalid_index() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    assert_eq!(code(nsm.describe_pcr(32)), ErrorCode::InvalidIndex);
    assert_eq!(code(nsm.extend_pcr(32, b"x")), ErrorCode::InvalidIndex);
    assert_eq!(code(nsm.lock_pcr(u16::MAX)), ErrorCode::InvalidIndex);
    assert_eq!(code(nsm.lock_pcrs(33)), ErrorCode::InvalidIndex);
    nsm.lock_pcrs(32).unwrap();
}

#[test]
fn oversized_input_is_input_too_large_and_the_limits_themselves_pass() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let at_limit = AttestationRequest { user_data: Some(vec![1; 512]), nonce: Some(vec![2; 512]), public_key: Some(vec![3; 1024]) };
    nsm.attestation(at_limit.clone()).unwrap();
    for over in [
        AttestationRequest { user_data: Some(vec![1; 513]), ..Default::default() },
        AttestationRequest { nonce: Some(vec![1; 513]), ..Default::default() },
        AttestationRequest { public_key: Some(vec![1; 1025]), ..Default::default() },
    ] {
        assert_eq!(code(nsm.attestation(over)), ErrorCode::InputTooLarge);
    }
    nsm.extend_pcr(17, &vec![0; 4000]).unwrap();
    assert_eq!(code(nsm.extend_pcr(17, &vec![0; 4096])), ErrorCode::InputTooLarge);
}

#[test]
fn documents_verify_against_the_development_root_and_carry_the_request() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let req = AttestationRequest { user_data: Some(b"user".to_vec()), nonce: Some(b"nonce".to_vec()), public_key: Some(b"key".to_vec()) };
    let bytes = nsm.attestation(req).unwrap();
    assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1 (18)");
    let opts = VerifyOptions::now().expect_pcr(0, image().pcr0).expect_nonce(b"nonce".to_vec());
    let v = Verifier::from_pem(&w.root_pem).unwrap().verify(&bytes, &opts).unwrap();
    let doc = v.document;
    assert_eq!(doc.module_id, nsm.module_id());
    assert_eq!(doc.user_data.as_deref(), Some(&b"user"[..]));
    assert_eq!(doc.public_key.as_deref(), Some(&b"key"[..]));
    assert_eq!(doc.pcrs.len(), 16, "the locked PCRs");
    assert_eq!(v.chain.len(), 3, "root, intermediate, leaf");

    // The AWS root does not vouch for simulated documents.
    assert!(Verifier::aws().verify(&bytes, &VerifyOptions::now()).is_err());
}

#[test]
fn a_pcr_locked_after_boot_appears_in_later_documents() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let value = nsm.extend_pcr(16, b"app state").unwrap();
    nsm.lock_pcr(16).unwrap();
    let bytes = nsm.attestation(AttestationRequest::default()).unwrap();
    let v = Verifier::from_pem(&w.root_pem).unwrap().verify(&bytes, &VerifyOptions::now().expect_pcr(16, value)).unwrap();
    assert_eq!(v.document.pcrs.len(), 17);
}

#[test]
fn each_document_has_a_fresh_leaf_certificate_with_the_boot_key() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let verifier = Verifier::from_pem(&w.root_pem).unwrap();
    let a = verifier.verify(&nsm.attestation(Default::default()).unwrap(), &VerifyOptions::now()).unwrap();
    let b = verifier.verify(&nsm.attestation(Default::default()).unwrap(), &VerifyOptions::now()).unwrap();
    assert_ne!(a.document.certificate, b.document.certificate, "a new certificate per document");
    // Three hours later the leaf has expired, as AWS leaves do.
    let later = VerifyOptions::at(OffsetDateTime::now_utc() + time::Duration::hours(4));
    let bytes = nsm.attestation(Default::default()).unwrap();
    let err = verifier.verify(&bytes, &later).unwrap_err();
    assert!(err.to_string().starts_with("leaf certificate"), "{err}");
}

#[test]
fn debug_mode_zeroes_pcrs_0_to_8() {
    let w = world();
    let mut config = SimConfig::new(image());
    config.parent_role_arn = Some("arn:aws:iam::123456789012:role/parent".into());
    config.parent_instance_id = Some("i-0123456789abcdef0".into());
    let normal = boot(&w, config.clone());
    assert_eq!(normal.describe_pcr(3).unwrap().value, Pcr48::ZERO.extended(b"arn:aws:iam::123456789012:role/parent"));
    assert_eq!(normal.describe_pcr(4).unwrap().value, Pcr48::ZERO.extended(b"i-0123456789abcdef0"));
    assert!(normal.module_id().starts_with("i-0123456789abcdef0-enc"));
    config.debug_mode = true;
    let debug = boot(&w, config);
    for i in 0..9 {
        assert!(debug.describe_pcr(i).unwrap().value.is_zero(), "PCR{i}");
    }
    let bytes = debug.attestation(Default::default()).unwrap();
    let v = Verifier::from_pem(&w.root_pem).unwrap().verify(&bytes, &VerifyOptions::now().expect_pcr(0, Pcr48::ZERO)).unwrap();
    assert!(v.document.pcrs[&0].is_zero());
}

#[test]
fn get_random_returns_fresh_entropy() {
    let w = world();
    let nsm = boot(&w, SimConfig::new(image()));
    let a = nsm.get_random().unwrap();
    let b = nsm.get_random().unwrap();
    assert_eq!(a.len(), RANDOM_LEN);
    assert_ne!(a, b);
}

#[test]
fn concurrent_extensions_are_all_applied() {
    let w = world();
    let nsm = std::sync::Arc::new(boot(&w, SimConfig::new(image())));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let nsm = nsm.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    nsm.extend_pcr(20, b"same").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut want = Pcr48::ZERO;
    for _ in 0..400 {
        want = want.extended(b"same");
    }
    assert_eq!(nsm.describe_pcr(20).unwrap().value, want);
}
