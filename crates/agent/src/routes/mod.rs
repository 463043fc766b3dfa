//! The routes, one file per family: [`health`] (`/healthz`), [`keys`]
//! (list, show, create, import), [`sign`] (messages, digests, typed data,
//! Ethereum transactions), [`attest`] (attestation documents); `/metrics` is
//! [`crate::metrics`] and `/openapi.json` [`crate::openapi`].

mod attest;
mod health;
mod keys;
mod sign;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::access::Caller;
use crate::errors::ApiError;
use crate::state::Shared;

/// The largest request body.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// Every route, behind the caller check, counted, bodies at most 256 KiB.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/keys", get(keys::list_keys).post(keys::create_key))
        .route("/v1/keys/import", post(keys::import_key))
        .route("/v1/keys/{name}", get(keys::show_key))
        .route("/v1/keys/{name}/public-key", get(keys::public_key))
        .route("/v1/keys/{name}/sign", post(sign::sign))
        .route("/v1/keys/{name}/eth/transaction", post(sign::sign_transaction))
        .route("/v1/attestation", post(attest::attestation))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::server::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::server::limit_body))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn openapi_json() -> Json<Value> {
    Json(crate::openapi::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; see /openapi.json")
}

/// The caller may use key `name` (and, to make it, manage keys).
fn allowed(caller: &Caller, name: &str, manage: bool) -> Result<(), ApiError> {
    if manage && !caller.manage {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("caller {:?} may not create or import keys", caller.name)));
    }
    if !caller.may_use(name) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("caller {:?} may not use key {name:?}", caller.name)));
    }
    Ok(())
}

/// A hex field of a request body (`0x` allowed).
fn hex_field(name: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(s.trim_start_matches("0x")).map_err(|_| ApiError::bad(format!("{name} must be hex")))
}
