//! The SDK's HTTP client over the enclave's channel.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nekms_transport::Address;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Which certificate authorities the enclave trusts for the KMS endpoint.
#[derive(Clone)]
pub enum TlsRoots {
    /// The public web PKI (bundled, so the enclave needs no files): real AWS KMS.
    WebPki,
    /// These CA certificates (PEM): the local KMS's development CA.
    Pem(String),
}

/// An HTTP client whose every connection goes through `channel`.
#[derive(Clone)]
pub struct ChannelHttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Address,
    tls: TlsConnector,
    timeout: Duration,
    /// Idle keep-alive connections, by the endpoint authority they serve.
    idle: Mutex<Vec<(String, SendRequest<Full<Bytes>>)>>,
}

impl fmt::Debug for ChannelHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelHttpClient").field("channel", &self.inner.channel.to_string()).finish()
    }
}

impl ChannelHttpClient {
    pub fn new(channel: Address, roots: TlsRoots) -> Result<ChannelHttpClient, String> {
        let mut store = rustls::RootCertStore::empty();
        match roots {
            TlsRoots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TlsRoots::Pem(pem) => {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    store.add(cert.map_err(|e| format!("CA certificate: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
                }
                if store.is_empty() {
                    return Err("no CA certificate in the given PEM".into());
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ChannelHttpClient {
            inner: Arc::new(Inner {
                channel,
                tls: TlsConnector::from(Arc::new(config)),
                timeout: Duration::from_secs(10),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn channel(&self) -> &Address {
        &self.inner.channel
    }
}

impl HttpClient for ChannelHttpClient {
    fn http_connector(&self, _settings: &HttpConnectorSettings, _components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for ChannelHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move { inner.send(request).await })
    }
}

fn io_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ConnectorError {
    ConnectorError::io(e.into())
}

impl Inner {
    async fn connect(&self, scheme: &str, host: &str) -> Result<SendRequest<Full<Bytes>>, ConnectorError> {
        let stream = tokio::time::timeout(self.timeout, nekms_transport::connect(&self.channel))
            .await
            .map_err(|_| ConnectorError::timeout(format!("connecting to the KMS proxy at {} timed out", self.channel).into()))?
            .map_err(|e| io_error(format!("cannot reach the KMS proxy at {}: {e}", self.channel)))?;
        let sender = if scheme == "https" {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| io_error(format!("{host}: {e}")))?;
            let tls = tokio::time::timeout(self.timeout, self.tls.connect(name, stream))
                .await
                .map_err(|_| ConnectorError::timeout(format!("TLS with {host} timed out").into()))?
                .map_err(|e| io_error(format!("TLS with {host} through {} failed: {e}", self.channel)))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(io_error)?;
            tokio::spawn(conn);
            sender
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io_error)?;
            tokio::spawn(conn);
            sender
        };
        Ok(sender)
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let uri: hyper::Uri = request.uri().parse().map_err(|e| ConnectorError::other(format!("bad request URI: {e}").into(), None))?;
        let scheme = uri.scheme_str().unwrap_or("https").to_owned();
        let host =
            uri.host().ok_or_else(|| ConnectorError::other("request URI has no host".into(), None))?.trim_matches(['[', ']']).to_owned();
        let authority = format!("{scheme}://{}", uri.authority().map(|a| a.as_str()).unwrap_or(&host));
        let body = request
            .body()
            .bytes()
            .ok_or_else(|| ConnectorError::other("streaming request bodies are not supported".into(), None))?
            .to_vec();
        let mut builder = hyper::Request::builder().method(request.method()).uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let mut has_host = false;
        for (name, value) in request.headers() {
            has_host |= name.eq_ignore_ascii_case("host");
            builder = builder.header(name, value);
        }
        if !has_host {
            builder = builder.header("host", uri.authority().map(|a| a.as_str()).unwrap_or(&host));
        }
        let req = builder.body(Full::new(Bytes::from(body))).map_err(|e| ConnectorError::other(e.into(), None))?;

        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter().position(|(a, s)| *a == authority && !s.is_closed()).map(|i| idle.swap_remove(i).1)
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => self.connect(&scheme, &host).await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect(&scheme, &host).await?;
            sender.ready().await.map_err(io_error)?;
        }
        let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
            .await
            .map_err(|_| ConnectorError::timeout("KMS did not answer within 60 s".into()))?
            .map_err(io_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.map_err(io_error)?.to_bytes();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < 16 {
                idle.push((authority, sender));
            }
        }
        let mut out =
            HttpResponse::new(StatusCode::try_from(status).map_err(|e| ConnectorError::other(e.into(), None))?, SdkBody::from(bytes));
        for (name, value) in headers.iter() {
            if let Ok(v) = value.to_str() {
                out.headers_mut().append(name.as_str().to_owned(), v.to_owned());
            }
        }
        Ok(out)
    }
}
