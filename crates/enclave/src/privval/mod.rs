//! The validator signer: CometBFT's privval protocol served inside the
//! enclave, with the double-sign state kept so that the parent cannot make
//! the enclave sign twice at one height, round and step.
//!
//! A validator node listens; the parent's `nekms privval proxy` dials it
//! and opens a connection to the enclave's privval socket, sends a hello
//! naming the chain (and whether the validator speaks SecretConnection,
//! which the enclave then terminates itself), and from then on only relays
//! bytes. The enclave decodes each request ([`nekms_privval::wire`]),
//! decides under the chain's state ([`nekms_privval::state`]), signs with
//! the consensus key, commits the new state, and only then replies.
//!
//! What the parent can do, and why it gets no double sign:
//! - a consensus key is a custody record made with `nekms:usage=privval`;
//!   the general Sign, the agent and PKCS#11 refuse it ([`crate::custody`]),
//!   so only this path signs with it, and only canonical votes, proposals
//!   and vote extensions built here from checked fields;
//! - for each key and chain the enclave keeps the state in memory for its
//!   whole life (removing and configuring a chain again finds it there),
//!   and every request for one chain is decided under one lock, so two
//!   connections asking for one height, round and step get one signature;
//! - the state is advanced in memory before it is committed, and the
//!   signature leaves only after the store acknowledged the record; a
//!   record never holds the signature, so withholding the acknowledgement
//!   yields nothing, and a request that conflicts with the one not yet
//!   acknowledged is refused all the same;
//! - the state record is authenticated with a key derived from the
//!   consensus key, so a forged, edited, truncated or other key's record is
//!   refused. What the MAC cannot refuse is an older copy of a valid record
//!   after the enclave restarts: in local mode (the state kept by the
//!   parent's `nekms privval persist`) there is no freshness, and
//!   [`PrivvalStatus::freshness`] says `local`.
//!
//! [`PrivvalStatus::freshness`]: nekms_rpc::PrivvalStatus::freshness

mod chains;
mod framed;
mod server;
mod sign;
mod store;

pub use server::{serve, Hello};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use nekms_keys::{KeySpec, PrivateKey};
use nekms_privval::state::{LastSigned, Limits};
use nekms_privval::wire::ProtocolVersion;
use nekms_transport::Address;

use store::StateStore;

/// How far above the last signed height one request may go, unless the
/// measured configuration says otherwise (`privval-max-height-jump`).
pub const DEFAULT_MAX_HEIGHT_JUMP: i64 = 1_000_000;
/// Latency buckets (seconds) of the sign histogram.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 5.0];

/// Figures for one key and chain.
#[derive(Default)]
struct Metrics {
    signatures: AtomicU64,
    extension_signatures: AtomicU64,
    store_failures: AtomicU64,
    connections: AtomicU32,
    connections_total: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<(Vec<u64>, f64, u64)>,
}

impl Metrics {
    fn refused(&self, reason: &str) {
        *self.refusals.lock().unwrap_or_else(|p| p.into_inner()).entry(reason.to_owned()).or_default() += 1;
    }
    fn observe(&self, seconds: f64) {
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if l.0.is_empty() {
            l.0 = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                l.0[i] += 1;
            }
        }
        l.1 += seconds;
        l.2 += 1;
    }
}

/// The state for one key and chain, kept for the enclave's life.
struct State {
    last: LastSigned,
    /// The counter of the newest record, and of the newest the store acknowledged.
    counter: u64,
    committed: u64,
    mac: hmac::Key,
}

struct Slot {
    state: tokio::sync::Mutex<State>,
    metrics: Metrics,
}

/// A chain being served.
struct Chain {
    chain_id: String,
    key_id: String,
    fingerprint: String,
    spec: KeySpec,
    /// As the validator reads it: 32 Ed25519 bytes, or a compressed secp256k1 point.
    public_key: Vec<u8>,
    key: Arc<PrivateKey>,
    identity: Option<cometbft_p2p::IdentitySecret>,
    version: ProtocolVersion,
    version_name: String,
    limits: Limits,
    slot: Arc<Slot>,
}

/// The signer's chains and states, and its way to the state store.
pub struct Signer {
    chains: Mutex<BTreeMap<String, Arc<Chain>>>,
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    store: StateStore,
    /// When configured, states live in the anchor, not the parent's store.
    pub anchor: Option<crate::privval_anchor::Anchor>,
    max_jump: i64,
}

impl Signer {
    pub fn new(store: Option<Address>, max_jump: Option<i64>, anchor: Option<crate::privval_anchor::Anchor>) -> anyhow::Result<Signer> {
        if max_jump.is_some_and(|j| j < 1) {
            anyhow::bail!("privval-max-height-jump is at least 1");
        }
        Ok(Signer {
            chains: Mutex::default(),
            slots: Mutex::default(),
            store: StateStore::new(store),
            anchor,
            max_jump: max_jump.unwrap_or(DEFAULT_MAX_HEIGHT_JUMP),
        })
    }

    fn chain(&self, chain_id: &str) -> Option<Arc<Chain>> {
        self.chains.lock().unwrap_or_else(|p| p.into_inner()).get(chain_id).cloned()
    }

    fn freshness(&self) -> String {
        match &self.anchor {
            Some(a) => format!("anchored (DynamoDB table {})", a.table),
            None => "local".into(),
        }
    }
}
