//! Ciphertexts kept in Secrets Manager (the lock-out secret's home).

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The KMS ciphertext a Secrets Manager secret holds (SecretBinary, or
/// SecretString as base64), from `endpoint` when given (moto).
pub async fn ciphertext(id: &str, endpoint: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let region = aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region).load().await;
    let mut config = aws_sdk_secretsmanager::config::Builder::from(&shared);
    if let Some(e) = endpoint {
        config = config.endpoint_url(e);
    }
    let client = aws_sdk_secretsmanager::Client::from_conf(config.build());
    let out =
        client.get_secret_value().secret_id(id).send().await.map_err(|e| {
            anyhow::anyhow!("Secrets Manager GetSecretValue {id}: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e))
        })?;
    if let Some(b) = out.secret_binary() {
        return Ok(b.as_ref().to_vec());
    }
    let s = out.secret_string().with_context(|| format!("secret {id} has neither SecretBinary nor SecretString"))?;
    // The decoder's error would quote the offending byte: say only what was wrong.
    B64.decode(s.trim()).map_err(|_| anyhow::anyhow!("secret {id}: SecretString is not base64 of a KMS ciphertext"))
}
