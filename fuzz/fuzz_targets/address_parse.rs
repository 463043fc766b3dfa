//! Any string as an address: an error or an address that prints and parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_transport::Address;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(addr) = s.parse::<Address>() {
            let again: Address = addr.to_string().parse().expect("a printed address parses");
            assert_eq!(again, addr);
        }
    }
});
