//! Frames over async streams: the `tokio_util` codec and one-at-a-time helpers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

#[cfg(test)]
use super::DEFAULT_MAX_FRAME;
use super::{body_len, check_len, truncated, FrameError, PREFIX};

/// A `tokio_util` codec for length-prefixed frames with a hard maximum.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec accepting bodies of at most `max` bytes (capped at `u32::MAX`).
    pub fn new(max: usize) -> Self {
        FrameCodec { max: max.min(u32::MAX as usize) }
    }

    /// The largest body this codec accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Decode one frame from the front of `buf`, if a whole one is there.
    ///
    /// `Ok(None)` means "need more bytes". Never reserves more than the
    /// declared (and already bounded) frame length.
    pub fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = body_len(buf, self.max)? else { return Ok(None) };
        if buf.len() < PREFIX + len {
            buf.reserve(PREFIX + len - buf.len());
            return Ok(None);
        }
        buf.advance(PREFIX);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(super::DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.decode_frame(buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode_frame(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(truncated(buf)),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = item.as_ref();
        check_len(body, self.max)?;
        dst.reserve(PREFIX + body.len());
        dst.put_u32(body.len() as u32);
        dst.put_slice(body);
        Ok(())
    }
}

/// Read one frame's body from an async stream, for a caller that reads
/// frames one at a time. `buf` keeps what arrived after the frame (the next
/// frame, or bytes of another protocol that follows) for the next call.
/// `Ok(None)` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    loop {
        if let Some(len) = body_len(buf, max)? {
            if buf.len() >= PREFIX + len {
                let body = buf[PREFIX..PREFIX + len].to_vec();
                buf.drain(..PREFIX + len);
                return Ok(Some(body));
            }
        }
        let mut chunk = [0u8; 8192];
        let got = r.read(&mut chunk).await?;
        if got == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(truncated(buf)) };
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Write one frame to an async stream in a single write.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8], max: usize) -> Result<(), FrameError> {
    w.write_all(&super::encode(body, max)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        FrameCodec::default().encode(body, &mut out).unwrap();
        out
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = encoded(b"hello");
        buf.extend_from_slice(&encoded(b""));
        buf.extend_from_slice(&encoded(&[7u8; 1000]));
        let mut codec = FrameCodec::default();
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 1000);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_four_gib_prefix_is_refused_without_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2][..]);
        let cap_before = buf.capacity();
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 0xffff_ffff, max: DEFAULT_MAX_FRAME }));
        assert_eq!(buf.capacity(), cap_before);
        assert!(err.to_string().contains("4294967295 bytes exceeds the maximum"));
    }

    #[test]
    fn a_frame_cut_short_by_end_of_stream_is_truncated() {
        let mut buf = encoded(b"0123456789");
        buf.truncate(9);
        let err = FrameCodec::default().decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { expected: 10, received: 5 }), "{err}");

        let mut buf = BytesMut::from(&[0u8, 0][..]);
        let err = FrameCodec::default().decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { expected: 4, received: 2 }), "{err}");
    }

    #[test]
    fn encoding_refuses_bodies_over_the_maximum() {
        let mut out = BytesMut::new();
        let err = FrameCodec::new(8).encode(&[0u8; 9][..], &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 9, max: 8 }));
        assert!(out.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(data: Vec<u8>, max in 0usize..4096) {
            let mut codec = FrameCodec::new(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                proptest::prop_assert!(frame.len() <= max);
            }
            proptest::prop_assert!(buf.capacity() <= data.len().max(PREFIX + max) + 64);
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
