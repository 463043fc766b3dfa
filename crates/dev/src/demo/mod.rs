//! `nekms demo`: the main flows end to end on the development world.
//!
//! It boots a simulated NSM measured from an enclave image, asks it for an
//! attestation document, verifies the document against the development root,
//! shows that tampering and the wrong root are caught, prints the key-policy
//! conditions that admit exactly this image, and then has the local KMS
//! release a secret to that enclave (and refuse everyone else). Last, the
//! kmstool flow: the enclave, its proxy and the local KMS's HTTPS endpoint
//! wired over Unix sockets, a kmstool client asking the enclave to decrypt;
//! and key custody: two enclaves, the lock-out seed, a tmkms key as the
//! validator signer's consensus key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nekms_attestation::{Verifier, VerifyOptions, AWS_NITRO_ROOT_G1_PEM};
use nekms_devworld::DevDir;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, Nsm, SimConfig, SimulatedNsm};

mod custody;
mod kms;
mod privval;

fn step(n: u32, title: &str) {
    println!("\n[{n}] {title}");
}

/// Run the demo on the development directory `dir` (see
/// [`DevDir::resolve`]), measuring `image` (see
/// [`crate::image::enclave_image`]); it narrates on standard output.
pub fn run(dir: Option<&Path>, image: Option<PathBuf>) -> anyhow::Result<()> {
    println!("nekms demo: everything below runs locally (simulated NSM, development PKI); nothing touches AWS.");

    step(1, "Development world");
    let dir = DevDir::resolve(dir)?;
    let report = dir.init()?;
    for line in report.to_string().lines() {
        println!("    {line}");
    }
    let config = dir.config()?;

    step(2, "Measure the enclave image");
    let (image, label) = crate::image::enclave_image(image)?;
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
    let doc =
        nsm.attestation(AttestationRequest { nonce: Some(nonce.clone()), user_data: Some(b"nekms demo".to_vec()), public_key: None })?;
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

    step(7, "The local KMS releases a secret only to this enclave image");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let local = rt.block_on(crate::kms::InProcessKms::start(&dir, &dir.path().join("kms"), true))?;
    rt.block_on(kms::kms_flow(&dir, &local, &nsm, &measurement))?;

    step(8, "kmstool: the enclave decrypts through its proxy, over TLS to the local KMS");
    rt.block_on(kms::kmstool_flow(&dir, &local, &measurement))?;

    let store = nekms_store::SqliteStore::open(&dir.path().join("demo-keys/keys.db"))?;
    step(9, "Two enclaves: enclave 1 generates a key, the parent stores it, enclave 2 signs");
    rt.block_on(custody::two_enclaves(&dir, &local, &store))?;

    step(10, "Lock-out: a seed only the enclave can decrypt signs a transaction; a tmkms key becomes a validator signer's");
    rt.block_on(custody::lockout_and_tmkms(&dir, &local, &image, &store))?;

    println!("\nDone. Look again with:");
    println!("    nekms attest verify {} --root {}", out.display(), dir.root_cert_path().display());
    println!("    nekms pcr sim {}", image.display());
    println!("    nekms dev kms audit --dir {}", dir.path().display());
    println!("    nekms key list --store sqlite:{}", dir.path().join("demo-keys/keys.db").display());
    Ok(())
}
