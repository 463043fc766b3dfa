//! Any bytes handed to the verifier: an error or a document, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_attestation::{AttestationDocument, CoseSign1, Verifier, VerifyOptions};

fuzz_target!(|data: &[u8]| {
    let _ = AttestationDocument::decode(data);
    if let Ok(cose) = CoseSign1::decode(data) {
        // Re-encoding a decoded document must decode to the same thing.
        let again = CoseSign1::decode(&cose.encode_tagged()).expect("re-encoded COSE_Sign1 decodes");
        assert_eq!(again, cose);
        if let Ok(doc) = AttestationDocument::decode(&cose.payload) {
            assert_eq!(AttestationDocument::decode(&doc.encode()).expect("re-encoded payload decodes"), doc);
        }
    }
    // A time inside the real vectors' validity, so mutated real documents
    // reach the chain and signature checks rather than stopping at expiry.
    let at = time::OffsetDateTime::from_unix_timestamp(1_725_719_859).expect("valid time");
    let _ = Verifier::aws().verify(data, &VerifyOptions::at(at));
});
