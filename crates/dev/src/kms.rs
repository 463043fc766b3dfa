//! The local KMS served in this process ([`InProcessKms`]), and a small
//! SigV4-signing KMS client over keep-alive HTTP/1.1 ([`Conn`]) for the
//! demo, `dev up` and the benchmarks (the tests use the real AWS SDKs
//! instead).

use std::net::SocketAddr;

use anyhow::bail;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use nekms_kms::sigv4::{self, Credential};
use serde_json::Value;
use tokio::net::TcpStream;

/// One target: where it is and how to sign for it.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub credential: Credential,
    /// Connect here instead of `addr` (a proxy in front of it); `addr` still names the host signed for.
    pub via: Option<nekms_transport::Address>,
}

/// A keep-alive HTTP/1.1 connection that sends signed KMS requests.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: Target,
}

impl Conn {
    pub async fn open(target: &Target) -> anyhow::Result<Conn> {
        let sender = match &target.via {
            Some(address) => {
                let stream = nekms_transport::connect(address).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let stream = TcpStream::connect(target.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(Conn { sender, target: target.clone() })
    }

    /// Call `op`; a KMS error is an error naming its type.
    pub async fn call(&mut self, op: &str, body: &Value) -> anyhow::Result<Value> {
        match self.call_raw(op, body).await? {
            (200, v) => Ok(v),
            (status, v) => bail!("{} {op}: HTTP {status}: {v}", self.target.name),
        }
    }

    /// Call `op`: the HTTP status and the JSON body.
    pub async fn call_raw(&mut self, op: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let body = serde_json::to_vec(body)?;
        let mut headers = vec![
            ("host".to_owned(), self.target.addr.to_string()),
            ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target".to_owned(), format!("TrentService.{op}")),
        ];
        sigv4::sign("POST", "/", "", &mut headers, &body, &self.target.credential, "us-east-1", "kms", time::OffsetDateTime::now_utc());
        let mut req = hyper::Request::post("/");
        for (n, v) in &headers {
            req = req.header(n, v);
        }
        // Servers that close after each response (moto's HTTP/1.0 server) get a new connection.
        if self.sender.ready().await.is_err() {
            *self = Conn::open(&self.target).await?;
            self.sender.ready().await?;
        }
        let resp = self.sender.send_request(req.body(Full::new(Bytes::from(body)))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status.as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// A local KMS served in this process on ephemeral loopback ports, HTTP and HTTPS.
pub struct InProcessKms {
    pub addr: SocketAddr,
    /// HTTPS with the development TLS certificate (localhost), as the enclave reaches it.
    pub https_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcessKms {
    /// Serve the local KMS for `dev` with its state in `data` (audit log in `data/audit.log` when `audit`).
    pub async fn start(dev: &nekms_devworld::DevDir, data: &std::path::Path, audit: bool) -> anyhow::Result<InProcessKms> {
        let config = nekms_kms::run::config_from_dev(dev, false, std::time::Duration::from_secs(300)).map_err(anyhow::Error::msg)?;
        let kms = nekms_kms::service::Kms::open(data, config)?;
        let log = if audit { Some(nekms_kms::audit::AuditLog::open(&data.join("audit.log"))?) } else { None };
        let server = std::sync::Arc::new(nekms_kms::server::Server::new(kms, log));
        let tls = dev.kms_tls()?;
        let acceptor = nekms_kms::server::tls_acceptor(&tls.cert_pem, &tls.key_pem).map_err(anyhow::Error::msg)?;
        let listen = [nekms_kms::server::Listen::Http("127.0.0.1:0".parse()?), nekms_kms::server::Listen::Https("127.0.0.1:0".parse()?)];
        let bound = nekms_kms::server::bind(&listen, Some(acceptor)).await.map_err(anyhow::Error::msg)?;
        let addr = bound[0].tcp_addr().expect("a TCP listener");
        let https_addr = bound[1].tcp_addr().expect("a TCP listener");
        let tasks = bound.into_iter().map(|b| tokio::spawn(nekms_kms::server::serve(server.clone(), b))).collect();
        Ok(InProcessKms { addr, https_addr, tasks })
    }

    /// A target signed as the development principal `name`.
    pub fn target(&self, dev: &nekms_devworld::DevDir, name: &'static str) -> anyhow::Result<Target> {
        Target::principal(dev, self.addr, name)
    }
}

impl Target {
    /// The local KMS's plain HTTP listener at `addr`, signed as the development principal `name`.
    pub fn principal(dev: &nekms_devworld::DevDir, addr: SocketAddr, name: &'static str) -> anyhow::Result<Target> {
        let p = dev
            .principals()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("no principal {name} in principals.toml"))?;
        Ok(Target { name, addr, credential: nekms_kms::dev_credential(&p), via: None })
    }
}

impl Drop for InProcessKms {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
