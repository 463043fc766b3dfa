//! Frames: a protobuf message after its length as an unsigned varint
//! (Go's `protoio` delimited writer). The validator reads replies of at
//! most 10 KiB (Tendermint v0.34 to CometBFT v0.39 cap the message there);
//! requests are refused above 1 MiB.

/// The most a request may be.
pub const MAX_REQUEST: usize = 1 << 20;
/// The most a reply may be: the validator drops a larger one.
pub const MAX_REPLY: usize = 10 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame's length prefix is not a minimal varint of at most 5 bytes")]
    BadPrefix,
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// `body` with its length prefix, if it fits `max`.
pub fn encode(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if body.len() > max {
        return Err(FrameError::TooLarge { len: body.len(), max });
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    let mut n = body.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// The first frame of `buf`: `Ok(None)` while more bytes are needed, else
/// the bytes it took and its body. A length over `max` is refused as soon
/// as the prefix is read, before the body arrives.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(usize, &[u8])>, FrameError> {
    let mut len: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        // 5 bytes carry 35 bits, far above any limit here.
        if i == 5 {
            return Err(FrameError::BadPrefix);
        }
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Minimal: no trailing zero group (a lone 0 is the empty frame).
            if i > 0 && byte == 0 {
                return Err(FrameError::BadPrefix);
            }
            let len = usize::try_from(len).map_err(|_| FrameError::BadPrefix)?;
            if len > max {
                return Err(FrameError::TooLarge { len, max });
            }
            let start = i + 1;
            return Ok(buf.get(start..start + len).map(|body| (start + len, body)));
        }
    }
    if buf.len() >= 5 {
        return Err(FrameError::BadPrefix);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_what_they_must() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, MAX_REPLY] {
            let body = vec![7u8; n];
            let f = encode(&body, MAX_REQUEST).unwrap();
            assert_eq!(decode(&f, MAX_REQUEST).unwrap(), Some((f.len(), &body[..])));
            // Every proper prefix asks for more.
            for cut in 0..f.len().min(200) {
                assert_eq!(decode(&f[..cut], MAX_REQUEST).unwrap(), None, "{n} cut {cut}");
            }
        }
        assert_eq!(encode(&[0; MAX_REPLY + 1], MAX_REPLY), Err(FrameError::TooLarge { len: MAX_REPLY + 1, max: MAX_REPLY }));
        // 300 is ac 02; a non-minimal 1 (81 00) and a six-byte prefix are refused.
        assert_eq!(&encode(&[0; 300], MAX_REPLY).unwrap()[..2], &[0xac, 0x02]);
        assert_eq!(decode(&[0x81, 0x00, 1], MAX_REPLY), Err(FrameError::BadPrefix));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX), Err(FrameError::BadPrefix));
        // Too large is known from the prefix alone.
        assert_eq!(decode(&[0x80, 0x80, 0x41], MAX_REQUEST), Err(FrameError::TooLarge { len: 0x41 << 14, max: MAX_REQUEST }));
    }
}
