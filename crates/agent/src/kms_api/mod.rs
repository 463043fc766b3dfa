//! AWS KMS's own API for custody keys (`nekms agent --kms-api ADDR`):
//! `POST /` with `X-Amz-Target: TrentService.<Operation>`, SigV4 for
//! service `kms`, KMS's JSON shapes and exceptions, so a client written for
//! KMS (the aws CLI, every SDK, KMS signers) uses an enclave key by changing
//! its endpoint. The protocol layers are `nekms-kms-proto`'s, the same the
//! local KMS uses.
//!
//! - Callers sign with an access key pair of their own (the access file's
//!   `kms-access-key-id` and `kms-secret-file`), checked as KMS checks it;
//!   over the Unix socket an unsigned request from a uid the access file
//!   names is that caller. A caller sees and uses only its keys (globs).
//! - Key ids are record names; ARNs are `arn:aws:kms:REGION:ACCOUNT:key/NAME`;
//!   aliases (`alias/...`) live in the store beside the records.
//! - Operations: [`keys`] (CreateKey, DescribeKey, ListKeys, GetPublicKey,
//!   ScheduleKeyDeletion, CancelKeyDeletion), [`sign`] (Sign, Verify),
//!   [`crypt`] (Encrypt, Decrypt with RSA keys made to decrypt),
//!   [`aliases`] (CreateAlias, UpdateAlias, DeleteAlias, ListAliases),
//!   [`meta`] (EnableKey, DisableKey, TagResource, UntagResource,
//!   ListResourceTags).
//!
//! The enclave's rules hold as everywhere: a consensus key signs only
//! through the validator signer, so `Sign` with one is refused.

mod aliases;
mod crypt;
mod keys;
mod meta;
pub mod parse;
mod sign;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::Request as Fields;
use nekms_kms_proto::sigv4::{Credential, SignedRequest, Verifier};
use nekms_rpc::{ClientError, ErrorCode};
use nekms_store::StoreError;
use serde_json::Value;
use time::OffsetDateTime;

use crate::access::{loopback_host, Caller};
use crate::server::Peer;
use crate::state::{AppState, Shared};

/// Where the KMS API answers, and the region and account its ARNs carry.
#[derive(Clone, Debug)]
pub struct KmsApi {
    pub listen: crate::config::Listen,
    /// The region requests must be signed for, and ARNs name.
    pub region: String,
    /// The 12-digit account ARNs name.
    pub account: String,
}

struct Api {
    state: Shared,
    region: String,
    account: String,
    verifier: Verifier,
}

/// One request's context: who asks, through which API.
struct Ctx<'a> {
    api: &'a Api,
    state: &'a AppState,
    caller: &'a Caller,
}

type Answer = Result<Value, KmsError>;

/// The KMS API's router: one route, `POST /`.
pub(crate) fn router(state: Shared, settings: &KmsApi) -> Router {
    let api = Arc::new(Api {
        state,
        region: settings.region.clone(),
        account: settings.account.clone(),
        verifier: Verifier::new(settings.region.clone(), "kms"),
    });
    Router::new().fallback(handle).layer(axum::extract::DefaultBodyLimit::disable()).with_state(api)
}

/// KMS's largest request body.
const MAX_BODY: usize = 256 * 1024;

async fn handle(State(api): State<Arc<Api>>, ConnectInfo(peer): ConnectInfo<Peer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let started = std::time::Instant::now();
    let op = parts.headers.get("x-amz-target").and_then(|t| t.to_str().ok()).and_then(|t| t.strip_prefix("TrentService."));
    let op = op.unwrap_or("").to_owned();
    let result = async {
        if parts.method != axum::http::Method::POST || parts.uri.path() != "/" {
            return Err(KmsError::new(
                "UnknownOperationException",
                format!("{} {} is not a KMS operation; send POST / with X-Amz-Target", parts.method, parts.uri.path()),
            ));
        }
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if peer.uid.is_none() && !loopback_host(host) {
            return Err(KmsError::new("AccessDeniedException", format!("Host {host:?} is not a loopback name")));
        }
        if parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
            > Some(MAX_BODY as u64)
        {
            return Err(KmsError::new("RequestEntityTooLarge", format!("a request body is at most {MAX_BODY} bytes")));
        }
        let limits = api.state.limits;
        let body: Bytes = match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return Err(KmsError::new("RequestEntityTooLarge", format!("a request body is at most {MAX_BODY} bytes"))),
            Err(_) => return Err(KmsError::validation("the request body did not arrive in time")),
        };
        let caller = authenticate(&api, &parts, &body, peer)?;
        let Some(_admitted) = api.state.admit(&caller.name) else {
            return Err(KmsError::new("ThrottlingException", format!("caller {} has too many requests in progress", caller.name)));
        };
        if op.is_empty() {
            return Err(KmsError::new("UnknownOperationException", "X-Amz-Target must be TrentService.<Operation>"));
        }
        let fields = Fields::parse(&body)?;
        let ctx = Ctx { api: &api, state: &api.state, caller: &caller };
        dispatch(&ctx, &op, &fields).await
    }
    .await;
    let (status, body, error) = match result {
        Ok(v) => (200, serde_json::to_vec(&v).expect("JSON"), None),
        Err(e) => (e.status(), e.body(), Some(e.kind)),
    };
    match error {
        Some(kind) => tracing::info!(op = %op, error = kind, "kms api: {} ms", started.elapsed().as_millis()),
        None => tracing::debug!(op = %op, "kms api: {} ms", started.elapsed().as_millis()),
    }
    let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
    h.insert("x-amzn-requestid", HeaderValue::from_str(&request_id()).expect("hex"));
    if let Some(kind) = error {
        h.insert("x-amzn-errortype", HeaderValue::from_static(kind));
    }
    r
}

/// The caller: a SigV4 signature by one of the access file's key pairs, or
/// over the Unix socket, an unsigned request from a uid it names.
fn authenticate(api: &Api, parts: &axum::http::request::Parts, body: &[u8], peer: Peer) -> Result<Caller, KmsError> {
    if parts.headers.get(header::AUTHORIZATION).is_none() {
        if let Some(c) = peer.uid.and_then(|u| api.state.access.by_uid(u)) {
            return Ok(c);
        }
    }
    let headers: Vec<(String, String)> =
        parts.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned()))).collect();
    let signed = SignedRequest { method: "POST", path: parts.uri.path(), query: parts.uri.query().unwrap_or(""), headers: &headers, body };
    let mut found = None;
    let auth = api
        .verifier
        .verify(&signed, OffsetDateTime::now_utc(), |id| {
            let (caller, secret) = api.state.access.by_access_key(id)?;
            found = Some(caller.clone());
            Some(Credential {
                access_key_id: id.to_owned(),
                secret_access_key: secret,
                session_token: None,
                expires: None,
                principal_arn: format!("arn:aws:iam::{}:user/{}", api.account, caller.name),
            })
        })
        .map_err(|e| KmsError::new(e.aws_type(), e.to_string()))?;
    let _ = auth;
    found.ok_or_else(|| KmsError::new("UnrecognizedClientException", "The security token included in the request is invalid."))
}

async fn dispatch(ctx: &Ctx<'_>, op: &str, f: &Fields) -> Answer {
    match op {
        "CreateKey" => keys::create_key(ctx, f).await,
        "DescribeKey" => keys::describe_key(ctx, f).await,
        "ListKeys" => keys::list_keys(ctx, f).await,
        "GetPublicKey" => keys::get_public_key(ctx, f).await,
        "ScheduleKeyDeletion" => keys::schedule_key_deletion(ctx, f).await,
        "CancelKeyDeletion" => keys::cancel_key_deletion(ctx, f).await,
        "Sign" => sign::sign(ctx, f).await,
        "Verify" => sign::verify(ctx, f).await,
        "Encrypt" => crypt::encrypt(ctx, f).await,
        "Decrypt" => crypt::decrypt(ctx, f).await,
        "CreateAlias" => aliases::create_alias(ctx, f).await,
        "UpdateAlias" => aliases::update_alias(ctx, f).await,
        "DeleteAlias" => aliases::delete_alias(ctx, f).await,
        "ListAliases" => aliases::list_aliases(ctx, f).await,
        "EnableKey" => meta::enable_key(ctx, f).await,
        "DisableKey" => meta::disable_key(ctx, f).await,
        "TagResource" => meta::tag_resource(ctx, f).await,
        "UntagResource" => meta::untag_resource(ctx, f).await,
        "ListResourceTags" => meta::list_resource_tags(ctx, f).await,
        other => Err(KmsError::new(
            "UnsupportedOperationException",
            format!("{other} is not an operation nekms's KMS API serves for enclave keys (see docs/kms-api.md)"),
        )),
    }
}

impl Ctx<'_> {
    fn arn(&self, name: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{name}", self.api.region, self.api.account)
    }

    fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.api.region, self.api.account)
    }

    /// A KeyId as KMS takes it (a key id, a key ARN, an alias name or an
    /// alias ARN) as a record name this caller may use.
    async fn resolve(&self, key_id: &str, action: &str) -> Result<String, KmsError> {
        match parse::key_ref(key_id, &self.api.region, &self.api.account)? {
            parse::KeyRef::Record(name) => {
                self.may(&name, action)?;
                Ok(name)
            }
            // An alias of a key this caller may not use is, to it, no alias at all.
            parse::KeyRef::Alias(alias) => match self.state.store.alias(&alias).await.map_err(store_error)? {
                Some(a) if self.caller.may_use(&a.target) => Ok(a.target),
                _ => Err(KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(&alias)))),
            },
        }
    }

    /// Refused unless this caller may use key `name`.
    fn may(&self, name: &str, action: &str) -> Result<(), KmsError> {
        if self.caller.may_use(name) {
            return Ok(());
        }
        Err(KmsError::new(
            "AccessDeniedException",
            format!("User: {} is not authorized to perform: kms:{action} on resource: {}", self.caller.name, self.arn(name)),
        ))
    }

    /// Refused unless this caller may schedule deletions.
    fn deletes(&self, action: &str) -> Result<(), KmsError> {
        if self.caller.delete {
            return Ok(());
        }
        Err(KmsError::new(
            "AccessDeniedException",
            format!("User: {} is not authorized to perform: kms:{action} (the access file does not let it delete keys)", self.caller.name),
        ))
    }

    /// Refused unless this caller may create and alias keys.
    fn manages(&self, action: &str) -> Result<(), KmsError> {
        if self.caller.manage {
            return Ok(());
        }
        Err(KmsError::new(
            "AccessDeniedException",
            format!("User: {} is not authorized to perform: kms:{action} (the access file does not let it manage keys)", self.caller.name),
        ))
    }
}

/// After every check: a dry run says the request would have been served.
fn dry_run(f: &Fields) -> Result<(), KmsError> {
    if f.opt_bool("DryRun")? == Some(true) {
        return Err(KmsError::new("DryRunOperationException", "The request would have succeeded, but the DryRun option is set."));
    }
    Ok(())
}

/// A store failure, as KMS would say it (retryable when it may pass).
fn store_error(e: StoreError) -> KmsError {
    match e {
        StoreError::PendingDeletion { key_id, at } => {
            KmsError::invalid_state(format!("{key_id} is pending deletion (at {})", nekms_store::rfc3339(at)))
        }
        StoreError::Exists(name) => KmsError::new("AlreadyExistsException", format!("{name} already exists")),
        StoreError::Unavailable(m) => KmsError::new("DependencyTimeoutException", format!("the key store is unavailable: {m}")),
        other => KmsError::internal(format!("the key store failed: {other}")),
    }
}

/// Refused unless the enclave opens `record` (see `AppState::opened`):
/// only then are its public key's answers the enclave key's.
async fn opened(ctx: &Ctx<'_>, record: &nekms_keys::KeyRecord) -> Result<(), KmsError> {
    ctx.state.opened(record).await.map_err(|e| match e.remote() {
        // The record itself: altered, or not the enclave's. Anything else (KMS, credentials) may pass.
        Some(r)
            if r.code == ErrorCode::RecordRejected
                || (r.code == ErrorCode::Kms && r.kms_code.as_deref() == Some("InvalidCiphertextException")) =>
        {
            KmsError::invalid_state(format!(
                "{}: the enclave does not open this key's record, so its public key is not vouched for: {}",
                ctx.arn(&record.key_id),
                r.message
            ))
        }
        _ => enclave_error(e),
    })
}

/// An enclave failure, as KMS would say it.
fn enclave_error(e: ClientError) -> KmsError {
    let Some(remote) = e.remote() else {
        return match e {
            ClientError::Connect { .. } | ClientError::Closed(_) | ClientError::Deadline(_) => {
                KmsError::new("DependencyTimeoutException", format!("the enclave is unavailable: {e}"))
            }
            _ => KmsError::internal(format!("the enclave's answer: {e}")),
        };
    };
    let message = remote.message.clone();
    match remote.code {
        ErrorCode::BadRequest => KmsError::validation(message),
        ErrorCode::Refused if message.contains("rule key-usage") => KmsError::key_usage(message),
        ErrorCode::Refused => KmsError::new("AccessDeniedException", message),
        ErrorCode::NoCredentials | ErrorCode::CredentialsExpired | ErrorCode::Unavailable => {
            KmsError::new("DependencyTimeoutException", message)
        }
        ErrorCode::RecordRejected => KmsError::invalid_state(message),
        ErrorCode::Kms => KmsError::new("KMSInvalidStateException", message),
        _ => KmsError::internal(message),
    }
}

/// A request id in the shape KMS's have (a UUID).
fn request_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    uuid_of(b)
}

/// 16 random bytes as a version-4 UUID.
fn uuid_of(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
