//! kmstool's protocol, exactly: JSON objects separated by a zero byte.
//!
//! Commands: `{"Operation": "SetClient", "AwsAccessKeyId", "AwsSecretAccessKey",
//! "AwsSessionToken"?, "AwsRegion"?}` and `{"Operation": "Decrypt",
//! "Ciphertext": base64, "EncryptionContext"?: {..}}`. Every command gets one
//! reply `{"Status": "Ok"|"Error", "Message"?}`; a Decrypt's `Message` is the
//! plaintext, base64-encoded. The region: the enclave's own setting if it has
//! one, else the client's `AwsRegion`, else `us-east-1`.
//!
//! A message longer than the limit without a separator gets an `Error` reply
//! and the connection is closed; invalid JSON and unknown operations get an
//! `Error` reply and the connection stays open. One client's input never
//! affects another's.
//!
//! SetClient's credentials belong to that connection: its Decrypts use them,
//! and nothing else does. They never replace the enclave's own credentials
//! (the RPC's SetCredentials, which custody uses), so another local process
//! that reaches this port cannot disturb custody, and a Decrypt on a
//! connection that has not sent SetClient is an `Error`.
//!
//! Decrypt follows the enclave's parent-decrypt rules ([`crate::trust`]): a
//! reserved context key (any casing), a key given twice, a custody KMS key,
//! or parent decryption turned off gets an `Error` naming the rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_kms_client::KmsSession;
use nekms_transport::frame::{delimited, FrameError};
use nekms_transport::{Listener, Stream};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::Enclave;

fn error(message: impl Into<String>) -> Value {
    json!({"Status": "Error", "Message": message.into()})
}

/// Serve kmstool clients on `listener` until the task is dropped.
pub async fn serve(listener: Listener, enclave: Arc<Enclave>, max_message: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let enclave = enclave.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &enclave, max_message).await {
                        tracing::warn!(%peer, "kmstool client: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("kmstool accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn reply(stream: &mut Stream, v: &Value) -> std::io::Result<()> {
    delimited::write_message(stream, &serde_json::to_vec(v).expect("JSON")).await
}

async fn connection(mut stream: Stream, enclave: &Enclave, max_message: usize) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut session = None;
    loop {
        match delimited::read_message(&mut stream, &mut buf, max_message).await {
            Ok(Some(message)) => {
                let answer = handle(&message, enclave, &mut session).await;
                reply(&mut stream, &answer).await?;
            }
            Ok(None) => return Ok(()),
            Err(FrameError::TooLarge { .. }) => {
                reply(&mut stream, &error(format!("message exceeds {max_message} bytes without a zero-byte separator"))).await?;
                return Ok(());
            }
            Err(FrameError::Io(e)) => return Err(e),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

/// A command, parsed.
pub enum Command {
    SetClient {
        access_key_id: String,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        region: Option<String>,
    },
    Decrypt {
        ciphertext: Vec<u8>,
        context: BTreeMap<String, String>,
    },
}

/// Parse one message (without its zero byte); the error is the reply's Message.
pub fn parse(message: &[u8]) -> Result<Command, String> {
    let v: Value = match serde_json::from_slice(message) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err("the message must be a JSON object".into()),
        Err(e) => return Err(format!("the message is not valid JSON: {e}")),
    };
    let field = |name: &str| v.get(name).and_then(Value::as_str);
    match field("Operation") {
        Some("SetClient") => {
            let (Some(id), Some(secret)) = (field("AwsAccessKeyId"), field("AwsSecretAccessKey")) else {
                return Err("SetClient requires AwsAccessKeyId and AwsSecretAccessKey".into());
            };
            Ok(Command::SetClient {
                access_key_id: id.to_owned(),
                secret_access_key: Zeroizing::new(secret.to_owned()),
                session_token: field("AwsSessionToken").map(|t| Zeroizing::new(t.to_owned())),
                region: field("AwsRegion").map(str::to_owned),
            })
        }
        Some("Decrypt") => {
            let Some(text) = field("Ciphertext") else { return Err("Decrypt requires Ciphertext (base64)".into()) };
            let Ok(ciphertext) = B64.decode(text.trim()) else { return Err("Ciphertext is not valid base64".into()) };
            let mut context = BTreeMap::new();
            match v.get("EncryptionContext") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (k, val) in m {
                        match val.as_str() {
                            Some(s) => {
                                context.insert(k.clone(), s.to_owned());
                            }
                            None => return Err(format!("EncryptionContext value of {k:?} must be a string")),
                        }
                    }
                }
                Some(_) => return Err("EncryptionContext must be an object of strings".into()),
            }
            // JSON objects keep the last of a repeated key; refuse instead.
            #[derive(serde::Deserialize)]
            struct Strict {
                #[serde(rename = "EncryptionContext", default, deserialize_with = "nekms_keys::context::unique_map")]
                _context: BTreeMap<String, String>,
            }
            if let Err(e) = serde_json::from_slice::<Strict>(message) {
                return Err(e.to_string());
            }
            Ok(Command::Decrypt { ciphertext, context })
        }
        Some(other) => Err(format!("unknown Operation {other:?}; kmstool knows SetClient and Decrypt")),
        None => Err("the message has no Operation".into()),
    }
}

/// One command -> one reply; `session` holds the connection's credentials.
pub async fn handle(message: &[u8], enclave: &Enclave, session: &mut Option<KmsSession>) -> Value {
    match parse(message) {
        Err(e) => error(e),
        Ok(Command::SetClient { access_key_id, secret_access_key, session_token, region }) => {
            if let Some(Err(e)) = region.as_deref().map(crate::check_region) {
                return error(format!("AwsRegion: {e}"));
            }
            *session = Some(enclave.kmstool_session(access_key_id, secret_access_key, session_token, region));
            json!({"Status": "Ok"})
        }
        Ok(Command::Decrypt { .. }) if session.is_none() => {
            error("no credentials on this connection: send SetClient first (kmstool's credentials belong to the connection that set them)")
        }
        Ok(Command::Decrypt { ciphertext, context }) => {
            let outcome = enclave.parent_decrypt_as(session.as_ref(), &ciphertext, &context, None).await;
            let d = crate::audit::Decision {
                channel: "kmstool",
                op: "Decrypt".into(),
                payload_sha256: Some(crate::audit::sha256_hex(&ciphertext)),
                ..Default::default()
            };
            enclave.audit.decision(d, &outcome);
            match outcome {
                Ok(plaintext) => json!({"Status": "Ok", "Message": Zeroizing::new(B64.encode(&plaintext[..])).as_str()}),
                Err(e) => error(e.message),
            }
        }
    }
}
