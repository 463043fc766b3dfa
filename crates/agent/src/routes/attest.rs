//! `POST /v1/attestation`: a document from the enclave, for any caller.

use axum::extract::State;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::hex_field;
use crate::access::Caller;
use crate::errors::{ApiError, JsonBody};
use crate::state::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttestBody {
    nonce: Option<String>,
    user_data: Option<String>,
}

pub(super) async fn attestation(
    State(state): State<Shared>,
    Extension(_caller): Extension<Caller>,
    JsonBody(b): JsonBody<AttestBody>,
) -> Result<Json<Value>, ApiError> {
    let nonce = b.nonce.as_deref().map(|n| hex_field("nonce", n)).transpose()?;
    let user_data = b.user_data.as_deref().map(|n| hex_field("user_data", n)).transpose()?;
    let doc = state
        .enclave
        .call(|c| {
            let (n, u) = (nonce.clone(), user_data.clone());
            async move { c.attest(n, u, None).await }
        })
        .await?;
    Ok(Json(json!({"document": B64.encode(doc)})))
}
