//! The double-sign rules, as CometBFT's FilePV keeps them, as one pure
//! decision: given the last thing signed for a chain (height, round, step,
//! its sign bytes and signature) and a new request, sign it, hand back the
//! signature already given, or refuse.
//!
//! - Height, round and step never go back (a proposal is step 1, a prevote
//!   2, a precommit 3).
//! - The same height, round and step with identical sign bytes gets the
//!   signature already given; differing only in the timestamp, it gets that
//!   signature and the old timestamp (the validator copies the vote back).
//! - Anything else at the same height, round and step is refused: that is
//!   the double sign.
//! - Beyond FilePV: a `max_height` (tmkms's), and a `max_height_jump`, so a
//!   parent cannot make the signer sign a height far ahead and so refuse
//!   every honest height after it.

use prost::Message;
use tendermint_proto::google::protobuf::Timestamp;
use tendermint_proto::v0_38::types::{CanonicalProposal, CanonicalVote};

/// A step, numbered as FilePV numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Nothing signed yet at this height and round (an imported state).
    None = 0,
    Propose = 1,
    Prevote = 2,
    Precommit = 3,
}

/// The last thing signed for a chain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LastSigned {
    pub height: i64,
    pub round: i32,
    pub step: Option<Step>,
    /// Absent after an import from a file that keeps none (tmkms's).
    pub sign_bytes: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
}

/// Limits on what may be signed next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Never sign above this height (tmkms's `max_height`).
    pub max_height: Option<i64>,
    /// Never sign more than this many heights above the last one.
    pub max_height_jump: Option<i64>,
}

/// What a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vote,
    Proposal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sign it; then this becomes the last thing signed.
    Sign,
    /// Give back this signature (and, when only the timestamp differed,
    /// this timestamp in the reply's vote or proposal).
    Reuse {
        signature: Vec<u8>,
        timestamp: Option<Timestamp>,
    },
    Refuse(Refusal),
}

/// Why a request is refused: each a `RemoteSignerError` for the validator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("height regression: {got} after {last}")]
    HeightRegression { last: i64, got: i64 },
    #[error("round regression at height {height}: {got} after {last}")]
    RoundRegression { height: i64, last: i32, got: i32 },
    #[error("step regression at height {height} round {round}: {got:?} after {last:?}")]
    StepRegression { height: i64, round: i32, last: Step, got: Step },
    #[error("conflicting data at height {height} round {round} step {step:?}: already signed something else there (double sign refused)")]
    Conflict { height: i64, round: i32, step: Step },
    #[error("no sign bytes kept for height {height} round {round} step {step:?} (an imported state): refusing to sign there again")]
    NoSignBytes { height: i64, round: i32, step: Step },
    #[error("height {got} is above max_height {max}")]
    AboveMaxHeight { max: i64, got: i64 },
    #[error("height {got} is more than {jump} above the last signed height {last}")]
    HeightJump { last: i64, jump: i64, got: i64 },
    #[error("height {0} is not a height (they start at 1)")]
    BadHeight(i64),
    #[error("round {0} is not a round")]
    BadRound(i32),
}

/// Decide on a request at `height`, `round`, `step` whose sign bytes are
/// `sign_bytes`.
pub fn decide(last: &LastSigned, limits: Limits, kind: Kind, height: i64, round: i32, step: Step, sign_bytes: &[u8]) -> Decision {
    let refuse = Decision::Refuse;
    if height < 1 {
        return refuse(Refusal::BadHeight(height));
    }
    if round < 0 {
        return refuse(Refusal::BadRound(round));
    }
    if let Some(max) = limits.max_height {
        if height > max {
            return refuse(Refusal::AboveMaxHeight { max, got: height });
        }
    }
    if let Some(jump) = limits.max_height_jump {
        if height > last.height.saturating_add(jump) {
            return refuse(Refusal::HeightJump { last: last.height, jump, got: height });
        }
    }
    if height < last.height {
        return refuse(Refusal::HeightRegression { last: last.height, got: height });
    }
    if height > last.height {
        return Decision::Sign;
    }
    if round < last.round {
        return refuse(Refusal::RoundRegression { height, last: last.round, got: round });
    }
    if round > last.round {
        return Decision::Sign;
    }
    let last_step = last.step.unwrap_or(Step::None);
    if step < last_step {
        return refuse(Refusal::StepRegression { height, round, last: last_step, got: step });
    }
    if step > last_step {
        return Decision::Sign;
    }
    // The same height, round and step.
    let (Some(previous), Some(signature)) = (&last.sign_bytes, &last.signature) else {
        return refuse(Refusal::NoSignBytes { height, round, step });
    };
    if previous.as_slice() == sign_bytes {
        return Decision::Reuse { signature: signature.clone(), timestamp: None };
    }
    match only_timestamps_differ(kind, previous, sign_bytes) {
        Some(old) => Decision::Reuse { signature: signature.clone(), timestamp: old },
        None => refuse(Refusal::Conflict { height, round, step }),
    }
}

/// When two sign bytes differ only in their timestamp: the old timestamp.
/// Both must be canonical (they encode again to themselves) and carry a
/// timestamp, so the signature handed back is over exactly the message the
/// reply describes.
fn only_timestamps_differ(kind: Kind, old: &[u8], new: &[u8]) -> Option<Option<Timestamp>> {
    match kind {
        Kind::Vote => {
            let mut a = CanonicalVote::decode_length_delimited(old).ok()?;
            let mut b = CanonicalVote::decode_length_delimited(new).ok()?;
            if a.encode_length_delimited_to_vec() != old || b.encode_length_delimited_to_vec() != new {
                return None;
            }
            let stamp = a.timestamp.take()?;
            b.timestamp.take()?;
            (a == b).then_some(Some(stamp))
        }
        Kind::Proposal => {
            let mut a = CanonicalProposal::decode_length_delimited(old).ok()?;
            let mut b = CanonicalProposal::decode_length_delimited(new).ok()?;
            if a.encode_length_delimited_to_vec() != old || b.encode_length_delimited_to_vec() != new {
                return None;
            }
            let stamp = a.timestamp.take()?;
            b.timestamp.take()?;
            (a == b).then_some(Some(stamp))
        }
    }
}

/// The step of a vote type (prevote 1, precommit 2 on the wire), or of a
/// proposal (32).
pub fn step_of(msg_type: i32) -> Option<Step> {
    match msg_type {
        1 => Some(Step::Prevote),
        2 => Some(Step::Precommit),
        32 => Some(Step::Propose),
        _ => None,
    }
}
