//! Any byte stream through the frame decoders (the async codec and the
//! blocking reader the PKCS#11 module uses): frames no larger than the
//! maximum, no panic, buffer growth bounded by the maximum, and both readers
//! agreeing on every frame.
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

    // The blocking reader over the same bytes yields the same frames.
    let mut codec = FrameCodec::new(max);
    let mut whole = BytesMut::from(data);
    let mut reader = data;
    loop {
        let blocking = nekms_transport::frame::blocking::read_frame(&mut reader, max);
        match (codec.decode(&mut whole), blocking) {
            (Ok(Some(a)), Ok(Some(b))) => assert_eq!(&a[..], &b[..]),
            (Ok(None), Ok(None) | Err(_)) | (Err(_), Err(_)) => break,
            (a, b) => panic!("the two readers disagree: {a:?} / {b:?}"),
        }
    }
});
