//! Any bytes as a migration statement, an approval or a manifest proof:
//! refused or read, never a panic; a statement that is read writes back to
//! exactly the same bytes (one byte form per content).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_keys::migration::{check_quorum, Approval, Leaf, Proof, Statement};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Statement::parse(data) {
        assert_eq!(s.to_bytes().expect("a read statement writes"), data);
    }
    if let Ok(approval) = serde_json::from_slice::<Approval>(data) {
        let _ = check_quorum(b"{}", &[approval], &[data.to_vec()], 1);
    }
    if let Ok(proof) = serde_json::from_slice::<Proof>(data) {
        let leaf = Leaf {
            key_id: "k".into(),
            source_record_sha256: String::new(),
            first_origin: "generated".into(),
            spec: "ed25519".into(),
            spki_sha256: String::new(),
        };
        let _ = proof.verify(&leaf, &"00".repeat(32), proof.count);
    }
});
