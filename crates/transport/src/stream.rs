//! Listeners and connectors for every [`Address`] kind, behind one [`Stream`].

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

use crate::address::Address;

/// A connected byte stream over vsock, a Unix socket or TCP.
#[derive(Debug)]
pub enum Stream {
    Vsock(VsockStream),
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Connect to `addr`.
///
/// Errors name the address, so "connection refused" says which one.
pub async fn connect(addr: &Address) -> io::Result<Stream> {
    let result = match addr {
        Address::Vsock { cid, port } => vsock_connect(cid.0, *port).await.map(Stream::Vsock),
        Address::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
        Address::Tcp(sa) => TcpStream::connect(sa).await.map(|s| {
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }),
    };
    result.map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))
}

/// Connect over vsock, from a local port below 1024 when this process may
/// bind one (root, or `CAP_NET_BIND_SERVICE`): vsock carries no peer
/// credentials, so such a port is how a listener tells root on the parent
/// from any other local user (the enclave's RPC accepts only those). Other
/// processes connect from an ordinary port.
async fn vsock_connect(cid: u32, port: u32) -> io::Result<VsockStream> {
    match tokio::task::spawn_blocking(move || connect_from_reserved_port(cid, port)).await.map_err(io::Error::other)?? {
        Some(stream) => VsockStream::new(stream),
        None => VsockStream::connect(VsockAddr::new(cid, port)).await,
    }
}

/// The reserved local ports tried, highest first.
pub const RESERVED_PORTS: std::ops::Range<u32> = 512..1024;

/// A blocking connect from the first free reserved port; `None` when this
/// process may not bind one.
fn connect_from_reserved_port(cid: u32, port: u32) -> io::Result<Option<vsock::VsockStream>> {
    use nix::errno::Errno;
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, VsockAddr as Sockaddr};
    use std::os::fd::AsRawFd;
    const VMADDR_CID_ANY: u32 = u32::MAX;
    for local in RESERVED_PORTS.rev() {
        let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        match bind(fd.as_raw_fd(), &Sockaddr::new(VMADDR_CID_ANY, local)) {
            Ok(()) => {
                connect(fd.as_raw_fd(), &Sockaddr::new(cid, port))?;
                return Ok(Some(vsock::VsockStream::from(fd)));
            }
            Err(Errno::EADDRINUSE) => continue,
            Err(Errno::EACCES | Errno::EPERM) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Whether a connection from `peer` (as [`Listener::accept`] names it) comes
/// from a reserved vsock port, which only a privileged process can bind.
/// Unix sockets and TCP are governed otherwise (file modes, loopback).
pub fn from_reserved_vsock_port(peer: &str) -> Option<bool> {
    let rest = peer.strip_prefix("vsock://")?;
    let port: u32 = rest.rsplit(':').next()?.parse().ok()?;
    Some(port < 1024)
}

/// For a vsock peer (`vsock://CID:PORT`, as [`Listener::accept`] names it),
/// whether it is an enclave (CID 4 and up) rather than the parent itself
/// (3 on a Nitro instance, as its own processes appear to it), this host (1,
/// 2) or the hypervisor (0); `None` for other peers. A listener that only
/// enclaves should reach (the state store, the audit collector) refuses the
/// rest, so another local process cannot write to it.
pub fn from_enclave_cid(peer: &str) -> Option<bool> {
    let rest = peer.strip_prefix("vsock://")?;
    let cid: u32 = rest.split(':').next()?.parse().ok()?;
    Some(cid >= 4)
}

/// A bound listener for any [`Address`] kind.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerKind,
    local: Address,
}

#[derive(Debug)]
enum ListenerKind {
    Vsock(VsockListener),
    /// The path is removed again when the listener is dropped.
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Bind to `addr`.
    ///
    /// For a Unix socket, a stale socket file left by a process that died is
    /// replaced; a socket somebody still listens on is an "address in use"
    /// error, as with TCP. A Unix socket is made mode 0600: only its owner
    /// (and root) may connect, the development stand-in for vsock ports that
    /// only the instance reaches. A TCP port of 0 picks a free port: see
    /// [`Listener::local_address`].
    pub async fn bind(addr: &Address) -> io::Result<Listener> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
        let (inner, local) = match addr {
            Address::Vsock { cid, port } => {
                let l = VsockListener::bind(VsockAddr::new(cid.0, *port)).map_err(named)?;
                (ListenerKind::Vsock(l), addr.clone())
            }
            Address::Unix(path) => {
                remove_stale_socket(path).await.map_err(named)?;
                let l = UnixListener::bind(path).map_err(named)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(named)?;
                (ListenerKind::Unix(l, path.clone()), addr.clone())
            }
            Address::Tcp(sa) => {
                let l = TcpListener::bind(sa).await.map_err(named)?;
                let local = Address::Tcp(l.local_addr()?);
                (ListenerKind::Tcp(l), local)
            }
        };
        Ok(Listener { inner, local })
    }

    /// The address actually bound (with the OS-chosen port for `tcp://IP:0`).
    pub fn local_address(&self) -> &Address {
        &self.local
    }

    /// Accept one connection; the string describes the peer for logs.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match &self.inner {
            ListenerKind::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Vsock(s), format!("vsock://{}:{}", peer.cid(), peer.port())))
            }
            ListenerKind::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("unix://{}", path.display())))
            }
            ListenerKind::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), format!("tcp://{peer}")))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenerKind::Unix(_, path) = &self.inner {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = tokio::fs::symlink_metadata(path).await else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way"));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening there")),
        Err(_) => tokio::fs::remove_file(path).await,
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Vsock($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

/// The most one write hands a vsock socket. Linux 6.12.95 (Debian's guest
/// kernel) sends a larger write as a non-linear packet, which
/// vhost-device-vsock 0.3.0 (the development VM's device) never delivers:
/// the connection stalls for good. Writes of this size stay linear; on
/// Nitro they cost nothing measurable (the kernel splits at 64 KiB anyway).
pub const VSOCK_MAX_WRITE: usize = 16 * 1024;

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, &buf[..buf.len().min(VSOCK_MAX_WRITE)]),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod reserved_port_tests {
    use super::from_reserved_vsock_port;

    #[test]
    fn only_vsock_peers_on_reserved_ports_count_as_privileged() {
        assert_eq!(from_reserved_vsock_port("vsock://3:1023"), Some(true));
        assert_eq!(from_reserved_vsock_port("vsock://3:512"), Some(true));
        assert_eq!(from_reserved_vsock_port("vsock://3:1024"), Some(false));
        assert_eq!(from_reserved_vsock_port("vsock://4294967295:49152"), Some(false));
        assert_eq!(from_reserved_vsock_port("unix:///run/nekms/rpc.sock"), None);
        assert_eq!(from_reserved_vsock_port("tcp://127.0.0.1:80"), None);
        assert_eq!(from_reserved_vsock_port("vsock://3:garbage"), None);
    }

    #[test]
    fn only_enclave_cids_count_as_enclaves() {
        use super::from_enclave_cid;
        assert_eq!(from_enclave_cid("vsock://16:1023"), Some(true));
        assert_eq!(from_enclave_cid("vsock://4:5"), Some(true));
        assert_eq!(from_enclave_cid("vsock://3:5"), Some(false));
        assert_eq!(from_enclave_cid("vsock://2:49152"), Some(false));
        assert_eq!(from_enclave_cid("vsock://1:49152"), Some(false));
        assert_eq!(from_enclave_cid("vsock://0:1"), Some(false));
        assert_eq!(from_enclave_cid("unix:///run/x.sock"), None);
        assert_eq!(from_enclave_cid("vsock://x:1"), None);
    }
}
