//! KMS from inside the enclave.
//!
//! [`ChannelHttpClient`] is an HTTP client for the AWS SDK that dials the
//! parent's proxy over the enclave's channel (`vsock://parent:8000` in
//! production, a Unix socket in development) and speaks TLS end to end with
//! the KMS endpoint named in the request URI, so the parent only ever relays
//! ciphertext. [`EnclaveKms`] wraps aws-sdk-kms: every operation that can
//! release key material carries a `Recipient` with a fresh attestation
//! document holding the enclave's ephemeral RSA-2048 public key, and the
//! enclave opens `CiphertextForRecipient` itself. Credentials live only in
//! memory, set by the parent.
#![forbid(unsafe_code)]

mod http;
mod kms;

pub use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec};
pub use http::{ChannelHttpClient, TlsRoots};
pub use kms::{first_line, Credentials, DataKey, DataKeyPair, Decrypted, EnclaveKms, EnclaveKmsError, KeyFacts, KmsSession};
