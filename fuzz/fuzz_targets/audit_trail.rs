//! Any bytes as an audit file: a failure naming one of its lines, or
//! trails; never a panic. (A start line must carry a document that verifies
//! to the AWS root, which fuzzed bytes do not, so this reaches the JSON,
//! base64 and document parsing of every first line, not the chain checks:
//! tests/python/test_audit.py plays those with real trails.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_attestation::audit_trail::verify;
use nekms_attestation::Verifier;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(f) = verify(&text, &Verifier::aws(), &[]) {
        assert!(f.line >= 1 && f.line <= text.lines().count().max(1), "{f}");
    }
    let _ = verify(&text, &Verifier::aws(), &["00".repeat(48)]);
});
