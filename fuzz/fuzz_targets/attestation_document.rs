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
    let _ = Verifier::aws().verify(data, &VerifyOptions::at(time_of(data)));
});

fn time_of(data: &[u8]) -> time::OffsetDateTime {
    let _ = data;
    time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
}
