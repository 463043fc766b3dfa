//! The demo's steps 7 and 8 on the local KMS: a secret released only to
//! one enclave image (and refused to everyone else), then kmstool's flow
//! through an in-process enclave and its proxy.

use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_devworld::DevDir;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, Nsm, SimConfig, SimulatedNsm};
use serde_json::json;

use crate::custody::enclave_only_secret;
use crate::kms::{Conn, InProcessKms};
use crate::kmstool_client::KmstoolClient;
use crate::world::EnclavePath;

fn refusal(v: &serde_json::Value) -> String {
    v["__type"].as_str().unwrap_or("?").to_owned()
}

pub(super) async fn kms_flow(dir: &DevDir, local: &InProcessKms, nsm: &SimulatedNsm, measurement: &Measurement) -> anyhow::Result<()> {
    println!("    local KMS on http://{} (state and audit log in {})", local.addr, dir.path().join("kms").display());
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let mut root = Conn::open(&local.target(dir, "root")?).await?;
    let (arn, blob) = enclave_only_secret(
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

pub(super) async fn kmstool_flow(dir: &DevDir, local: &InProcessKms, measurement: &Measurement) -> anyhow::Result<()> {
    // The enclave: the same image's PCRs, its own RSA key, KMS only through the proxy with TLS to the dev CA.
    let mut sim = SimConfig::new(measurement.clone());
    sim.parent_instance_id = Some(dir.config()?.instance_id);
    let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::boot(sim, dir.document_signer()?));
    let path = EnclavePath::start(dir, local, nsm, &dir.path().join("demo")).await?;
    println!("    proxy        {} -> 127.0.0.1:{} (allowlisted)", path.proxy, local.https_addr.port());
    println!("    enclave      kmstool protocol on {}, KMS {} through the proxy", path.kmstool, path.endpoint);

    let (arn, ciphertext) = enclave_only_secret(dir, local, &measurement.pcr0.to_hex(), "nekms demo: kmstool", b"Hello, KMS!").await?;
    println!("    the instance encrypted \"Hello, KMS!\" under {arn}");
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": ciphertext})).await?;
    println!("    the instance's own Decrypt               -> refused: {}", refusal(&v));

    let p = dir.principals()?.into_iter().find(|p| p.name == "instance").context("no instance principal")?;
    let mut client = KmstoolClient::connect(&path.kmstool).await?;
    client.set_client(&p.access_key_id, &p.secret_access_key, p.session_token.as_deref(), Some("us-east-1")).await?;
    println!("    kmstool client: SetClient with the instance role's credentials -> Ok");
    let plaintext = client.decrypt(&ciphertext, &Default::default()).await?;
    anyhow::ensure!(&plaintext[..] == b"Hello, KMS!", "the enclave returned something else");
    println!("    kmstool client: Decrypt through the enclave -> {:?}", String::from_utf8_lossy(&plaintext));
    Ok(())
}
