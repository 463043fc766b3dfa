//! The validator signer's readers of bytes the parent hands back: the
//! authenticated state record (with the right key, so the parser behind
//! the tag is reached too, and `peek`, the parent's own display), tmkms's
//! and CometBFT's state files with the canonical check imported sign bytes
//! pass, and the state store's requests and replies. An error or a value,
//! never a panic.
#![no_main]

use aws_lc_rs::hmac;
use libfuzzer_sys::fuzz_target;
use nekms_privval::import::import_state;
use nekms_privval::record::{peek, StateRecord};
use nekms_privval::sign_bytes::check_canonical;
use nekms_privval::state::Step;
use nekms_privval::store::{StoreReply, StoreRequest};

fuzz_target!(|data: &[u8]| {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
    let _ = StateRecord::open(data, &key, "k", "c");
    // The same bytes with a valid tag: the parser itself.
    let mut tagged = data.to_vec();
    tagged.extend_from_slice(hmac::sign(&key, data).as_ref());
    let _ = StateRecord::open(&tagged, &key, "k", "c");
    let _ = peek(data);
    if let Ok(last) = import_state(data) {
        if let (Some(bytes), Some(step)) = (&last.sign_bytes, last.step) {
            let _ = check_canonical(bytes, "c", last.height, last.round, step);
        }
    }
    for step in [Step::None, Step::Propose, Step::Prevote, Step::Precommit] {
        let _ = check_canonical(data, "c", 1, 0, step);
    }
    if let Ok(r) = StoreRequest::decode(data) {
        assert_eq!(StoreRequest::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = StoreReply::decode(data) {
        let _ = r.encode();
    }
});
