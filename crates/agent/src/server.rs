//! The server: who connected and the caller check in front of every route,
//! the listener (loopback TCP or a Unix socket), the credentials relay
//! beside it, and shutdown on SIGINT or SIGTERM.

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nekms_store::Store;
use nekms_transport::Address;
use serde_json::json;

use crate::access::{loopback_host, Access};
use crate::config::{AgentConfig, CredentialsRelay, Listen};
use crate::errors::ApiError;
use crate::routes::router;
use crate::state::{AppState, Shared};

/// Who connected: a Unix peer's uid (SO_PEERCRED), or nothing over TCP.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    pub(crate) uid: Option<u32>,
}

/// The body limit, before anything reads the body: a declared length over it
/// is refused at once (413), and the limits go with the request for the
/// body's own timeout ([`crate::errors::JsonBody`]).
pub(crate) async fn limit_body(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > crate::routes::MAX_BODY as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body declares {} bytes; the agent takes at most {}", declared.unwrap_or_default(), crate::routes::MAX_BODY),
        )
        .into_response();
    }
    request.extensions_mut().insert(state.limits);
    next.run(request).await
}

/// Routes that need no caller (they reveal no key).
const PUBLIC: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// The `Host` check (TCP), then the caller: the Unix peer's uid, else a bearer token.
pub(crate) async fn authenticate(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
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
        // Anyone may ask these; together they count as one caller.
        let Some(_admitted) = state.admit("(public routes)") else {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many requests to public routes in progress; retry",
            )
            .into_response();
        };
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
    let Some(_admitted) = state.admit(&caller.name) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("caller {} already has {} requests in progress; retry", caller.name, state.limits.max_per_caller),
        )
        .into_response();
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Serve the API on `listener` in this process (the benchmark and the demo
/// do), with no credential relay; stops when the task is aborted.
pub fn spawn(listener: tokio::net::TcpListener, enclave: Address, store: Store, access: Access) -> tokio::task::JoinHandle<()> {
    let limits = crate::listen::Limits::default();
    let state = AppState::new(enclave, store, access, None, limits);
    let open = crate::listen::connection_slots(&limits);
    tokio::spawn(crate::listen::serve(crate::listen::Listener::Tcp(listener), router(state), limits, open, std::future::pending()))
}

/// Serve the KMS API on `listener` in this process (the benchmark does),
/// with `settings`' region and account; stops when the task is aborted.
pub fn spawn_kms_api(
    listener: tokio::net::TcpListener,
    enclave: Address,
    store: Store,
    access: Access,
    settings: &crate::KmsApi,
) -> tokio::task::JoinHandle<()> {
    let limits = crate::listen::Limits::default();
    let state = AppState::new(enclave, store, access, None, limits);
    let app = crate::kms_api::router(state, settings);
    let open = crate::listen::connection_slots(&limits);
    tokio::spawn(crate::listen::serve(crate::listen::Listener::Tcp(listener), app, limits, open, std::future::pending()))
}

/// Serve the API as `config` says until SIGINT or SIGTERM, relaying the
/// instance's credentials to the enclave unless told not to. Prints one line
/// once listening (and writes the ready file).
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let AgentConfig {
        listen,
        socket_mode,
        enclave,
        store,
        access,
        credentials,
        secrets_endpoint,
        ready_file,
        store_name,
        enclave_name,
        limits,
        kms_api,
    } = config;
    let state = AppState::new(enclave.clone(), store, access, secrets_endpoint, limits);
    if let Some(relay) = credentials {
        tokio::spawn(relay_credentials(enclave, relay));
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let kms = match &kms_api {
        Some(settings) => Some((bind(&settings.listen, socket_mode).await?, crate::kms_api::router(state.clone(), settings))),
        None => None,
    };
    let app = router(state);
    // Both listeners share one connection cap, and stop together.
    let open = crate::listen::connection_slots(&limits);
    let (stop_kms, kms_stopped) = tokio::sync::watch::channel(false);
    let kms_task = kms.map(|((listener, url), kms_app)| {
        tracing::info!("agent: KMS API on {url} (region {})", kms_api.as_ref().map(|k| k.region.as_str()).unwrap_or_default());
        let mut stopped = kms_stopped.clone();
        tokio::spawn(crate::listen::serve(listener, kms_app, limits, open.clone(), async move {
            let _ = stopped.changed().await;
        }))
    });
    let announce = |url: String| -> anyhow::Result<()> {
        tracing::info!("agent: listening on {url} (store {store_name}, enclave {enclave_name})");
        if let Some(path) = &ready_file {
            std::fs::write(path, json!({"url": url}).to_string())?;
        }
        Ok(())
    };
    let (listener, url) = bind(&listen, socket_mode).await?;
    announce(url)?;
    let shutdown = async {
        shutdown.await;
        let _ = stop_kms.send(true);
    };
    crate::listen::serve(listener, app, limits, open, shutdown).await;
    if let Some(t) = kms_task {
        let _ = t.await;
    }
    Ok(())
}

/// Bind `listen` (a Unix socket gets `socket_mode`), and say it as a URL.
async fn bind(listen: &Listen, socket_mode: u32) -> anyhow::Result<(crate::listen::Listener, String)> {
    Ok(match listen {
        Listen::Tcp(addr) => {
            let addr = addr.get();
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let url = format!("http://{}", listener.local_addr()?);
            (crate::listen::Listener::Tcp(listener), url)
        }
        Listen::Unix(path) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))?;
            (crate::listen::Listener::Unix(listener), format!("unix://{}", path.display()))
        }
    })
}

/// Push the credentials now and whenever they are due, until that fails.
async fn relay_credentials(enclave: Address, relay: CredentialsRelay) {
    let pushed =
        |info: &nekms_rpc::CredentialsInfo| println!("credentials set in the enclave: {}", nekms_parent::credentials::describe(info));
    if let Err(e) = nekms_parent::credentials::push(&enclave, relay.profile, None, true, relay.interval, pushed).await {
        tracing::error!("agent: credentials relay stopped: {e:#}");
    }
}
