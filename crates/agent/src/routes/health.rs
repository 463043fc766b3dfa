//! `GET /healthz`: whether the enclave and the store answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nekms_store::KeyStore;
use serde_json::json;

use crate::state::Shared;

pub(super) async fn healthz(State(state): State<Shared>) -> Response {
    // Answered from the last second's check: a flood of health checks asks the enclave and the store once a second.
    let mut cached = state.health.lock().await;
    if let Some((at, status, body)) = cached.as_ref() {
        if at.elapsed() < std::time::Duration::from_secs(1) {
            return (*status, Json(body.clone())).into_response();
        }
    }
    let enclave = state.enclave.call(|c| async move { c.describe().await }).await;
    let store = state.store.list(None, 1).await;
    let ok = enclave.is_ok() && store.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "enclave": match &enclave { Ok(d) => json!({"ok": true, "simulated": d.simulated, "credentials": d.credentials.is_some()}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
        "store": match &store { Ok(_) => json!({"ok": true}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    *cached = Some((std::time::Instant::now(), status, body.clone()));
    (status, Json(body)).into_response()
}
