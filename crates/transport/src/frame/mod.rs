//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! Every nekms channel that frames this way (the RPC, the validator
//! signer's state store and its hello, the PKCS#11 module's client) reads
//! and writes through this module, so one set of limits and errors applies:
//!
//! - [`body_len`] reads a prefix and checks it against the maximum before a
//!   single byte of the body is buffered, so a hostile prefix (say 4 GiB)
//!   costs nothing but an error;
//! - [`encode`] refuses a body over the maximum;
//! - [`blocking`] reads and writes frames over `std::io` streams (the
//!   PKCS#11 module has no async runtime);
//! - with the `tokio` feature, [`FrameCodec`] (a `tokio_util` codec) and
//!   [`read_frame`]/[`write_frame`] for async streams, and kmstool's
//!   zero-byte-delimited JSON ([`delimited`]).
//!
//! A stream that ends inside a frame is reported as truncated rather than
//! silently dropped.

pub mod blocking;
#[cfg(feature = "tokio")]
mod codec;
#[cfg(feature = "tokio")]
pub mod delimited;

#[cfg(feature = "tokio")]
pub use codec::{read_frame, write_frame, FrameCodec};

/// The default maximum body size: 1 MiB, far above any nekms message.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

/// What went wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("stream ended inside a frame: {received} of {expected} bytes received")]
    Truncated { expected: u64, received: usize },
    #[error("I/O error on the channel: {0}")]
    Io(#[from] std::io::Error),
}

/// The body length the prefix at the front of `buf` declares, once four
/// bytes are there (`Ok(None)` before), refused if it exceeds `max`.
pub fn body_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX) else { return Ok(None) };
    let len = u64::from(u32::from_be_bytes(prefix.try_into().expect("four bytes")));
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len as usize))
}

/// One frame: the prefix and `body`, refused if the body exceeds `max`
/// (itself capped at `u32::MAX`).
pub fn encode(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    check_len(body, max)?;
    let mut out = Vec::with_capacity(PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn check_len(body: &[u8], max: usize) -> Result<(), FrameError> {
    let max = max.min(u32::MAX as usize);
    if body.len() > max {
        return Err(FrameError::TooLarge { len: body.len() as u64, max });
    }
    Ok(())
}

/// What a buffer holding the start of an unfinished frame lacks, as the
/// error for a stream that ended there.
fn truncated(buf: &[u8]) -> FrameError {
    match buf.get(..PREFIX) {
        None => FrameError::Truncated { expected: PREFIX as u64, received: buf.len() },
        Some(p) => FrameError::Truncated {
            expected: u64::from(u32::from_be_bytes(p.try_into().expect("four bytes"))),
            received: buf.len() - PREFIX,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_over_the_maximum_is_refused_before_the_body() {
        assert!(matches!(body_len(&[0, 0, 0], 8), Ok(None)));
        assert!(matches!(body_len(&[0, 0, 0, 8], 8), Ok(Some(8))));
        assert!(matches!(body_len(&[0xff, 0xff, 0xff, 0xff], 8), Err(FrameError::TooLarge { len: 0xffff_ffff, max: 8 })));
    }

    #[test]
    fn encoding_refuses_bodies_over_the_maximum() {
        assert_eq!(encode(b"ab", 2).unwrap(), [0, 0, 0, 2, b'a', b'b']);
        assert!(matches!(encode(&[0u8; 9], 8), Err(FrameError::TooLarge { len: 9, max: 8 })));
    }
}
