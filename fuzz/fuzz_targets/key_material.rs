//! Whatever an administrator's KMS plaintext holds: a private key of the
//! right spec, or a clear refusal; never a panic. A key that parses seals
//! and reopens to the same public key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_keys::{parse_private_key, KeySpec, PrivateKey};

fuzz_target!(|data: &[u8]| {
    let Some((first, material)) = data.split_first() else { return };
    let spec = match first % 8 {
        0 => None,
        n => Some(KeySpec::ALL[(n - 1) as usize]),
    };
    match parse_private_key(material, spec) {
        Ok(key) => {
            if let Some(s) = spec {
                assert_eq!(key.spec(), s);
            }
            let secret = key.secret_bytes().expect("a parsed key has secret bytes");
            let again = PrivateKey::from_secret(key.spec(), &secret).expect("its own secret reopens");
            assert_eq!(again.public_key(), key.public_key());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
