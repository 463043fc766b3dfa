//! kmstool's protocol from the client's side: JSON objects, each followed
//! by a zero byte (`nekms kmstool decrypt`, the demo, `nekms bench kmstool`).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_transport::frame::{delimited, FrameError};
use nekms_transport::{Address, Stream};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// A connection speaking kmstool's protocol: JSON objects, each followed by a zero byte.
pub struct KmstoolClient {
    stream: Stream,
    buf: Zeroizing<Vec<u8>>,
}

impl KmstoolClient {
    pub async fn connect(address: &Address) -> anyhow::Result<KmstoolClient> {
        let stream =
            nekms_transport::connect(address).await.with_context(|| format!("connecting to the enclave's kmstool port at {address}"))?;
        Ok(KmstoolClient { stream, buf: Zeroizing::new(Vec::new()) })
    }

    /// Send one command, read its reply; an `Error` status is an error carrying its message.
    pub async fn command(&mut self, command: &Value) -> anyhow::Result<Option<String>> {
        delimited::write_message(&mut self.stream, &Zeroizing::new(serde_json::to_vec(command)?)).await?;
        let reply = match delimited::read_message(&mut self.stream, &mut self.buf, 1 << 20).await {
            Ok(Some(reply)) => reply,
            Ok(None) => bail!("the enclave closed the connection without replying"),
            Err(FrameError::TooLarge { .. }) => bail!("the enclave's reply exceeds 1 MiB without a zero byte"),
            Err(e) => return Err(e.into()),
        };
        let v: Value = serde_json::from_slice(&reply).context("the enclave's reply is not JSON")?;
        let message = v.get("Message").and_then(Value::as_str).map(str::to_owned);
        match v.get("Status").and_then(Value::as_str) {
            Some("Ok") => Ok(message),
            Some("Error") => bail!("the enclave answered Error: {}", message.unwrap_or_default()),
            _ => bail!("the enclave's reply has no Status"),
        }
    }

    pub async fn set_client(&mut self, access_key_id: &str, secret: &str, token: Option<&str>, region: Option<&str>) -> anyhow::Result<()> {
        let mut cmd = json!({"Operation": "SetClient", "AwsAccessKeyId": access_key_id, "AwsSecretAccessKey": secret});
        if let Some(t) = token {
            cmd["AwsSessionToken"] = t.into();
        }
        if let Some(r) = region {
            cmd["AwsRegion"] = r.into();
        }
        let outcome = self.command(&cmd).await;
        zeroize_json(cmd);
        outcome.map(|_| ())
    }

    pub async fn decrypt(&mut self, ciphertext_b64: &str, context: &BTreeMap<String, String>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mut cmd = json!({"Operation": "Decrypt", "Ciphertext": ciphertext_b64});
        if !context.is_empty() {
            cmd["EncryptionContext"] = json!(context);
        }
        let message = Zeroizing::new(self.command(&cmd).await?.context("the enclave's Decrypt reply has no Message")?);
        Ok(Zeroizing::new(B64.decode(message.trim()).context("the enclave's plaintext is not base64")?))
    }
}

/// Wipe the strings of a command that held credentials.
fn zeroize_json(v: Value) {
    if let Value::Object(map) = v {
        for (_, val) in map {
            if let Value::String(s) = val {
                drop(Zeroizing::new(s));
            }
        }
    }
}
