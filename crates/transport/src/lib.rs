//! How nekms processes reach each other.
//!
//! Production traffic between the parent instance and the enclave runs over
//! AF_VSOCK; development, tests and CI carry the same bytes over Unix sockets or
//! loopback TCP. This crate hides that seam behind three things:
//!
//! - [`Address`]: one typed value for `vsock://CID:PORT`, `unix:///path` and
//!   `tcp://IP:PORT`, parsed once with precise errors.
//! - [`Listener`] and [`connect`]: an async listener and connector for each
//!   kind, yielding one [`Stream`] type the rest of the code is unaware of.
//! - [`frame`]: length-prefixed frames with a hard maximum, so a peer can
//!   never make us allocate more than that maximum or panic on a short read;
//!   the async codec ([`FrameCodec`]) and a blocking reader and writer
//!   ([`frame::blocking`]), the only framing code in nekms.
//!
//! Without the default `tokio` feature only [`Address`] and [`frame`]'s
//! blocking half remain: what the PKCS#11 module links.
//!
//! It does not know what the frames mean; protocols live in the crates above.
//!
//! ```
//! use nekms_transport::{Address, VsockCid};
//!
//! let addr: Address = "vsock://parent:8000".parse().unwrap();
//! assert_eq!(addr, Address::Vsock { cid: VsockCid::PARENT, port: 8000 });
//! assert!("vsock://parent".parse::<Address>().is_err());
//! ```
#![forbid(unsafe_code)]

mod address;
pub mod frame;
#[cfg(feature = "tokio")]
mod stream;

pub use address::{Address, AddressError, VsockCid};
#[cfg(feature = "tokio")]
pub use frame::FrameCodec;
pub use frame::{FrameError, DEFAULT_MAX_FRAME};
#[cfg(feature = "tokio")]
pub use stream::{connect, from_enclave_cid, from_reserved_vsock_port, Listener, Stream, RESERVED_PORTS};
