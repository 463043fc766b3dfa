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
//! | module | what |
//! |---|---|
//! | [`server`] | HTTP(S) front end: bounded bodies, SigV4, dispatch, audit |
//! | [`service`] | the operations, authorization, key states |
//! | [`recipient`] | verifying `Recipient` documents, `CiphertextForRecipient` |
//! | [`policy`] | key and identity policies, condition keys |
//! | [`grant`] | grants: operations, constraints, grants made under grants |
//! | [`sigv4`] | signature verification (and signing, for tools) |
//! | [`blob`] | the ciphertext blob format |
//! | [`store`] | SQLite state, material sealed under a master key |
//! | [`crypto`] | asymmetric keys: generate, sign, verify, ECDH |
//! | [`audit`] | CloudTrail-shaped JSON lines |
//! | [`run`] | settings from the development world; `nekms-kms` |
#![forbid(unsafe_code)]

pub mod audit;
pub mod blob;
pub mod crypto;
pub mod grant;
pub mod model;
pub use nekms_kms_policy as policy;
pub use nekms_kms_policy::check as policy_check;
pub mod recipient;
pub mod run;
pub mod server;
pub mod service;
pub mod store;
pub use nekms_kms_proto::{error, request, sigv4};

/// The credential a development principal signs with (no expiry).
pub fn dev_credential(p: &nekms_devworld::DevPrincipal) -> sigv4::Credential {
    sigv4::Credential {
        access_key_id: p.access_key_id.clone(),
        secret_access_key: zeroize::Zeroizing::new(p.secret_access_key.clone()),
        session_token: p.session_token.clone(),
        expires: None,
        principal_arn: p.arn.clone(),
    }
}
