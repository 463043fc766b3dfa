//! `nekms proxy`: the parent's forwarder for the enclave's outbound traffic,
//! in the spirit of AWS's `vsock-proxy`.
//!
//! It listens on one address (a vsock port in production, a Unix socket in
//! development) and forwards every accepted connection, byte for byte, to
//! one remote `host:port` over TCP. The remote must be in the allowlist (the
//! same YAML shape vsock-proxy reads); a remote that is not is refused when
//! the proxy starts, with a message naming it and the allowlist. The host
//! name is resolved for each connection (DNS answers change), restricted to
//! IPv4 or IPv6 when asked. At most `max_connections` streams are open at
//! once; beyond that a connection is closed at once and the refusal logged,
//! so a flood cannot exhaust the parent's file descriptors.
//!
//! The proxy never looks inside the stream: the enclave speaks TLS end to
//! end with KMS through it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nekms_transport::{Address, Listener};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// What can stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a vsock-proxy allowlist ({detail}); expected `allowlist: [{{address: HOST, port: PORT}}]`")]
    Allowlist { path: String, detail: String },
    #[error("{host}:{port} is not in the allowlist {path} ({entries}); refusing to forward to it")]
    NotAllowed { host: String, port: u16, path: String, entries: String },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
}

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    pub address: String,
    pub port: u16,
}

#[derive(serde::Deserialize)]
struct AllowlistFile {
    allowlist: Vec<Allowed>,
}

/// The remotes a proxy may forward to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    pub source: String,
    pub entries: Vec<Allowed>,
}

impl Allowlist {
    /// Parse vsock-proxy's YAML (`allowlist:` with `address` and `port`).
    pub fn parse(text: &str, source: &str) -> Result<Allowlist, ProxyError> {
        let file: AllowlistFile =
            serde_yaml_ng::from_str(text).map_err(|e| ProxyError::Allowlist { path: source.to_owned(), detail: e.to_string() })?;
        Ok(Allowlist { source: source.to_owned(), entries: file.allowlist })
    }

    pub fn load(path: &Path) -> Result<Allowlist, ProxyError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProxyError::Read { path: path.display().to_string(), source })?;
        Allowlist::parse(&text, &path.display().to_string())
    }

    /// The default: the KMS endpoints of every commercial region on 443, as
    /// vsock-proxy's shipped configuration lists them, plus the local KMS.
    pub fn default_kms() -> Allowlist {
        let mut entries: Vec<Allowed> = [
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
            "af-south-1",
            "ap-east-1",
            "ap-south-1",
            "ap-south-2",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-3",
            "ap-southeast-4",
            "ca-central-1",
            "eu-central-1",
            "eu-central-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "eu-south-1",
            "eu-south-2",
            "eu-north-1",
            "il-central-1",
            "me-south-1",
            "me-central-1",
            "sa-east-1",
        ]
        .iter()
        .map(|r| Allowed { address: format!("kms.{r}.amazonaws.com"), port: 443 })
        .collect();
        entries.push(Allowed { address: "127.0.0.1".into(), port: 7701 });
        entries.push(Allowed { address: "localhost".into(), port: 7701 });
        Allowlist { source: "the built-in allowlist".into(), entries }
    }

    /// Whether `host:port` is listed (host names compare case-insensitively).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.entries.iter().any(|e| e.port == port && e.address.eq_ignore_ascii_case(host))
    }

    fn describe(&self) -> String {
        let list: Vec<String> = self.entries.iter().take(5).map(|e| format!("{}:{}", e.address, e.port)).collect();
        let more = self.entries.len().saturating_sub(5);
        if more > 0 {
            format!("{}, and {more} more", list.join(", "))
        } else {
            list.join(", ")
        }
    }
}

/// Which addresses a host name may resolve to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IpVersion {
    #[default]
    Any,
    V4,
    V6,
}

/// How one proxy runs.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: Address,
    pub remote_host: String,
    pub remote_port: u16,
    pub ip_version: IpVersion,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// A stream with no byte either way for this long is closed (the
    /// enclave's HTTP client opens another when it needs one).
    pub idle_timeout: Duration,
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused_busy: AtomicU64,
    /// vsock peers that are not enclaves (CID below 3: a process of this host).
    pub refused_not_enclave: AtomicU64,
    pub closed_idle: AtomicU64,
    pub failed_connect: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A bound proxy, ready to run.
pub struct Proxy {
    config: ProxyConfig,
    listener: Listener,
    pub stats: Arc<Stats>,
}

fn log(msg: std::fmt::Arguments<'_>) {
    tracing::info!("proxy: {msg}");
}

fn warn(msg: std::fmt::Arguments<'_>) {
    tracing::warn!("proxy: {msg}");
}

impl Proxy {
    /// Check the remote against the allowlist, then bind.
    pub async fn bind(config: ProxyConfig, allowlist: &Allowlist) -> Result<Proxy, ProxyError> {
        if !allowlist.allows(&config.remote_host, config.remote_port) {
            return Err(ProxyError::NotAllowed {
                host: config.remote_host.clone(),
                port: config.remote_port,
                path: allowlist.source.clone(),
                entries: allowlist.describe(),
            });
        }
        let listener =
            Listener::bind(&config.listen).await.map_err(|source| ProxyError::Listen { address: config.listen.to_string(), source })?;
        Ok(Proxy { config, listener, stats: Arc::new(Stats::default()) })
    }

    pub fn local_address(&self) -> &Address {
        self.listener.local_address()
    }

    /// Accept and forward until the task is dropped.
    pub async fn run(self) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let config = Arc::new(self.config);
        log(format_args!(
            "forwarding {} -> {}:{} (at most {} connections)",
            self.listener.local_address(),
            config.remote_host,
            config.remote_port,
            config.max_connections
        ));
        // Connections live in this set: when the proxy stops (this future is
        // dropped), every stream it forwards is cut, as when the process dies.
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn(format_args!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Only enclaves reach KMS through here: a process of this host
            // could otherwise hold every slot and cut the enclave off.
            if nekms_transport::from_enclave_cid(&peer) == Some(false) {
                self.stats.refused_not_enclave.fetch_add(1, Ordering::Relaxed);
                warn(format_args!("refused a connection from {peer}: not an enclave (only CID 4 and up)"));
                continue;
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                warn(format_args!("refused a connection from {peer}: {} connections already open", config.max_connections));
                drop(stream);
                continue;
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let (config, stats) = (config.clone(), self.stats.clone());
            streams.spawn(async move {
                let _permit = permit;
                let outbound = match connect_remote(&config).await {
                    Ok(s) => s,
                    Err(e) => {
                        stats.failed_connect.fetch_add(1, Ordering::Relaxed);
                        warn(format_args!("cannot reach {}:{} for {peer}: {e}", config.remote_host, config.remote_port));
                        return;
                    }
                };
                if !forward(stream, outbound, config.idle_timeout, &stats).await {
                    stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
}

/// Copy both ways until both sides have closed (`true`), or until no byte
/// has moved either way for `idle` (`false`: both are cut).
async fn forward(inbound: nekms_transport::Stream, outbound: TcpStream, idle: Duration, stats: &Stats) -> bool {
    let start = tokio::time::Instant::now();
    let moved = AtomicU64::new(0);
    let (in_read, in_write) = tokio::io::split(inbound);
    let (out_read, out_write) = outbound.into_split();
    let both = async {
        tokio::join!(pump(in_read, out_write, &moved, &stats.bytes_up, start), pump(out_read, in_write, &moved, &stats.bytes_down, start))
    };
    let watchdog = async {
        loop {
            tokio::time::sleep((idle / 4).max(Duration::from_millis(50))).await;
            let last = start + Duration::from_millis(moved.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
        }
    };
    tokio::select! {
        _ = both => true,
        _ = watchdog => false,
    }
}

/// One direction: read, write, note when; on end of stream, shut the writer (a half-close, passed on).
async fn pump<R, W>(mut from: R, mut to: W, moved: &AtomicU64, count: &AtomicU64, start: tokio::time::Instant)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        moved.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// Resolve the remote now (honouring the IP version) and connect to the first address that answers.
async fn connect_remote(config: &ProxyConfig) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((config.remote_host.as_str(), config.remote_port))
        .await?
        .filter(|a| match config.ip_version {
            IpVersion::Any => true,
            IpVersion::V4 => a.is_ipv4(),
            IpVersion::V6 => a.is_ipv6(),
        })
        .collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no {:?} address", config.remote_host, config.ip_version),
        ));
    }
    let mut last = None;
    for a in addrs {
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {a} timed out"))),
        }
    }
    Err(last.expect("at least one address was tried"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_proxy_allowlists_parse_in_both_yaml_styles() {
        let flow =
            "allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n- {address: kms-fips.us-east-1.amazonaws.com, port: 443}\n";
        let a = Allowlist::parse(flow, "flow.yaml").unwrap();
        assert!(a.allows("KMS.us-east-1.amazonaws.com", 443));
        assert!(!a.allows("kms.us-east-1.amazonaws.com", 80));
        let block = "allowlist:\n  - address: 127.0.0.1\n    port: 7701\n";
        assert!(Allowlist::parse(block, "block.yaml").unwrap().allows("127.0.0.1", 7701));
        for bad in [
            "",
            "allowlist: 5",
            "allowlist:\n- {address: x}",
            "allowlist:\n- {address: x, port: 70000}",
            "allowlist:\n- {address: x, port: 1, extra: 2}",
        ] {
            assert!(matches!(Allowlist::parse(bad, "bad.yaml"), Err(ProxyError::Allowlist { .. })), "{bad:?}");
        }
        assert!(Allowlist::default_kms().allows("kms.eu-west-1.amazonaws.com", 443));
    }
}
