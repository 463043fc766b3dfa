//! `nekms agent`: the HTTP JSON API that applications on the parent use
//! (127.0.0.1 or a Unix socket only; callers authenticated and limited to
//! their keys by [`super::agent_access`]). It holds no secret: it reads records from the store,
//! hands them to the enclave with the payload, and returns what the enclave
//! signed. It also relays the instance's credentials to the enclave (and
//! keeps them fresh) and Secrets Manager ciphertexts for import, which is
//! the lock-out document's relay.
//!
//! Routes are listed in [`openapi`]; `/metrics` is Prometheus text.

use nekms_keys::RecordExt;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::{KeyRecord, KeySpec, Payload, PublicKey, Scheme};
use nekms_rpc::{Client, ClientError, Entropy, ErrorCode, GenerateKey, ImportKey};
use nekms_store::{KeyStore, Store, StoreError};
use nekms_transport::Address;
use serde::Deserialize;
use serde_json::{json, Value};

use super::agent_access::{loopback_host, Access, Caller};
use super::enclave::EnclaveArg;
use super::key::StoreArg;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen: IP:PORT on loopback, or unix:///PATH
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The callers: TOML with [[client]] name, token-file or uid, keys (globs), manage [default: one token, --token-file]
    #[arg(long, value_name = "FILE")]
    access: Option<PathBuf>,
    /// Without --access: the bearer token granting everything, made (0600) if missing
    /// [default: $XDG_RUNTIME_DIR/nekms/agent.token, else ~/.local/share/nekms/agent.token]
    #[arg(long, value_name = "FILE", conflicts_with = "access")]
    token_file: Option<PathBuf>,
    /// Permissions of the Unix socket (octal)
    #[arg(long, default_value = "600", value_name = "MODE")]
    socket_mode: String,
    #[command(flatten)]
    enclave: EnclaveArg,
    #[command(flatten)]
    store: StoreArg,
    /// Do not push the instance's credentials to the enclave (something else does)
    #[arg(long)]
    no_credentials: bool,
    /// AWS profile for the credentials relayed to the enclave
    #[arg(long)]
    profile: Option<String>,
    /// Seconds between credential pushes (also pushed 5 minutes before expiry)
    #[arg(long, default_value_t = 300)]
    credentials_interval: u64,
    /// Secrets Manager endpoint (moto) instead of the SDK's
    #[arg(long, env = "NEKMS_SECRETS_ENDPOINT", value_name = "URL")]
    secrets_endpoint_url: Option<String>,
    /// Write {"url": ...} here once listening
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retryable: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retryable: status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "retryable": self.retryable}});
        let mut r = (self.status, Json(body)).into_response();
        r.extensions_mut().insert(ErrorLabel(self.code));
        r
    }
}

#[derive(Clone, Copy)]
struct ErrorLabel(&'static str);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            StoreError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt"),
            StoreError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        let Some(remote) = e.remote() else {
            return match e {
                ClientError::Connect { .. } | ClientError::Closed(_) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "enclave_unavailable", e.to_string())
                }
                ClientError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "enclave_protocol", e.to_string()),
            };
        };
        let (status, code) = match remote.code {
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorCode::NoCredentials | ErrorCode::CredentialsExpired => (StatusCode::SERVICE_UNAVAILABLE, "enclave_credentials"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "kms_unavailable"),
            ErrorCode::RecordRejected => (StatusCode::UNPROCESSABLE_ENTITY, "record_rejected"),
            ErrorCode::Refused => (StatusCode::FORBIDDEN, "refused"),
            ErrorCode::Kms => match remote.kms_code.as_deref().unwrap_or_default() {
                "AccessDeniedException" => (StatusCode::FORBIDDEN, "kms_access_denied"),
                "NotFoundException" => (StatusCode::NOT_FOUND, "kms_key_not_found"),
                "InvalidCiphertextException" | "IncorrectKeyException" => (StatusCode::UNPROCESSABLE_ENTITY, "kms_invalid_ciphertext"),
                "DisabledException" | "KMSInvalidStateException" => (StatusCode::CONFLICT, "kms_key_state"),
                "ThrottlingException" | "LimitExceededException" => (StatusCode::TOO_MANY_REQUESTS, "kms_throttled"),
                "KMSInternalException" | "DependencyTimeoutException" => (StatusCode::BAD_GATEWAY, "kms_internal"),
                _ => (StatusCode::BAD_REQUEST, "kms_refused"),
            },
            ErrorCode::Attestation | ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "enclave_internal"),
            ErrorCode::Pkcs11 => (StatusCode::BAD_REQUEST, "pkcs11"),
        };
        ApiError::new(status, code, remote.message.clone())
    }
}

/// One connection to the enclave, shared, reopened after it breaks.
struct EnclaveConn {
    address: Address,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl EnclaveConn {
    async fn client(&self) -> Result<Client, ClientError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.address, concat!("nekms-agent ", env!("CARGO_PKG_VERSION"))).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Run `f`; if the connection was broken, reconnect and run it once more.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let first = f(self.client().await?).await;
        match first {
            Err(ClientError::Closed(_)) => {
                *self.client.lock().await = None;
                f(self.client().await?).await
            }
            other => other,
        }
    }
}

/// Counters and histograms for /metrics.
#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

struct AppState {
    enclave: EnclaveConn,
    store: Store,
    access: Access,
    records: Mutex<HashMap<String, (Arc<KeyRecord>, Instant)>>,
    metrics: Metrics,
    secrets_endpoint: Option<String>,
}

type Shared = Arc<AppState>;

async fn track(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed().as_secs_f64();
    let m = &state.metrics;
    *m.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route.clone(), method, response.status().as_u16())).or_default() += 1;
    if let Some(ErrorLabel(code)) = response.extensions().get::<ErrorLabel>() {
        *m.errors.lock().unwrap_or_else(|p| p.into_inner()).entry((route.clone(), code)).or_default() += 1;
    }
    let mut latency = m.latency.lock().unwrap_or_else(|p| p.into_inner());
    let h = latency.entry(route).or_default();
    for (i, b) in BUCKETS.iter().enumerate() {
        if elapsed <= *b {
            h.counts[i] += 1;
        }
    }
    h.sum += elapsed;
    h.count += 1;
    response
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(State(state): State<Shared>) -> Response {
    let mut out = String::new();
    out.push_str(
        "# HELP nekms_agent_requests_total HTTP requests served, by route, method and status.\n# TYPE nekms_agent_requests_total counter\n",
    );
    for ((route, method, status), n) in state.metrics.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!("nekms_agent_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}\n", label(route)));
    }
    out.push_str(
        "# HELP nekms_agent_errors_total Requests that failed, by route and error code.\n# TYPE nekms_agent_errors_total counter\n",
    );
    for ((route, code), n) in state.metrics.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!("nekms_agent_errors_total{{route=\"{}\",code=\"{code}\"}} {n}\n", label(route)));
    }
    out.push_str(
        "# HELP nekms_agent_request_duration_seconds Time to answer, by route.\n# TYPE nekms_agent_request_duration_seconds histogram\n",
    );
    for (route, h) in state.metrics.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let r = label(route);
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!("nekms_agent_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}\n", h.counts[i]));
        }
        out.push_str(&format!("nekms_agent_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}\n", h.count));
        out.push_str(&format!("nekms_agent_request_duration_seconds_sum{{route=\"{r}\"}} {}\n", h.sum));
        out.push_str(&format!("nekms_agent_request_duration_seconds_count{{route=\"{r}\"}} {}\n", h.count));
    }
    let cache = state.enclave.call(|c| async move { c.describe().await }).await.ok().and_then(|d| d.key_cache);
    out.push_str("# HELP nekms_enclave_up Whether the enclave answered Describe.\n# TYPE nekms_enclave_up gauge\n");
    out.push_str(&format!("nekms_enclave_up {}\n", cache.is_some() as u8));
    if let Some(c) = cache {
        out.push_str("# HELP nekms_enclave_key_cache_hits_total Signatures made with an already opened key.\n# TYPE nekms_enclave_key_cache_hits_total counter\n");
        out.push_str(&format!("nekms_enclave_key_cache_hits_total {}\n", c.hits));
        out.push_str("# HELP nekms_enclave_key_cache_misses_total Signatures that had to open the record (KMS Decrypt).\n# TYPE nekms_enclave_key_cache_misses_total counter\n");
        out.push_str(&format!("nekms_enclave_key_cache_misses_total {}\n", c.misses));
        out.push_str("# HELP nekms_enclave_key_cache_entries Opened keys held now.\n# TYPE nekms_enclave_key_cache_entries gauge\n");
        out.push_str(&format!("nekms_enclave_key_cache_entries {}\n", c.entries));
    }
    if let Ok(nekms_rpc::PrivvalResponse::Status(chains)) =
        state.enclave.call(|c| async move { c.privval(nekms_rpc::PrivvalRequest::Status).await }).await
    {
        privval_metrics(&mut out, &chains);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The validator signer's figures, per chain (tmkms #692's list).
fn privval_metrics(out: &mut String, chains: &[nekms_rpc::PrivvalStatus]) {
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&nekms_rpc::PrivvalStatus) -> String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for c in chains {
            out.push_str(&format!("{name}{{chain_id=\"{}\"}} {}\n", label(&c.chain_id), value(c)));
        }
    };
    gauge(out, "nekms_privval_last_height", "Last signed height (or the height the state starts at).", "gauge", &|c| c.height.to_string());
    gauge(out, "nekms_privval_last_round", "Last signed round.", "gauge", &|c| c.round.to_string());
    gauge(out, "nekms_privval_last_step", "Last signed step: 0 none, 1 proposal, 2 prevote, 3 precommit.", "gauge", &|c| {
        c.step.to_string()
    });
    gauge(out, "nekms_privval_signatures_total", "Consensus signatures released.", "counter", &|c| c.signatures.to_string());
    gauge(out, "nekms_privval_extension_signatures_total", "Vote-extension signatures released.", "counter", &|c| {
        c.extension_signatures.to_string()
    });
    gauge(out, "nekms_privval_store_failures_total", "State commits that failed (nothing released for them).", "counter", &|c| {
        c.store_failures.to_string()
    });
    gauge(out, "nekms_privval_state_uncommitted", "1 while the newest state has not been acknowledged by the store.", "gauge", &|c| {
        ((c.counter > c.committed) as u8).to_string()
    });
    gauge(out, "nekms_privval_connections", "Validator connections open now.", "gauge", &|c| c.connections.to_string());
    gauge(out, "nekms_privval_connections_total", "Validator connections accepted.", "counter", &|c| c.connections_total.to_string());
    out.push_str("# HELP nekms_privval_refusals_total Requests refused, by reason.\n# TYPE nekms_privval_refusals_total counter\n");
    for c in chains {
        for (reason, n) in &c.refusals {
            out.push_str(&format!(
                "nekms_privval_refusals_total{{chain_id=\"{}\",reason=\"{}\"}} {n}\n",
                label(&c.chain_id),
                label(reason)
            ));
        }
    }
    out.push_str("# HELP nekms_privval_sign_duration_seconds Time from request to signed reply inside the enclave (state commit included).\n# TYPE nekms_privval_sign_duration_seconds histogram\n");
    for c in chains {
        let chain = label(&c.chain_id);
        for (le, n) in &c.latency_buckets {
            out.push_str(&format!("nekms_privval_sign_duration_seconds_bucket{{chain_id=\"{chain}\",le=\"{le}\"}} {n}\n"));
        }
        out.push_str(&format!("nekms_privval_sign_duration_seconds_bucket{{chain_id=\"{chain}\",le=\"+Inf\"}} {}\n", c.latency_count));
        out.push_str(&format!("nekms_privval_sign_duration_seconds_sum{{chain_id=\"{chain}\"}} {}\n", c.latency_sum));
        out.push_str(&format!("nekms_privval_sign_duration_seconds_count{{chain_id=\"{chain}\"}} {}\n", c.latency_count));
    }
}

async fn healthz(State(state): State<Shared>) -> Response {
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

fn summary(r: &KeyRecord) -> Value {
    let public = PublicKey::from_spki(&r.public_key).ok();
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
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_keys(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = state.store.list(q.after.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    let keys: Vec<Value> = page.records.iter().filter(|r| caller.may_use(&r.key_id)).map(summary).collect();
    Ok(Json(json!({"keys": keys, "next": page.next})))
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

/// Records are never overwritten, so one read recently is still the record;
/// a deleted key stops signing within [`RECORD_TTL`].
const RECORD_TTL: Duration = Duration::from_secs(5);

/// The record for signing, from a short-lived cache in front of the store.
async fn signing_record(state: &AppState, name: &str) -> Result<Arc<KeyRecord>, ApiError> {
    if let Some((r, at)) = state.records.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
        if at.elapsed() < RECORD_TTL {
            return Ok(r.clone());
        }
    }
    // Whole: the enclave checks the origin document before it opens a record.
    let r = Arc::new(record(state, name).await?);
    let mut cache = state.records.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 4096 {
        cache.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
    }
    if cache.len() < 4096 {
        cache.insert(name.to_owned(), (r.clone(), Instant::now()));
    }
    Ok(r)
}

async fn record(state: &AppState, name: &str) -> Result<KeyRecord, ApiError> {
    state.store.get(name).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no key named {name:?}")))
}

async fn show_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    let r = record(&state, &name).await?;
    let mut v = summary(&r);
    v["record"] = serde_json::to_value(&r).expect("a record serializes");
    Ok(Json(v))
}

async fn public_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allowed(&caller, &name, false)?;
    let r = record(&state, &name).await?;
    let p = r.public().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", e.to_string()))?;
    Ok(Json(json!({"name": r.key_id, "spec": r.spec, "pem": p.to_pem(), "spki": B64.encode(p.spki()),
                   "eth_address": p.eth_address().map(|a| a.to_checksum(None))})))
}

fn hex_field(name: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(s.trim_start_matches("0x")).map_err(|_| ApiError::bad(format!("{name} must be hex")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
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
    let mut v = summary(&record);
    v["record"] = serde_json::to_value(&record).expect("a record serializes");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn create_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<CreateBody>,
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
struct ImportBody {
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

async fn import_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<ImportBody>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
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

async fn sign(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(b): Json<SignBody>,
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

async fn sign_transaction(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(tx): Json<Value>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestBody {
    nonce: Option<String>,
    user_data: Option<String>,
}

async fn attestation(
    State(state): State<Shared>,
    Extension(_caller): Extension<Caller>,
    Json(b): Json<AttestBody>,
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

async fn openapi_json() -> Json<Value> {
    Json(openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json")
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/import", post(import_key))
        .route("/v1/keys/{name}", get(show_key))
        .route("/v1/keys/{name}/public-key", get(public_key))
        .route("/v1/keys/{name}/sign", post(sign))
        .route("/v1/keys/{name}/eth/transaction", post(sign_transaction))
        .route("/v1/attestation", post(attestation))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .with_state(state)
}

/// Who connected: a Unix peer's uid (SO_PEERCRED), or nothing over TCP.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(_: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer { uid: None }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        Peer { uid: stream.io().peer_cred().ok().map(|c| c.uid()) }
    }
}

/// Routes that need no caller (they reveal no key).
const PUBLIC: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// The `Host` check (TCP), then the caller: the Unix peer's uid, else a bearer token.
async fn authenticate(State(state): State<Shared>, ConnectInfo(peer): ConnectInfo<Peer>, mut request: Request, next: Next) -> Response {
    let unauthorized = |m: String| {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        r
    };
    if peer.uid.is_none() {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !loopback_host(host) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "bad_host",
                format!("Host {host:?} is not a loopback name; the agent answers only localhost, 127.0.0.1 and [::1]"),
            )
            .into_response();
        }
    }
    if PUBLIC.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let bearer = request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    let caller = match (bearer, peer.uid) {
        (Some(token), _) => match state.access.by_token(token) {
            Some(c) => c,
            None => return unauthorized("the bearer token is not one the agent knows".into()),
        },
        (None, Some(uid)) => match state.access.by_uid(uid) {
            Some(c) => c,
            None => return unauthorized(format!("uid {uid} is not a caller of this agent; send a bearer token")),
        },
        (None, None) => return unauthorized("send Authorization: Bearer <token> (the agent's token file)".into()),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Serve the API on `listener` in this process (the benchmark and the demo
/// do), with no credential relay; stops when the task is aborted.
pub fn spawn(listener: tokio::net::TcpListener, enclave: Address, store: Store, access: Access) -> tokio::task::JoinHandle<()> {
    let state = Arc::new(AppState {
        enclave: EnclaveConn { address: enclave, client: tokio::sync::Mutex::new(None) },
        store,
        access,
        records: Mutex::new(HashMap::new()),
        metrics: Metrics::default(),
        secrets_endpoint: None,
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state).into_make_service_with_connect_info::<Peer>()).await;
    })
}

fn default_token_file() -> anyhow::Result<PathBuf> {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok(PathBuf::from(run).join("nekms/agent.token"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_RUNTIME_DIR nor HOME is set; give --token-file")?;
    Ok(PathBuf::from(home).join(".local/share/nekms/agent.token"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let unix_path = a.listen.strip_prefix("unix://").map(PathBuf::from);
    let tcp: Option<SocketAddr> = match &unix_path {
        Some(_) => None,
        None => {
            let addr: SocketAddr = a.listen.parse().with_context(|| format!("--listen {}: IP:PORT or unix:///PATH", a.listen))?;
            if !addr.ip().is_loopback() {
                anyhow::bail!("the agent listens on loopback only (127.0.0.1 or ::1), not {}", addr.ip());
            }
            Some(addr)
        }
    };
    let access = match (&a.access, &a.token_file) {
        (Some(file), _) => Access::from_file(file)?,
        (None, Some(t)) => Access::single_token(t)?,
        (None, None) => Access::single_token(&default_token_file()?)?,
    };
    let socket_mode =
        u32::from_str_radix(&a.socket_mode, 8).with_context(|| format!("--socket-mode {}: octal, e.g. 600", a.socket_mode))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let store = a.store.open().await?;
        let state = Arc::new(AppState {
            enclave: EnclaveConn { address: a.enclave.address()?, client: tokio::sync::Mutex::new(None) },
            store,
            access,
            records: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            secrets_endpoint: a.secrets_endpoint_url.clone(),
        });
        if !a.no_credentials {
            let (enclave, profile, interval) = (a.enclave.address()?, a.profile.clone(), Duration::from_secs(a.credentials_interval));
            tokio::spawn(async move {
                let pushed = |info: &nekms_rpc::CredentialsInfo| {
                    println!("credentials set in the enclave: {}", nekms_parent::credentials::describe(info))
                };
                if let Err(e) = nekms_parent::credentials::push(&enclave, profile, None, true, interval, pushed).await {
                    eprintln!("nekms agent: credentials relay stopped: {e:#}");
                }
            });
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let app = router(state).into_make_service_with_connect_info::<Peer>();
        let announce = |url: String| -> anyhow::Result<()> {
            println!("nekms agent listening on {url} (store {}, enclave {})", a.store.url()?, a.enclave.enclave);
            if let Some(path) = &a.ready_file {
                std::fs::write(path, json!({"url": url}).to_string())?;
            }
            Ok(())
        };
        match (tcp, &unix_path) {
            (Some(addr), _) => {
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
                announce(format!("http://{}", listener.local_addr()?))?;
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
            }
            (None, Some(path)) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))?;
                announce(format!("unix://{}", path.display()))?;
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
            }
            (None, None) => unreachable!("one listener"),
        }
        Ok(())
    })
}

/// The OpenAPI 3.0 description of the routes.
pub fn openapi() -> Value {
    let error = json!({"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"}});
    let ok = |d: &str, schema: Value| json!({"description": d, "content": {"application/json": {"schema": schema}}});
    let body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let errors = |codes: &[&str]| codes.iter().map(|c| (c.to_string(), error.clone())).collect::<serde_json::Map<_, _>>();
    let with = |mut m: serde_json::Map<String, Value>, code: &str, v: Value| {
        m.insert(code.into(), v);
        Value::Object(m)
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "nekms agent", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Keys sealed by KMS and usable only inside an attested Nitro Enclave. The agent stores public records and relays to the enclave."},
        "paths": {
            "/healthz": {"get": {"summary": "Whether the enclave and the store answer", "responses": {"200": ok("Healthy", json!({"type": "object"})), "503": ok("Degraded", json!({"type": "object"}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok("OpenAPI", json!({"type": "object"}))}}},
            "/v1/keys": {
                "get": {"summary": "List keys", "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": with(errors(&["400", "503"]), "200", ok("A page of keys", json!({"type": "object", "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}, "next": {"type": "string", "nullable": true}}})))},
                "post": {"summary": "Make a key inside the enclave and store its sealed record", "requestBody": body(json!({"$ref": "#/components/schemas/CreateKey"})),
                    "responses": with(errors(&["400", "403", "404", "409", "422", "503"]), "201", ok("Created", json!({"$ref": "#/components/schemas/Key"})))}
            },
            "/v1/keys/import": {"post": {"summary": "Reseal a KMS-encrypted private key (or one from Secrets Manager) into a record", "requestBody": body(json!({"$ref": "#/components/schemas/ImportKey"})),
                "responses": with(errors(&["400", "403", "404", "409", "422", "503"]), "201", ok("Imported", json!({"$ref": "#/components/schemas/Key"})))}},
            "/v1/keys/{name}": {"get": {"summary": "A key and its record", "parameters": [name.clone()],
                "responses": with(errors(&["400", "404", "503"]), "200", ok("The key", json!({"$ref": "#/components/schemas/Key"})))}},
            "/v1/keys/{name}/public-key": {"get": {"summary": "The public key (PEM, SPKI, Ethereum address)", "parameters": [name.clone()],
                "responses": with(errors(&["400", "404", "503"]), "200", ok("The public key", json!({"type": "object"})))}},
            "/v1/keys/{name}/sign": {"post": {"summary": "Sign inside the enclave", "parameters": [name.clone()], "requestBody": body(json!({"$ref": "#/components/schemas/Sign"})),
                "responses": with(errors(&["400", "403", "404", "422", "503"]), "200", ok("The signature", json!({"$ref": "#/components/schemas/Signature"})))}},
            "/v1/keys/{name}/eth/transaction": {"post": {"summary": "Sign an Ethereum transaction (legacy with chainId, or EIP-1559)", "parameters": [name],
                "requestBody": body(json!({"$ref": "#/components/schemas/EthTransaction"})),
                "responses": with(errors(&["400", "403", "404", "422", "503"]), "200", ok("The signed transaction", json!({"type": "object", "properties": {"raw_transaction": {"type": "string"}, "transaction_hash": {"type": "string"}, "signature": {"type": "string"}}})))}},
            "/v1/attestation": {"post": {"summary": "An attestation document from the enclave", "requestBody": body(json!({"type": "object", "additionalProperties": false,
                "properties": {"nonce": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}, "user_data": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}}})),
                "responses": with(errors(&["400", "503"]), "200", ok("The document", json!({"type": "object", "properties": {"document": {"type": "string", "format": "byte"}}})))}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}}}}},
            "Key": {"type": "object", "properties": {"name": {"type": "string"}, "spec": {"type": "string"}, "origin": {"type": "string"}, "kms_key_id": {"type": "string"},
                    "created_at": {"type": "integer"}, "public_key_pem": {"type": "string"}, "eth_address": {"type": "string", "nullable": true}, "record": {"type": "object"}}},
            "CreateKey": {"type": "object", "required": ["name", "spec"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                "spec": {"type": "string", "enum": ["secp256k1", "ed25519", "p256", "p384", "rsa2048", "rsa3072", "rsa4096"]},
                "kms_key_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "entropy": {"type": "string", "enum": ["nsm", "kms"]},
                "encryption_context": {"type": "object", "additionalProperties": {"type": "string"}},
                "nonce": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}}},
            "ImportKey": {"type": "object", "required": ["name", "spec"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                "spec": {"type": "string", "enum": ["secp256k1", "ed25519", "p256", "p384", "rsa2048", "rsa3072", "rsa4096"]},
                "kms_key_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "ciphertext": {"type": "string", "format": "byte"},
                "secret_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "ciphertext_context": {"type": "object", "additionalProperties": {"type": "string"}},
                "encryption_context": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "Sign": {"type": "object", "additionalProperties": false, "properties": {
                "message": {"type": "string"}, "message_hex": {"type": "string"}, "message_base64": {"type": "string"},
                "digest": {"type": "string", "pattern": "^(0x)?([0-9a-f]{2})*$"}, "typed_data": {"type": "object"},
                "scheme": {"type": "string", "enum": ["ecdsa", "ecdsa-raw", "ecdsa-recoverable", "eth-personal", "eip712", "ed25519",
                    "rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512"]}}},
            "Signature": {"type": "object", "properties": {"scheme": {"type": "string"}, "signature": {"type": "string"}, "digest": {"type": "string"}}},
            "EthTransaction": {"type": "object", "required": ["chainId", "nonce", "gas"], "properties": {
                "type": {"type": "integer", "enum": [0, 2]}, "chainId": {"type": "integer", "minimum": 1}, "nonce": {"type": "integer", "minimum": 0},
                "to": {"type": "string", "nullable": true}, "value": {"type": ["integer", "string"]}, "gas": {"type": "integer", "minimum": 0},
                "gasPrice": {"type": "integer"}, "maxFeePerGas": {"type": "integer"}, "maxPriorityFeePerGas": {"type": "integer"},
                "data": {"type": "string"}, "accessList": {"type": "array"}}}
        }}
    })
}
