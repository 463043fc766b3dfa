//! `nekms privval anchor credentials`: the freshness anchor's DynamoDB
//! credentials handed to the enclave as the KMS ciphertext the
//! administrator made; only the enclave can open it.

use anyhow::bail;
use base64::Engine;
use nekms_rpc::{Client, PrivvalRequest, PrivvalResponse};

/// A ciphertext file's contents: base64 text (surrounding whitespace
/// ignored), or else the binary ciphertext itself.
pub fn ciphertext_from_file(raw: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&raw);
    base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or(raw)
}

/// Give the enclave the anchor's credentials; it answers with their access key id.
pub async fn set_credentials(client: &Client, ciphertext: Vec<u8>) -> anyhow::Result<String> {
    match client.privval(PrivvalRequest::SetAnchorCredentials { ciphertext }).await? {
        PrivvalResponse::AnchorCredentialsSet { access_key_id } => Ok(access_key_id),
        _ => bail!("the enclave answered SetAnchorCredentials with something else"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ciphertext_file_is_base64_text_or_binary() {
        assert_eq!(ciphertext_from_file(b"AQID\n".to_vec()), vec![1, 2, 3]);
        assert_eq!(ciphertext_from_file(vec![0x01, 0xff, 0x00]), vec![0x01, 0xff, 0x00]);
    }
}
