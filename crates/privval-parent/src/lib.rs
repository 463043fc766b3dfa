//! `nekms-privval-parent`: what runs on the parent for the validator
//! signer. The signer itself is in the enclave (`nekms-enclave --privval`):
//! it holds the consensus keys, decides the double-sign rules and signs.
//! The parent moves and keeps bytes for it, and holds no secret:
//!
//! - [`store`]: the state store (`nekms privval persist`), two slot files
//!   per key and chain, each new record durable before it is acknowledged.
//!   A record is the enclave's, sealed under an HMAC-SHA256 tag whose key
//!   only the enclave derives (from the consensus secret), so the parent
//!   can lose or withhold a record but not forge or edit one; the enclave
//!   checks every tag it reads back.
//! - [`proxy`]: the relay (`nekms privval proxy`) that dials each
//!   validator's `priv_validator_laddr` and joins it to the enclave's
//!   signer after a hello naming the chain. On `tcp://` the
//!   SecretConnection ends in the enclave, so the relay carries ciphertext.
//! - [`config`]: tmkms.toml, read as strictly as tmkms reads it, refusing
//!   keys in the clear; [`push`]: its chains pushed to the enclave as
//!   [`nekms_rpc::PrivvalChain`] configurations, keys named as custody
//!   records.
//! - [`state`], [`anchor`], [`status`]: the signer's other requests over
//!   the enclave's RPC (a chain's first state, the anchor's credentials as
//!   a KMS ciphertext only the enclave opens, what each chain has signed).
//!
//! No command line here: `nekms privval` parses its flags and calls these.
//! The protocol pieces (frames, records, store messages) are
//! `nekms-privval`'s; see `docs/validator-signer.md`.
//!
//! ```
//! use std::path::Path;
//! use nekms_privval_parent::config::TmkmsConfig;
//!
//! let toml = r#"
//! [[chain]]
//! id = "cosmoshub-4"
//!
//! [[providers.softsign]]
//! chain_ids = ["cosmoshub-4"]
//! key = "validator-1"
//!
//! [[validator]]
//! chain_id = "cosmoshub-4"
//! addr = "tcp://0123456789ABCDEF0123456789abcdef01234567@127.0.0.1:26658"
//! identity = "node-identity"
//! "#;
//! let config = TmkmsConfig::parse(toml, Path::new("tmkms.toml")).unwrap();
//! let validator = nekms_privval_parent::proxy::parse_validator_addr(&config.validator[0].addr).unwrap();
//! assert_eq!(validator.address.to_string(), "tcp://127.0.0.1:26658");
//! assert_eq!(validator.node_id.as_deref(), Some("0123456789abcdef0123456789abcdef01234567"));
//!
//! // A SecretConnection key in the clear on the parent is refused.
//! let clear = toml.replace("identity = \"node-identity\"", "secret_key = \"/etc/tmkms/secret_connection.key\"");
//! let e = TmkmsConfig::parse(&clear, Path::new("tmkms.toml")).unwrap_err();
//! assert!(e.to_string().contains("secret_key is a SecretConnection key in the clear on the parent"));
//! ```
#![forbid(unsafe_code)]

pub mod anchor;
pub mod config;
pub mod proxy;
pub mod push;
pub mod state;
pub mod status;
pub mod store;
