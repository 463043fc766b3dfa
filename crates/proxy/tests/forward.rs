//! The proxy over real sockets: a Unix socket in front, TCP behind.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nekms_proxy::{Allowed, Allowlist, IpVersion, Proxy, ProxyConfig, ProxyError};
use nekms_transport::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn config(dir: &std::path::Path, host: &str, port: u16) -> ProxyConfig {
    ProxyConfig {
        listen: format!("unix://{}", dir.join("proxy.sock").display()).parse::<Address>().unwrap(),
        remote_host: host.into(),
        remote_port: port,
        ip_version: IpVersion::Any,
        max_connections: 1024,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(300),
    }
}

fn allow(port: u16) -> Allowlist {
    Allowlist { source: "test".into(), entries: vec![Allowed { address: "127.0.0.1".into(), port }] }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_streams_arrive_intact() {
    let port = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::bind(config(dir.path(), "127.0.0.1", port), &allow(port)).await.unwrap();
    let stats = proxy.stats.clone();
    tokio::spawn(proxy.run());
    let sock = dir.path().join("proxy.sock");
    let clients: Vec<_> = (0..64u32)
        .map(|i| {
            let sock = sock.clone();
            tokio::spawn(async move {
                let data: Vec<u8> = (0..256 * 1024u32).map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8).collect();
                let s = UnixStream::connect(&sock).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let sent = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back, data, "stream {i}");
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 64);
    assert_eq!(stats.bytes_up.load(Ordering::Relaxed), 64 * 256 * 1024);
}

#[tokio::test]
async fn a_remote_outside_the_allowlist_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let err = Proxy::bind(config(dir.path(), "evil.example.com", 443), &Allowlist::default_kms()).await.err().unwrap();
    assert!(matches!(err, ProxyError::NotAllowed { .. }));
    let msg = err.to_string();
    assert!(msg.contains("evil.example.com:443") && msg.contains("not in the allowlist"), "{msg}");
    assert!(!dir.path().join("proxy.sock").exists(), "nothing was bound");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let port = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "127.0.0.1", port);
    c.max_connections = 2;
    let proxy = Proxy::bind(c, &allow(port)).await.unwrap();
    let stats = proxy.stats.clone();
    tokio::spawn(proxy.run());
    let sock = dir.path().join("proxy.sock");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    let mut third = UnixStream::connect(&sock).await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut b)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed");
    assert_eq!(stats.refused_busy.load(Ordering::Relaxed), 1);
    // Closing one frees a slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = UnixStream::connect(&sock).await.unwrap();
    again.write_all(b"pong").await.unwrap();
    let mut b = [0u8; 4];
    again.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_remote_or_wrong_ip_version_closes_the_stream() {
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::bind(config(dir.path(), "127.0.0.1", dead), &allow(dead)).await.unwrap();
    let stats = proxy.stats.clone();
    tokio::spawn(proxy.run());
    let mut s = UnixStream::connect(dir.path().join("proxy.sock")).await.unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).await.unwrap_or(0), 0);
    assert_eq!(stats.failed_connect.load(Ordering::Relaxed), 1);

    let port = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "127.0.0.1", port);
    c.ip_version = IpVersion::V6;
    let proxy = Proxy::bind(c, &allow(port)).await.unwrap();
    let stats = proxy.stats.clone();
    tokio::spawn(proxy.run());
    let mut s = UnixStream::connect(dir.path().join("proxy.sock")).await.unwrap();
    assert_eq!(s.read(&mut b).await.unwrap_or(0), 0);
    assert_eq!(stats.failed_connect.load(Ordering::Relaxed), 1, "127.0.0.1 has no IPv6 address");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_quiet_both_ways_is_closed_and_a_busy_one_is_not() {
    let port = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "127.0.0.1", port);
    c.idle_timeout = Duration::from_millis(400);
    let proxy = Proxy::bind(c, &allow(port)).await.unwrap();
    let stats = proxy.stats.clone();
    tokio::spawn(proxy.run());
    let sock = dir.path().join("proxy.sock");
    // A client that connects and says nothing (a slot held for nothing).
    let mut quiet = UnixStream::connect(&sock).await.unwrap();
    // A client that talks every 100 ms for 1.5 s: never idle that long.
    let mut busy = UnixStream::connect(&sock).await.unwrap();
    for _ in 0..15 {
        busy.write_all(b"tick").await.unwrap();
        let mut b = [0u8; 4];
        busy.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"tick");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut b)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the quiet stream is closed");
    assert_eq!(stats.closed_idle.load(Ordering::Relaxed), 1);
    busy.write_all(b"tock").await.unwrap();
    let mut b = [0u8; 4];
    busy.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"tock", "the busy stream still forwards");
}
