//! nekms's native RPC between the parent and the enclave.
//!
//! Length-prefixed CBOR frames ([`nekms_transport::FrameCodec`], 1 MiB by
//! default) over any [`nekms_transport::Address`]. The client opens with a
//! `Hello` naming the protocol versions it speaks and the server answers with
//! the one it chose, or with a `Goodbye` saying why not. After that the client
//! sends calls tagged with ids, as many as it likes without waiting; the server
//! runs up to `max_in_flight` of them at once per connection and replies as
//! each finishes. See [`protocol`] (`nekms_protocol::rpc`, shared with the PKCS#11 module) for
//! the messages.
//!
//! Secrets (credentials going in, plaintext coming out) travel as
//! [`protocol::Secret`] and [`protocol::SecretString`]: redacted in `Debug`,
//! wiped on drop, and the frames that carried them are wiped after use.
#![forbid(unsafe_code)]

pub mod client;
pub mod server;
mod wire;

pub use client::{Client, ClientError};
pub use nekms_protocol::rpc as protocol;
pub use protocol::{
    Approval, CacheInfo, CredentialsInfo, CredentialsUpdate, Description, Entropy, ErrorCode, GenerateKey, ImportKey, MigrateItem,
    MigrateRequest, MigrateResponse, MigrationCheck, NsmInfo, P11Key, P11PublicKey, P11Request, P11Response, P11Slot, P11Token, PcrInfo,
    PinVerifier, PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus, Request, Response, RpcError, Secret, SecretString,
    TrustInfo,
};
pub use server::{serve, serve_connection, serve_each, Handler, ServerOptions};
