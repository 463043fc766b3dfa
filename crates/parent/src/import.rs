//! The administrator's side of a key import: a KMS client with the
//! administrator's credentials, and KMS Encrypt of a private key under the
//! custody key with the import context that binds it to one record name,
//! spec and usage. The secret goes to KMS and nowhere else; the enclave
//! opens the ciphertext at import.

use std::collections::BTreeMap;

use anyhow::Context;
use nekms_protocol::context::Usage;
use nekms_protocol::KeySpec;

/// A KMS client with the administrator's credentials (a profile, or
/// aws-config's default chain) and endpoint.
pub async fn admin_kms(endpoint: Option<&str>, profile: Option<&str>) -> aws_sdk_kms::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_kms::config::Builder::from(&shared);
    if let Some(e) = endpoint {
        config = config.endpoint_url(e);
    }
    aws_sdk_kms::Client::from_conf(config.build())
}

/// KMS Encrypt of `secret` for import as `name` (the administrator's side).
pub async fn encrypt_for_import(
    client: &aws_sdk_kms::Client,
    name: &str,
    spec: KeySpec,
    kms_key: &str,
    secret: &[u8],
    extra: &BTreeMap<String, String>,
    usage: Usage,
) -> anyhow::Result<Vec<u8>> {
    usage.check_spec(spec).map_err(anyhow::Error::msg)?;
    let context = nekms_protocol::context::import_context_with_usage(name, spec, extra, usage)?;
    let mut req = client.encrypt().key_id(kms_key).plaintext(aws_sdk_kms::primitives::Blob::new(secret));
    for (k, v) in &context {
        req = req.encryption_context(k, v);
    }
    let out =
        req.send().await.map_err(|e| anyhow::anyhow!("KMS Encrypt under {kms_key}: {}", aws_sdk_kms::error::DisplayErrorContext(&e)))?;
    Ok(out.ciphertext_blob().context("KMS Encrypt gave no CiphertextBlob")?.as_ref().to_vec())
}
