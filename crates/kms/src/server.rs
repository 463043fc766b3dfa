//! The HTTP(S) front end: the KMS JSON 1.1 protocol.
//!
//! `POST /` with `X-Amz-Target: TrentService.<Operation>` and a JSON body.
//! Each request is bounded before it is read ([`MAX_BODY`]), authenticated
//! with SigV4, dispatched, logged to the audit log, and answered with
//! `Content-Type: application/x-amz-json-1.1`, `x-amzn-RequestId` and an
//! accurate `Date` (SDKs correct clock skew from it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::audit::{self, AuditFacts, AuditLog, Identity};
use crate::error::KmsError;
use crate::request::MAX_BODY;
use crate::service::{uuid, Caller, Kms};
use crate::sigv4::{self, SignedRequest};

/// The server's shared state.
pub struct Server {
    pub kms: Kms,
    pub audit: Option<AuditLog>,
    sigv4: sigv4::Verifier,
}

/// The answer to one request.
pub struct Handled {
    pub status: u16,
    pub body: Vec<u8>,
    pub request_id: String,
    /// The exception name, for the `x-amzn-ErrorType` header.
    pub error_type: Option<&'static str>,
}

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    Http(SocketAddr),
    Https(SocketAddr),
    Unix(PathBuf),
}

impl Server {
    pub fn new(kms: Kms, audit: Option<AuditLog>) -> Server {
        let sigv4 = sigv4::Verifier::new(kms.config.region.clone(), "kms");
        Server { kms, audit, sigv4 }
    }

    /// Handle one HTTP request (the whole body already read).
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
        peer: &str,
        secure: bool,
    ) -> Handled {
        let now = OffsetDateTime::now_utc();
        let request_id = uuid();
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let op = header("x-amz-target").and_then(|t| t.strip_prefix("TrentService.")).unwrap_or("").to_owned();
        let user_agent = header("user-agent").unwrap_or("").to_owned();
        let mut facts = AuditFacts::default();
        let mut caller: Option<Caller> = None;
        let result = (|| {
            if method != "POST" || path != "/" {
                return Err(KmsError::new(
                    "UnknownOperationException",
                    format!("{method} {path} is not a KMS operation; send POST / with X-Amz-Target"),
                ));
            }
            let signed = SignedRequest { method, path, query, headers, body };
            let auth = self
                .sigv4
                .verify(&signed, now, |akid| self.kms.credential(akid))
                .map_err(|e| KmsError::new(e.aws_type(), e.to_string()))?;
            let c = Caller {
                principal_arn: auth.principal_arn,
                access_key_id: auth.access_key_id,
                source_ip: peer.to_owned(),
                secure_transport: secure,
            };
            caller = Some(c.clone());
            if op.is_empty() {
                return Err(KmsError::new("UnknownOperationException", "X-Amz-Target must be TrentService.<Operation>"));
            }
            self.kms.call(&op, &c, body, now, &mut facts)
        })();
        if let Some(log) = &self.audit {
            let who = Identity {
                arn: caller.as_ref().map(|c| c.principal_arn.as_str()),
                account: &self.kms.config.account,
                access_key_id: caller.as_ref().map(|c| c.access_key_id.as_str()),
            };
            let error = result.as_ref().err().map(|e| (e.kind, e.message.as_str()));
            let name = if op.is_empty() { "(none)" } else { op.as_str() };
            log.write(&audit::event(now, name, &self.kms.config.region, &who, peer, &user_agent, &request_id, &facts, error));
        }
        match result {
            Ok(v) => Handled { status: 200, body: serde_json::to_vec(&v).expect("JSON"), request_id, error_type: None },
            Err(e) => Handled { status: e.status(), body: e.body(), request_id, error_type: Some(e.kind) },
        }
    }
}

fn response(status: u16, body: Vec<u8>, request_id: &str, error_type: Option<&str>) -> Response<Full<Bytes>> {
    let date = httpdate(OffsetDateTime::now_utc());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/x-amz-json-1.1"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Ok(v) = HeaderValue::from_str(&date) {
        h.insert("date", v);
    }
    if let Some(t) = error_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert("x-amzn-errortype", t);
    }
    r
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    t.format(f).unwrap_or_default()
}

async fn serve_http(server: Arc<Server>, req: Request<Incoming>, peer: String, secure: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    let too_large = |rid: &str| {
        let e = KmsError::new("RequestEntityTooLarge", format!("The request body exceeds {MAX_BODY} bytes"));
        response(e.status(), e.body(), rid, Some(e.kind))
    };
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok(too_large(&uuid()));
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Ok(too_large(&uuid())),
        Err(_) => {
            let e = KmsError::serialization("The request body could not be read");
            return Ok(response(e.status(), e.body(), &uuid(), Some(e.kind)));
        }
    };
    let headers: Vec<(String, String)> =
        parts.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned()))).collect();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let s = server.clone();
    // The handler does short SQLite work (and an fsync on writes): run it on
    // this worker without a thread hand-off, letting tokio move other tasks.
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio::task::block_in_place(move || s.handle(&method, &path, &query, &headers, &body, &peer, secure))
    }));
    Ok(match handled {
        Ok(h) => response(h.status, h.body, &h.request_id, h.error_type),
        Err(_) => {
            let e = KmsError::internal("the request handler failed");
            response(e.status(), e.body(), &uuid(), Some(e.kind))
        }
    })
}

fn spawn_connection<IO>(server: Arc<Server>, io: IO, peer: String, secure: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| serve_http(server.clone(), req, peer.clone(), secure));
        let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(io), svc).await;
    });
}

/// TLS settings from a certificate chain and key (PEM).
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| format!("TLS certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("TLS key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bound listener.
pub enum Bound {
    Tcp(TcpListener, Option<TlsAcceptor>),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// The TCP address actually bound (port 0 resolved).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l, _) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        match self {
            Bound::Tcp(l, tls) => {
                let a = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                format!("{}://{a}", if tls.is_some() { "https" } else { "http" })
            }
            Bound::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }
}

/// Bind every listener (before any is served, so errors come first).
pub async fn bind(listen: &[Listen], tls: Option<TlsAcceptor>) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for l in listen {
        out.push(match l {
            Listen::Http(a) => Bound::Tcp(TcpListener::bind(a).await.map_err(|e| format!("cannot listen on {a}: {e}"))?, None),
            Listen::Https(a) => {
                let t = tls.clone().ok_or("HTTPS needs a TLS certificate")?;
                Bound::Tcp(TcpListener::bind(a).await.map_err(|e| format!("cannot listen on {a}: {e}"))?, Some(t))
            }
            Listen::Unix(p) => {
                if p.exists() && std::os::unix::net::UnixStream::connect(p).is_err() {
                    let _ = std::fs::remove_file(p);
                }
                Bound::Unix(UnixListener::bind(p).map_err(|e| format!("cannot listen on {}: {e}", p.display()))?, p.clone())
            }
        });
    }
    Ok(out)
}

/// Serve one bound listener until the task is dropped.
pub async fn serve(server: Arc<Server>, bound: Bound) {
    match bound {
        Bound::Tcp(listener, tls) => loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let peer = peer.ip().to_string();
            match &tls {
                None => spawn_connection(server.clone(), stream, peer, false),
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Ok(Ok(tls_stream)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await
                        {
                            spawn_connection(server, tls_stream, peer, true);
                        }
                    });
                }
            }
        },
        Bound::Unix(listener, _) => loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            spawn_connection(server.clone(), stream, "unix".into(), false);
        },
    }
}
