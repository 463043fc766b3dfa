//! Sign bytes against vectors Go's Tendermint produced (as published with
//! tendermint-rs 0.41's tests: `VoteSignBytes` and `ProposalSignBytes` for
//! chain `test_chain_id`), and the double-sign rules row by row.

use nekms_privval::proto::types::{BlockId, PartSetHeader, Proposal, Vote};
use nekms_privval::sign_bytes;
use nekms_privval::state::{decide, Decision, Kind, LastSigned, Limits, Refusal, Step};
use tendermint_proto::google::protobuf::Timestamp;

fn go_vote(hash: &[u8]) -> Vote {
    Vote {
        r#type: 1,
        height: 12345,
        round: 2,
        timestamp: Some(Timestamp { seconds: 1_514_170_801, nanos: 234_000_000 }),
        block_id: Some(BlockId {
            hash: hash.to_vec(),
            part_set_header: Some(PartSetHeader { total: 1_000_000, hash: b"0022446688AACCEE1133557799BBDDFF".to_vec() }),
        }),
        validator_address: vec![
            0xa3, 0xb2, 0xcc, 0xdd, 0x71, 0x86, 0xf1, 0x68, 0x5f, 0x21, 0xf2, 0x48, 0x2a, 0xf4, 0xfb, 0x34, 0x46, 0xa8, 0x4b, 0x35,
        ],
        validator_index: 56789,
        ..Default::default()
    }
}

#[test]
fn vote_sign_bytes_match_go() {
    let want: &[u8] = &[
        124, 8, 1, 17, 57, 48, 0, 0, 0, 0, 0, 0, 25, 2, 0, 0, 0, 0, 0, 0, 0, 34, 74, 10, 32, 68, 69, 65, 68, 66, 69, 69, 70, 68, 69, 65,
        68, 66, 69, 69, 70, 66, 65, 70, 66, 65, 70, 66, 65, 70, 66, 65, 70, 66, 65, 70, 65, 18, 38, 8, 192, 132, 61, 18, 32, 48, 48, 50,
        50, 52, 52, 54, 54, 56, 56, 65, 65, 67, 67, 69, 69, 49, 49, 51, 51, 53, 53, 55, 55, 57, 57, 66, 66, 68, 68, 70, 70, 42, 11, 8, 177,
        211, 129, 210, 5, 16, 128, 157, 202, 111, 50, 13, 116, 101, 115, 116, 95, 99, 104, 97, 105, 110, 95, 105, 100,
    ];
    assert_eq!(sign_bytes::vote("test_chain_id", &go_vote(b"DEADBEEFDEADBEEFBAFBAFBAFBAFBAFA")), want);
    // The validator's address, index, signature and extension are not signed.
    let mut other = go_vote(b"DEADBEEFDEADBEEFBAFBAFBAFBAFBAFA");
    other.validator_index = 1;
    other.signature = vec![9; 64];
    other.extension = b"ext".to_vec();
    assert_eq!(sign_bytes::vote("test_chain_id", &other), want);
}

#[test]
fn a_block_id_without_hash_keeps_its_part_set_header_as_go_does() {
    let want: &[u8] = &[
        90, 8, 1, 17, 57, 48, 0, 0, 0, 0, 0, 0, 25, 2, 0, 0, 0, 0, 0, 0, 0, 34, 40, 18, 38, 8, 192, 132, 61, 18, 32, 48, 48, 50, 50, 52,
        52, 54, 54, 56, 56, 65, 65, 67, 67, 69, 69, 49, 49, 51, 51, 53, 53, 55, 55, 57, 57, 66, 66, 68, 68, 70, 70, 42, 11, 8, 177, 211,
        129, 210, 5, 16, 128, 157, 202, 111, 50, 13, 116, 101, 115, 116, 95, 99, 104, 97, 105, 110, 95, 105, 100,
    ];
    assert_eq!(sign_bytes::vote("test_chain_id", &go_vote(b"")), want);
    // A nil vote (no hash, no header) signs no block id at all.
    let mut nil = go_vote(b"");
    nil.block_id = Some(BlockId { hash: vec![], part_set_header: Some(PartSetHeader { total: 0, hash: vec![] }) });
    let bytes = sign_bytes::vote("c", &nil);
    assert_eq!(bytes, sign_bytes::vote("c", &Vote { block_id: None, ..nil.clone() }));
    assert!(!bytes.windows(2).any(|w| w == [0x22, 0x00]), "no empty block_id field");
}

#[test]
fn proposal_sign_bytes_match_go_with_pol_round_minus_one() {
    let hash = hex("DEADBEEFDEADBEEFBAFBAFBAFBAFBAFADEADBEEFDEADBEEFBAFBAFBAFBAFBAFA");
    let parts = hex("0022446688AACCEE1133557799BBDDFF0022446688AACCEE1133557799BBDDFF");
    let p = Proposal {
        r#type: 32,
        height: 12345,
        round: 23456,
        pol_round: -1,
        block_id: Some(BlockId { hash, part_set_header: Some(PartSetHeader { total: 65535, hash: parts }) }),
        timestamp: Some(Timestamp { seconds: 1_518_332_962, nanos: 765_000_000 }),
        signature: vec![1; 64],
    };
    let want: &[u8] = &[
        136, 1, 8, 32, 17, 57, 48, 0, 0, 0, 0, 0, 0, 25, 160, 91, 0, 0, 0, 0, 0, 0, 32, 255, 255, 255, 255, 255, 255, 255, 255, 255, 1, 42,
        74, 10, 32, 222, 173, 190, 239, 222, 173, 190, 239, 186, 251, 175, 186, 251, 175, 186, 250, 222, 173, 190, 239, 222, 173, 190, 239,
        186, 251, 175, 186, 251, 175, 186, 250, 18, 38, 8, 255, 255, 3, 18, 32, 0, 34, 68, 102, 136, 170, 204, 238, 17, 51, 85, 119, 153,
        187, 221, 255, 0, 34, 68, 102, 136, 170, 204, 238, 17, 51, 85, 119, 153, 187, 221, 255, 50, 12, 8, 162, 216, 255, 211, 5, 16, 192,
        242, 227, 236, 2, 58, 13, 116, 101, 115, 116, 95, 99, 104, 97, 105, 110, 95, 105, 100,
    ];
    assert_eq!(sign_bytes::proposal("test_chain_id", &p), want);
}

#[test]
fn vote_extension_sign_bytes_follow_the_canonical_layout() {
    // CanonicalVoteExtension{extension (1, bytes), height (2, sfixed64), round (3, sfixed64), chain_id (4, string)}, length-prefixed.
    let v = Vote { r#type: 2, height: 5, round: 1, extension: b"xt".to_vec(), ..Default::default() };
    let mut want = vec![0x0a, 2, b'x', b't', 0x11];
    want.extend_from_slice(&5i64.to_le_bytes());
    want.push(0x19);
    want.extend_from_slice(&1i64.to_le_bytes());
    want.extend_from_slice(&[0x22, 1, b'c']);
    want.insert(0, want.len() as u8);
    assert_eq!(sign_bytes::vote_extension("c", &v), want);
    // An empty extension is still signed: its field is left out, the rest stays.
    let empty = sign_bytes::vote_extension("c", &Vote { extension: vec![], ..v });
    assert_eq!(empty[1], 0x11);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn vote_at(height: i64, round: i32, ty: i32, hash: &[u8], seconds: i64) -> Vec<u8> {
    let block_id =
        (!hash.is_empty()).then(|| BlockId { hash: hash.to_vec(), part_set_header: Some(PartSetHeader { total: 1, hash: vec![7; 32] }) });
    sign_bytes::vote(
        "chain",
        &Vote { r#type: ty, height, round, block_id, timestamp: Some(Timestamp { seconds, nanos: 5 }), ..Default::default() },
    )
}

fn signed(height: i64, round: i32, step: Step, bytes: Vec<u8>) -> LastSigned {
    LastSigned { height, round, step: Some(step), sign_bytes: Some(bytes), signature: Some(vec![0xaa; 64]) }
}

#[test]
fn the_double_sign_matrix() {
    let none = Limits::default();
    let a = [1u8; 32];
    let b = [2u8; 32];
    let last = signed(10, 1, Step::Prevote, vote_at(10, 1, 1, &a, 100));
    let d = |h, r, s: Step, ty, hash: &[u8], t| decide(&last, none, Kind::Vote, h, r, s, &vote_at(h, r, ty, hash, t));
    // Regressions.
    assert!(matches!(d(9, 5, Step::Precommit, 2, &a, 100), Decision::Refuse(Refusal::HeightRegression { .. })));
    assert!(matches!(d(10, 0, Step::Precommit, 2, &a, 100), Decision::Refuse(Refusal::RoundRegression { .. })));
    assert!(matches!(decide(&last, none, Kind::Proposal, 10, 1, Step::Propose, b"x"), Decision::Refuse(Refusal::StepRegression { .. })));
    // The identical request: the same signature.
    assert_eq!(d(10, 1, Step::Prevote, 1, &a, 100), Decision::Reuse { signature: vec![0xaa; 64], timestamp: None });
    // Only the timestamp differs: the same signature, with the old timestamp.
    assert_eq!(
        d(10, 1, Step::Prevote, 1, &a, 200),
        Decision::Reuse { signature: vec![0xaa; 64], timestamp: Some(Timestamp { seconds: 100, nanos: 5 }) }
    );
    // Another block, or nil after a block: the double sign, refused.
    assert_eq!(d(10, 1, Step::Prevote, 1, &b, 100), Decision::Refuse(Refusal::Conflict { height: 10, round: 1, step: Step::Prevote }));
    assert!(matches!(d(10, 1, Step::Prevote, 1, &[], 100), Decision::Refuse(Refusal::Conflict { .. })));
    // A block after nil, likewise.
    let nil = signed(10, 1, Step::Prevote, vote_at(10, 1, 1, &[], 100));
    assert!(matches!(
        decide(&nil, none, Kind::Vote, 10, 1, Step::Prevote, &vote_at(10, 1, 1, &a, 100)),
        Decision::Refuse(Refusal::Conflict { .. })
    ));
    // Precommit C after prevote B: FilePV signs it (a later step); a later round or height too.
    assert_eq!(d(10, 1, Step::Precommit, 2, &b, 100), Decision::Sign);
    assert_eq!(d(10, 2, Step::Prevote, 1, &b, 100), Decision::Sign);
    assert_eq!(d(11, 0, Step::Propose, 1, &b, 100), Decision::Sign);
    // Another chain's bytes at the same HRS are another request: refused as a conflict.
    let other_chain = sign_bytes::vote("other", &Vote { r#type: 1, height: 10, round: 1, ..Default::default() });
    assert!(matches!(decide(&last, none, Kind::Vote, 10, 1, Step::Prevote, &other_chain), Decision::Refuse(Refusal::Conflict { .. })));
    // Limits: max_height, and a jump too far ahead.
    let limits = Limits { max_height: Some(1000), max_height_jump: Some(100) };
    assert!(matches!(decide(&last, limits, Kind::Vote, 1001, 0, Step::Prevote, b""), Decision::Refuse(Refusal::AboveMaxHeight { .. })));
    assert!(matches!(decide(&last, limits, Kind::Vote, 111, 0, Step::Prevote, b""), Decision::Refuse(Refusal::HeightJump { .. })));
    assert_eq!(decide(&last, limits, Kind::Vote, 110, 0, Step::Prevote, &vote_at(110, 0, 1, &a, 1)), Decision::Sign);
    let far = LastSigned { height: i64::MAX - 1, ..last.clone() };
    assert!(matches!(decide(&far, limits, Kind::Vote, i64::MAX, 0, Step::Prevote, b""), Decision::Refuse(Refusal::AboveMaxHeight { .. })));
    // Not heights or rounds.
    assert_eq!(decide(&last, none, Kind::Vote, 0, 0, Step::Prevote, b""), Decision::Refuse(Refusal::BadHeight(0)));
    assert_eq!(decide(&last, none, Kind::Vote, 11, -1, Step::Prevote, b""), Decision::Refuse(Refusal::BadRound(-1)));
    // An imported state keeps no sign bytes: its own HRS is refused, a later one signed.
    let imported = LastSigned { height: 10, round: 1, step: Some(Step::Prevote), sign_bytes: None, signature: None };
    assert!(matches!(decide(&imported, none, Kind::Vote, 10, 1, Step::Prevote, b"x"), Decision::Refuse(Refusal::NoSignBytes { .. })));
    assert_eq!(decide(&imported, none, Kind::Vote, 10, 1, Step::Precommit, b"x"), Decision::Sign);
}

#[test]
fn a_proposal_differing_only_in_its_timestamp_gets_the_old_one_back() {
    let p = |seconds, hash: &[u8]| Proposal {
        r#type: 32,
        height: 3,
        round: 0,
        pol_round: -1,
        block_id: Some(BlockId { hash: hash.to_vec(), part_set_header: Some(PartSetHeader { total: 1, hash: vec![3; 32] }) }),
        timestamp: Some(Timestamp { seconds, nanos: 0 }),
        signature: vec![],
    };
    let last = signed(3, 0, Step::Propose, sign_bytes::proposal("c", &p(50, &[1; 32])));
    assert_eq!(
        decide(&last, Limits::default(), Kind::Proposal, 3, 0, Step::Propose, &sign_bytes::proposal("c", &p(60, &[1; 32]))),
        Decision::Reuse { signature: vec![0xaa; 64], timestamp: Some(Timestamp { seconds: 50, nanos: 0 }) }
    );
    assert!(matches!(
        decide(&last, Limits::default(), Kind::Proposal, 3, 0, Step::Propose, &sign_bytes::proposal("c", &p(50, &[2; 32]))),
        Decision::Refuse(Refusal::Conflict { .. })
    ));
}
