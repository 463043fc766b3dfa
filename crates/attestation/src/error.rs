//! What can be wrong with an attestation document, said precisely.

/// The bytes are not a well-formed attestation document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("document is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR in {context}: {detail}")]
    Cbor { context: &'static str, detail: String },
    #[error("CBOR tag {0} is not COSE_Sign1 (tag 18)")]
    WrongTag(u64),
    #[error("COSE_Sign1 must be a 4-element array, found {0}")]
    NotSign1Array(String),
    #[error("COSE protected header: {0}")]
    ProtectedHeader(String),
    #[error("COSE algorithm {0} is not ES384 (-35)")]
    UnsupportedAlgorithm(i64),
    #[error("COSE unprotected header must be an empty map")]
    UnprotectedHeader,
    #[error("COSE signature is {0} bytes; ES384 signatures are 96 bytes (r || s)")]
    SignatureLength(usize),
    #[error("{0} trailing bytes after the document")]
    TrailingBytes(usize),
    #[error("mandatory field {0:?} is missing")]
    MissingField(&'static str),
    #[error("field {0:?} appears twice")]
    DuplicateField(&'static str),
    #[error("unknown field {0:?} in the document")]
    UnknownField(String),
    #[error("field {field:?} must be {expected}")]
    FieldType { field: &'static str, expected: &'static str },
    #[error("field {field:?} is {len} long; allowed {min}..={max}")]
    FieldSize { field: &'static str, len: usize, min: usize, max: usize },
    #[error("digest {0:?} is not supported; Nitro documents use SHA384")]
    UnsupportedDigest(String),
    #[error("PCR index {0} is out of range 0..32")]
    PcrIndex(u64),
    #[error("PCR{index} is {len} bytes; SHA384 PCRs are 48 bytes")]
    PcrLength { index: u64, len: usize },
    #[error("timestamp must be a positive number of milliseconds")]
    Timestamp,
}

/// What is wrong with one certificate of the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("not valid before {not_before} (verification time {at})")]
    NotYetValid { not_before: String, at: String },
    #[error("expired at {not_after} (verification time {at})")]
    Expired { not_after: String, at: String },
    #[error("is not a CA certificate (basicConstraints cA is absent or false)")]
    NotCa,
    #[error("is a CA but its keyUsage lacks keyCertSign")]
    NoKeyCertSign,
    #[error("allows {allowed} CA certificates below it (pathLenConstraint) but has {below}")]
    PathLength { allowed: u32, below: u32 },
    #[error("is a CA certificate, but a document must be signed by an end-entity certificate")]
    LeafIsCa,
    #[error("keyUsage lacks digitalSignature, so it may not sign documents")]
    NoDigitalSignature,
    #[error("names issuer {found:?} but the certificate above it is {expected:?}")]
    IssuerMismatch { found: String, expected: String },
    #[error("signature does not verify with the issuer's key")]
    BadSignature,
    #[error("signature algorithm {0} is not supported (ECDSA with SHA-256 or SHA-384)")]
    UnsupportedSignatureAlgorithm(String),
    #[error("public key is not an ECDSA P-256 or P-384 key ({0})")]
    UnsupportedKey(String),
    #[error("has an unrecognised critical extension {0}")]
    UnknownCriticalExtension(String),
}

/// Why an attestation document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed attestation document: {0}")]
    Decode(#[from] DecodeError),
    #[error("the document chains to root {found:?}, which is not a pinned root ({pinned})")]
    UntrustedRoot { found: String, pinned: String },
    #[error("{which} ({subject}) {error}")]
    Certificate { which: String, subject: String, error: CertError },
    #[error("the leaf key must be ECDSA P-384 to check an ES384 signature; it is {0}")]
    LeafKey(String),
    #[error("COSE signature does not verify with the leaf certificate's key (document altered or not signed by it)")]
    Signature,
    #[error("PCR{index} is {actual}; expected {expected}")]
    PcrMismatch { index: u8, expected: String, actual: String },
    #[error("nonce is {actual}; expected {expected}")]
    NonceMismatch { expected: String, actual: String },
    #[error("document is {age_ms} ms old; the limit is {max_ms} ms")]
    TooOld { age_ms: i128, max_ms: u128 },
    #[error("document timestamp is {ahead_ms} ms after the verification time")]
    FromTheFuture { ahead_ms: i128 },
}
