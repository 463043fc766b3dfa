//! `GET /healthz`: whether the enclave and the store answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nekms_store::KeyStore;
use serde_json::json;

use crate::state::Shared;

pub(super) async fn healthz(State(state): State<Shared>) -> Response {
    let enclave = state.enclave.call(|c| async move { c.describe().await }).await;
    let store = state.store.list(None, 1).await;
    let ok = enclave.is_ok() && store.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "enclave": match &enclave { Ok(d) => json!({"ok": true, "simulated": d.simulated, "credentials": d.credentials.is_some()}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
        "store": match &store { Ok(_) => json!({"ok": true}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
