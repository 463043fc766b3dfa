//! Answering the validator's requests: decide under the chain's state,
//! sign, commit, and only then release the signature.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nekms_keys::{KeySpec, Payload, PrivateKey, Scheme};
use nekms_privval::proto::privval::{Message as Envelope, RemoteSignerError};
use nekms_privval::proto::types::{Proposal, Vote};
use nekms_privval::sign_bytes;
use nekms_privval::state::{decide, Decision, Kind, LastSigned, Refusal, Step};
use nekms_privval::wire::{self, ProtocolVersion, Reply};

use super::store::CommitError;
use super::Chain;
use crate::Enclave;

/// A consensus signature: Ed25519 over the sign bytes, or secp256k1 ECDSA
/// over their SHA-256, 64 bytes r||s with a low s (libsecp256k1, RFC 6979).
pub(super) fn consensus_sign(key: &PrivateKey, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let scheme = match key.spec() {
        KeySpec::Ed25519 => Scheme::Ed25519,
        KeySpec::Secp256k1 => Scheme::EcdsaRaw,
        other => return Err(format!("a {other} key is no consensus key")),
    };
    key.sign(scheme, &Payload::Message(bytes.to_vec())).map(|s| s.signature).map_err(|e| e.to_string())
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

fn signer_error(code: i32, description: impl Into<String>) -> RemoteSignerError {
    RemoteSignerError { code, description: description.into() }
}

/// RemoteSignerError codes: tmkms's numbering (2 for a double sign).
const CODE_OTHER: i32 = 1;
const CODE_DOUBLE_SIGN: i32 = 2;

impl Enclave {
    /// [`Enclave::decide_and_sign`], recorded in the audit trail.
    async fn sign_consensus(
        &self,
        c: &Chain,
        kind: Kind,
        height: i64,
        round: i32,
        step: Step,
        bytes: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<nekms_privval::Timestamp>), RemoteSignerError> {
        let d = crate::audit::Decision {
            channel: "privval",
            op: format!("{kind:?} {height}/{round}/{step:?}"),
            key: Some(c.key_id.clone()),
            key_sha256: Some(c.fingerprint.clone()),
            payload_sha256: Some(crate::audit::sha256_hex(&bytes)),
            caller: Some(format!("chain {}", c.chain_id)),
            ..Default::default()
        };
        let outcome = self.decide_and_sign(c, kind, height, round, step, bytes).await;
        self.audit.record(d, outcome.as_ref().map(|_| ()).map_err(|e| (e.code == CODE_DOUBLE_SIGN, e.description.clone())));
        outcome
    }

    /// Decide, sign, commit; the signature (and the timestamp to put back) only once committed.
    async fn decide_and_sign(
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
    pub(super) async fn privval_answer(&self, chain_id: &str, envelope: Envelope) -> Result<Vec<u8>, String> {
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
