//! What went wrong with a key, a scheme or a record.

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
