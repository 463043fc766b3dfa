//! The `Recipient` parameter: an attestation document whose public key
//! receives the result as `CiphertextForRecipient`.
//!
//! The document must verify (COSE signature, chain to a configured root,
//! every certificate valid now, not older than the configured maximum age),
//! the algorithm must be `RSAES_OAEP_SHA_256`, and the document's
//! `public_key` must be an RSA-2048 SubjectPublicKeyInfo. Its PCRs become the
//! `kms:RecipientAttestation:*` condition keys before the key policy is
//! evaluated.

use std::collections::BTreeMap;
use std::time::Duration;

use nekms_attestation::{Pcr48, Verifier, VerifyOptions, MAX_DOCUMENT_SIZE};
use time::OffsetDateTime;

use crate::error::KmsError;
use crate::policy::RequestContext;
use crate::request::Request;

/// How Recipient documents are checked.
#[derive(Clone, Debug)]
pub struct RecipientPolicy {
    /// The roots documents must chain to (the development root, and the AWS
    /// Nitro root when configured).
    pub verifier: Verifier,
    /// Refuse documents older than this.
    pub max_age: Duration,
}

/// A verified Recipient.
#[derive(Clone, Debug)]
pub struct Recipient {
    /// RSA-2048 SubjectPublicKeyInfo from the document.
    pub public_key: Vec<u8>,
    pub module_id: String,
    pub pcrs: BTreeMap<u8, Pcr48>,
}

impl Recipient {
    /// Read and verify `Recipient` from a request, if present.
    pub fn from_request(req: &Request, policy: &RecipientPolicy, now: OffsetDateTime) -> Result<Option<Recipient>, KmsError> {
        let Some(r) = req.object("Recipient")? else { return Ok(None) };
        match r.opt_str("KeyEncryptionAlgorithm")? {
            Some("RSAES_OAEP_SHA_256") => {}
            Some(other) => {
                return Err(KmsError::constraint(
                    "Recipient.KeyEncryptionAlgorithm",
                    format!("Member must satisfy enum value set: [RSAES_OAEP_SHA_256] (got {other:?})"),
                ))
            }
            None => return Err(KmsError::validation("Recipient.KeyEncryptionAlgorithm is required; the only value is RSAES_OAEP_SHA_256")),
        }
        let document = r
            .opt_blob("AttestationDocument", 1, MAX_DOCUMENT_SIZE)?
            .ok_or_else(|| KmsError::validation("Recipient.AttestationDocument is required"))?;
        let mut opts = VerifyOptions::at(now);
        opts.max_age = Some(policy.max_age);
        let verified = policy
            .verifier
            .verify(&document, &opts)
            .map_err(|e| KmsError::validation(format!("The attestation document in Recipient is not valid: {e}")))?;
        let doc = verified.document;
        let public_key = doc
            .public_key
            .ok_or_else(|| KmsError::validation("The attestation document in Recipient has no public_key to encrypt the response to"))?;
        nekms_cms::check_recipient_key(&public_key)
            .map_err(|e| KmsError::validation(format!("The public_key in the Recipient attestation document is not usable: {e}")))?;
        Ok(Some(Recipient { public_key, module_id: doc.module_id, pcrs: doc.pcrs }))
    }

    /// Add the `kms:RecipientAttestation:*` condition keys.
    pub fn add_condition_keys(&self, ctx: &mut RequestContext) {
        for (i, v) in &self.pcrs {
            ctx.set(&format!("kms:RecipientAttestation:PCR{i}"), v.to_hex());
        }
        if let Some(pcr0) = self.pcrs.get(&0) {
            ctx.set("kms:RecipientAttestation:ImageSha384", pcr0.to_hex());
        }
    }

    /// Encrypt `plaintext` to the recipient in KMS's CMS form.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        nekms_cms::seal_for_recipient(plaintext, &self.public_key)
            .map_err(|e| KmsError::internal(format!("sealing for the recipient failed: {e}")))
    }

    /// What CloudTrail records about the recipient (`additionalEventData.recipient`).
    pub fn audit_fields(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("attestationDocumentModuleId".into(), self.module_id.clone().into());
        if let Some(p) = self.pcrs.get(&0) {
            m.insert("attestationDocumentEnclaveImageDigest".into(), p.to_hex().into());
        }
        // AWS accepts a debug-mode document (all-zero PCRs); say so, because a policy
        // naming zeros admits every debug-mode image. (nekms's own field, not CloudTrail's.)
        if self.pcrs.get(&0).is_some_and(|p| *p == nekms_attestation::Pcr48::ZERO) {
            m.insert("nekmsNote".into(), "debug-mode document: all-zero PCRs, as every debug-mode enclave reports".into());
        }
        // CloudTrail records PCR1, 2, 3, 4 and 8 besides the image digest (PCR0).
        for i in [1u8, 2, 3, 4, 8] {
            if let Some(v) = self.pcrs.get(&i) {
                m.insert(format!("attestationDocumentEnclavePCR{i}"), v.to_hex().into());
            }
        }
        serde_json::Value::Object(m)
    }
}
