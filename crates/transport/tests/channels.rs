//! Traffic over the development channels (Unix sockets and loopback TCP).
//! AF_VSOCK is never opened here: these machines have no loopback vsock.

use futures::{SinkExt, StreamExt};
use nekms_transport::{connect, Address, FrameCodec, FrameError, Listener};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

async fn echo_server(listener: Listener, connections: usize) {
    for _ in 0..connections {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, FrameCodec::new(64 * 1024));
            while let Some(Ok(frame)) = framed.next().await {
                if framed.send(frame).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn round_trips(addr: &Address) {
    let mut clients = Vec::new();
    for n in 0..8u8 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut framed = Framed::new(connect(&addr).await.unwrap(), FrameCodec::new(64 * 1024));
            for i in 0..20u8 {
                let body = vec![n ^ i; (i as usize) * 1000];
                framed.send(&body[..]).await.unwrap();
                let back = framed.next().await.unwrap().unwrap();
                assert_eq!(&back[..], &body[..]);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test]
async fn frames_echo_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let addr: Address = format!("unix://{}/echo.sock", dir.path().display()).parse().unwrap();
    let listener = Listener::bind(&addr).await.unwrap();
    let server = tokio::spawn(echo_server(listener, 8));
    round_trips(&addr).await;
    server.await.unwrap();
}

#[tokio::test]
async fn frames_echo_over_loopback_tcp() {
    let listener = Listener::bind(&Address::loopback_tcp(0)).await.unwrap();
    let addr = listener.local_address().clone();
    assert!(matches!(&addr, Address::Tcp(sa) if sa.port() != 0));
    let server = tokio::spawn(echo_server(listener, 8));
    round_trips(&addr).await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_peer_announcing_four_gib_gets_an_error_not_an_allocation() {
    let listener = Listener::bind(&Address::loopback_tcp(0)).await.unwrap();
    let addr = listener.local_address().clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::default());
        framed.next().await.unwrap().unwrap_err()
    });
    let mut raw = connect(&addr).await.unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0]).await.unwrap();
    let err = server.await.unwrap();
    assert!(matches!(err, FrameError::TooLarge { len: 0xffff_ffff, .. }), "{err}");
}

#[tokio::test]
async fn a_peer_hanging_up_mid_frame_is_reported_as_truncated() {
    let listener = Listener::bind(&Address::loopback_tcp(0)).await.unwrap();
    let addr = listener.local_address().clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::default());
        framed.next().await.unwrap().unwrap_err()
    });
    let mut raw = connect(&addr).await.unwrap();
    raw.write_all(&[0, 0, 0, 10, b'a', b'b', b'c']).await.unwrap();
    drop(raw);
    let err = server.await.unwrap();
    assert!(matches!(err, FrameError::Truncated { expected: 10, received: 3 }), "{err}");
}

#[tokio::test]
async fn a_stale_unix_socket_is_replaced_but_a_live_one_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let addr = Address::Unix(path.clone());
    // A socket file whose owner is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = Listener::bind(&addr).await.expect("stale socket replaced");
    let err = Listener::bind(&addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    drop(live);
    assert!(!path.exists(), "listener removes its socket file");
}

#[tokio::test]
async fn connecting_to_nothing_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Address::Unix(dir.path().join("nobody.sock"));
    let err = connect(&addr).await.unwrap_err();
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}
