//! Verifying a document: chain to a pinned root, validity, constraints,
//! signature, then the caller's expectations.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use time::OffsetDateTime;

use crate::cert::{Cert, CertificateSummary, Curve};
use crate::cose::CoseSign1;
use crate::document::AttestationDocument;
use crate::error::{CertError, VerifyError};
use crate::pcr::Pcr48;
use crate::AWS_NITRO_ROOT_G1_PEM;

/// What the caller expects of a document beyond a valid signature and chain.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// When the certificates must be valid. Real leaf certificates last about
    /// three hours, so old documents verify only at their own timestamp.
    pub at: OffsetDateTime,
    /// PCRs that must hold exactly these values.
    pub expected_pcrs: BTreeMap<u8, Pcr48>,
    /// The nonce the document must carry.
    pub expected_nonce: Option<Vec<u8>>,
    /// Refuse documents whose timestamp is older than this at `at`.
    pub max_age: Option<Duration>,
}

/// Tolerated clock difference between signer and verifier when checking age.
const CLOCK_SKEW_MS: i128 = 60_000;

impl VerifyOptions {
    /// Verify at the current time, expecting nothing in particular.
    pub fn now() -> VerifyOptions {
        VerifyOptions::at(OffsetDateTime::now_utc())
    }

    pub fn at(at: OffsetDateTime) -> VerifyOptions {
        VerifyOptions { at, expected_pcrs: BTreeMap::new(), expected_nonce: None, max_age: None }
    }

    /// Verify at the document's own timestamp (for archived documents).
    pub fn at_document_time(document: &[u8]) -> Result<VerifyOptions, VerifyError> {
        let cose = CoseSign1::decode(document)?;
        let doc = AttestationDocument::decode(&cose.payload)?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(doc.timestamp as i128 * 1_000_000)
            .map_err(|_| VerifyError::Decode(crate::DecodeError::Timestamp))?;
        Ok(VerifyOptions::at(at))
    }

    pub fn expect_pcr(mut self, index: u8, value: Pcr48) -> Self {
        self.expected_pcrs.insert(index, value);
        self
    }

    pub fn expect_nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.expected_nonce = Some(nonce.into());
        self
    }
}

/// A document that passed every check, and the chain that vouched for it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verified {
    pub document: AttestationDocument,
    /// Root first, leaf last.
    pub chain: Vec<CertificateSummary>,
}

/// Verifies documents against a fixed set of trusted roots.
#[derive(Clone, Debug)]
pub struct Verifier {
    roots: Vec<Vec<u8>>,
}

impl Verifier {
    /// Trust only the AWS Nitro Enclaves Root-G1.
    pub fn aws() -> Verifier {
        Verifier::from_pem(AWS_NITRO_ROOT_G1_PEM).expect("built-in root parses")
    }

    /// Trust every certificate in `pem` (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &str) -> Result<Verifier, CertError> {
        let mut roots = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| CertError::Parse(format!("PEM: {e}")))?;
            if block.label == "CERTIFICATE" {
                roots.push(block.contents);
            }
        }
        Verifier::from_der(roots)
    }

    /// Trust these DER certificates, each a self-signed CA.
    pub fn from_der(roots: Vec<Vec<u8>>) -> Result<Verifier, CertError> {
        if roots.is_empty() {
            return Err(CertError::Parse("no certificate found".into()));
        }
        for der in &roots {
            let cert = Cert::parse(der)?;
            cert.check_issued_by(&cert)?;
            cert.check_ca(0).or_else(|e| match e {
                CertError::PathLength { .. } => Ok(()),
                e => Err(e),
            })?;
        }
        Ok(Verifier { roots })
    }

    /// Subjects of the trusted roots, for messages.
    pub fn root_subjects(&self) -> Vec<String> {
        self.roots.iter().filter_map(|r| Cert::parse(r).ok()).map(|c| c.subject()).collect()
    }

    /// Verify `bytes` (a COSE_Sign1 attestation document) under `opts`.
    pub fn verify(&self, bytes: &[u8], opts: &VerifyOptions) -> Result<Verified, VerifyError> {
        let cose = CoseSign1::decode(bytes)?;
        let document = AttestationDocument::decode(&cose.payload)?;
        let (chain, leaf_key) = self.verify_chain(&document, opts)?;
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &leaf_key)
            .verify(&cose.to_be_signed(), &cose.signature)
            .map_err(|_| VerifyError::Signature)?;
        check_expectations(&document, opts)?;
        Ok(Verified { document, chain })
    }

    /// Check the chain; return its summary and the leaf's P-384 public key.
    fn verify_chain(&self, doc: &AttestationDocument, opts: &VerifyOptions) -> Result<(Vec<CertificateSummary>, Vec<u8>), VerifyError> {
        let at_unix = opts.at.unix_timestamp();
        let at_text = opts.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let presented_root = &doc.cabundle[0];
        if !self.roots.iter().any(|r| r == presented_root) {
            let found = Cert::parse(presented_root).map(|c| c.subject()).unwrap_or_else(|e| format!("unparseable: {e}"));
            return Err(VerifyError::UntrustedRoot { found, pinned: self.root_subjects().join("; ") });
        }
        // Root first, leaf last.
        let ders: Vec<(String, &[u8])> = doc
            .cabundle
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("cabundle[{i}]"), c.as_slice()))
            .chain(std::iter::once(("leaf certificate".to_owned(), doc.certificate.as_slice())))
            .collect();
        let mut certs = Vec::with_capacity(ders.len());
        for (which, der) in &ders {
            let cert = Cert::parse(der).map_err(|error| VerifyError::Certificate {
                which: which.clone(),
                subject: "unparseable".into(),
                error,
            })?;
            certs.push(cert);
        }
        let last = certs.len() - 1;
        for (i, cert) in certs.iter().enumerate() {
            let fail = |error| VerifyError::Certificate { which: ders[i].0.clone(), subject: cert.subject(), error };
            cert.check_validity(at_unix, &at_text).map_err(fail)?;
            // The root is byte-identical to a pinned one, whose self-signature
            // was checked when this verifier was built.
            if i > 0 {
                cert.check_issued_by(&certs[i - 1]).map_err(fail)?;
            }
            if i == last {
                cert.check_leaf().map_err(fail)?;
            } else {
                // CA certificates strictly between this one and the leaf.
                let below = (last - i - 1) as u32;
                cert.check_ca(below).map_err(fail)?;
            }
        }
        let leaf = &certs[last];
        if leaf.curve != Curve::P384 {
            return Err(VerifyError::LeafKey("P-256".into()));
        }
        Ok((certs.iter().map(Cert::summary).collect(), leaf.public_key_bytes().to_vec()))
    }
}

fn check_expectations(doc: &AttestationDocument, opts: &VerifyOptions) -> Result<(), VerifyError> {
    for (index, expected) in &opts.expected_pcrs {
        match doc.pcrs.get(index) {
            Some(actual) if actual == expected => {}
            actual => {
                return Err(VerifyError::PcrMismatch {
                    index: *index,
                    expected: expected.to_hex(),
                    actual: actual.map_or_else(|| "absent".to_owned(), Pcr48::to_hex),
                })
            }
        }
    }
    if let Some(expected) = &opts.expected_nonce {
        if doc.nonce.as_ref() != Some(expected) {
            return Err(VerifyError::NonceMismatch {
                expected: hex::encode(expected),
                actual: doc.nonce.as_ref().map_or_else(|| "absent".to_owned(), hex::encode),
            });
        }
    }
    if let Some(max) = opts.max_age {
        let at_ms = opts.at.unix_timestamp_nanos() / 1_000_000;
        let age_ms = at_ms - doc.timestamp as i128;
        if age_ms < -CLOCK_SKEW_MS {
            return Err(VerifyError::FromTheFuture { ahead_ms: -age_ms });
        }
        if age_ms > max.as_millis() as i128 {
            return Err(VerifyError::TooOld { age_ms, max_ms: max.as_millis() });
        }
    }
    Ok(())
}
