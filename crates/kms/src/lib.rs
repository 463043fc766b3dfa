//! `nekms-kms`: a local AWS KMS for development and tests.
//!
//! It speaks the KMS JSON 1.1 protocol, checks SigV4 signatures
//! ([`sigv4`]), evaluates key policies including the
//! `kms:RecipientAttestation:*` condition keys ([`policy`]), and answers
//! requests that carry a `Recipient` with a real `CiphertextForRecipient`.
//! Unlike other emulators it enforces attestation, so the property nekms
//! exists for (only the right enclave image gets the key) is exercised in
//! every test.
//!
//! Built so far: SigV4 verification ([`sigv4`]), the policy engine
//! ([`policy`]), the ciphertext blob format ([`blob`]), key metadata
//! ([`model`]) and the SQLite state with key material sealed under a master
//! key ([`store`]). The HTTP server and the operations follow.
#![forbid(unsafe_code)]

pub mod blob;
pub mod model;
pub mod policy;
pub mod store;
pub mod sigv4;
