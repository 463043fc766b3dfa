//! Cost of making and checking an attestation document, against the one
//! cryptographic operation at its core, measured in the same run:
//!
//! - generation (fresh leaf certificate + CBOR + ES384 signature) vs a bare
//!   ES384 signature over the same payload;
//! - verification (decode, 3-certificate chain, validity, COSE signature) vs
//!   a bare ES384 verification.
//!
//! `cargo bench -p nekms-attestation` prints criterion's figures, then the
//! ratios. Under `cargo test` each bench runs once and no ratio is printed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING};
use criterion::Criterion;
use nekms_attestation::pki::{self, DocumentFields, DocumentSigner};
use nekms_attestation::{CoseSign1, Pcr48, Verifier, VerifyOptions};
use time::OffsetDateTime;

struct Setup {
    signer: DocumentSigner,
    verifier: Verifier,
    fields: DocumentFields,
    doc: Vec<u8>,
    bare_key: EcdsaKeyPair,
    payload: Vec<u8>,
    bare_sig: Vec<u8>,
}

fn setup() -> Setup {
    let now = OffsetDateTime::now_utc();
    let root = pki::generate_root(now).unwrap();
    let inter = pki::generate_intermediate(&root, now).unwrap();
    let signer = DocumentSigner::new(&root.cert_pem, &inter).unwrap();
    let fields = DocumentFields {
        module_id: "i-00000000000000000-enc0000000000000000".into(),
        pcrs: (0..16).map(|i| (i, Pcr48::ZERO.extended(&[i]))).collect(),
        public_key: Some(vec![0x30; 294]),
        user_data: Some(vec![1; 64]),
        nonce: Some(vec![2; 32]),
    };
    let doc = signer.sign(fields.clone(), now).unwrap();
    let payload = CoseSign1::decode(&doc).unwrap().to_be_signed();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let bare_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let bare_sig = bare_key.sign(&rng, &payload).unwrap().as_ref().to_vec();
    Setup { signer, verifier: Verifier::from_pem(&root.cert_pem).unwrap(), fields, doc, bare_key, payload, bare_sig }
}

fn generate(s: &Setup) -> Vec<u8> {
    s.signer.sign(s.fields.clone(), OffsetDateTime::now_utc()).unwrap()
}
fn bare_sign(s: &Setup) -> Vec<u8> {
    s.bare_key.sign(&SystemRandom::new(), &s.payload).unwrap().as_ref().to_vec()
}
fn verify(s: &Setup) {
    s.verifier.verify(&s.doc, &VerifyOptions::now()).unwrap();
}
fn bare_verify(s: &Setup) {
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, s.bare_key.public_key().as_ref()).verify(&s.payload, &s.bare_sig).unwrap();
}

/// Median time per call over several batches.
fn per_call(mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..20 {
                f();
            }
            start.elapsed() / 20
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let s = setup();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("attestation");
    g.bench_function("generate document", |b| b.iter(|| black_box(generate(&s))));
    g.bench_function("reference: bare ES384 sign", |b| b.iter(|| black_box(bare_sign(&s))));
    g.bench_function("verify document", |b| b.iter(|| verify(black_box(&s))));
    g.bench_function("reference: bare ES384 verify", |b| b.iter(|| bare_verify(black_box(&s))));
    g.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let (gen, sign) = (per_call(|| drop(generate(&s))), per_call(|| drop(bare_sign(&s))));
        let (ver, bare) = (per_call(|| verify(&s)), per_call(|| bare_verify(&s)));
        println!("\nratios (same run, median of 15 batches of 20):");
        println!("  generate document {gen:>10.1?}  vs bare ES384 sign   {sign:>10.1?}  = {:.2}x", gen.as_secs_f64() / sign.as_secs_f64());
        println!("  verify document   {ver:>10.1?}  vs bare ES384 verify {bare:>10.1?}  = {:.2}x", ver.as_secs_f64() / bare.as_secs_f64());
    }
}
