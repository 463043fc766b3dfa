//! The validator signer's readers of state the parent hands back: the
//! authenticated state record (with the right key, so the parser behind
//! the tag is reached too) and tmkms's and CometBFT's state files. An error
//! or a value, never a panic.
#![no_main]

use aws_lc_rs::hmac;
use libfuzzer_sys::fuzz_target;
use nekms_privval::import::import_state;
use nekms_privval::record::StateRecord;

fuzz_target!(|data: &[u8]| {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
    let _ = StateRecord::open(data, &key, "k", "c");
    // The same bytes with a valid tag: the parser itself.
    let mut tagged = data.to_vec();
    tagged.extend_from_slice(hmac::sign(&key, data).as_ref());
    let _ = StateRecord::open(&tagged, &key, "k", "c");
    let _ = import_state(data);
});
