//! Any message on kmstool's port: parsed into a command or refused with a
//! message for the Error reply; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_enclave::kmstool::{parse, Command};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Command::SetClient { access_key_id, secret_access_key, .. }) => {
            assert!(access_key_id.len() + secret_access_key.len() <= data.len())
        }
        Ok(Command::Decrypt { ciphertext, .. }) => assert!(ciphertext.len() <= data.len()),
        Err(message) => assert!(!message.is_empty()),
    }
});
