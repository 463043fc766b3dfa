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

pub mod context;
mod der;
pub mod envelope;
pub mod eth;
mod import;
pub mod origin;
mod private;
mod public;
pub mod record;
pub mod rsa_raw;
mod scheme;
mod sign;
mod spec;

pub use der::{ecdsa_der_to_fixed, ecdsa_fixed_to_der};
pub use import::parse_private_key;
pub use private::{OaepHash, PrivateKey, RsaPadding};
pub use public::PublicKey;
pub use record::{KeyRecord, Origin};
pub use scheme::{Hash, Payload, Scheme};
pub use sign::Signature;
pub use spec::{KeySpec, UnknownSpec};

/// What went wrong, with the fact the user needs and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot import the key: {0}")]
    Import(String),
    #[error("entropy: {0}")]
    Entropy(String),
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("{0}")]
    Scheme(String),
    #[error("payload: {0}")]
    Payload(String),
    #[error("transaction: {0}")]
    Transaction(String),
    #[error("EIP-712 typed data: {0}")]
    TypedData(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("key record {key_id}: {reason}")]
    Record { key_id: String, reason: String },
    #[error("key record {key_id}: the sealed key does not open with this data key and these public fields (tampered with, or taken from another record)")]
    Sealed { key_id: String },
    #[error("key record {key_id}: the sealed key opened but is not the record's public key")]
    Mismatch { key_id: String },
}
