//! Ethereum payloads from callers: transaction JSON and EIP-712 typed data.
//! Parsed or refused with a message; a parsed transaction always hashes and
//! encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_keys::eth::{typed_data_hash, TxRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match TxRequest::from_json(text) {
        Ok(tx) => {
            let hash = tx.signature_hash();
            let mut rs = [1u8; 64];
            rs[..32].copy_from_slice(&hash);
            let signed = tx.into_signed(&rs, false);
            assert!(!signed.raw.is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = typed_data_hash(text);
});
