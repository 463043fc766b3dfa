//! Any bytes as a CiphertextForRecipient: an error or a parsed message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nekms_cms::parse_ber(data);
    let _ = nekms_cms::EnvelopedData::parse(data);
});
