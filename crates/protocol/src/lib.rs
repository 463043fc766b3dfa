//! `nekms-protocol`: the vocabulary the parent, the enclave and the PKCS#11
//! module share, and nothing that computes.
//!
//! - [`KeySpec`], [`Scheme`], [`Hash`], [`Payload`], [`RsaPadding`]: what a
//!   key is and how it signs or decrypts, parsed once from names;
//! - [`KeyRecord`] and [`Origin`]: the stored record (all of it public) and
//!   the reserved encryption-context namespace ([`context`]) that binds it;
//! - [`rpc`]: the native RPC's messages and their CBOR encoding;
//! - [`KeyError`]: what went wrong with a key, a scheme or a record.
//!
//! It depends on serde and ciborium only: no async runtime, no cryptography,
//! so the PKCS#11 module (loaded into every p11-kit server process) can
//! speak the protocol without linking the signer. Signing, verification and
//! sealing are in `nekms-keys`; the async client and server in `nekms-rpc`.
//!
//! ```
//! use nekms_protocol::{KeySpec, Scheme};
//! let spec: KeySpec = "ECC_SECG_P256K1".parse().unwrap();
//! assert_eq!(spec, KeySpec::Secp256k1);
//! assert!(Scheme::EthPersonal.check_spec(spec).is_ok());
//! assert!(Scheme::Ed25519.check_spec(spec).is_err());
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod context;
pub mod digest_info;
mod error;
mod padding;
pub mod record;
pub mod rpc;
mod scheme;
mod signature;
mod spec;

pub use error::KeyError;
pub use padding::{OaepHash, RsaPadding};
pub use record::{KeyRecord, Origin};
pub use scheme::{Hash, Payload, Scheme};
pub use signature::Signature;
pub use spec::{KeySpec, UnknownSpec};
