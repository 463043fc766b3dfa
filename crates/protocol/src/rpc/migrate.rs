//! Moving custody to another KMS key under a quorum: the enclave's side.
//! The statement and approvals are `nekms_keys::migration`'s; this is how
//! they travel.

use serde::{Deserialize, Serialize};

use crate::record::KeyRecord;

/// A detached approval of a migration statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Base64 of the approver's SubjectPublicKeyInfo (DER).
    pub approver: String,
    /// `ed25519` or `ecdsa-p256-sha256`.
    pub algorithm: String,
    /// Base64: Ed25519's 64 bytes, or ECDSA's DER.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MigrateRequest {
    /// A nonce for one statement, issued by this boot of the enclave.
    Begin,
    /// Every check the enclave makes before it re-seals anything under the
    /// target (the statement, the time, the nonce, the source, the quorum,
    /// the target key and its policy, read by the enclave itself), without
    /// sealing anything.
    Check {
        #[serde(with = "serde_bytes")]
        statement: Vec<u8>,
        approvals: Vec<Approval>,
    },
    /// The same checks, then each record (under the source key, its leaf
    /// under the approved root) opened and re-sealed under the target with
    /// origin `migrated`; the new records come back.
    Records {
        #[serde(with = "serde_bytes")]
        statement: Vec<u8>,
        approvals: Vec<Approval>,
        records: Vec<MigrateItem>,
    },
    /// The statement's nonce is spent: nothing more is re-sealed under it.
    Finish {
        #[serde(with = "serde_bytes")]
        statement: Vec<u8>,
    },
}

/// A source record and its manifest proof (`nekms_keys::migration::Proof`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateItem {
    pub record: KeyRecord,
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}

impl MigrateRequest {
    pub fn name(&self) -> &'static str {
        match self {
            MigrateRequest::Begin => "Begin",
            MigrateRequest::Check { .. } => "Check",
            MigrateRequest::Records { .. } => "Records",
            MigrateRequest::Finish { .. } => "Finish",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MigrateResponse {
    Begun {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        /// Until when the nonce may be used, seconds since the Unix epoch.
        expires: u64,
    },
    Checked(MigrationCheck),
    Migrated {
        records: Vec<KeyRecord>,
    },
    Finished,
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCheck {
    /// The approvers whose approvals counted (ids: the first 8 bytes of
    /// SHA-256 of their SPKI, hex), and the threshold.
    pub approvers: Vec<String>,
    pub threshold: u32,
    /// The NSM's time the statement was checked at, seconds since the Unix epoch.
    pub checked_at: u64,
    /// The target key as KMS described it to the enclave.
    pub target_key: String,
    pub target_policy_sha256: String,
}
