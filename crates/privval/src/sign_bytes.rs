//! Sign bytes, as CometBFT's `types/canonical.go` builds them: the request's
//! vote or proposal turned canonical (height and round as fixed 64-bit
//! integers, the chain id added, the validator's address and index and any
//! signature dropped) and length-prefixed. The v0.38 message types read
//! every wire shape: v0.34/v0.37 votes are the same without fields 9 and 10.

use prost::Message;
use tendermint_proto::v0_38::types::{
    BlockId, CanonicalBlockId, CanonicalPartSetHeader, CanonicalProposal, CanonicalVote, CanonicalVoteExtension, Proposal, SignedMsgType,
    Vote,
};

/// A block id as it is signed: none for a nil vote (no hash and an empty
/// part-set header, CometBFT's `BlockID.IsZero`), else hash and header.
pub fn canonical_block_id(id: Option<&BlockId>) -> Option<CanonicalBlockId> {
    let id = id?;
    let header = id.part_set_header.as_ref();
    let header_zero = header.is_none_or(|h| h.total == 0 && h.hash.is_empty());
    if id.hash.is_empty() && header_zero {
        return None;
    }
    Some(CanonicalBlockId {
        hash: id.hash.clone(),
        part_set_header: Some(CanonicalPartSetHeader {
            total: header.map_or(0, |h| h.total),
            hash: header.map(|h| h.hash.clone()).unwrap_or_default(),
        }),
    })
}

/// The canonical form of a vote.
pub fn canonical_vote(chain_id: &str, vote: &Vote) -> CanonicalVote {
    CanonicalVote {
        r#type: vote.r#type,
        height: vote.height,
        round: i64::from(vote.round),
        block_id: canonical_block_id(vote.block_id.as_ref()),
        timestamp: vote.timestamp,
        chain_id: chain_id.to_owned(),
    }
}

/// What a vote's signature covers.
pub fn vote(chain_id: &str, vote: &Vote) -> Vec<u8> {
    canonical_vote(chain_id, vote).encode_length_delimited_to_vec()
}

/// The canonical form of a proposal (its type is always Proposal).
pub fn canonical_proposal(chain_id: &str, p: &Proposal) -> CanonicalProposal {
    CanonicalProposal {
        r#type: SignedMsgType::Proposal as i32,
        height: p.height,
        round: i64::from(p.round),
        pol_round: i64::from(p.pol_round),
        block_id: canonical_block_id(p.block_id.as_ref()),
        timestamp: p.timestamp,
        chain_id: chain_id.to_owned(),
    }
}

/// What a proposal's signature covers.
pub fn proposal(chain_id: &str, p: &Proposal) -> Vec<u8> {
    canonical_proposal(chain_id, p).encode_length_delimited_to_vec()
}

/// What a vote extension's signature covers (CometBFT v0.38+: signed for
/// every non-nil precommit, an empty extension included).
pub fn vote_extension(chain_id: &str, vote: &Vote) -> Vec<u8> {
    CanonicalVoteExtension {
        extension: vote.extension.clone(),
        height: vote.height,
        round: i64::from(vote.round),
        chain_id: chain_id.to_owned(),
    }
    .encode_length_delimited_to_vec()
}

/// Whether `bytes` are sign bytes this crate could have built for `chain_id`
/// at `height`, `round` and `step`: a length-prefixed `CanonicalVote` (a
/// prevote or precommit) or `CanonicalProposal` that decodes and encodes
/// again to exactly these bytes, with nothing after it. Bytes from outside
/// (an imported state file) are held to this before the enclave would ever
/// sign them again.
pub fn check_canonical(bytes: &[u8], chain_id: &str, height: i64, round: i32, step: crate::state::Step) -> Result<(), String> {
    use crate::state::Step;
    let again = match step {
        Step::Prevote | Step::Precommit => {
            let v = CanonicalVote::decode_length_delimited(bytes).map_err(|e| format!("not a canonical vote: {e}"))?;
            let want = if step == Step::Prevote { SignedMsgType::Prevote } else { SignedMsgType::Precommit } as i32;
            if v.r#type != want || v.height != height || v.round != i64::from(round) || v.chain_id != chain_id || v.timestamp.is_none() {
                return Err(format!("a canonical vote for another type, height, round or chain than the state's ({height}/{round}/{step:?} on {chain_id:?})"));
            }
            v.encode_length_delimited_to_vec()
        }
        Step::Propose => {
            let p = CanonicalProposal::decode_length_delimited(bytes).map_err(|e| format!("not a canonical proposal: {e}"))?;
            if p.r#type != SignedMsgType::Proposal as i32
                || p.height != height
                || p.round != i64::from(round)
                || p.chain_id != chain_id
                || p.timestamp.is_none()
            {
                return Err(format!(
                    "a canonical proposal for another height, round or chain than the state's ({height}/{round} on {chain_id:?})"
                ));
            }
            p.encode_length_delimited_to_vec()
        }
        Step::None => return Err("sign bytes with no step".into()),
    };
    if again != bytes {
        return Err("the sign bytes are not in canonical form (extra, unknown or reordered fields, or trailing bytes)".into());
    }
    Ok(())
}
