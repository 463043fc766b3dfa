//! `nekms-parent`: what the parent's programs share to serve the enclave,
//! holding no secret of their own.
//!
//! - [`enclave`]: the enclave's RPC address (a CID or an address) and the
//!   connection to it;
//! - [`credentials`]: AWS credentials from the parent's default chain,
//!   pushed into the enclave and refreshed before they expire;
//! - [`secrets`]: KMS ciphertexts kept in Secrets Manager;
//! - [`import`]: the administrator's KMS client and the import ciphertext
//!   (`nekms key encrypt-for-import`, `nekms p11 acm convert`);
//! - [`key_policy`]: the custody key policies nekms writes and their
//!   two-step setup (`nekms policy`, `nekms dev up`), from
//!   `nekms_kms_policy::templates`;
//! - [`kmstool`]: kmstool's protocol from the client's side.
//!
//! The CLI, the agent and the validator signer's parent side use these; none
//! of it runs in the enclave.
//!
//! ```
//! let addr = nekms_parent::enclave::address_or_cid("16", nekms_parent::enclave::RPC_PORT).unwrap();
//! assert_eq!(addr.to_string(), "vsock://16:5000");
//! ```
#![forbid(unsafe_code)]

pub mod credentials;
pub mod enclave;
pub mod import;
pub use nekms_kms_policy::templates as key_policy;
pub mod kmstool;
pub mod secrets;
