//! Signing: `POST /v1/keys/{name}/sign` (a message, a digest or EIP-712
//! typed data) and `POST /v1/keys/{name}/eth/transaction`. Records come from
//! a cache of a few seconds in front of the store.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::{KeyRecord, Payload, Scheme};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{allowed, hex_field};
use crate::access::Caller;
use crate::errors::{ApiError, JsonBody};
use crate::state::{AppState, Shared};

/// The record for signing, from the state's short-lived cache (a deleted key stops signing within seconds).
async fn signing_record(state: &AppState, name: &str) -> Result<Arc<KeyRecord>, ApiError> {
    state
        .cached_record(name)
        .await?
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", format!("no key named {name:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignBody {
    message: Option<String>,
    message_hex: Option<String>,
    message_base64: Option<String>,
    digest: Option<String>,
    typed_data: Option<Value>,
    scheme: Option<String>,
}

async fn sign_with(state: &AppState, name: &str, scheme: Option<Scheme>, payload: Payload) -> Result<nekms_keys::Signature, ApiError> {
    let r = signing_record(state, name).await?;
    if let Some(s) = scheme {
        s.check_spec(r.spec).map_err(|e| ApiError::bad(e.to_string()))?;
    }
    Ok(state
        .enclave
        .call(|c| {
            let (r, p) = ((*r).clone(), payload.clone());
            async move { c.sign(r, scheme, p).await }
        })
        .await?)
}

pub(super) async fn sign(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<SignBody>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    let mut scheme = b.scheme.as_deref().map(|s| s.parse::<Scheme>().map_err(|e| ApiError::bad(e.to_string()))).transpose()?;
    let given = [b.message.is_some(), b.message_hex.is_some(), b.message_base64.is_some(), b.digest.is_some(), b.typed_data.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::bad("give exactly one of message, message_hex, message_base64, digest, typed_data"));
    }
    let payload = if let Some(m) = b.message {
        Payload::Message(m.into_bytes())
    } else if let Some(h) = b.message_hex {
        Payload::Message(hex_field("message_hex", &h)?)
    } else if let Some(m) = b.message_base64 {
        Payload::Message(B64.decode(m).map_err(|_| ApiError::bad("message_base64 must be base64"))?)
    } else if let Some(d) = b.digest {
        Payload::Digest(hex_field("digest", &d)?)
    } else {
        scheme = Some(scheme.unwrap_or(Scheme::Eip712));
        Payload::TypedData(b.typed_data.expect("one payload is given").to_string())
    };
    let s = sign_with(&state, &name, scheme, payload).await?;
    Ok(Json(serde_json::to_value(&s).expect("a signature serializes")))
}

pub(super) async fn sign_transaction(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(tx): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    if !tx.is_object() {
        return Err(ApiError::bad("the body is a transaction object"));
    }
    let s = sign_with(&state, &name, Some(Scheme::EthTransaction), Payload::Transaction(tx.to_string())).await?;
    let raw = s.raw_transaction.unwrap_or_default();
    let hash = s.transaction_hash.unwrap_or_default();
    Ok(Json(json!({"raw_transaction": format!("0x{}", hex::encode(raw)), "transaction_hash": format!("0x{}", hex::encode(hash)),
                   "signature": hex::encode(&s.signature)})))
}
