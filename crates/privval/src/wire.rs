//! The privval messages: requests from the validator, checked before any
//! rule sees them, and replies in the shape the chain's version reads.
//!
//! Tendermint v0.34 and CometBFT v0.37 share one wire shape; CometBFT v0.38
//! and later add a vote's `extension` (field 9) and `extension_signature`
//! (10). The v0.38 types read both (an older validator never sends 9 or 10);
//! a reply to an older chain leaves both out.

use prost::Message;
use tendermint_proto::google::protobuf::Timestamp;
use tendermint_proto::v0_38::crypto::{public_key, PublicKey};
use tendermint_proto::v0_38::privval::{
    message::Sum, Message as Envelope, PubKeyResponse, RemoteSignerError, SignedProposalResponse, SignedVoteResponse,
};
use tendermint_proto::v0_38::types::{BlockId, Proposal, Vote};

use crate::state::{step_of, Step};

/// The wire shape a chain speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Tendermint v0.34 and CometBFT v0.37.
    V0_34,
    /// CometBFT v0.38 and later (vote extensions).
    V0_38,
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v0.34" | "v0.37" => Ok(ProtocolVersion::V0_34),
            "v0.38" | "v0.39" | "v0.40" => Ok(ProtocolVersion::V0_38),
            other => Err(format!("protocol_version {other:?}: give v0.34, v0.37, v0.38, v0.39 or v0.40")),
        }
    }
}

/// A request, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    PubKey { chain_id: String },
    SignVote { chain_id: String, vote: Vote, step: Step },
    SignProposal { chain_id: String, proposal: Proposal },
    Ping,
}

/// Why a request is not one: answered with an error, never signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a privval message: {0}")]
    Decode(String),
    #[error("not a request this signer answers (a reply, or an unknown message)")]
    NotARequest,
    #[error("a sign request without its vote or proposal")]
    Missing,
    #[error("chain id {0:?}: 1 to 50 bytes")]
    ChainId(String),
    #[error("message type {0} is not a prevote or precommit")]
    VoteType(i32),
    #[error("a proposal's type is 32, not {0}")]
    ProposalType(i32),
    #[error("height {0}: heights start at 1")]
    Height(i64),
    #[error("round {0}: rounds start at 0")]
    Round(i32),
    #[error("pol_round {0}: -1 or a round")]
    PolRound(i32),
    #[error("no timestamp, or one outside 0001-01-01 to 9999-12-31, or with nanoseconds out of range")]
    Timestamp,
    #[error("a block id that is neither nil nor a 32-byte hash with a part-set header (at least one part, a 32-byte hash)")]
    BlockId,
    #[error("a {0} carries vote-extension bytes: only a non-nil precommit has an extension")]
    Extension(&'static str),
    #[error("an extension on a chain whose protocol version has none")]
    ExtensionOnOldChain,
}

const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Every vote and proposal CometBFT sends has a timestamp (the field is
/// non-nullable in Go); one without is refused, so that "only the
/// timestamp differs" always has a timestamp to hand back.
fn check_timestamp(t: Option<&Timestamp>) -> Result<(), WireError> {
    match t {
        Some(t) if (MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos) => Ok(()),
        _ => Err(WireError::Timestamp),
    }
}

fn check_chain_id(c: &str) -> Result<(), WireError> {
    if c.is_empty() || c.len() > 50 {
        return Err(WireError::ChainId(c.chars().take(60).collect()));
    }
    Ok(())
}

/// Whether a block id is nil (`Ok(true)`), complete (`Ok(false)`), or neither.
fn check_block_id(id: Option<&BlockId>) -> Result<bool, WireError> {
    let Some(id) = id else { return Ok(true) };
    let header = id.part_set_header.as_ref();
    let header_zero = header.is_none_or(|h| h.total == 0 && h.hash.is_empty());
    if id.hash.is_empty() && header_zero {
        return Ok(true);
    }
    match header {
        Some(h) if id.hash.len() == 32 && h.total >= 1 && h.hash.len() == 32 => Ok(false),
        _ => Err(WireError::BlockId),
    }
}

/// Decode and check one request (a frame's body) for a chain speaking `version`.
pub fn decode_request(body: &[u8], version: ProtocolVersion) -> Result<Request, WireError> {
    let envelope = Envelope::decode(body).map_err(|e| WireError::Decode(e.to_string()))?;
    check_request(envelope, version)
}

/// Check a request already decoded (a SecretConnection's reader decodes it).
pub fn check_request(envelope: Envelope, version: ProtocolVersion) -> Result<Request, WireError> {
    match envelope.sum.ok_or(WireError::NotARequest)? {
        Sum::PingRequest(_) => Ok(Request::Ping),
        Sum::PubKeyRequest(r) => Ok(Request::PubKey { chain_id: r.chain_id }),
        Sum::SignVoteRequest(r) => {
            check_chain_id(&r.chain_id)?;
            let vote = r.vote.ok_or(WireError::Missing)?;
            let step = match step_of(vote.r#type) {
                Some(s @ (Step::Prevote | Step::Precommit)) => s,
                _ => return Err(WireError::VoteType(vote.r#type)),
            };
            if vote.height < 1 {
                return Err(WireError::Height(vote.height));
            }
            if vote.round < 0 {
                return Err(WireError::Round(vote.round));
            }
            check_timestamp(vote.timestamp.as_ref())?;
            let nil = check_block_id(vote.block_id.as_ref())?;
            if !vote.extension.is_empty() || !vote.extension_signature.is_empty() {
                if version == ProtocolVersion::V0_34 {
                    return Err(WireError::ExtensionOnOldChain);
                }
                if step == Step::Prevote {
                    return Err(WireError::Extension("prevote"));
                }
                if nil {
                    return Err(WireError::Extension("nil precommit"));
                }
            }
            Ok(Request::SignVote { chain_id: r.chain_id, vote, step })
        }
        Sum::SignProposalRequest(r) => {
            check_chain_id(&r.chain_id)?;
            let proposal = r.proposal.ok_or(WireError::Missing)?;
            if proposal.r#type != 32 {
                return Err(WireError::ProposalType(proposal.r#type));
            }
            if proposal.height < 1 {
                return Err(WireError::Height(proposal.height));
            }
            if proposal.round < 0 {
                return Err(WireError::Round(proposal.round));
            }
            // -1, or an earlier round (CometBFT's Proposal.ValidateBasic).
            if proposal.pol_round < -1 || (proposal.pol_round != -1 && proposal.pol_round >= proposal.round) {
                return Err(WireError::PolRound(proposal.pol_round));
            }
            check_timestamp(proposal.timestamp.as_ref())?;
            check_block_id(proposal.block_id.as_ref())?;
            Ok(Request::SignProposal { chain_id: r.chain_id, proposal })
        }
        _ => Err(WireError::NotARequest),
    }
}

/// A reply, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// An Ed25519 key (32 bytes) or a compressed secp256k1 key (33 bytes).
    PubKey(Result<PublicKey, RemoteSignerError>),
    Vote(Result<Vote, RemoteSignerError>),
    Proposal(Result<Proposal, RemoteSignerError>),
    Ping,
}

/// The public key message for an Ed25519 or secp256k1 consensus key.
pub fn public_key(ed25519: Option<[u8; 32]>, secp256k1: Option<[u8; 33]>) -> PublicKey {
    PublicKey { sum: ed25519.map(|k| public_key::Sum::Ed25519(k.to_vec())).or(secp256k1.map(|k| public_key::Sum::Secp256k1(k.to_vec()))) }
}

/// A reply's bytes for a chain speaking `version` (without the frame).
pub fn encode_reply(reply: Reply, version: ProtocolVersion) -> Vec<u8> {
    let sum = match reply {
        Reply::Ping => Sum::PingResponse(Default::default()),
        Reply::PubKey(r) => match r {
            Ok(k) => Sum::PubKeyResponse(PubKeyResponse { pub_key: Some(k), error: None }),
            Err(e) => Sum::PubKeyResponse(PubKeyResponse { pub_key: None, error: Some(e) }),
        },
        Reply::Vote(r) => match r {
            Ok(mut v) => {
                if version == ProtocolVersion::V0_34 {
                    v.extension.clear();
                    v.extension_signature.clear();
                }
                Sum::SignedVoteResponse(SignedVoteResponse { vote: Some(v), error: None })
            }
            Err(e) => Sum::SignedVoteResponse(SignedVoteResponse { vote: None, error: Some(e) }),
        },
        Reply::Proposal(r) => match r {
            Ok(p) => Sum::SignedProposalResponse(SignedProposalResponse { proposal: Some(p), error: None }),
            Err(e) => Sum::SignedProposalResponse(SignedProposalResponse { proposal: None, error: Some(e) }),
        },
    };
    Envelope { sum: Some(sum) }.encode_to_vec()
}
