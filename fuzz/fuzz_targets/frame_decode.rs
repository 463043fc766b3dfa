//! Any byte stream through the frame decoder: frames no larger than the
//! maximum, no panic, and buffer growth bounded by the maximum.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nekms_transport::FrameCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let max = 1 + (data.first().copied().unwrap_or(0) as usize) * 64;
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    // Feed in uneven chunks, as a socket would deliver them.
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= data.len() + 4 + max + 64);
    }
    let _ = codec.decode_eof(&mut buf);
});
