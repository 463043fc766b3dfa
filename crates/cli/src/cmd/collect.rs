//! What `nekms audit collect` and `nekms logs collect` share: take lines an
//! enclave streams, and append them to a file.
//!
//! On vsock only enclaves (CID 4 and up) are served, never a process of
//! this host; on a Unix socket the socket is made root's alone (mode 0600).
//! A line is at most `max_line` bytes (a longer one closes the connection),
//! and at most [`MAX_CONNECTIONS`] connections are open at once. A
//! connection may stay quiet as long as it likes: an enclave with nothing
//! to say says nothing, and only an enclave gets this far.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// Where a collector listens and what it appends to.
#[derive(clap::Args)]
pub struct CollectArgs {
    /// Where to listen: unix:///PATH (mode 0600) or vsock://any:PORT
    #[arg(long)]
    pub listen: String,
    /// The file to append to
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: PathBuf,
}

/// Connections served at once (an enclave keeps one).
pub const MAX_CONNECTIONS: usize = 16;

/// What to do with each line.
pub struct Sink {
    /// The command, as its log lines name it.
    pub name: &'static str,
    pub max_line: usize,
    /// fdatasync after each line (the audit trail: a line acknowledged is on disk).
    pub sync: bool,
    /// Also write each line to stderr (the enclave's logs).
    pub echo: bool,
}

/// Serve `listen`, appending to `out`, until SIGTERM or Ctrl-C.
pub async fn collect(listen: &str, out: &PathBuf, sink: Sink) -> anyhow::Result<()> {
    let address: nekms_transport::Address = listen.parse().with_context(|| format!("--listen {listen}"))?;
    let listener = nekms_transport::Listener::bind(&address).await.with_context(|| format!("listening on {listen}"))?;
    if let nekms_transport::Address::Unix(path) = &address {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(out).with_context(|| out.display().to_string())?;
    let file = Arc::new(Mutex::new(file));
    let name = sink.name;
    tracing::info!("{name}: {} -> {}", listener.local_address(), out.display());
    let sink = Arc::new(sink);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if nekms_transport::from_enclave_cid(&peer) == Some(false) {
            tracing::warn!(%peer, "{name}: refused: not an enclave (only CID 4 and up write here)");
            continue;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{name}: refused: {MAX_CONNECTIONS} connections are open");
            continue;
        };
        let (file, sink) = (file.clone(), sink.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(why) = copy_lines(stream, &file, &sink).await {
                tracing::warn!(%peer, "{name}: {why}; closing");
            }
        });
    }
}

async fn copy_lines(stream: nekms_transport::Stream, file: &Mutex<std::fs::File>, sink: &Sink) -> Result<(), String> {
    let mut lines = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines).take(sink.max_line as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) if n > sink.max_line || line.last() != Some(&b'\n') => return Err(format!("a line over {} bytes", sink.max_line)),
            Ok(_) => {
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                let written = f.write_all(&line).and_then(|_| if sink.sync { f.sync_data() } else { Ok(()) });
                drop(f);
                written.map_err(|e| format!("cannot write: {e}"))?;
                if sink.echo {
                    let _ = std::io::stderr().lock().write_all(&line);
                }
            }
        }
    }
}
