//! `nekms-keys`: the keys nekms keeps and what it does with them.
//!
//! - [`KeySpec`]: secp256k1, Ed25519, P-256, P-384, RSA 2048/3072/4096.
//! - [`PrivateKey`]: generated from mixed entropy, imported
//!   ([`parse_private_key`]), or opened from a sealed [`KeyRecord`]; signs
//!   with a [`Scheme`] (ECDSA DER/raw/recoverable, Ethereum personal_sign,
//!   EIP-712 and transactions, Ed25519, RSA PKCS#1 v1.5 and PSS).
//! - [`PublicKey`]: SubjectPublicKeyInfo, PEM, Ethereum address; verifies.
//! - [`envelope`]: AES-256-GCM sealing under a KMS data key, with the
//!   record's public fields as associated data.
//!
//! The vocabulary (specs, schemes, records, errors) is `nekms-protocol`'s,
//! re-exported here; this crate adds what computes on it.
//!
//! Without the default `private-keys` feature only the public half is
//! built ([`PublicKey`], verification, [`rsa_raw`]'s public operations):
//! no libsecp256k1, no alloy.
//!
//! It does not talk to KMS or store anything: the enclave brings the data
//! key, the parent's store keeps the record.
//!
//! ```
//! use nekms_keys::{KeySpec, Payload, PrivateKey, Scheme};
//! let key = PrivateKey::generate(KeySpec::P256, &[7u8; 64]).unwrap();
//! let msg = Payload::Message(b"Hello World".to_vec());
//! let sig = key.sign(Scheme::EcdsaDer, &msg).unwrap();
//! key.public_key().verify(Scheme::EcdsaDer, &msg, &sig.signature).unwrap();
//! ```
// Only `rsa_raw` calls AWS-LC directly (the RSA operations its safe
// interface lacks); everything else is safe code.
#![deny(unsafe_code)]

mod der;
pub mod envelope;
#[cfg(feature = "private-keys")]
pub mod eth;
mod hash;
#[cfg(feature = "private-keys")]
mod import;
#[cfg(feature = "private-keys")]
pub mod migration;
#[cfg(feature = "private-keys")]
pub mod origin;
mod pin;
#[cfg(feature = "private-keys")]
mod private;
mod public;
pub mod record;
pub mod rsa_raw;
#[cfg(feature = "private-keys")]
mod sign;
mod verify;

pub use der::{ecdsa_der_to_fixed, ecdsa_fixed_to_der};
pub use hash::HashExt;
#[cfg(feature = "private-keys")]
pub use import::parse_private_key;
pub use nekms_protocol::context;
pub use nekms_protocol::{Hash, KeyError, KeyRecord, KeySpec, OaepHash, Origin, Payload, RsaPadding, Scheme, Signature, UnknownSpec};
pub use pin::PinVerifierExt;
#[cfg(feature = "private-keys")]
pub use private::PrivateKey;
pub use public::PublicKey;
pub use record::RecordExt;
