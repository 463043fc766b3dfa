//! kmstool's framing: a message (JSON), then a zero byte. The enclave's
//! kmstool service and the parent's client read it here, with one limit:
//! bytes without a zero byte beyond `max` are an error, not a buffer that
//! grows for ever.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::FrameError;

/// The first message in `buf` (without its zero byte), taken out of it.
/// Messages may carry secrets (credentials, plaintexts): the copy is wiped
/// when dropped.
pub fn take(buf: &mut Vec<u8>) -> Option<Zeroizing<Vec<u8>>> {
    let end = buf.iter().position(|b| *b == 0)?;
    let message = Zeroizing::new(buf[..end].to_vec());
    // Wipe what leaves the buffer before the rest moves down over it.
    buf[..=end].iter_mut().for_each(|b| *b = 0);
    buf.drain(..=end);
    Some(message)
}

/// The next message from `r`, from what `buf` already holds first.
/// `Ok(None)` when the stream ends (whatever unterminated bytes were left);
/// [`FrameError::TooLarge`] once more than `max` bytes came without a zero byte.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(message) = take(buf) {
            return Ok(Some(message));
        }
        if buf.len() > max {
            return Err(FrameError::TooLarge { len: buf.len() as u64, max });
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Write `message` and its zero byte in one write.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, message: &[u8]) -> std::io::Result<()> {
    let mut out = Zeroizing::new(Vec::with_capacity(message.len() + 1));
    out.extend_from_slice(message);
    out.push(0);
    w.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_taken_one_at_a_time() {
        let mut buf = b"{\"a\":1}\0{\"b\":2}\0{\"c\"".to_vec();
        assert_eq!(&take(&mut buf).unwrap()[..], b"{\"a\":1}");
        assert_eq!(&take(&mut buf).unwrap()[..], b"{\"b\":2}");
        assert!(take(&mut buf).is_none());
        assert_eq!(buf, b"{\"c\"");
    }

    #[tokio::test]
    async fn too_many_bytes_without_a_zero_byte_are_refused() {
        let mut input = &[b'x'; 40][..];
        let mut buf = Vec::new();
        assert!(matches!(read_message(&mut input, &mut buf, 16).await, Err(FrameError::TooLarge { .. })));
        let mut input = &b"ok\0tail"[..];
        let mut buf = Vec::new();
        assert_eq!(&read_message(&mut input, &mut buf, 16).await.unwrap().unwrap()[..], b"ok");
        assert!(read_message(&mut input, &mut buf, 16).await.unwrap().is_none());
    }
}
