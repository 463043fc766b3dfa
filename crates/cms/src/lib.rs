//! CMS EnvelopedData the way AWS KMS returns `CiphertextForRecipient`.
//!
//! When a KMS request carries a `Recipient` (an attestation document holding
//! an RSA-2048 public key), KMS answers not with plaintext but with a CMS
//! `ContentInfo` / `EnvelopedData` for that key: BER with indefinite lengths,
//! EnvelopedData version 2, one KeyTransRecipientInfo version 2 identified by
//! a 32-byte subjectKeyIdentifier, the content key wrapped with RSAES-OAEP
//! (SHA-256, MGF1-SHA-256, empty label), the content in AES-256-CBC with a
//! 16-byte IV.
//!
//! - [`EnvelopedData::parse`] reads any BER (definite or indefinite lengths,
//!   primitive or constructed octet strings) into typed fields, with a
//!   specific [`CmsError`] for every defect and a depth limit.
//! - [`seal_for_recipient`] writes exactly KMS's form (the local KMS uses it).
//! - [`RecipientKey::open`] decrypts (the enclave uses it).
//!
//! ```
//! use nekms_cms::{seal_for_recipient, EnvelopedData, RecipientKey};
//! let key = RecipientKey::generate().unwrap();
//! let ber = seal_for_recipient(b"data key", &key.public_key_der().unwrap()).unwrap();
//! let parsed = EnvelopedData::parse(&ber).unwrap();
//! assert_eq!(parsed.recipient.subject_key_identifier.len(), 32);
//! assert_eq!(&key.open(&ber).unwrap()[..], b"data key");
//! ```
#![forbid(unsafe_code)]

mod ber;
mod envelope;

pub use ber::{parse as parse_ber, BerError, Body, Element};
pub use envelope::{
    check_recipient_key, seal_for_recipient, subject_key_identifier, CmsError, EnvelopedData, KeyTransRecipient, RecipientKey, MAX_CMS_SIZE,
};
