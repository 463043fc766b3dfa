//! Proof of origin: the attestation document an enclave puts in every record
//! it makes, and how anyone checks it.
//!
//! The document's user_data is the record's origin commitment
//! ([`KeyRecord::origin_commitment`]: `nekms-key:v2:` then the origin, key
//! id, spec, SHA-256 of the public key and a digest of the KMS key ARN and
//! encryption context). The enclave never places a caller's bytes behind
//! that prefix (a caller's user_data goes behind `nekms-caller:v1:`) and
//! never attests a caller's public key, so a document that verifies,
//! comes from a trusted image and carries exactly this commitment was made
//! by that image for this record.

use nekms_attestation::{Pcr48, Verifier, VerifyOptions};

use crate::record::{KeyRecord, RecordExt};

/// What a verified origin document says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    /// PCR0 of the enclave image that made the record.
    pub pcr0: String,
    pub pcr1: String,
    pub pcr2: String,
    /// PCR8 of that image: its signing certificate's measurement (zeros
    /// for an unsigned image).
    pub pcr8: String,
    /// When the NSM signed (milliseconds since the Unix epoch).
    pub timestamp: u64,
    pub module_id: String,
    /// The commitment, as text.
    pub commitment: String,
}

/// What [`OriginError::Missing`] says, so a client that sent a record
/// without its document (to spare the bytes) knows to send it whole.
pub use nekms_protocol::record::ORIGIN_MISSING as MISSING;

/// Why a record's origin is not proven; each names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("rule provenance: key record {0} {missing}; only records an enclave made or imported are used", missing = MISSING)]
    Missing(String),
    #[error("rule provenance: key record {0}: the record itself is invalid: {1}")]
    Record(String, String),
    #[error("rule provenance: key record {0}: its origin document does not verify: {1}")]
    Document(String, String),
    #[error("rule provenance: key record {0}: its origin document carries a public key; origin documents never do")]
    PublicKey(String),
    #[error("rule provenance: key record {0}: its origin document comes from an enclave image (PCR0 {1}, PCR8 {2}) that is not trusted, by image (PCR0) or by signer (PCR8)")]
    Image(String, String, String),
    #[error("rule provenance: key record {0}: its migration is not proven: {1}")]
    Migration(String, String),
    #[error("rule provenance: key record {0}: its origin document does not commit to this record (key id, spec, public key, KMS key, encryption context and origin): it says {1:?}")]
    Commitment(String, String),
}

/// The images whose origin documents are trusted: an image is trusted if its
/// PCR0 is listed (by image) or its PCR8 is (by signer: every image the
/// certificate's key signed). All-zero values never match: an unsigned
/// image reports PCR8 zero, and a debug-mode one zeros everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedImages {
    pub pcr0: Vec<Pcr48>,
    pub pcr8: Vec<Pcr48>,
    /// Who approves migrations (SPKI DER) and how many must: a migrated
    /// record is accepted only with such an approval. None: none is.
    pub approvers: Vec<Vec<u8>>,
    pub threshold: usize,
    /// Whether records first imported are accepted.
    pub allow_imported: bool,
}

impl TrustedImages {
    /// Trust by image only.
    pub fn by_pcr0(pcr0: &[Pcr48]) -> TrustedImages {
        TrustedImages { pcr0: pcr0.to_vec(), ..Default::default() }
    }

    /// Whether any image a statement names (PCR0 or PCR8, hex) is trusted here.
    pub fn admits_any(&self, images: &crate::migration::Images) -> bool {
        let parse = |v: &[String]| v.iter().filter_map(|h| h.parse::<Pcr48>().ok()).collect::<Vec<_>>();
        parse(&images.pcr0).iter().any(|p| self.pcr0.contains(p))
            || parse(&images.pcr8).iter().any(|p| !p.is_zero() && self.pcr8.contains(p))
    }

    /// Whether an image with these PCRs is trusted.
    pub fn admits(&self, pcr0: &Pcr48, pcr8: &Pcr48) -> bool {
        self.pcr0.contains(pcr0) || (!pcr8.is_zero() && self.pcr8.contains(pcr8))
    }
}

/// Check `record`'s origin document against `verifier`'s roots (at the
/// document's own time: real leaf certificates last hours) and the trusted
/// images.
pub fn verify_origin(record: &KeyRecord, verifier: &Verifier, trusted: &TrustedImages) -> Result<Origin, OriginError> {
    let id = || record.key_id.clone();
    let public = record.check().map_err(|e| OriginError::Record(id(), e.to_string()))?;
    let document = record.attestation.as_deref().ok_or_else(|| OriginError::Missing(id()))?;
    let opts = VerifyOptions::at_document_time(document).map_err(|e| OriginError::Document(id(), e.to_string()))?;
    let doc = verifier.verify(document, &opts).map_err(|e| OriginError::Document(id(), e.to_string()))?.document;
    if doc.public_key.is_some() {
        return Err(OriginError::PublicKey(id()));
    }
    let pcr = |i: u8| doc.pcrs.get(&i).copied().unwrap_or(Pcr48::ZERO);
    if record.origin == crate::Origin::Migrated {
        // Made by the source image of an approved migration, before the statement expired.
        let (statement, _) = crate::migration::verify_migrated(
            record,
            &trusted.approvers,
            trusted.threshold,
            |i| trusted.admits_any(i),
            trusted.allow_imported,
        )
        .map_err(|e| OriginError::Migration(id(), e.to_string()))?;
        let source = &statement.source.enclave;
        let matches = |want: &[String], got: Pcr48| want.iter().all(|w| *w == got.to_hex());
        if !matches(&source.pcr0, pcr(0)) || !matches(&source.pcr8, pcr(8)) {
            return Err(OriginError::Migration(id(), "its document is not from the approved source image".into()));
        }
        if doc.timestamp / 1000 > statement.expires_at().max(0) as u64 {
            return Err(OriginError::Migration(id(), "it was re-sealed after the approval expired".into()));
        }
    } else if !trusted.admits(&pcr(0), &pcr(8)) {
        return Err(OriginError::Image(id(), pcr(0).to_hex(), pcr(8).to_hex()));
    }
    let commitment = record.origin_commitment(&public);
    if doc.user_data.as_deref() != Some(&commitment[..]) {
        let said = String::from_utf8_lossy(doc.user_data.as_deref().unwrap_or_default()).chars().take(200).collect();
        return Err(OriginError::Commitment(id(), said));
    }
    Ok(Origin {
        pcr0: pcr(0).to_hex(),
        pcr1: pcr(1).to_hex(),
        pcr2: pcr(2).to_hex(),
        pcr8: pcr(8).to_hex(),
        timestamp: doc.timestamp,
        module_id: doc.module_id,
        commitment: String::from_utf8_lossy(&commitment).into_owned(),
    })
}
