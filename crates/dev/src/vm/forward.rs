//! The host's side of a guest's vsock, as vhost-device-vsock maps it to
//! Unix sockets: connections into the guest go to its `uds-path` with a
//! `CONNECT <port>` line, answered `OK <port>`; the guest's connections out
//! to port P arrive at `uds-path_P`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// nitro-cli's heartbeat byte: the guest's init sends it, the launcher echoes it.
pub const HEARTBEAT: u8 = 0xB7;

/// Open a connection to the guest's `port` through the device at `uds`.
pub async fn connect(uds: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).await.with_context(|| format!("{}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.context("no answer to CONNECT")??;
        if n == 0 {
            bail!("the guest refused port {port}");
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            bail!("an answer to CONNECT longer than a line");
        }
    }
    if !line.starts_with(b"OK ") {
        bail!("the device answered {:?} to CONNECT {port}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

/// Serve `path` (a Unix socket the parent's tools use) by forwarding each
/// connection to the guest's `port`.
pub async fn serve(listener: UnixListener, uds: PathBuf, port: u32) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let uds = uds.clone();
        tokio::spawn(async move {
            match connect(&uds, port).await {
                Ok(mut guest) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
                }
                Err(e) => tracing::warn!("dev vm: guest port {port}: {e:#}"),
            }
        });
    }
}

/// Carry the guest's connections out (arriving on `listener`, a
/// `uds-path_P`) to the Unix socket `target`.
pub async fn link(listener: UnixListener, target: PathBuf) {
    loop {
        let Ok((mut guest, _)) = listener.accept().await else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            match UnixStream::connect(&target).await {
                Ok(mut host) => {
                    let _ = tokio::io::copy_bidirectional(&mut guest, &mut host).await;
                }
                Err(e) => tracing::warn!("dev vm: {}: {e}", target.display()),
            }
        });
    }
}

/// Answer the guest's heartbeats on `listener` (`uds-path_9000`), telling
/// `booted` at the first.
pub async fn heartbeat(listener: UnixListener, booted: tokio::sync::watch::Sender<bool>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let mut b = [0u8];
        if s.read_exact(&mut b).await.is_ok() && b[0] == HEARTBEAT && s.write_all(&[HEARTBEAT]).await.is_ok() {
            let _ = booted.send(true);
        }
    }
}
