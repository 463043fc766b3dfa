//! `nekms-p11-provision`: PKCS#11 tokens in the enclave, provisioned from
//! the parent.
//!
//! A token is a label, a PIN, and keys from the key store (custody records,
//! sealed: the parent only ever holds their ciphertexts and public keys)
//! with CKA_IDs and certificate chains. The enclave turns the PIN into a
//! verifier (PBKDF2) and serves the token to `libnekms_p11.so`; the parent's
//! token database ([`db`]) keeps the verifier, the key names and the
//! certificates, never a PIN or a key, so [`provision::restore`] can put
//! every token back after the enclave restarts.
//!
//! - [`token`]: a token from a plain [`TokenSpec`] (label, PIN file, keys
//!   `NAME:ID`, certificates `NAME:FILE`, decrypting keys, writable), PEM
//!   chains, and the enclave's request for it;
//! - [`db`]: the token database's JSON format, loading and saving it (0600,
//!   atomically), [`db::MAX_TOKENS`];
//! - [`provision`]: add, update, remove, sync, restore, and pack (a database
//!   entry made without the enclave);
//! - [`describe`]: what the enclave holds (a token, the device, the slots)
//!   and where the database differs, as JSON and text;
//! - [`acm`]: moving an ACM for Nitro Enclaves key database to nekms;
//! - [`connect`]: where the enclave and the key store are, reached only
//!   when an operation needs them.
//!
//! It parses no command line (`nekms p11` does, in the CLI) and holds no
//! secret beyond a PIN on its way to the enclave, and, in [`acm::convert`],
//! ACM's private keys on their way back into KMS.
//!
//! ```
//! use nekms_p11_provision::db::Database;
//! use nekms_p11_provision::TokenSpec;
//!
//! let spec = TokenSpec { label: "web".into(), keys: vec!["web:01".into()], ..TokenSpec::default() };
//! let mut db = Database::default();
//! db.tokens.push(spec.entry(None)?);
//! let json = serde_json::to_string(&db)?;
//! assert!(json.contains(r#""key":"web""#) && !json.contains("pin\":"));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Provisioning it (the enclave and the store are reached only now):
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::path::Path;
//! use nekms_p11_provision::{provision, Enclave, KeyStoreLocation, TokenSpec};
//!
//! let enclave = Enclave::new("vsock://16:5000".parse()?);
//! let store = KeyStoreLocation::new("sqlite:/var/lib/nekms/keys.db".parse().map_err(anyhow::Error::msg)?, None);
//! let spec = TokenSpec {
//!     label: "web".into(),
//!     pin_file: Some("/etc/nekms/web.pin".into()),
//!     keys: vec!["web:01".into()],
//!     certs: vec!["web:/etc/nekms/web-chain.pem".into()],
//!     ..TokenSpec::default()
//! };
//! let slot = provision::add(&enclave, &store, Path::new("/var/lib/nekms/p11-tokens.json"), &spec).await?;
//! # let _ = slot; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod acm;
pub mod connect;
pub mod db;
pub mod describe;
pub mod provision;
pub mod token;

pub use connect::{Enclave, KeyStoreLocation};
pub use token::TokenSpec;

/// The parent's p11-kit module file (`/etc/pkcs11/modules/nekms.module`)
/// for p11-kit's client to reach the enclave's p11-kit server at `remote`.
pub fn p11_kit_module_file(remote: &str) -> String {
    format!(
        "# /etc/pkcs11/modules/nekms.module: p11-kit's client reaches the enclave's p11-kit server\nremote: {remote}\n\
         # The PIN is not here: give it to libp11 with pin-source=file:/path (mode 0600).\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_module_file_names_the_remote_and_no_pin() {
        let text = super::p11_kit_module_file("vsock:cid=16;port=9999");
        assert_eq!(text.lines().nth(1), Some("remote: vsock:cid=16;port=9999"));
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("(mode 0600).\n"));
    }
}
