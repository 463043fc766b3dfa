//! `nekms-privval`: the core of the validator signer, with no sockets.
//!
//! - [`frame`]: the uvarint length prefix CometBFT's privval connection puts
//!   before every protobuf message, with the size limits both sides keep.
//! - [`sign_bytes`]: what a validator signs for a vote, a proposal and a
//!   vote extension (length-prefixed `CanonicalVote`, `CanonicalProposal`
//!   and `CanonicalVoteExtension`), byte for byte as CometBFT builds them.
//! - [`state`]: the double-sign rules (CometBFT's FilePV semantics) as a
//!   pure decision over the last signed height, round and step, plus the
//!   limits a parent cannot use to brick the signer.
//! - [`record`]: the state as the parent keeps it, authenticated with a
//!   key only the enclave holds; [`import`]: tmkms's and CometBFT's state
//!   files, read so a validator does not start again from height 0.
//! - [`wire`]: requests decoded and checked (both wire shapes), replies in
//!   the shape the chain's version reads.
//! - [`store`]: the messages between the enclave and the parent's state
//!   process, which keeps the records durably.
//!
//! The signer itself (in the enclave), its state custody and the parent's
//! proxy build on these; see `docs/privval-design.md`.

pub mod frame;
pub mod import;
pub mod record;
pub mod sign_bytes;
pub mod state;
pub mod store;
pub mod wire;

pub use prost;
pub use tendermint_proto::google::protobuf::Timestamp;
pub use tendermint_proto::v0_38 as proto;
