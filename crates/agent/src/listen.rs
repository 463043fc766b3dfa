//! The accept loop, with the limits a listener open to local callers needs:
//! a connection must send its request headers within `header_timeout` (a
//! client that never finishes them is dropped), at most `max_connections`
//! are open at once (the next gets a 503 in the API's error shape and is
//! closed), and on shutdown every connection finishes its request first.
//! Bodies have their own limits in [`crate::errors::JsonBody`] and
//! [`crate::server::limit_body`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::server::Peer;

/// How long and how many.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From a connection's start (or its previous response) to the end of a request's headers.
    pub header_timeout: Duration,
    /// From a request's headers to the end of its body.
    pub body_timeout: Duration,
    /// Connections open at once on the listener.
    pub max_connections: usize,
    /// Requests one caller may have in progress at once.
    pub max_per_caller: usize,
    /// How long a call to the enclave may take before the request gets a retryable 503.
    pub enclave_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_per_caller: 16,
            enclave_deadline: Duration::from_secs(30),
        }
    }
}

/// A listener of either kind.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Box<dyn Io>, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), Peer { uid: None }))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let uid = s.peer_cred().ok().map(|c| c.uid());
                Ok((Box::new(s), Peer { uid }))
            }
        }
    }
}

const BUSY: &str =
    r#"{"error":{"code":"too_many_connections","message":"the agent has as many connections open as it takes; retry","retryable":true}}"#;

/// The connections the agent's listeners hold together (`limits.max_connections`).
pub(crate) fn connection_slots(limits: &Limits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_connections))
}

/// Serve `app` on `listener`, each connection holding one of `open`'s
/// slots (shared by every listener of the agent), until `shutdown`
/// completes; then let this listener's connections finish.
pub(crate) async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    open: Arc<Semaphore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mine = Arc::new(tokio::sync::Notify::new());
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("agent: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(io));
            continue;
        };
        let (app, mut stop) = (app.clone(), stop_rx.clone());
        let (mine, live) = (mine.clone(), live.clone());
        live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let _permit = permit;
            let _done = Done(live, mine);
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move {
                    use tower_service::Service;
                    app.call(request.map(axum::body::Body::new)).await
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every connection of this listener closed, or ten seconds.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while live.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            mine.notified().await;
        }
    })
    .await;
}

/// A connection's end: one fewer live, and the listener told.
struct Done(Arc<std::sync::atomic::AtomicUsize>, Arc<tokio::sync::Notify>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.1.notify_one();
    }
}

/// Over the cap: a 503 the client can read, then the connection closes.
async fn refuse(mut io: Box<dyn Io>) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), io.write_all(response.as_bytes())).await;
    let _ = io.shutdown().await;
}
