//! The privval socket: the proxy's hello, then the validator's requests
//! over plain frames or SecretConnection, one connection per task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cometbft_p2p::{AsyncReadMsg, AsyncSecretConnection, AsyncWriteMsg};
use nekms_privval::frame;
use nekms_privval::proto::privval::Message as Envelope;
use nekms_transport::Stream;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framed;
use crate::Enclave;

/// The proxy's hello: a 4-byte length and JSON, at most this long.
const MAX_HELLO: usize = 4096;

/// What the parent's proxy says first on the privval socket.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub chain_id: String,
    /// The validator's address dialled (`tcp://` means SecretConnection).
    pub validator: String,
    /// For `tcp://`: the node id the validator's SecretConnection key must have.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// A validator connection after the hello: plain frames, or SecretConnection.
enum Link {
    Plain { stream: Stream, buf: Vec<u8> },
    Secret(Box<AsyncSecretConnection<Stream>>),
}

impl Link {
    async fn read(&mut self) -> Result<Option<Envelope>, String> {
        match self {
            Link::Plain { stream, buf } => loop {
                match frame::decode(buf, frame::MAX_REQUEST).map_err(|e| e.to_string())? {
                    Some((used, body)) => {
                        let envelope = Envelope::decode(body).map_err(|e| format!("not a privval message: {e}"))?;
                        buf.drain(..used);
                        return Ok(Some(envelope));
                    }
                    None => {
                        let mut chunk = vec![0u8; 16 * 1024];
                        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                        if n == 0 {
                            return if buf.is_empty() { Ok(None) } else { Err("the stream ended inside a frame".into()) };
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            },
            Link::Secret(sc) => match sc.read_msg::<Envelope>().await {
                Ok(m) => Ok(Some(m)),
                Err(cometbft_p2p::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    async fn write(&mut self, body: Vec<u8>) -> Result<(), String> {
        if body.len() > frame::MAX_REPLY {
            return Err(format!("a reply of {} bytes; the validator reads at most {}", body.len(), frame::MAX_REPLY));
        }
        match self {
            Link::Plain { stream, .. } => {
                let framed = frame::encode(&body, frame::MAX_REPLY).map_err(|e| e.to_string())?;
                stream.write_all(&framed).await.map_err(|e| e.to_string())
            }
            Link::Secret(sc) => {
                let envelope = Envelope::decode(body.as_slice()).map_err(|e| e.to_string())?;
                sc.write_msg(envelope).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Serve proxies' connections on the privval socket. Over vsock only peers
/// on a port below 1024 (which only root on the parent can bind) are served,
/// as on the RPC: any other local user could otherwise take heights ahead
/// of the validator with requests of its own (`reserved_vsock_ports_only`).
pub async fn serve(listener: nekms_transport::Listener, enclave: Arc<Enclave>, reserved_vsock_ports_only: bool) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("privval accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if reserved_vsock_ports_only && nekms_transport::from_reserved_vsock_port(&peer) == Some(false) {
            tracing::warn!(%peer, "privval: refused: not from a reserved vsock port (below 1024, root's)");
            continue;
        }
        let enclave = enclave.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &enclave).await {
                tracing::warn!(%peer, "privval connection: {e}");
            }
        });
    }
}

async fn connection(mut stream: Stream, enclave: &Enclave) -> Result<(), String> {
    let mut framed = framed::Framed { stream, buf: Vec::new() };
    let hello = tokio::time::timeout(Duration::from_secs(10), framed.recv(MAX_HELLO))
        .await
        .map_err(|_| "no hello".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: Hello = serde_json::from_slice(&hello).map_err(|e| format!("the hello: {e}"))?;
    let Some(chain) = enclave.privval.chain(&hello.chain_id) else {
        let _ = framed.send(format!("refused: chain {:?} is not served", hello.chain_id).as_bytes()).await;
        return Err(format!("chain {:?} is not served", hello.chain_id));
    };
    let secret = hello.validator.starts_with("tcp://");
    if secret && chain.identity.is_none() {
        let _ = framed.send(b"refused: a tcp:// validator needs the chain's SecretConnection identity").await;
        return Err("a tcp:// validator without an identity".into());
    }
    framed.send(b"ok").await.map_err(|e| e.to_string())?;
    stream = framed.stream;
    let leftover = framed.buf;
    let slot = chain.slot.clone();
    let metrics = &slot.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let mut link = if secret {
            if !leftover.is_empty() {
                return Err("bytes before the SecretConnection handshake".to_string());
            }
            let identity = chain.identity.as_ref().expect("checked");
            let sc = tokio::time::timeout(Duration::from_secs(10), AsyncSecretConnection::new(stream, identity))
                .await
                .map_err(|_| "the SecretConnection handshake timed out".to_string())?
                .map_err(|e| format!("the SecretConnection handshake: {e}"))?;
            if let Some(want) = &hello.node_id {
                let got = sc.peer_public_key().peer_id().to_string();
                if !got.eq_ignore_ascii_case(want) {
                    return Err(format!("the validator's SecretConnection key has node id {got}, not {want}"));
                }
            }
            Link::Secret(Box::new(sc))
        } else {
            Link::Plain { stream, buf: leftover }
        };
        drop(chain);
        while let Some(envelope) = link.read().await? {
            let reply = enclave.privval_answer(&hello.chain_id, envelope).await?;
            link.write(reply).await?;
        }
        Ok(())
    }
    .await;
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    result
}
