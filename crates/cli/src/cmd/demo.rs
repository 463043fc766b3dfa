//! `nekms demo`: the main flows end to end on the development world.
//!
//! It boots a simulated NSM measured from an enclave image, asks it for an
//! attestation document, verifies the document against the development root,
//! shows that tampering and the wrong root are caught, prints the key-policy
//! conditions that admit exactly this image, and then has the local KMS
//! release a secret to that enclave (and refuse everyone else). Last, the
//! kmstool flow: the enclave, its proxy and the local KMS's HTTPS endpoint
//! wired over Unix sockets, a kmstool client asking the enclave to decrypt;
//! and key custody ([`super::demo_keys`]): two enclaves, the lock-out seed,
//! a tmkms key as the validator signer's consensus key.

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
    let local = rt.block_on(crate::kms_client::InProcessKms::start(&dir, &dir.path().join("kms"), true))?;
    rt.block_on(kms_flow(&dir, &local, &nsm, &measurement))?;

    step(8, "kmstool: the enclave decrypts through its proxy, over TLS to the local KMS");
    rt.block_on(kmstool_flow(&dir, &local, &measurement))?;

    let store = nekms_store::SqliteStore::open(&dir.path().join("demo-keys/keys.db"))?;
    step(9, "Two enclaves: enclave 1 generates a key, the parent stores it, enclave 2 signs");
    rt.block_on(super::demo_keys::two_enclaves(&dir, &local, &store))?;

    step(10, "Lock-out: a seed only the enclave can decrypt signs a transaction; a tmkms key becomes a validator signer's");
    rt.block_on(super::demo_keys::lockout_and_tmkms(&dir, &local, &image, &store))?;

    println!("\nDone. Look again with:");
    println!("    nekms attest verify {} --root {}", out.display(), dir.root_cert_path().display());
    println!("    nekms pcr sim {}", image.display());
    println!("    nekms dev kms audit --dir {}", dir.path().display());
    println!("    nekms key list --store sqlite:{}", dir.path().join("demo-keys/keys.db").display());
    Ok(())
}

fn refusal(v: &serde_json::Value) -> String {
    v["__type"].as_str().unwrap_or("?").to_owned()
}

async fn kms_flow(
    dir: &nekms_devworld::DevDir,
    local: &crate::kms_client::InProcessKms,
    nsm: &SimulatedNsm,
    measurement: &Measurement,
) -> anyhow::Result<()> {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use serde_json::json;

    println!("    local KMS on http://{} (state and audit log in {})", local.addr, dir.path().join("kms").display());
    let mut instance = crate::kms_client::Conn::open(&local.target(dir, "instance")?).await?;
    let mut root = crate::kms_client::Conn::open(&local.target(dir, "root")?).await?;
    let (arn, blob) = crate::enclave_path::enclave_only_secret(
        dir,
        local,
        &measurement.pcr0.to_hex(),
        "nekms demo: decrypt only in the enclave",
        b"correct horse battery staple",
    )
    .await?;
    println!("    admin created {arn}");
    println!("      with a policy that has no root statement: Decrypt only for role/nekms-instance with ImageSha384 = this PCR0");
    println!("    the instance encrypted a secret: {} bytes of ciphertext", B64.decode(&blob)?.len());

    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob})).await?;
    println!("    instance decrypts without attestation   -> refused: {}", refusal(&v));
    println!("        ({})", v["message"].as_str().unwrap_or(""));
    let recipient_key = nekms_cms::RecipientKey::generate()?;
    let other = SimulatedNsm::boot(SimConfig::new(Measurement::of_image(b"some other enclave image", None)), dir.document_signer()?);
    let doc = |nsm: &SimulatedNsm| -> anyhow::Result<serde_json::Value> {
        let d = nsm.attestation(AttestationRequest { public_key: Some(recipient_key.public_key_der()?), ..Default::default() })?;
        Ok(json!({"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": B64.encode(d)}))
        // (each request carries a fresh document, as a real enclave does)
    };
    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob, "Recipient": doc(&other)?})).await?;
    println!("    an enclave with another image (PCR0)    -> refused: {}", refusal(&v));
    let (_, v) = root.call_raw("Decrypt", &json!({"CiphertextBlob": blob, "Recipient": doc(nsm)?})).await?;
    println!("    the account root, even with a document  -> refused: {}", refusal(&v));
    let (status, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob, "Recipient": doc(nsm)?})).await?;
    anyhow::ensure!(status == 200, "the enclave's decrypt failed: {}", refusal(&v));
    anyhow::ensure!(v.get("Plaintext").is_none(), "KMS returned plaintext to a Recipient request");
    let sealed = B64.decode(v["CiphertextForRecipient"].as_str().unwrap_or(""))?;
    println!("    this enclave image                       -> allowed: {} bytes of CiphertextForRecipient, no Plaintext", sealed.len());
    let secret = recipient_key.open(&sealed)?;
    println!("    inside the enclave, its RSA key opens it: {:?}", String::from_utf8_lossy(&secret));
    Ok(())
}

async fn kmstool_flow(
    dir: &nekms_devworld::DevDir,
    local: &crate::kms_client::InProcessKms,
    measurement: &Measurement,
) -> anyhow::Result<()> {
    use std::sync::Arc;

    use serde_json::json;

    // The enclave: the same image's PCRs, its own RSA key, KMS only through the proxy with TLS to the dev CA.
    let mut sim = SimConfig::new(measurement.clone());
    sim.parent_instance_id = Some(dir.config()?.instance_id);
    let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::boot(sim, dir.document_signer()?));
    let path = crate::enclave_path::EnclavePath::start(dir, local, nsm, &dir.path().join("demo")).await?;
    println!("    proxy        {} -> 127.0.0.1:{} (allowlisted)", path.proxy, local.https_addr.port());
    println!("    enclave      kmstool protocol on {}, KMS {} through the proxy", path.kmstool, path.endpoint);

    let (arn, ciphertext) =
        crate::enclave_path::enclave_only_secret(dir, local, &measurement.pcr0.to_hex(), "nekms demo: kmstool", b"Hello, KMS!").await?;
    println!("    the instance encrypted \"Hello, KMS!\" under {arn}");
    let mut instance = crate::kms_client::Conn::open(&local.target(dir, "instance")?).await?;
    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": ciphertext})).await?;
    println!("    the instance's own Decrypt               -> refused: {}", refusal(&v));

    let p = dir.principals()?.into_iter().find(|p| p.name == "instance").context("no instance principal")?;
    let mut client = crate::cmd::kmstool::KmstoolClient::connect(&path.kmstool).await?;
    client.set_client(&p.access_key_id, &p.secret_access_key, p.session_token.as_deref(), Some("us-east-1")).await?;
    println!("    kmstool client: SetClient with the instance role's credentials -> Ok");
    let plaintext = client.decrypt(&ciphertext, &Default::default()).await?;
    anyhow::ensure!(&plaintext[..] == b"Hello, KMS!", "the enclave returned something else");
    println!("    kmstool client: Decrypt through the enclave -> {:?}", String::from_utf8_lossy(&plaintext));
    Ok(())
}
