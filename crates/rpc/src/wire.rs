//! Frames on the wire: written in batches, and wiped once written or read.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// One encoded frame body, wiped when dropped (replies may carry plaintext).
pub type Outgoing = Zeroizing<Vec<u8>>;

/// Write every body from `rx` as a length-prefixed frame until the channel
/// closes or the peer goes away. Bodies already queued are written together.
pub async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Outgoing>) -> std::io::Result<()> {
    let mut batch: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(8 * 1024));
    while let Some(body) = rx.recv().await {
        push(&mut batch, &body);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(body) => push(&mut batch, &body),
                Err(_) => break,
            }
        }
        let written = w.write_all(&batch).await;
        zeroize::Zeroize::zeroize(&mut batch[..]);
        batch.clear();
        written?;
        w.flush().await?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

fn push(batch: &mut Zeroizing<Vec<u8>>, body: &[u8]) {
    let need = batch.len() + 4 + body.len();
    if need > batch.capacity() {
        // Grow by hand so the old buffer is wiped rather than freed with its bytes.
        let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(batch.capacity() * 2)));
        bigger.extend_from_slice(batch);
        *batch = bigger;
    }
    batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
    batch.extend_from_slice(body);
}

/// Read a received frame, then wipe it when it is the only owner of its
/// bytes (as frames split from the read buffer are).
pub fn zeroized_after<T>(frame: Bytes, read: impl FnOnce(&[u8]) -> T) -> T {
    let out = read(&frame);
    if let Ok(mut owned) = frame.try_into_mut() {
        zeroize::Zeroize::zeroize(&mut owned[..]);
    }
    out
}
