//! The audit trail's line format, shared by the enclave that writes it and
//! `nekms audit verify` that checks it.
//!
//! One JSON object per line. Chained lines carry `seq` (0, 1, 2, ... from
//! each start of the enclave) and `prev`, the hex SHA-256 of the previous
//! line's bytes (without its newline); the first, `"kind": "start"`, has
//! `prev` all zeros and carries the audit key (Ed25519, made at start, held
//! only in the enclave) with an attestation document whose `user_data` is
//! [`START_PREFIX`] followed by that key. Kinds:
//!
//! - `start`: `audit_key` (base64), `document` (base64 CBOR);
//! - `decision`: `channel` (`rpc`, `p11`, `privval`, `kmstool`), `op`,
//!   `key`, `key_sha256`, `scheme`, `payload_sha256`, `caller`, `result`
//!   (`ok`, or `refused: ...` / `error: ...` with the rule);
//! - `checkpoint`: `signature`, the audit key's Ed25519 signature over
//!   [`checkpoint_message`] of its own `seq` and `prev`;
//! - `lost` (not chained: no `prev`): records `from`..=`to` the enclave
//!   dropped because the parent did not take them, `after` (the hash of
//!   record `from - 1`), `last` (the hash of record `to`), `signature` over
//!   [`lost_message`].

/// What precedes the audit key in the start document's `user_data`.
pub const START_PREFIX: &[u8] = b"nekms-audit:v1:";

/// The bytes a checkpoint signs.
pub fn checkpoint_message(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut m = b"nekms-audit:v1:checkpoint\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev);
    m
}

/// The bytes a lost-records marker signs.
pub fn lost_message(from: u64, to: u64, after: &[u8; 32], last: &[u8; 32]) -> Vec<u8> {
    let mut m = b"nekms-audit:v1:lost\0".to_vec();
    m.extend_from_slice(&from.to_be_bytes());
    m.extend_from_slice(&to.to_be_bytes());
    m.extend_from_slice(after);
    m.extend_from_slice(last);
    m
}

/// The longest line the collector accepts.
pub const MAX_LINE: usize = 64 * 1024;
