//! The parent's state record (authenticated, bound to its key and chain)
//! and the imports of tmkms's and CometBFT's state files.

use aws_lc_rs::hmac;
use nekms_privval::import::{import_state, ImportError};
use nekms_privval::record::{RecordError, StateRecord};
use nekms_privval::state::{LastSigned, Step};

fn record(counter: u64, height: i64) -> StateRecord {
    StateRecord {
        key_id: "validator".into(),
        chain_id: "chain-a".into(),
        counter,
        last: LastSigned { height, round: 3, step: Some(Step::Precommit), sign_bytes: Some(vec![1, 2, 3]), signature: Some(vec![9; 64]) },
    }
}

#[test]
fn a_state_record_opens_only_untouched_and_for_its_own_key_and_chain() {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
    let r = record(5, 100);
    let bytes = r.seal(&key);
    // The signature is never written: the parent holds the record before it acknowledges it.
    let unsigned = StateRecord { last: LastSigned { signature: None, ..r.last.clone() }, ..r.clone() };
    assert_eq!(StateRecord::open(&bytes, &key, "validator", "chain-a"), Ok(unsigned));
    assert!(!bytes.windows(64).any(|w| w == [9; 64]), "no signature in the record");
    // Every single-byte change is caught, and every truncation.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert_eq!(StateRecord::open(&b, &key, "validator", "chain-a"), Err(RecordError::BadTag), "byte {i}");
    }
    for n in 0..bytes.len() {
        assert!(StateRecord::open(&bytes[..n], &key, "validator", "chain-a").is_err(), "{n} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(StateRecord::open(&longer, &key, "validator", "chain-a").is_err());
    // Another key's tag, another chain's or key's record.
    let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
    assert_eq!(StateRecord::open(&bytes, &other, "validator", "chain-a"), Err(RecordError::BadTag));
    assert!(matches!(StateRecord::open(&bytes, &key, "validator", "chain-b"), Err(RecordError::OtherKeyOrChain { .. })));
    assert!(matches!(StateRecord::open(&bytes, &key, "other", "chain-a"), Err(RecordError::OtherKeyOrChain { .. })));
    // Nothing signed yet: no sign bytes, no signature.
    let empty = StateRecord { last: LastSigned { height: 7, round: 0, step: None, sign_bytes: None, signature: None }, ..record(1, 7) };
    assert_eq!(StateRecord::open(&empty.seal(&key), &key, "validator", "chain-a"), Ok(empty));
    // What the tag cannot do: an older valid copy still opens. Its lower
    // counter is what the freshness anchor compares (docs/privval-design.md).
    let older = record(4, 99).seal(&key);
    assert_eq!(StateRecord::open(&older, &key, "validator", "chain-a").unwrap().counter, 4);
}

#[test]
fn tmkms_and_cometbft_state_files_import_and_height_zero_does_not() {
    let tmkms = br#"{"height":"1234","round":"2","step":1,"block_id":{"hash":"AB","parts":{"total":1,"hash":"CD"}}}"#;
    assert_eq!(
        import_state(tmkms),
        Ok(LastSigned { height: 1234, round: 2, step: Some(Step::Prevote), sign_bytes: None, signature: None })
    );
    let tmkms_proposal = br#"{"height":"9","round":"0","step":0}"#;
    assert_eq!(import_state(tmkms_proposal).unwrap().step, Some(Step::Propose));
    let comet = br#"{"height":"77","round":1,"step":3,"signature":"AAEC","signbytes":"0A0B"}"#;
    assert_eq!(
        import_state(comet),
        Ok(LastSigned {
            height: 77,
            round: 1,
            step: Some(Step::Precommit),
            sign_bytes: Some(vec![0x0a, 0x0b]),
            signature: Some(vec![0, 1, 2])
        })
    );
    assert_eq!(import_state(br#"{"height":"0","round":0,"step":0}"#), Err(ImportError::HeightZero));
    assert_eq!(import_state(br#"{"height":"0","round":"0","step":0}"#), Err(ImportError::HeightZero));
    for bad in [
        &br#"{"height":"5","round":0,"step":4}"#[..],
        br#"{"height":"5","round":"0","step":3}"#,
        br#"{"height":5,"round":0,"step":1}"#,
        br#"{"height":"5","round":0,"step":1,"extra":true}"#,
        br#"{"height":"5","round":0,"step":1,"signature":"AAEC"}"#,
        br#"{"height":"-5","round":0,"step":1}"#,
        br#"{"height":"5","round":"x","step":1}"#,
        br#"[1,2]"#,
    ] {
        assert!(matches!(import_state(bad), Err(ImportError::Format(_))), "{}", String::from_utf8_lossy(bad));
    }
    assert!(matches!(import_state(b"{"), Err(ImportError::Json(_))));
}
