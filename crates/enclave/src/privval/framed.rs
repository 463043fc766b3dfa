//! A stream read and written one frame at a time ([`nekms_transport::frame`]).

use nekms_transport::frame::{read_frame, write_frame, FrameError};
use nekms_transport::Stream;

pub struct Framed {
    pub stream: Stream,
    pub buf: Vec<u8>,
}

impl Framed {
    pub async fn send(&mut self, body: &[u8]) -> Result<(), FrameError> {
        write_frame(&mut self.stream, body, u32::MAX as usize).await
    }

    /// The next frame; the peer closing between frames is an error here.
    pub async fn recv(&mut self, max: usize) -> Result<Vec<u8>, FrameError> {
        read_frame(&mut self.stream, &mut self.buf, max)
            .await?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection").into())
    }
}
