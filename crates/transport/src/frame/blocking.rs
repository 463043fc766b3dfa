//! Frames over blocking `std::io` streams, one call at a time.

use std::io::{ErrorKind, Read, Write};

use zeroize::Zeroize;

use super::{body_len, check_len, truncated, FrameError, PREFIX};

/// Read one frame's body. `Ok(None)` when the stream ends cleanly before a
/// frame starts; a stream that ends inside one is [`FrameError::Truncated`].
/// At most `max` bytes are allocated, and only once the prefix allowed them.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(truncated(&prefix[..got])),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = body_len(&prefix, max)?.expect("four bytes read");
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let failed = match r.read(&mut body[filled..]) {
            Ok(0) => FrameError::Truncated { expected: len as u64, received: filled },
            Ok(n) => {
                filled += n;
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => e.into(),
        };
        // What arrived of a frame that failed may be part of a secret: wipe it
        // (callers wrap whole frames in zeroizing buffers themselves).
        body.zeroize();
        return Err(failed);
    }
    Ok(Some(body))
}

/// Write one frame: the prefix, then `body` as it is (no copy of the body
/// is made, so a caller's zeroizing buffer stays the only one).
pub fn write_frame(w: &mut impl Write, body: &[u8], max: usize) -> Result<(), FrameError> {
    check_len(body, max)?;
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(body)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello", 16).unwrap();
        write_frame(&mut wire, b"", 16).unwrap();
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 16).unwrap().is_none());
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let mut r = &[0u8, 0, 0, 10, 1, 2][..];
        assert!(matches!(read_frame(&mut r, 16), Err(FrameError::Truncated { expected: 10, received: 2 })));
        let mut r = &[0u8, 0][..];
        assert!(matches!(read_frame(&mut r, 16), Err(FrameError::Truncated { expected: 4, received: 2 })));
    }

    #[test]
    fn a_hostile_prefix_allocates_nothing() {
        let mut r = &[0xffu8, 0xff, 0xff, 0xff][..];
        assert!(matches!(read_frame(&mut r, 1 << 20), Err(FrameError::TooLarge { .. })));
    }
}
