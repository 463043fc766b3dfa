//! The Nitro Secure Module (NSM) behind one trait.
//!
//! Inside a Nitro Enclave the NSM is `/dev/nsm`: it holds the PCR bank and
//! signs attestation documents. [`Nsm`] is what the rest of nekms uses;
//! [`DeviceNsm`] drives the real device through the
//! `aws-nitro-enclaves-nsm-api` driver, [`SimulatedNsm`] stands in for it
//! in development with the same error codes, size limits and locking rules,
//! and documents signed through the development PKI. [`measure`] derives a
//! simulated enclave's PCR0/1/2 from its image, deterministically.
//!
//! The caller picks one at start-up and holds it as `Box<dyn Nsm>`; the rest
//! of the code is unaware which it got.
//!
//! ```
//! use nekms_attestation::{pki, Verifier, VerifyOptions};
//! use nekms_nsm::{measure, AttestationRequest, Nsm, SimConfig, SimulatedNsm};
//!
//! let now = time::OffsetDateTime::now_utc();
//! let root = pki::generate_root(now).unwrap();
//! let intermediate = pki::generate_intermediate(&root, now).unwrap();
//! let signer = pki::DocumentSigner::new(&root.cert_pem, &intermediate).unwrap();
//! let image = measure::Measurement::of_image(b"enclave binary", None);
//! let nsm = SimulatedNsm::boot(SimConfig::new(image.clone()), signer);
//!
//! let doc = nsm.attestation(AttestationRequest { nonce: Some(b"fresh".to_vec()), ..Default::default() }).unwrap();
//! let verified = Verifier::from_pem(&root.cert_pem).unwrap().verify(&doc, &VerifyOptions::now()).unwrap();
//! assert_eq!(verified.document.pcrs[&0], image.pcr0);
//! ```
#![forbid(unsafe_code)]

mod device;
#[cfg(feature = "simulator")]
pub mod handover;
pub mod measure;
#[cfg(feature = "simulator")]
mod simulator;

use std::collections::BTreeSet;

pub use device::DeviceNsm;
pub use nekms_attestation::Pcr48;
#[cfg(feature = "simulator")]
pub use simulator::{SimConfig, SimulatedNsm};

/// Largest `user_data` in an attestation request.
pub const MAX_USER_DATA: usize = 512;
/// Largest `nonce` in an attestation request.
pub const MAX_NONCE: usize = 512;
/// Largest `public_key` in an attestation request.
pub const MAX_PUBLIC_KEY: usize = 1024;
/// The driver's request buffer: a CBOR-encoded request must fit in it.
pub const MAX_REQUEST: usize = 0x1000;
/// Bytes of entropy one GetRandom returns.
pub const RANDOM_LEN: usize = 256;

/// The NSM's error codes, as the device reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorCode {
    #[error("InvalidArgument: input argument(s) invalid")]
    InvalidArgument,
    #[error("InvalidIndex: PCR index out of bounds")]
    InvalidIndex,
    #[error("InvalidResponse: the response does not match the request")]
    InvalidResponse,
    #[error("ReadOnlyIndex: the PCR is locked")]
    ReadOnlyIndex,
    #[error("InvalidOperation: the NSM cannot fulfil this request")]
    InvalidOperation,
    #[error("BufferTooSmall: the output buffer is too small")]
    BufferTooSmall,
    #[error("InputTooLarge: the input is too large")]
    InputTooLarge,
    #[error("InternalError: the NSM failed internally")]
    InternalError,
}

/// Why an NSM call failed.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    #[error("NSM refused the request: {0}")]
    Code(#[from] ErrorCode),
    #[error("cannot open /dev/nsm: {0}")]
    Unavailable(String),
    #[error("the NSM answered a {request} request with an unrelated response")]
    UnexpectedResponse { request: &'static str },
    #[error("the simulator could not sign the document: {0}")]
    Signing(String),
}

/// A PCR and whether it is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcrState {
    pub locked: bool,
    pub value: Pcr48,
}

/// What DescribeNSM reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NsmDescription {
    pub version: (u16, u16, u16),
    pub module_id: String,
    pub max_pcrs: u16,
    pub locked_pcrs: BTreeSet<u16>,
    pub digest: String,
}

/// The optional fields of an attestation request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttestationRequest {
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
}

/// The operations of a Nitro Secure Module.
pub trait Nsm: Send + Sync {
    fn describe_pcr(&self, index: u16) -> Result<PcrState, NsmError>;
    /// Extend `index` with `data` (`new = SHA-384(old || data)`); returns the new value.
    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Pcr48, NsmError>;
    fn lock_pcr(&self, index: u16) -> Result<(), NsmError>;
    /// Lock PCRs `[0, range)`.
    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError>;
    fn describe(&self) -> Result<NsmDescription, NsmError>;
    /// A signed attestation document (COSE_Sign1 bytes).
    fn attestation(&self, request: AttestationRequest) -> Result<Vec<u8>, NsmError>;
    /// [`RANDOM_LEN`] bytes of entropy.
    fn get_random(&self) -> Result<Vec<u8>, NsmError>;
    /// True for the simulator, so callers can say so in their output.
    fn is_simulated(&self) -> bool;
}
