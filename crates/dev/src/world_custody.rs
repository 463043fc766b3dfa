//! The development world's own custody key, kept across runs.
//!
//! `nekms dev init` (or the first `nekms dev up`) creates one custody key in
//! the world's local KMS (DEV/kms) with the final policy for signer trust:
//! only images signed by the world's image-signing key (DEV/image-signer.*,
//! PCR8) may decrypt or generate data keys. PCR8 is known before the key
//! exists, so nothing is circular and the key gets its final policy at
//! creation. Every later `dev up` checks the key and its policy again and
//! pins it, with `custody-trust = "pcr8"`: a restart, a rebuilt
//! `nekms-enclave` or a changed configuration (each a new PCR0) keeps every
//! key and token. The key is recorded in DEV/custody.toml.

use anyhow::Context;
use nekms_attestation::image_signature::pcr8_of_certificate_der;
use nekms_attestation::Pcr48;
use nekms_devworld::DevDir;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key_policy::{self, ImageTrust, Roles};
use crate::kms::{Conn, Target};

/// DEV/custody.toml.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CustodyFile {
    /// The custody key's ARN in the world's local KMS.
    pub kms_key: String,
    /// How its policy trusts images: "pcr8".
    pub trust: String,
    /// The signer it trusts.
    pub pcr8: String,
}

/// The world's custody key, checked.
#[derive(Clone, Debug)]
pub struct WorldCustody {
    pub arn: String,
    pub pcr8: Pcr48,
    /// Whether this call created it.
    pub created: bool,
}

/// PCR8 of the world's image signer.
pub fn signer_pcr8(dev: &DevDir) -> anyhow::Result<Pcr48> {
    let signer = dev.image_signer().with_context(|| format!("{}: the development image signer", dev.path().display()))?;
    Ok(pcr8_of_certificate_der(&signer.cert_der()?))
}

/// The custody policy for the world's signer.
pub fn policy(dev: &DevDir, pcr8: &Pcr48) -> anyhow::Result<serde_json::Value> {
    let roles = Roles::standard(&dev.config()?.account_id);
    Ok(key_policy::custody_for(&roles, &ImageTrust { pcr0: Vec::new(), pcr8: vec![pcr8.to_hex()] }))
}

/// Read DEV/custody.toml, if there is one.
pub fn read(dev: &DevDir) -> anyhow::Result<Option<CustodyFile>> {
    let path = dev.custody_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(toml::from_str(&text).with_context(|| path.display().to_string())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The world's custody key through the administrator's `admin` target:
/// checked if DEV/custody.toml names one, else (or with `new`) created.
pub async fn ensure(dev: &DevDir, admin: &Target, new: bool) -> anyhow::Result<WorldCustody> {
    let pcr8 = signer_pcr8(dev)?;
    let policy = policy(dev, &pcr8)?;
    let mut conn = Conn::open(admin).await?;
    let path = dev.custody_path();
    if let (Some(file), false) = (read(dev)?, new) {
        if file.trust != "pcr8" || file.pcr8 != pcr8.to_hex() {
            anyhow::bail!(
                "{}: the custody key trusts the image signer PCR8 {}, but {} is another (PCR8 {pcr8}); records made under the key open only in \
                 images that signer signed. Put the signer back, or make a new key with `nekms dev init --new-custody-key` (old records stay unusable)",
                path.display(),
                file.pcr8,
                dev.image_signer_paths().1.display()
            );
        }
        check(&mut conn, dev, &file.kms_key, &policy).await?;
        return Ok(WorldCustody { arn: file.kms_key, pcr8, created: false });
    }
    let key = conn
        .call(
            "CreateKey",
            &json!({"Description": "nekms development world: custody (images signed by the development image signer)",
                    "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}),
        )
        .await?;
    let arn = key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned();
    crate::custody::check_custody_key(&mut conn, &arn, &policy).await?;
    let file = CustodyFile { kms_key: arn.clone(), trust: "pcr8".into(), pcr8: pcr8.to_hex() };
    let text = format!(
        "# The development world's custody key (nekms dev init). Records made under it open in every image\n\
         # the development image signer signs. Removing this file makes the next dev init/up create another.\n{}",
        toml::to_string(&file)?
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
    Ok(WorldCustody { arn, pcr8, created: true })
}

/// The recorded key is still there, enabled, and exactly the custody key
/// for the signer.
async fn check(conn: &mut Conn, dev: &DevDir, arn: &str, policy: &serde_json::Value) -> anyhow::Result<()> {
    let gone = || {
        format!(
            "the development custody key {arn} ({}) is not usable in the local KMS at {} (removed, disabled or pending deletion?); \
             records made under it cannot be opened again. Restore {}, or make a new key with `nekms dev init --new-custody-key` \
             (old records stay unusable)",
            dev.custody_path().display(),
            dev.kms_data().display(),
            dev.kms_data().display()
        )
    };
    let (status, described) = conn.call_raw("DescribeKey", &json!({"KeyId": arn})).await?;
    if status != 200 || described["KeyMetadata"]["KeyState"] != "Enabled" {
        anyhow::bail!("{}", gone());
    }
    crate::custody::check_custody_key(conn, arn, policy).await.with_context(|| format!("{}", dev.custody_path().display()))
}
