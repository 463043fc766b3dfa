//! Configuring chains (the RPC's privval requests): the consensus key
//! opened, its state found and verified, and each chain's status.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aws_lc_rs::hmac;
use nekms_keys::RecordExt;
use nekms_keys::{KeyRecord, KeySpec, PrivateKey};
use nekms_privval::record::StateRecord;
use nekms_privval::state::{LastSigned, Limits, Step};
use nekms_privval::wire::ProtocolVersion;
use nekms_rpc::{PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus, RpcError};

use super::sign::consensus_sign;
use super::{Chain, Metrics, Slot, State, BUCKETS};
use crate::Enclave;

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

fn step_number(step: Option<Step>) -> u8 {
    step.map_or(0, |s| s as u8)
}

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
}
