//! `nekms demo`: the main flows end to end on the development world.
//!
//! For now: the attestation foundation. It boots a simulated NSM measured
//! from an enclave image, asks it for an attestation document, verifies the
//! document against the development root, shows that tampering and the wrong
//! root are caught, and prints the key-policy conditions that would admit
//! exactly this image.

use std::path::PathBuf;

use anyhow::Context;
use nekms_attestation::{Verifier, VerifyOptions, AWS_NITRO_ROOT_G1_PEM};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, Nsm, SimConfig, SimulatedNsm};

use crate::DirArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// The enclave image to measure [default: nekms-enclave beside this binary]
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
}

fn step(n: u32, title: &str) {
    println!("\n[{n}] {title}");
}

pub fn run(a: Args) -> anyhow::Result<()> {
    println!("nekms demo: everything below runs locally (simulated NSM, development PKI); nothing touches AWS.");

    step(1, "Development world");
    let dir = a.dir.resolve()?;
    let report = dir.init()?;
    for line in report.to_string().lines() {
        println!("    {line}");
    }
    let config = dir.config()?;

    step(2, "Measure the enclave image");
    let (image, label) = crate::image::enclave_image(a.image)?;
    let measurement = Measurement::of_files(&image, None)?;
    println!("    image: {} ({label})", image.display());
    println!("    PCR0 {}\n    PCR1 {}\n    PCR2 {}", measurement.pcr0, measurement.pcr1, measurement.pcr2);

    step(3, "Boot a simulated NSM");
    let mut sim = SimConfig::new(measurement.clone());
    sim.parent_instance_id = Some(config.instance_id.clone());
    let nsm = SimulatedNsm::boot(sim, dir.document_signer()?);
    let described = nsm.describe()?;
    println!(
        "    module {}, {} PCRs, locked {:?}..={:?}",
        described.module_id,
        described.max_pcrs,
        described.locked_pcrs.first().copied().unwrap_or_default(),
        described.locked_pcrs.last().copied().unwrap_or_default()
    );
    let refused = nsm.extend_pcr(0, b"tamper").unwrap_err();
    println!("    extending PCR0 after boot is refused: {refused}");

    step(4, "Ask the NSM for an attestation document");
    let nonce = nsm.get_random()?[..16].to_vec();
    let doc = nsm.attestation(AttestationRequest {
        nonce: Some(nonce.clone()),
        user_data: Some(b"nekms demo".to_vec()),
        public_key: None,
    })?;
    let out = dir.path().join("demo-attestation.cbor");
    std::fs::write(&out, &doc).with_context(|| format!("cannot write {}", out.display()))?;
    println!("    {} bytes, COSE_Sign1/ES384, nonce {}", doc.len(), hex::encode(&nonce));
    println!("    saved to {}", out.display());

    step(5, "Verify it against the development root");
    let verifier = Verifier::from_pem(&dir.root_pem()?)?;
    let opts = VerifyOptions::now().expect_pcr(0, measurement.pcr0).expect_nonce(nonce);
    let verified = verifier.verify(&doc, &opts)?;
    println!("    OK: ES384 signature by the leaf, chain:");
    for c in &verified.chain {
        println!("        {}", c.subject);
    }
    println!("    OK: PCR0 and nonce are the expected ones");

    // Flip one bit of the signed user_data ("nekms demo" -> "oekms demo").
    let mut tampered = doc.clone();
    let at = tampered.windows(10).position(|w| w == b"nekms demo").context("user_data not found")?;
    tampered[at] ^= 0x01;
    let why = verifier.verify(&tampered, &opts).map(|_| ()).unwrap_err();
    println!("    user_data altered  -> refused: {why}");
    let why = Verifier::from_pem(AWS_NITRO_ROOT_G1_PEM)?.verify(&doc, &opts).map(|_| ()).unwrap_err();
    println!("    against AWS's root -> refused: {why}");

    step(6, "Key policy condition that admits exactly this enclave image");
    let condition = serde_json::json!({
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": measurement.pcr0.to_hex(),
            "kms:RecipientAttestation:PCR1": measurement.pcr1.to_hex(),
            "kms:RecipientAttestation:PCR2": measurement.pcr2.to_hex(),
        }
    });
    for line in serde_json::to_string_pretty(&condition)?.lines() {
        println!("    {line}");
    }

    println!("\nDone. Look again with:");
    println!("    nekms attest verify {} --root {}", out.display(), dir.root_cert_path().display());
    println!("    nekms pcr sim {}", image.display());
    Ok(())
}
