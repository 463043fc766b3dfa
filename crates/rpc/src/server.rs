//! Serving the RPC: one task per connection, one task per call.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nekms_transport::{FrameCodec, FrameError, Listener, Stream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use crate::protocol::{self, ClientFrame, ErrorCode, Incoming, Request, Response, RpcError, ServerFrame, PROTOCOL, VERSIONS};
use crate::wire::{write_frames, zeroized_after, Outgoing};

/// What answers the calls.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Response, RpcError>> + Send;
}

/// Limits and names for a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `nekms-enclave 0.1.0`, sent in `Welcome`.
    pub agent: String,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Calls one connection may have in flight; past it the server stops reading until one finishes.
    pub max_in_flight: usize,
    /// How long a new connection has to say Hello.
    pub handshake_timeout: Duration,
    /// Refuse vsock peers whose port is not below 1024. vsock carries no
    /// peer credentials; a reserved port, which only root (or
    /// `CAP_NET_BIND_SERVICE`) can bind, is how the enclave tells root on the
    /// parent from any local user. Unix and TCP peers are not affected.
    pub reserved_vsock_ports_only: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            agent: format!("nekms-rpc {}", env!("CARGO_PKG_VERSION")),
            max_frame: 1 << 20,
            max_in_flight: 64,
            handshake_timeout: Duration::from_secs(10),
            reserved_vsock_ports_only: true,
        }
    }
}

/// Serve every connection on `listener` until the task is dropped.
pub async fn serve<H: Handler>(listener: Listener, handler: Arc<H>, options: ServerOptions) {
    serve_each(listener, move || handler.clone(), options).await
}

/// As [`serve`], with a handler made by `handler` for each connection (for
/// state that belongs to one client, such as the handles it opened).
pub async fn serve_each<H: Handler>(listener: Listener, handler: impl Fn() -> Arc<H>, options: ServerOptions) {
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (handler, options) = (handler(), options.clone());
                    let refusal = match (options.reserved_vsock_ports_only, nekms_transport::from_reserved_vsock_port(&peer)) {
                        (true, Some(false)) => Some(format!(
                            "{peer}: this port serves only connections from a vsock port below 1024, which only root (or CAP_NET_BIND_SERVICE) can bind; run the client as root"
                        )),
                        _ => None,
                    };
                    connections.spawn(async move {
                        if let Err(e) = serve_checked(stream, handler, options, refusal).await {
                            tracing::warn!(%peer, "RPC connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("RPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Why a connection ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no Hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Encodes frames for the writer task, turning a reply too large to send into an error reply.
#[derive(Clone)]
struct Sender {
    tx: mpsc::Sender<Outgoing>,
    max_frame: usize,
}

impl Sender {
    async fn send(&self, frame: ServerFrame) -> Result<(), ()> {
        let mut body = Outgoing::new(protocol::encode(&frame));
        if body.len() > self.max_frame {
            if let ServerFrame::Reply { id, .. } = frame {
                let e = RpcError::new(
                    ErrorCode::Internal,
                    format!("the reply ({} bytes) exceeds the frame limit of {} bytes", body.len(), self.max_frame),
                );
                body = Outgoing::new(protocol::encode(&ServerFrame::Reply { id, outcome: Err(e) }));
            }
        }
        self.tx.send(body).await.map_err(|_| ())
    }
}

/// Run the protocol on one accepted stream.
pub async fn serve_connection<H: Handler>(stream: Stream, handler: Arc<H>, options: Arc<ServerOptions>) -> Result<(), ConnectionError> {
    serve_checked(stream, handler, options, None).await
}

/// Run the protocol on one accepted stream; with a `refusal`, answer the
/// client's Hello with a Goodbye saying it, and close.
pub async fn serve_checked<H: Handler>(
    stream: Stream,
    handler: Arc<H>,
    options: Arc<ServerOptions>,
    refusal: Option<String>,
) -> Result<(), ConnectionError> {
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::new(options.max_frame));
    let (tx, rx) = mpsc::channel::<Outgoing>(options.max_in_flight.max(1) * 2);
    let writer = tokio::spawn(write_frames(write, rx));
    let max_frame = options.max_frame;
    let tx = Sender { tx, max_frame };

    let result = async {
        let first = tokio::time::timeout(options.handshake_timeout, frames.next())
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(options.handshake_timeout))?;
        let hello = match first {
            None => return Ok(()),
            Some(frame) => zeroized_after(frame?, protocol::decode::<ClientFrame>),
        };
        let version = match hello {
            Ok(ClientFrame::Hello(h)) if h.protocol == PROTOCOL => protocol::negotiate(&h.versions).ok_or_else(|| {
                format!(
                    "no common protocol version: the server speaks {VERSIONS:?}, the client offered {:?}",
                    &h.versions[..h.versions.len().min(8)]
                )
            }),
            Ok(ClientFrame::Hello(h)) => {
                let spoken: String = h.protocol.chars().take(64).collect();
                Err(format!("the client speaks {spoken:?}, not {PROTOCOL}"))
            }
            Ok(ClientFrame::Call { .. }) => Err("the first frame must be Hello".to_string()),
            Err(e) => Err(format!("the first frame must be Hello: {e}")),
        };
        let version = match (version, refusal) {
            (Ok(_), Some(message)) => Err(message),
            (v, _) => v,
        };
        let version = match version {
            Ok(v) => v,
            Err(message) => {
                let _ = tx.send(ServerFrame::Goodbye { message: message.clone() }).await;
                return Err(ConnectionError::Refused(message));
            }
        };
        let welcome = ServerFrame::Welcome {
            version,
            agent: options.agent.clone(),
            max_frame: options.max_frame as u32,
            max_in_flight: options.max_in_flight as u32,
        };
        if tx.send(welcome).await.is_err() {
            return Ok(());
        }

        let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let mut calls = JoinSet::new();
        let outcome = loop {
            let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let frame = loop {
                tokio::select! {
                    frame = frames.next() => break frame,
                    Some(_) = calls.join_next() => {}
                }
            };
            let frame = match frame {
                None => break Ok(()),
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let _ = tx.send(ServerFrame::Goodbye { message: e.to_string() }).await;
                    break Err(e.into());
                }
            };
            let (id, request) = match zeroized_after(frame, protocol::decode_incoming) {
                Incoming::Known { id, request } => (id, Ok(request)),
                Incoming::Other(Ok(ClientFrame::Call { id, request })) => (id, protocol::request_from_value(request)),
                Incoming::Other(Ok(ClientFrame::Hello(_))) => {
                    let message = "a second Hello on an open connection".to_string();
                    let _ = tx.send(ServerFrame::Goodbye { message: message.clone() }).await;
                    break Err(ConnectionError::Refused(message));
                }
                Incoming::Other(Err(e)) => {
                    let message = format!("the frame is not a Call: {e}");
                    let _ = tx.send(ServerFrame::Goodbye { message: message.clone() }).await;
                    break Err(ConnectionError::Refused(message));
                }
            };
            if !in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
                let e = RpcError::bad_request(format!("call id {id} is already in flight on this connection"));
                let _ = tx.send(ServerFrame::Reply { id, outcome: Err(e) }).await;
                continue;
            }
            let (handler, tx, in_flight) = (handler.clone(), tx.clone(), in_flight.clone());
            calls.spawn(async move {
                let outcome = match request {
                    Ok(request) => {
                        let op = request.name();
                        let outcome = handler.handle(request).await;
                        match &outcome {
                            Ok(_) => tracing::debug!(op, id, "call answered"),
                            Err(e) => tracing::debug!(op, id, code = ?e.code, "call refused: {}", e.message),
                        }
                        outcome
                    }
                    Err(e) => Err(e),
                };
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                let _ = tx.send(ServerFrame::Reply { id, outcome }).await;
                drop(permit);
            });
        };
        // Calls already made still get their replies, even after the client stopped writing.
        while calls.join_next().await.is_some() {}
        outcome
    }
    .await;
    drop(tx);
    let _ = writer.await;
    result
}
