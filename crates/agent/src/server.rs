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
    let state = AppState::new(enclave, store, access, None);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state).into_make_service_with_connect_info::<Peer>()).await;
    })
}

/// Serve the API as `config` says until SIGINT or SIGTERM, relaying the
/// instance's credentials to the enclave unless told not to. Prints one line
/// once listening (and writes the ready file).
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let AgentConfig { listen, socket_mode, enclave, store, access, credentials, secrets_endpoint, ready_file, store_name, enclave_name } =
        config;
    let state = AppState::new(enclave.clone(), store, access, secrets_endpoint);
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
    let app = router(state).into_make_service_with_connect_info::<Peer>();
    let announce = |url: String| -> anyhow::Result<()> {
        println!("nekms agent listening on {url} (store {store_name}, enclave {enclave_name})");
        if let Some(path) = &ready_file {
            std::fs::write(path, json!({"url": url}).to_string())?;
        }
        Ok(())
    };
    match listen {
        Listen::Tcp(addr) => {
            let addr = addr.get();
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            announce(format!("http://{}", listener.local_addr()?))?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
        Listen::Unix(path) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(socket_mode))?;
            announce(format!("unix://{}", path.display()))?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
    }
    Ok(())
}

/// Push the credentials now and whenever they are due, until that fails.
async fn relay_credentials(enclave: Address, relay: CredentialsRelay) {
    let pushed =
        |info: &nekms_rpc::CredentialsInfo| println!("credentials set in the enclave: {}", nekms_parent::credentials::describe(info));
    if let Err(e) = nekms_parent::credentials::push(&enclave, relay.profile, None, true, relay.interval, pushed).await {
        eprintln!("nekms agent: credentials relay stopped: {e:#}");
    }
}
