//! The validator signer's configuration and state calls.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::KeyRecord;

/// The validator signer's configuration and state calls. Validators'
/// requests themselves arrive on the enclave's privval socket, not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrivvalRequest {
    /// Serve a chain (or change how it is served). The chain's double-sign
    /// state is the one the enclave already holds for this key and chain,
    /// else the state store's record, which must exist and verify.
    Configure(Box<PrivvalChain>),
    /// Stop serving a chain; the enclave keeps its state in memory, so
    /// configuring the chain again never goes back.
    Remove { chain_id: String },
    /// Write a chain's first state record: start at `height`, or from an
    /// imported tmkms or CometBFT state file (`import`, its JSON). Refused
    /// when the store already holds one or the enclave holds this state.
    InitState {
        key: Box<KeyRecord>,
        chain_id: String,
        #[serde(default)]
        height: Option<i64>,
        #[serde(default)]
        import: Option<String>,
    },
    /// Every chain's state and figures.
    Status,
    /// The freshness anchor's DynamoDB credentials, as a KMS ciphertext made
    /// under a pinned custody key with the context
    /// `nekms:purpose=privval-anchor-credentials` (only the enclave opens it).
    SetAnchorCredentials {
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
}

/// A chain as the parent pushes it (from tmkms.toml's `[[chain]]`,
/// `[[providers.softsign]]` and `[[validator]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivvalChain {
    pub chain_id: String,
    /// The consensus key: a custody record made with `nekms:usage=privval`.
    pub key: KeyRecord,
    /// `v0.34`, `v0.37`, `v0.38`, `v0.39` or `v0.40`.
    pub protocol_version: String,
    /// Never sign above this height.
    #[serde(default)]
    pub max_height: Option<i64>,
    /// Never sign more than this many heights above the last signed one;
    /// at most the enclave's own limit, which applies when absent.
    #[serde(default)]
    pub max_height_jump: Option<i64>,
    /// The SecretConnection identity for `tcp://` validators: an Ed25519
    /// custody record (never a consensus key).
    #[serde(default)]
    pub identity: Option<KeyRecord>,
}

/// One chain as the signer reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivvalStatus {
    pub chain_id: String,
    pub key_id: String,
    /// SHA-256 of the consensus key's SPKI, hex: the state's name.
    pub key_fingerprint: String,
    /// `ed25519` or `secp256k1`, and the public key as the validator reads it.
    pub key_type: String,
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    pub protocol_version: String,
    pub served: bool,
    pub height: i64,
    pub round: i32,
    /// FilePV's numbering: 0 none, 1 proposal, 2 prevote, 3 precommit.
    pub step: u8,
    /// The state record's counter, and the last one the store acknowledged.
    pub counter: u64,
    pub committed: u64,
    /// `local` (no freshness: see the README) or `anchored`.
    pub freshness: String,
    pub max_height: Option<i64>,
    pub max_height_jump: i64,
    pub signatures: u64,
    pub extension_signatures: u64,
    /// Refusals by reason (`double-sign`, `regression`, `max-height`, ...).
    pub refusals: BTreeMap<String, u64>,
    /// Failed state commits (nothing was released for them).
    pub store_failures: u64,
    pub connections: u32,
    pub connections_total: u64,
    /// Sign latency histogram: upper bounds in seconds and cumulative counts.
    pub latency_buckets: Vec<(f64, u64)>,
    pub latency_sum: f64,
    pub latency_count: u64,
}

/// The signer's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrivvalResponse {
    Configured(Box<PrivvalStatus>),
    Removed,
    /// The first state record, as written: its height, round and step.
    StateInitialized {
        height: i64,
        round: i32,
        step: u8,
    },
    Status(Vec<PrivvalStatus>),
    AnchorCredentialsSet {
        access_key_id: String,
    },
}
