//! `nekms proxy`: forward the enclave's connections to an allowlisted remote.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nekms_proxy::{Allowlist, IpVersion, Proxy, ProxyConfig};
use nekms_transport::Address;

/// Options, in vsock-proxy's order: `nekms proxy 8000 kms.us-east-1.amazonaws.com 443`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen: a vsock port (8000 means vsock://any:8000) or an address (unix:///run/nekms/proxy.sock)
    local: String,
    /// The remote host to forward to (must be in the allowlist)
    remote_addr: String,
    /// The remote port
    remote_port: u16,
    /// Allowlist in vsock-proxy's YAML shape [default: the KMS endpoints of every region, and the local KMS]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Resolve the remote to IPv4 addresses only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    ipv4: bool,
    /// Resolve the remote to IPv6 addresses only
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Streams open at once; more are closed and logged
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds to wait for the remote to accept
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds a stream may carry nothing either way before it is closed
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let listen: Address = match a.local.parse::<u32>() {
        Ok(port) => format!("vsock://any:{port}").parse()?,
        Err(_) => a.local.parse().with_context(|| format!("{}: not a port or an address", a.local))?,
    };
    let allowlist = match &a.config {
        Some(p) => Allowlist::load(p)?,
        None => Allowlist::default_kms(),
    };
    let config = ProxyConfig {
        listen,
        remote_host: a.remote_addr,
        remote_port: a.remote_port,
        ip_version: if a.ipv4 {
            IpVersion::V4
        } else if a.ipv6 {
            IpVersion::V6
        } else {
            IpVersion::Any
        },
        max_connections: a.max_connections.max(1),
        connect_timeout: Duration::from_secs(a.connect_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let proxy = Proxy::bind(config, &allowlist).await?;
        tokio::select! {
            _ = proxy.run() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("proxy: interrupted; stopping"),
        }
        anyhow::Ok(())
    })
}
