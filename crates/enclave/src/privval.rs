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

use nekms_keys::RecordExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use cometbft_p2p::{AsyncReadMsg, AsyncSecretConnection, AsyncWriteMsg};
use nekms_keys::{KeyRecord, KeySpec, Payload, PrivateKey, Scheme};
use nekms_privval::proto::privval::{Message as Envelope, RemoteSignerError};
use nekms_privval::proto::types::{Proposal, Vote};
use nekms_privval::record::StateRecord;
use nekms_privval::state::{decide, Decision, Kind, LastSigned, Limits, Refusal, Step};
use nekms_privval::store::{StoreReply, StoreRequest};
use nekms_privval::wire::{self, ProtocolVersion, Reply};
use nekms_privval::{frame, sign_bytes};
use nekms_rpc::{PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus, RpcError};
use nekms_transport::{Address, Stream};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Enclave;

/// How far above the last signed height one request may go, unless the
/// measured configuration says otherwise (`privval-max-height-jump`).
pub const DEFAULT_MAX_HEIGHT_JUMP: i64 = 1_000_000;
/// How long the store may take to acknowledge a record.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// The proxy's hello: a 4-byte length and JSON, at most this long.
const MAX_HELLO: usize = 4096;
/// Latency buckets (seconds) of the sign histogram.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 5.0];

/// What the parent's proxy says first on the privval socket.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub chain_id: String,
    /// The validator's address dialled (`tcp://` means SecretConnection).
    pub validator: String,
    /// For `tcp://`: the node id the validator's SecretConnection key must have.
    #[serde(default)]
    pub node_id: Option<String>,
}

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

/// Why a commit did not happen.
enum CommitError {
    /// The anchor holds a newer state than this enclave knew (another signer's).
    Moved,
    Failed(String),
}

impl Signer {
    pub fn new(store: Option<Address>, max_jump: Option<i64>, anchor: Option<crate::privval_anchor::Anchor>) -> anyhow::Result<Signer> {
        if max_jump.is_some_and(|j| j < 1) {
            anyhow::bail!("privval-max-height-jump is at least 1");
        }
        Ok(Signer {
            chains: Mutex::default(),
            slots: Mutex::default(),
            store: StateStore { address: store, conn: tokio::sync::Mutex::new(None) },
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

    /// A state record's candidates by name: the anchor's item, else what the
    /// parent's store holds (up to two slots). Empty: no state.
    async fn read(&self, name: &str) -> Result<Vec<Vec<u8>>, RpcError> {
        match &self.anchor {
            Some(a) => Ok(a.get(name).await.map_err(unavailable)?.into_iter().collect()),
            None => match self.store.call(StoreRequest::Get { name: name.to_owned() }).await.map_err(unavailable)? {
                StoreReply::Found(b) => Ok(vec![b]),
                StoreReply::Slots(records) => Ok(records),
                StoreReply::None => Ok(Vec::new()),
                StoreReply::Failed(why) => Err(unavailable(format!("the state store: {why}"))),
                StoreReply::Stored => Err(unavailable("the state store answered a read with an acknowledgement")),
            },
        }
    }

    /// Write a chain's first record; refused if one exists.
    async fn create(&self, name: &str, record: Vec<u8>) -> Result<(), RpcError> {
        let exists = || RpcError::refused(format!("rule privval-state: a state for {name} exists already; it is not overwritten"));
        match &self.anchor {
            Some(a) => match a.create(name, 1, record).await.map_err(unavailable)? {
                true => Ok(()),
                false => Err(exists()),
            },
            None => {
                if !self.read(name).await?.is_empty() {
                    return Err(exists());
                }
                match self.store.call(StoreRequest::Put { name: name.to_owned(), record }).await.map_err(unavailable)? {
                    StoreReply::Stored => Ok(()),
                    other => Err(unavailable(format!("the state store did not store the record: {other:?}"))),
                }
            }
        }
    }
}

/// The parent's state process, dialled by the enclave; one request at a time.
struct StateStore {
    address: Option<Address>,
    conn: tokio::sync::Mutex<Option<framed::Framed>>,
}

/// A stream read and written one frame at a time ([`nekms_transport::frame`]).
mod framed {
    use super::*;
    use nekms_transport::frame::{read_frame, write_frame, FrameError};

    pub struct Framed {
        pub stream: Stream,
        pub buf: Vec<u8>,
    }

    impl Framed {
        pub async fn send(&mut self, body: &[u8]) -> Result<(), FrameError> {
            write_frame(&mut self.stream, body, u32::MAX as usize).await
        }

        /// The next frame; the peer closing between frames is an error here.
        pub async fn recv(&mut self, max: usize) -> Result<Vec<u8>, FrameError> {
            read_frame(&mut self.stream, &mut self.buf, max)
                .await?
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection").into())
        }
    }
}

impl StateStore {
    async fn call(&self, request: StoreRequest) -> Result<StoreReply, String> {
        let Some(address) = &self.address else {
            return Err("no state store is configured (nekms-enclave --privval-state ADDR)".into());
        };
        let mut conn = self.conn.lock().await;
        let body = request.encode();
        // One retry on a fresh connection: the store may have restarted.
        for attempt in 0..2 {
            if conn.is_none() {
                match tokio::time::timeout(STORE_TIMEOUT, nekms_transport::connect(address)).await {
                    Ok(Ok(stream)) => *conn = Some(framed::Framed { stream, buf: Vec::new() }),
                    Ok(Err(e)) => return Err(format!("the state store: {e}")),
                    Err(_) => return Err(format!("the state store at {address} did not answer in {STORE_TIMEOUT:?}")),
                }
            }
            let framed = conn.as_mut().expect("connected");
            let exchange = async {
                framed.send(&body).await?;
                framed.recv(nekms_privval::store::MAX_RECORD + 16).await
            };
            match tokio::time::timeout(STORE_TIMEOUT, exchange).await {
                Ok(Ok(reply)) => return StoreReply::decode(&reply).map_err(|e| e.to_string()),
                Ok(Err(e)) => {
                    *conn = None;
                    if attempt == 1 {
                        return Err(format!("the state store: {e}"));
                    }
                }
                Err(_) => {
                    *conn = None;
                    return Err(format!("the state store did not acknowledge in {STORE_TIMEOUT:?}"));
                }
            }
        }
        unreachable!("the loop returns")
    }
}

fn fingerprint(record: &KeyRecord) -> Result<String, RpcError> {
    Ok(hex::encode(record.public().map_err(|e| RpcError::refused(e.to_string()))?.fingerprint()))
}

/// The public key as the validator reads it.
fn consensus_public_key(key: &PrivateKey) -> Vec<u8> {
    let point = key.public_key().point();
    match key.spec() {
        // Uncompressed SEC1 (04 || x || y) to compressed (02|03 || x).
        KeySpec::Secp256k1 => {
            let mut out = vec![2 + (point[64] & 1)];
            out.extend_from_slice(&point[1..33]);
            out
        }
        _ => point.to_vec(),
    }
}

/// The state record's MAC key: HMAC-SHA256 keyed by the consensus secret
/// over a label and the chain id. Only an enclave that opened the key has it.
fn mac_key(key: &PrivateKey, chain_id: &str) -> Result<hmac::Key, RpcError> {
    let secret = key.secret_bytes().map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Internal, e.to_string()))?;
    let outer = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let mut label = b"nekms-privval-state-mac:v1\0".to_vec();
    label.extend_from_slice(chain_id.as_bytes());
    let derived = hmac::sign(&outer, &label);
    Ok(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
}

/// A consensus signature: Ed25519 over the sign bytes, or secp256k1 ECDSA
/// over their SHA-256, 64 bytes r||s with a low s (libsecp256k1, RFC 6979).
fn consensus_sign(key: &PrivateKey, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let scheme = match key.spec() {
        KeySpec::Ed25519 => Scheme::Ed25519,
        KeySpec::Secp256k1 => Scheme::EcdsaRaw,
        other => return Err(format!("a {other} key is no consensus key")),
    };
    key.sign(scheme, &Payload::Message(bytes.to_vec())).map(|s| s.signature).map_err(|e| e.to_string())
}

fn step_number(step: Option<Step>) -> u8 {
    step.map_or(0, |s| s as u8)
}

fn refusal_label(r: &Refusal) -> &'static str {
    match r {
        Refusal::HeightRegression { .. } | Refusal::RoundRegression { .. } | Refusal::StepRegression { .. } => "regression",
        Refusal::Conflict { .. } => "double-sign",
        Refusal::NoSignBytes { .. } => "no-sign-bytes",
        Refusal::AboveMaxHeight { .. } => "max-height",
        Refusal::HeightJump { .. } => "height-jump",
        Refusal::BadHeight(_) | Refusal::BadRound(_) => "bad-request",
    }
}

fn unavailable(message: impl Into<String>) -> RpcError {
    RpcError::new(nekms_rpc::ErrorCode::Unavailable, message)
}

fn signer_error(code: i32, description: impl Into<String>) -> RemoteSignerError {
    RemoteSignerError { code, description: description.into() }
}

/// RemoteSignerError codes: tmkms's numbering (2 for a double sign).
const CODE_OTHER: i32 = 1;
const CODE_DOUBLE_SIGN: i32 = 2;

impl Enclave {
    pub async fn privval_call(&self, request: PrivvalRequest) -> Result<PrivvalResponse, RpcError> {
        match request {
            PrivvalRequest::Configure(chain) => Ok(PrivvalResponse::Configured(Box::new(self.privval_configure(*chain).await?))),
            PrivvalRequest::Remove { chain_id } => {
                let removed = self.privval.chains.lock().unwrap_or_else(|p| p.into_inner()).remove(&chain_id);
                match removed {
                    Some(_) => Ok(PrivvalResponse::Removed),
                    None => Err(RpcError::bad_request(format!("chain {chain_id:?} is not served"))),
                }
            }
            PrivvalRequest::InitState { key, chain_id, height, import } => self.privval_init(&key, &chain_id, height, import).await,
            PrivvalRequest::SetAnchorCredentials { ciphertext } => self.privval_anchor_credentials(&ciphertext).await,
            PrivvalRequest::Status => {
                let chains: Vec<Arc<Chain>> = self.privval.chains.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                let mut out = Vec::new();
                for c in chains {
                    out.push(self.privval_status(&c).await);
                }
                Ok(PrivvalResponse::Status(out))
            }
        }
    }

    /// The anchor's credentials: a KMS ciphertext an administrator made under
    /// a pinned custody key with the context nekms:purpose=privval-anchor-credentials,
    /// which only this image can open; JSON {"access_key_id", "secret_access_key"}.
    async fn privval_anchor_credentials(&self, ciphertext: &[u8]) -> Result<PrivvalResponse, RpcError> {
        let Some(anchor) = &self.privval.anchor else {
            return Err(RpcError::bad_request("this enclave's measured configuration names no anchor (privval-anchor-table)"));
        };
        let pinned = self.trust.custody_key(None)?;
        let mut context = BTreeMap::new();
        context.insert(nekms_keys::context::PURPOSE.to_owned(), crate::privval_anchor::PURPOSE_ANCHOR_CREDENTIALS.to_owned());
        context.insert(crate::privval_anchor::ANCHOR_TABLE.to_owned(), anchor.table.clone());
        let out = self.kms.decrypt_under(ciphertext, &context, Some(pinned.as_str())).await.map_err(crate::rpc::kms_error)?;
        self.trust.check_answered(pinned, &out.key_id)?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AnchorCredentials {
            access_key_id: String,
            secret_access_key: nekms_rpc::SecretString,
        }
        let creds: AnchorCredentials = serde_json::from_slice(&out.plaintext)
            .map_err(|_| RpcError::bad_request("the anchor's credentials are JSON {access_key_id, secret_access_key}"))?;
        anchor.set_credentials(creds.access_key_id.clone(), creds.secret_access_key.0);
        Ok(PrivvalResponse::AnchorCredentialsSet { access_key_id: creds.access_key_id })
    }

    /// Open a consensus key under the custody rules, refusing any other.
    async fn open_consensus_key(&self, record: &KeyRecord) -> Result<Arc<PrivateKey>, RpcError> {
        if !record.is_privval() {
            return Err(RpcError::refused(format!(
                "rule key-usage: key {} is not a consensus key; the validator signer signs only with keys made for it (nekms key create|import --privval, nekms:usage=privval in the record)",
                record.key_id
            )));
        }
        self.open(record).await
    }

    async fn privval_configure(&self, c: PrivvalChain) -> Result<PrivvalStatus, RpcError> {
        if c.chain_id.is_empty() || c.chain_id.len() > 50 {
            return Err(RpcError::bad_request(format!("chain id {:?}: 1 to 50 bytes", c.chain_id)));
        }
        let version: ProtocolVersion = c.protocol_version.parse().map_err(RpcError::bad_request)?;
        let key = self.open_consensus_key(&c.key).await?;
        let fp = fingerprint(&c.key)?;
        let max_jump = match c.max_height_jump {
            Some(j) if j < 1 => return Err(RpcError::bad_request("max_height_jump is at least 1")),
            Some(j) if j > self.privval.max_jump => {
                return Err(RpcError::refused(format!(
                    "rule privval-limits: max_height_jump {j} is above the enclave's own {} (measured configuration); a pushed configuration only tightens it",
                    self.privval.max_jump
                )))
            }
            Some(j) => j,
            None => self.privval.max_jump,
        };
        if c.max_height.is_some_and(|h| h < 1) {
            return Err(RpcError::bad_request("max_height is at least 1"));
        }
        let identity = match &c.identity {
            None => None,
            Some(r) => {
                if r.is_privval() || r.spec != KeySpec::Ed25519 {
                    return Err(RpcError::refused(format!(
                        "rule key-usage: the SecretConnection identity {} must be an Ed25519 key that is no consensus key",
                        r.key_id
                    )));
                }
                let k = self.open(r).await?;
                let seed = k.secret_bytes().map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Internal, e.to_string()))?;
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| RpcError::bad_request("an Ed25519 seed is 32 bytes"))?;
                Some(cometbft_p2p::IdentitySecret::from_bytes(&seed))
            }
        };
        let slot = self.privval_slot(&key, &fp, &c.chain_id, &c.key.key_id).await?;
        let chain = Arc::new(Chain {
            chain_id: c.chain_id.clone(),
            key_id: c.key.key_id.clone(),
            fingerprint: fp,
            spec: key.spec(),
            public_key: consensus_public_key(&key),
            key,
            identity,
            version,
            version_name: c.protocol_version.clone(),
            limits: Limits { max_height: c.max_height, max_height_jump: Some(max_jump) },
            slot,
        });
        self.privval.chains.lock().unwrap_or_else(|p| p.into_inner()).insert(c.chain_id, chain.clone());
        Ok(self.privval_status(&chain).await)
    }

    /// The state for a key and chain: the one held in memory, else the
    /// store's record, verified, with the signature of its sign bytes made again.
    async fn privval_slot(&self, key: &PrivateKey, fp: &str, chain_id: &str, key_id: &str) -> Result<Arc<Slot>, RpcError> {
        let name = (fp.to_owned(), chain_id.to_owned());
        if let Some(slot) = self.privval.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Ok(slot.clone());
        }
        let mac = mac_key(key, chain_id)?;
        let store_name = nekms_privval::store::name(fp, chain_id);
        let candidates = self.privval.read(&store_name).await?;
        if candidates.is_empty() {
            return Err(RpcError::refused(format!(
                "rule privval-state: no state for key {key_id} on chain {chain_id:?} in the {}; the signer never starts from nothing: nekms privval state init --height H, or state import FILE",
                if self.privval.anchor.is_some() { "anchor" } else { "state store" }
            )));
        }
        // The newest record whose tag verifies (a slot torn by a crash held an
        // unacknowledged state; the other slot holds the one before).
        let mut refusals = Vec::new();
        let mut record: Option<StateRecord> = None;
        for bytes in &candidates {
            match StateRecord::open(bytes, &mac, fp, chain_id) {
                Ok(r) if record.as_ref().is_none_or(|best| r.counter > best.counter) => record = Some(r),
                Ok(_) => {}
                Err(e) => refusals.push(e.to_string()),
            }
        }
        let record = record.ok_or_else(|| {
            RpcError::refused(format!("rule privval-state: the state record {store_name} is refused: {}", refusals.join("; ")))
        })?;
        let mut last = record.last;
        if let Some(b) = &last.sign_bytes {
            last.signature = Some(consensus_sign(key, b).map_err(RpcError::bad_request)?);
        }
        let slot = Arc::new(Slot {
            state: tokio::sync::Mutex::new(State { last, counter: record.counter, committed: record.counter, mac }),
            metrics: Metrics::default(),
        });
        // Another configure may have won the race: keep the first.
        Ok(self.privval.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_insert(slot).clone())
    }

    async fn privval_init(
        &self,
        record: &KeyRecord,
        chain_id: &str,
        height: Option<i64>,
        import: Option<String>,
    ) -> Result<PrivvalResponse, RpcError> {
        if chain_id.is_empty() || chain_id.len() > 50 {
            return Err(RpcError::bad_request(format!("chain id {chain_id:?}: 1 to 50 bytes")));
        }
        let key = self.open_consensus_key(record).await?;
        let fp = fingerprint(record)?;
        if self.privval.slots.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&(fp.clone(), chain_id.to_owned())) {
            return Err(RpcError::refused(format!(
                "rule privval-state: this enclave already holds the state of key {} on chain {chain_id:?}; it never replaces it",
                record.key_id
            )));
        }
        let last = match (height, import) {
            (Some(h), None) if h >= 1 => LastSigned { height: h, round: 0, step: None, sign_bytes: None, signature: None },
            (Some(h), None) => return Err(RpcError::bad_request(format!("height {h}: heights start at 1"))),
            (None, Some(json)) => {
                let last = nekms_privval::import::import_state(json.as_bytes()).map_err(|e| RpcError::bad_request(e.to_string()))?;
                // Sign bytes from a file are signed again whenever the same
                // request comes back: only canonical bytes for exactly this
                // height, round, step and chain, with the key's own signature.
                if let (Some(bytes), Some(step)) = (&last.sign_bytes, last.step) {
                    nekms_privval::sign_bytes::check_canonical(bytes, chain_id, last.height, last.round, step)
                        .map_err(|e| RpcError::refused(format!("rule privval-state: the imported signbytes: {e}")))?;
                    let again = consensus_sign(&key, bytes).map_err(RpcError::bad_request)?;
                    if last.signature.as_deref() != Some(again.as_slice()) {
                        return Err(RpcError::refused(
                            "rule privval-state: the imported signature is not this key's over the imported signbytes",
                        ));
                    }
                }
                last
            }
            _ => return Err(RpcError::bad_request("give the height to start at or a state file to import, one of them")),
        };
        let name = nekms_privval::store::name(&fp, chain_id);
        let mac = mac_key(&key, chain_id)?;
        let sealed =
            StateRecord { key_id: fp, chain_id: chain_id.to_owned(), counter: 1, last: LastSigned { signature: None, ..last.clone() } }
                .seal(&mac);
        self.privval.create(&name, sealed).await?;
        Ok(PrivvalResponse::StateInitialized { height: last.height, round: last.round, step: step_number(last.step) })
    }

    async fn privval_status(&self, c: &Chain) -> PrivvalStatus {
        let st = c.slot.state.lock().await;
        let m = &c.slot.metrics;
        let (buckets, sum, count) = m.latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
        PrivvalStatus {
            chain_id: c.chain_id.clone(),
            key_id: c.key_id.clone(),
            key_fingerprint: c.fingerprint.clone(),
            key_type: if c.spec == KeySpec::Ed25519 { "ed25519" } else { "secp256k1" }.into(),
            public_key: c.public_key.clone(),
            protocol_version: c.version_name.clone(),
            served: self.privval.chain(&c.chain_id).is_some_and(|x| Arc::ptr_eq(&x.slot, &c.slot)),
            height: st.last.height,
            round: st.last.round,
            step: step_number(st.last.step),
            counter: st.counter,
            committed: st.committed,
            freshness: self.privval.freshness(),
            max_height: c.limits.max_height,
            max_height_jump: c.limits.max_height_jump.unwrap_or(self.privval.max_jump),
            signatures: m.signatures.load(Ordering::Relaxed),
            extension_signatures: m.extension_signatures.load(Ordering::Relaxed),
            refusals: m.refusals.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            store_failures: m.store_failures.load(Ordering::Relaxed),
            connections: m.connections.load(Ordering::Relaxed),
            connections_total: m.connections_total.load(Ordering::Relaxed),
            latency_buckets: BUCKETS.iter().copied().zip(if buckets.is_empty() { vec![0; BUCKETS.len()] } else { buckets }).collect(),
            latency_sum: sum,
            latency_count: count,
        }
    }

    /// Commit the state's newest record if the store (or the anchor) has not acknowledged it.
    async fn commit(&self, c: &Chain, st: &mut State) -> Result<(), CommitError> {
        if st.committed >= st.counter {
            return Ok(());
        }
        let record = StateRecord {
            key_id: c.fingerprint.clone(),
            chain_id: c.chain_id.clone(),
            counter: st.counter,
            last: LastSigned { signature: None, ..st.last.clone() },
        };
        let name = nekms_privval::store::name(&c.fingerprint, &c.chain_id);
        if let Some(anchor) = &self.privval.anchor {
            return match anchor.update(&name, st.committed, st.counter, record.seal(&st.mac)).await {
                Ok(crate::privval_anchor::Written::Done) => {
                    st.committed = st.counter;
                    Ok(())
                }
                Ok(crate::privval_anchor::Written::Moved) => Err(CommitError::Moved),
                Err(e) => Err(CommitError::Failed(e)),
            };
        }
        match self.privval.store.call(StoreRequest::Put { name, record: record.seal(&st.mac) }).await {
            Ok(StoreReply::Stored) => {
                st.committed = st.counter;
                Ok(())
            }
            Ok(other) => Err(CommitError::Failed(format!("the state store did not acknowledge the new state: {other:?}"))),
            Err(e) => Err(CommitError::Failed(e)),
        }
    }

    /// After a conditional write lost: take the anchor's newer state as this
    /// enclave's (what this enclave signed and did not release is dropped).
    async fn adopt_anchor(&self, c: &Chain, st: &mut State) -> Result<(), String> {
        let name = nekms_privval::store::name(&c.fingerprint, &c.chain_id);
        let anchor = self.privval.anchor.as_ref().expect("anchored");
        let bytes = anchor.get(&name).await?.ok_or("the anchor's item is gone")?;
        let record = StateRecord::open(&bytes, &st.mac, &c.fingerprint, &c.chain_id).map_err(|e| format!("the anchor's record: {e}"))?;
        if record.counter < st.committed {
            return Err(format!(
                "the anchor's record ({}) is older than the state this enclave committed ({}): refusing it; someone with write access to the table rolled it back",
                record.counter, st.committed
            ));
        }
        let mut last = record.last;
        if let Some(b) = &last.sign_bytes {
            last.signature = Some(consensus_sign(&c.key, b)?);
        }
        st.last = last;
        st.counter = record.counter;
        st.committed = record.counter;
        Ok(())
    }

    /// Decide, sign, commit; the signature (and the timestamp to put back) only once committed.
    async fn sign_consensus(
        &self,
        c: &Chain,
        kind: Kind,
        height: i64,
        round: i32,
        step: Step,
        bytes: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<nekms_privval::Timestamp>), RemoteSignerError> {
        let m = &c.slot.metrics;
        let mut st = c.slot.state.lock().await;
        // Anchored: a lost conditional write means another signer moved the
        // state; take it and decide again (a few times at most).
        for _ in 0..4 {
            let (signature, timestamp) = match decide(&st.last, c.limits, kind, height, round, step, &bytes) {
                Decision::Refuse(r) => {
                    m.refused(refusal_label(&r));
                    let code = if matches!(r, Refusal::Conflict { .. }) { CODE_DOUBLE_SIGN } else { CODE_OTHER };
                    return Err(signer_error(code, r.to_string()));
                }
                Decision::Reuse { signature, timestamp } => (signature, timestamp),
                Decision::Sign => {
                    let signature = consensus_sign(&c.key, &bytes).map_err(|e| signer_error(CODE_OTHER, e))?;
                    // The state moves now, before the store has it: from here a
                    // conflicting request is refused even if the commit fails.
                    st.last =
                        LastSigned { height, round, step: Some(step), sign_bytes: Some(bytes.clone()), signature: Some(signature.clone()) };
                    st.counter = st.committed.max(st.counter) + 1;
                    (signature, None)
                }
            };
            match self.commit(c, &mut st).await {
                Ok(()) => return Ok((signature, timestamp)),
                Err(CommitError::Moved) => {
                    m.refused("anchor-moved");
                    self.adopt_anchor(c, &mut st).await.map_err(|e| {
                        m.store_failures.fetch_add(1, Ordering::Relaxed);
                        signer_error(CODE_OTHER, format!("nothing is released: {e}"))
                    })?;
                }
                Err(CommitError::Failed(e)) => {
                    m.store_failures.fetch_add(1, Ordering::Relaxed);
                    m.refused("store");
                    return Err(signer_error(CODE_OTHER, format!("the new state was not committed, so nothing is released: {e}")));
                }
            }
        }
        Err(signer_error(CODE_OTHER, "the anchor kept moving; nothing is released"))
    }

    async fn sign_vote(&self, c: &Chain, mut vote: Vote, step: Step) -> Result<Vote, RemoteSignerError> {
        let bytes = sign_bytes::vote(&c.chain_id, &vote);
        let (signature, timestamp) = self.sign_consensus(c, Kind::Vote, vote.height, vote.round, step, bytes).await?;
        vote.signature = signature;
        if let Some(t) = timestamp {
            vote.timestamp = Some(t);
        }
        vote.extension_signature.clear();
        // v0.38+: every non-nil precommit's extension is signed, an empty one too.
        let nil = vote.block_id.as_ref().is_none_or(|b| b.hash.is_empty());
        if c.version == ProtocolVersion::V0_38 && step == Step::Precommit && !nil {
            let ext = sign_bytes::vote_extension(&c.chain_id, &vote);
            vote.extension_signature = consensus_sign(&c.key, &ext).map_err(|e| signer_error(CODE_OTHER, e))?;
            c.slot.metrics.extension_signatures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(vote)
    }

    async fn sign_proposal(&self, c: &Chain, mut p: Proposal) -> Result<Proposal, RemoteSignerError> {
        let bytes = sign_bytes::proposal(&c.chain_id, &p);
        let (signature, timestamp) = self.sign_consensus(c, Kind::Proposal, p.height, p.round, Step::Propose, bytes).await?;
        p.signature = signature;
        if let Some(t) = timestamp {
            p.timestamp = Some(t);
        }
        Ok(p)
    }

    /// One request for the connection's chain: its reply, or why the connection closes.
    async fn privval_answer(&self, chain_id: &str, envelope: Envelope) -> Result<Vec<u8>, String> {
        let c = self.privval.chain(chain_id).ok_or_else(|| format!("chain {chain_id:?} is no longer served"))?;
        let request = match wire::check_request(envelope, c.version) {
            Ok(r) => r,
            Err(e) => {
                c.slot.metrics.refused("malformed");
                return Err(e.to_string());
            }
        };
        let other_chain = |got: &str| signer_error(CODE_OTHER, format!("chain id {got:?}: this connection serves {:?}", c.chain_id));
        let started = Instant::now();
        let reply = match request {
            wire::Request::Ping => Reply::Ping,
            wire::Request::PubKey { chain_id } if chain_id != c.chain_id => Reply::PubKey(Err(other_chain(&chain_id))),
            wire::Request::PubKey { .. } => {
                let key = match c.spec {
                    KeySpec::Ed25519 => wire::public_key(c.public_key.as_slice().try_into().ok(), None),
                    _ => wire::public_key(None, c.public_key.as_slice().try_into().ok()),
                };
                Reply::PubKey(Ok(key))
            }
            wire::Request::SignVote { chain_id, .. } if chain_id != c.chain_id => {
                c.slot.metrics.refused("chain-id");
                Reply::Vote(Err(other_chain(&chain_id)))
            }
            wire::Request::SignProposal { chain_id, .. } if chain_id != c.chain_id => {
                c.slot.metrics.refused("chain-id");
                Reply::Proposal(Err(other_chain(&chain_id)))
            }
            wire::Request::SignVote { vote, step, .. } => {
                let r = self.sign_vote(&c, vote, step).await;
                if r.is_ok() {
                    c.slot.metrics.signatures.fetch_add(1, Ordering::Relaxed);
                    c.slot.metrics.observe(started.elapsed().as_secs_f64());
                }
                Reply::Vote(r)
            }
            wire::Request::SignProposal { proposal, .. } => {
                let r = self.sign_proposal(&c, proposal).await;
                if r.is_ok() {
                    c.slot.metrics.signatures.fetch_add(1, Ordering::Relaxed);
                    c.slot.metrics.observe(started.elapsed().as_secs_f64());
                }
                Reply::Proposal(r)
            }
        };
        Ok(wire::encode_reply(reply, c.version))
    }
}

/// A validator connection after the hello: plain frames, or SecretConnection.
enum Link {
    Plain { stream: Stream, buf: Vec<u8> },
    Secret(Box<AsyncSecretConnection<Stream>>),
}

impl Link {
    async fn read(&mut self) -> Result<Option<Envelope>, String> {
        match self {
            Link::Plain { stream, buf } => loop {
                match frame::decode(buf, frame::MAX_REQUEST).map_err(|e| e.to_string())? {
                    Some((used, body)) => {
                        let envelope = Envelope::decode(body).map_err(|e| format!("not a privval message: {e}"))?;
                        buf.drain(..used);
                        return Ok(Some(envelope));
                    }
                    None => {
                        let mut chunk = vec![0u8; 16 * 1024];
                        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                        if n == 0 {
                            return if buf.is_empty() { Ok(None) } else { Err("the stream ended inside a frame".into()) };
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            },
            Link::Secret(sc) => match sc.read_msg::<Envelope>().await {
                Ok(m) => Ok(Some(m)),
                Err(cometbft_p2p::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    async fn write(&mut self, body: Vec<u8>) -> Result<(), String> {
        if body.len() > frame::MAX_REPLY {
            return Err(format!("a reply of {} bytes; the validator reads at most {}", body.len(), frame::MAX_REPLY));
        }
        match self {
            Link::Plain { stream, .. } => {
                let framed = frame::encode(&body, frame::MAX_REPLY).map_err(|e| e.to_string())?;
                stream.write_all(&framed).await.map_err(|e| e.to_string())
            }
            Link::Secret(sc) => {
                let envelope = Envelope::decode(body.as_slice()).map_err(|e| e.to_string())?;
                sc.write_msg(envelope).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Serve proxies' connections on the privval socket. Over vsock only peers
/// on a port below 1024 (which only root on the parent can bind) are served,
/// as on the RPC: any other local user could otherwise take heights ahead
/// of the validator with requests of its own (`reserved_vsock_ports_only`).
pub async fn serve(listener: nekms_transport::Listener, enclave: Arc<Enclave>, reserved_vsock_ports_only: bool) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("nekms-enclave: privval accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if reserved_vsock_ports_only && nekms_transport::from_reserved_vsock_port(&peer) == Some(false) {
            eprintln!("nekms-enclave: privval: refused {peer}: not from a reserved vsock port (below 1024, root's)");
            continue;
        }
        let enclave = enclave.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &enclave).await {
                eprintln!("nekms-enclave: privval connection from {peer}: {e}");
            }
        });
    }
}

async fn connection(mut stream: Stream, enclave: &Enclave) -> Result<(), String> {
    let mut framed = framed::Framed { stream, buf: Vec::new() };
    let hello = tokio::time::timeout(Duration::from_secs(10), framed.recv(MAX_HELLO))
        .await
        .map_err(|_| "no hello".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: Hello = serde_json::from_slice(&hello).map_err(|e| format!("the hello: {e}"))?;
    let Some(chain) = enclave.privval.chain(&hello.chain_id) else {
        let _ = framed.send(format!("refused: chain {:?} is not served", hello.chain_id).as_bytes()).await;
        return Err(format!("chain {:?} is not served", hello.chain_id));
    };
    let secret = hello.validator.starts_with("tcp://");
    if secret && chain.identity.is_none() {
        let _ = framed.send(b"refused: a tcp:// validator needs the chain's SecretConnection identity").await;
        return Err("a tcp:// validator without an identity".into());
    }
    framed.send(b"ok").await.map_err(|e| e.to_string())?;
    stream = framed.stream;
    let leftover = framed.buf;
    let slot = chain.slot.clone();
    let metrics = &slot.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let mut link = if secret {
            if !leftover.is_empty() {
                return Err("bytes before the SecretConnection handshake".to_string());
            }
            let identity = chain.identity.as_ref().expect("checked");
            let sc = tokio::time::timeout(Duration::from_secs(10), AsyncSecretConnection::new(stream, identity))
                .await
                .map_err(|_| "the SecretConnection handshake timed out".to_string())?
                .map_err(|e| format!("the SecretConnection handshake: {e}"))?;
            if let Some(want) = &hello.node_id {
                let got = sc.peer_public_key().peer_id().to_string();
                if !got.eq_ignore_ascii_case(want) {
                    return Err(format!("the validator's SecretConnection key has node id {got}, not {want}"));
                }
            }
            Link::Secret(Box::new(sc))
        } else {
            Link::Plain { stream, buf: leftover }
        };
        drop(chain);
        while let Some(envelope) = link.read().await? {
            let reply = enclave.privval_answer(&hello.chain_id, envelope).await?;
            link.write(reply).await?;
        }
        Ok(())
    }
    .await;
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    result
}
