//! The keys: `GET /v1/keys` (a page, the caller's only), `POST /v1/keys`
//! (made in the enclave), `POST /v1/keys/import` (a KMS ciphertext, or one
//! kept in Secrets Manager, resealed in the enclave), `GET /v1/keys/{name}`
//! and `GET /v1/keys/{name}/public-key`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::{KeyRecord, KeySpec, PublicKey, RecordExt};
use nekms_rpc::{Entropy, GenerateKey, ImportKey};
use nekms_store::KeyStore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{allowed, hex_field};
use crate::access::Caller;
use crate::errors::{ApiError, JsonBody};
use crate::state::{AppState, Shared};

/// A key as the API shows it (without its record); its public key (PEM and
/// address) only when `vouched`: the enclave has opened this exact record.
fn summary(r: &KeyRecord, vouched: bool) -> Value {
    let public = PublicKey::from_spki(&r.public_key).ok().filter(|_| vouched);
    json!({
        "name": r.key_id,
        "spec": r.spec,
        "origin": r.origin,
        "kms_key_id": r.kms_key_id,
        "created_at": r.created_at,
        "public_key_pem": public.as_ref().map(|p| p.to_pem()),
        "eth_address": public.as_ref().and_then(|p| p.eth_address()).map(|a| a.to_checksum(None)),
    })
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_keys(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = state.store.list(q.after.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    let keys: Vec<Value> = page
        .records
        .iter()
        .filter(|r| caller.may_use(&r.key_id))
        .map(|r| {
            // Names only: a public key comes from /public-key or /v1/keys/{name}, once the enclave vouched for it.
            let mut v = summary(r, false);
            if let Some(at) = page.pending_deletion.get(&r.key_id) {
                v["pending_deletion"] = json!(nekms_store::rfc3339(*at));
            }
            v
        })
        .collect();
    // An item that does not read back is listed as damaged, with why; the others are unaffected.
    let damaged: Vec<Value> =
        page.damaged.iter().filter(|d| caller.may_use(&d.key_id)).map(|d| json!({"name": d.key_id, "damaged": d.reason})).collect();
    Ok(Json(json!({"keys": keys, "damaged": damaged, "next": page.next})))
}

/// The record named `name`, or 404.
pub(super) async fn record(state: &AppState, name: &str) -> Result<KeyRecord, ApiError> {
    state.store.get(name).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no key named {name:?}")))
}

pub(super) async fn show_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    let (r, pending) = state
        .store
        .entry(&name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no key named {name:?}")))?;
    // The record is public whatever it holds; its key is shown only once the enclave opened it.
    let vouched = state.opened(&r).await;
    let mut v = summary(&r, vouched.is_ok());
    if let Err(e) = vouched {
        v["public_key_unverified"] = json!(e.to_string());
    }
    v["record"] = serde_json::to_value(&r).expect("a record serializes");
    if let Some(at) = pending {
        v["pending_deletion"] = json!(nekms_store::rfc3339(at));
    }
    Ok(Json(v))
}

pub(super) async fn public_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    let r = record(&state, &name).await?;
    // Only a public key the enclave has vouched for, by opening this exact record.
    state.opened(&r).await?;
    let p = r.public().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", e.to_string()))?;
    Ok(Json(json!({"name": r.key_id, "spec": r.spec, "pem": p.to_pem(), "spki": B64.encode(p.spki()),
                   "eth_address": p.eth_address().map(|a| a.to_checksum(None))})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    spec: String,
    /// A custody key pinned in the enclave's configuration; absent: the only one.
    kms_key_id: Option<String>,
    entropy: Option<String>,
    #[serde(default, deserialize_with = "nekms_keys::context::unique_map")]
    encryption_context: BTreeMap<String, String>,
    nonce: Option<String>,
}

async fn check_new(state: &AppState, name: &str) -> Result<(), ApiError> {
    nekms_keys::record::check_key_id(name).map_err(|e| ApiError::bad(e.to_string()))?;
    if state.store.get(name).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("a key named {name:?} already exists")));
    }
    Ok(())
}

async fn store_new(state: &AppState, record: KeyRecord) -> Result<Response, ApiError> {
    state.store.create(&record).await?;
    let mut v = summary(&record, true);
    v["record"] = serde_json::to_value(&record).expect("a record serializes");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(super) async fn create_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    allowed(&caller, &b.name, true)?;
    let spec: KeySpec = b.spec.parse().map_err(|e: nekms_keys::UnknownSpec| ApiError::bad(e.to_string()))?;
    let entropy = match b.entropy.as_deref() {
        None | Some("nsm") => Entropy::Nsm,
        Some("kms") => Entropy::Kms,
        Some(o) => return Err(ApiError::bad(format!("entropy {o:?}: use nsm or kms"))),
    };
    let nonce = b.nonce.as_deref().map(|n| hex_field("nonce", n)).transpose()?;
    check_new(&state, &b.name).await?;
    let request = GenerateKey {
        key_id: b.name,
        spec,
        kms_key_id: b.kms_key_id,
        entropy,
        encryption_context: b.encryption_context,
        nonce,
        decrypt: false,
        privval: false,
        decrypt_only: false,
    };
    let record = state
        .enclave
        .call(|c| {
            let r = request.clone();
            async move { c.generate_key(r).await }
        })
        .await?;
    store_new(&state, record).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportBody {
    name: String,
    spec: Option<String>,
    kms_key_id: Option<String>,
    /// Base64 KMS ciphertext of the key.
    ciphertext: Option<String>,
    /// A Secrets Manager secret holding it.
    secret_id: Option<String>,
    #[serde(default, deserialize_with = "nekms_keys::context::unique_map")]
    ciphertext_context: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nekms_keys::context::unique_map")]
    encryption_context: BTreeMap<String, String>,
}

pub(super) async fn import_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<ImportBody>,
) -> Result<Response, ApiError> {
    allowed(&caller, &b.name, true)?;
    let spec = b.spec.as_deref().map(|s| s.parse::<KeySpec>().map_err(|e| ApiError::bad(e.to_string()))).transpose()?;
    if spec.is_none() {
        return Err(ApiError::bad("spec is required: the import ciphertext's context binds it (nekms:key-spec)"));
    }
    let ciphertext = match (&b.ciphertext, &b.secret_id) {
        (Some(c), None) => B64.decode(c.trim()).map_err(|_| ApiError::bad("ciphertext must be base64"))?,
        (None, Some(id)) => nekms_parent::secrets::ciphertext(id, state.secrets_endpoint.as_deref())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "secret_unreadable", format!("{e:#}")))?,
        _ => return Err(ApiError::bad("give exactly one of ciphertext and secret_id")),
    };
    if ciphertext.is_empty() {
        return Err(ApiError::bad("the ciphertext is empty"));
    }
    check_new(&state, &b.name).await?;
    let request = ImportKey {
        key_id: b.name,
        spec,
        kms_key_id: b.kms_key_id,
        ciphertext,
        ciphertext_context: b.ciphertext_context,
        ciphertext_key_id: None,
        encryption_context: b.encryption_context,
        nonce: None,
        decrypt: false,
        privval: false,
    };
    let record = state
        .enclave
        .call(|c| {
            let r = request.clone();
            async move { c.import_key(r).await }
        })
        .await?;
    store_new(&state, record).await
}
