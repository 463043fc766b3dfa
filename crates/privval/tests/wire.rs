//! Requests and replies against CometBFT's own privval vectors
//! (`privval/msgs_test.go`, `TestPrivvalVectors`: Go's encoding of each
//! message, a precommit carrying a vote extension among them).

use nekms_privval::proto::privval::{message::Sum, Message as Envelope};
use nekms_privval::state::Step;
use nekms_privval::wire::{decode_request, encode_reply, public_key, ProtocolVersion, Reply, Request, WireError};
use prost::Message;

const V38: ProtocolVersion = ProtocolVersion::V0_38;
const V34: ProtocolVersion = ProtocolVersion::V0_34;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const VOTE_REQUEST: &str = "1a81010a7f080210031802224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded0532146af1f4111082efb388211bc72c55bcd61e9ac3d538d5bb034a09657874656e73696f6e";
const VOTE_RESPONSE: &str = "2281010a7f080210031802224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded0532146af1f4111082efb388211bc72c55bcd61e9ac3d538d5bb034a09657874656e73696f6e";
const PROPOSAL_REQUEST: &str = "2a700a6e08011003180220022a4a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a320608f49a8ded053a10697427732061207369676e6174757265";
const PROPOSAL_RESPONSE: &str = "32700a6e08011003180220022a4a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a320608f49a8ded053a10697427732061207369676e6174757265";

/// The vector's request, with a chain id (Go's vector leaves it empty).
fn with_chain(hex_body: &str, chain: &str) -> Vec<u8> {
    let mut e = Envelope::decode(hex(hex_body).as_slice()).unwrap();
    match e.sum.as_mut().unwrap() {
        Sum::SignVoteRequest(r) => r.chain_id = chain.into(),
        Sum::SignProposalRequest(r) => r.chain_id = chain.into(),
        _ => unreachable!(),
    }
    e.encode_to_vec()
}

#[test]
fn go_requests_decode_and_go_replies_come_out_byte_for_byte() {
    assert_eq!(decode_request(&hex("3a00"), V38), Ok(Request::Ping));
    assert_eq!(decode_request(&hex("0a00"), V38), Ok(Request::PubKey { chain_id: String::new() }));
    assert_eq!(hex("4200"), encode_reply(Reply::Ping, V38));
    // The PubKey reply for GenPrivKeyFromSecret("it's a secret").
    let key: [u8; 32] = hex("556a436f1218d30942efe798420f51dc9b6a311b929c578257457d05c5fcf230").try_into().unwrap();
    assert_eq!(
        encode_reply(Reply::PubKey(Ok(public_key(Some(key), None))), V38),
        hex("12240a220a20556a436f1218d30942efe798420f51dc9b6a311b929c578257457d05c5fcf230")
    );
    // Go's vote request has no chain id: refused as it stands.
    assert_eq!(decode_request(&hex(VOTE_REQUEST), V38), Err(WireError::ChainId(String::new())));
    let Ok(Request::SignVote { chain_id, vote, step }) = decode_request(&with_chain(VOTE_REQUEST, "test_chain"), V38) else { panic!() };
    assert_eq!((chain_id.as_str(), vote.height, vote.round, step, vote.validator_index), ("test_chain", 3, 2, Step::Precommit, 56789));
    assert_eq!(vote.extension, b"extension");
    // The reply with the request's vote is Go's SignedVoteResponse, byte for byte.
    assert_eq!(encode_reply(Reply::Vote(Ok(vote.clone())), V38), hex(VOTE_RESPONSE));
    // The same precommit to a v0.34 chain: an extension there is refused.
    assert_eq!(decode_request(&with_chain(VOTE_REQUEST, "c"), V34), Err(WireError::ExtensionOnOldChain));
    // Go's proposal vector has type 1 and pol_round == round: not a proposal a validator sends.
    assert_eq!(decode_request(&with_chain(PROPOSAL_REQUEST, "c"), V38), Err(WireError::ProposalType(1)));
    let e = Envelope::decode(hex(PROPOSAL_REQUEST).as_slice()).unwrap();
    let Some(Sum::SignProposalRequest(r)) = e.sum else { panic!() };
    assert_eq!(encode_reply(Reply::Proposal(Ok(r.proposal.unwrap())), V38), hex(PROPOSAL_RESPONSE));
}

#[test]
fn bad_requests_get_clear_errors() {
    let base = Envelope::decode(with_chain(VOTE_REQUEST, "c").as_slice()).unwrap();
    let vote = |f: &dyn Fn(&mut nekms_privval::proto::types::Vote)| {
        let mut e = base.clone();
        if let Some(Sum::SignVoteRequest(r)) = e.sum.as_mut() {
            f(r.vote.as_mut().unwrap());
        }
        decode_request(&e.encode_to_vec(), V38)
    };
    assert_eq!(vote(&|v| v.height = 0), Err(WireError::Height(0)));
    assert_eq!(vote(&|v| v.round = -1), Err(WireError::Round(-1)));
    assert_eq!(vote(&|v| v.r#type = 32), Err(WireError::VoteType(32)));
    assert_eq!(vote(&|v| v.timestamp.as_mut().unwrap().nanos = 1_000_000_000), Err(WireError::Timestamp));
    assert_eq!(vote(&|v| v.timestamp.as_mut().unwrap().seconds = 253_402_300_800), Err(WireError::Timestamp));
    assert_eq!(vote(&|v| v.block_id.as_mut().unwrap().hash.truncate(31)), Err(WireError::BlockId));
    assert_eq!(vote(&|v| v.block_id.as_mut().unwrap().part_set_header.as_mut().unwrap().total = 0), Err(WireError::BlockId));
    // Extensions: a prevote or a nil precommit carrying one is refused; an empty one on a non-nil precommit is fine.
    assert_eq!(vote(&|v| v.r#type = 1), Err(WireError::Extension("prevote")));
    assert_eq!(vote(&|v| v.block_id = None), Err(WireError::Extension("nil precommit")));
    assert!(matches!(vote(&|v| v.extension.clear()), Ok(Request::SignVote { .. })));
    assert!(matches!(vote(&|v| v.extension = vec![0; 8192]), Ok(Request::SignVote { .. })));
    let mut long = base.clone();
    if let Some(Sum::SignVoteRequest(r)) = long.sum.as_mut() {
        r.chain_id = "x".repeat(51);
    }
    assert!(matches!(decode_request(&long.encode_to_vec(), V38), Err(WireError::ChainId(_))));
    // Replies are not requests; garbage is not a message.
    assert_eq!(decode_request(&hex("4200"), V38), Err(WireError::NotARequest));
    assert!(matches!(decode_request(&[0xff, 0xff, 0xff], V38), Err(WireError::Decode(_))));
    assert_eq!(decode_request(&[], V38), Err(WireError::NotARequest));
    // A v0.34 reply leaves the extension fields out.
    let Ok(Request::SignVote { mut vote, .. }) = decode_request(&with_chain(VOTE_REQUEST, "c"), V38) else { panic!() };
    vote.extension_signature = vec![1; 64];
    let old = encode_reply(Reply::Vote(Ok(vote.clone())), V34);
    let Some(Sum::SignedVoteResponse(r)) = Envelope::decode(old.as_slice()).unwrap().sum else { panic!() };
    assert!(r.vote.unwrap().extension.is_empty());
    assert!("v0.36".parse::<ProtocolVersion>().is_err() && "v0.37".parse::<ProtocolVersion>() == Ok(V34));
}
