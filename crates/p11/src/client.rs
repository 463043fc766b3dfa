//! A blocking client of the enclave's native RPC, for the module: one Unix
//! socket, one call at a time (the module serialises its calls anyway),
//! reconnected after a failure. The handshake and messages are the RPC's own
//! (`nekms_protocol::rpc`), the frames `nekms_transport::frame::blocking`'s.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use nekms_protocol::rpc::RpcError;
use nekms_protocol::rpc::{self as protocol, ClientFrame, Hello, P11Request, P11Response, Request, Response, ServerFrame, PROTOCOL};
use nekms_transport::frame::blocking as frame;
use zeroize::Zeroizing;

/// Largest reply frame read.
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The socket: not reachable, closed, or a frame that does not read.
    Transport(String),
    /// The enclave's answer.
    Enclave(RpcError),
}

pub struct Conn {
    stream: UnixStream,
    next_id: u64,
}

fn transport(e: impl std::fmt::Display) -> CallError {
    CallError::Transport(e.to_string())
}

impl Conn {
    /// Connect to `unix:///path` and shake hands.
    pub fn connect(address: &str) -> Result<Conn, CallError> {
        let path = address
            .strip_prefix("unix://")
            .ok_or_else(|| CallError::Transport(format!("NEKMS_P11_RPC must be unix:///path, not {address:?}")))?;
        let stream = UnixStream::connect(path).map_err(|e| CallError::Transport(format!("{address}: {e}")))?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(transport)?;
        stream.set_write_timeout(Some(Duration::from_secs(60))).map_err(transport)?;
        let mut conn = Conn { stream, next_id: 1 };
        let agent = format!("libnekms_p11 {}", env!("CARGO_PKG_VERSION"));
        conn.write(&protocol::encode(&ClientFrame::Hello(Hello { protocol: PROTOCOL.into(), versions: vec![1], agent })))?;
        match protocol::decode::<ServerFrame>(&conn.read()?).map_err(transport)? {
            ServerFrame::Welcome { .. } => Ok(conn),
            ServerFrame::Goodbye { message } => Err(CallError::Transport(format!("the enclave refused the connection: {message}"))),
            ServerFrame::Reply { .. } => Err(CallError::Transport("a reply before the handshake".into())),
        }
    }

    fn write(&mut self, body: &[u8]) -> Result<(), CallError> {
        frame::write_frame(&mut self.stream, body, MAX_FRAME).map_err(transport)
    }

    /// The next frame, in a buffer wiped on drop (replies carry PIN handles).
    fn read(&mut self) -> Result<Zeroizing<Vec<u8>>, CallError> {
        match frame::read_frame(&mut self.stream, MAX_FRAME) {
            Ok(Some(body)) => Ok(Zeroizing::new(body)),
            Ok(None) => Err(CallError::Transport("the enclave closed the connection".into())),
            Err(e) => Err(transport(e)),
        }
    }

    /// One PKCS#11 call.
    pub fn p11(&mut self, request: P11Request) -> Result<P11Response, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::P11(request);
        // Straight into a wiped buffer: requests carry PINs and plaintexts.
        let body = protocol::encode_secret(&protocol::CallRef::Call { id, request: &request });
        drop(request);
        self.write(&body)?;
        loop {
            let frame = self.read()?;
            match protocol::decode::<ServerFrame>(&frame).map_err(transport)? {
                ServerFrame::Reply { id: got, outcome } if got == id => {
                    return match outcome {
                        Ok(Response::P11(r)) => Ok(r),
                        Ok(other) => Err(CallError::Transport(format!("an answer of the wrong kind: {other:?}"))),
                        Err(e) => Err(CallError::Enclave(e)),
                    };
                }
                ServerFrame::Reply { .. } => continue,
                ServerFrame::Goodbye { message } => {
                    return Err(CallError::Transport(format!("the enclave closed the connection: {message}")))
                }
                ServerFrame::Welcome { .. } => return Err(CallError::Transport("a second Welcome".into())),
            }
        }
    }
}
