//! Any bytes as an image's signature section (an EIF's, or the simulator's
//! `--sim-signature` file): refused or verified, never a panic, and what
//! verifies names a non-zero PCR8. Seed it with a real section
//! (`nekms pcr sim FILE --sign-key K --sign-cert C --signature
//! fuzz/corpus/image_signature/real.sig`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_attestation::image_signature::{section_fields, verify};
use nekms_attestation::Pcr48;

fuzz_target!(|data: &[u8]| {
    let _ = section_fields(data);
    let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("valid time");
    for pcr0 in [Pcr48::ZERO, Pcr48([0x5a; 48])] {
        if let Ok(signed) = verify(data, &pcr0, now) {
            // What verifies names a non-zero PCR8 derived from the certificate.
            assert!(!signed.pcr8.is_zero());
        }
    }
});
