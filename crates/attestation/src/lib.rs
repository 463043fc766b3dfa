//! Nitro Enclaves attestation documents.
//!
//! An attestation document is a COSE_Sign1 (ES384) whose payload is a CBOR map
//! (module id, timestamp, PCRs, the signing certificate and its CA bundle, and
//! optional `public_key`, `user_data` and `nonce`). This crate:
//!
//! - decodes documents strictly ([`CoseSign1::decode`], [`AttestationDocument`]):
//!   every malformed input is a specific [`DecodeError`], never a panic, and no
//!   allocation exceeds the (bounded) input;
//! - verifies them ([`Verifier`]): the chain leaf -> cabundle -> a pinned root,
//!   validity of every certificate at a chosen time, CA and leaf constraints,
//!   the COSE signature, and the caller's expected PCRs and nonce;
//! - creates the development PKI and signs simulated documents with it
//!   ([`pki`]), the same shape as the AWS chain.
//!
//! The AWS Nitro Enclaves Root-G1 certificate is built in
//! ([`AWS_NITRO_ROOT_G1_PEM`]) and is the default trust anchor; the development
//! root must be chosen explicitly.
//!
//! It does not talk to an NSM; the `nekms-nsm` crate does.
//!
//! ```no_run
//! use nekms_attestation::{Verifier, VerifyOptions};
//! # let bytes: Vec<u8> = vec![];
//! let verifier = Verifier::aws();
//! let verified = verifier.verify(&bytes, &VerifyOptions::now())?;
//! println!("PCR0 = {}", verified.document.pcrs[&0]);
//! # Ok::<(), nekms_attestation::VerifyError>(())
//! ```
#![forbid(unsafe_code)]

pub mod audit_trail;
mod cert;
mod cose;
mod document;
mod error;
pub mod image_signature;
mod pcr;
pub mod pki;
mod verify;

pub use cert::CertificateSummary;
pub use cose::CoseSign1;
pub use document::{AttestationDocument, MAX_CABUNDLE, MAX_DOCUMENT_SIZE, MAX_OPTIONAL_FIELD};
pub use error::{CertError, DecodeError, VerifyError};
pub use pcr::{Pcr48, PcrIndex, PCR_COUNT, PCR_LEN};
pub use verify::{Verified, Verifier, VerifyOptions};

/// The AWS Nitro Enclaves Root-G1 certificate (`CN=aws.nitro-enclaves`),
/// SHA-256 of its DER `641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b`.
pub const AWS_NITRO_ROOT_G1_PEM: &str = include_str!("aws-nitro-root-g1.pem");
