//! The validator signer's readers of the validator's bytes: frames, the
//! privval message inside, its sign bytes, and the double-sign decision
//! over them (including the timestamp-only comparison, which decodes the
//! sign bytes it kept). An error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_privval::frame::{decode, MAX_REQUEST};
use nekms_privval::proto::privval::{message::Sum, Message as PrivvalMessage};
use nekms_privval::sign_bytes;
use nekms_privval::state::{decide, step_of, Kind, LastSigned, Limits, Step};
use nekms_privval::wire::{decode_request, encode_reply, ProtocolVersion, Reply, Request};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((_, body))) = decode(data, MAX_REQUEST) else { return };
    for version in [ProtocolVersion::V0_34, ProtocolVersion::V0_38] {
        if let Ok(request) = decode_request(body, version) {
            if let Request::SignVote { vote, .. } = request {
                let _ = encode_reply(Reply::Vote(Ok(vote)), version);
            }
        }
    }
    let Ok(msg) = PrivvalMessage::decode(body) else { return };
    let last = LastSigned { height: 5, round: 1, step: Some(Step::Prevote), sign_bytes: Some(body.to_vec()), signature: Some(vec![1; 64]) };
    let limits = Limits { max_height: Some(1 << 40), max_height_jump: Some(1000) };
    match msg.sum {
        Some(Sum::SignVoteRequest(r)) => {
            if let Some(v) = r.vote {
                let bytes = sign_bytes::vote(&r.chain_id, &v);
                let _ = sign_bytes::vote_extension(&r.chain_id, &v);
                if let Some(step) = step_of(v.r#type) {
                    let _ = decide(&last, limits, Kind::Vote, v.height, v.round, step, &bytes);
                }
            }
        }
        Some(Sum::SignProposalRequest(r)) => {
            if let Some(p) = r.proposal {
                let bytes = sign_bytes::proposal(&r.chain_id, &p);
                let _ = decide(&last, limits, Kind::Proposal, p.height, p.round, Step::Propose, &bytes);
            }
        }
        _ => {}
    }
});
