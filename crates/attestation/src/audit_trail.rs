//! Checking an enclave's audit trail (format: [`nekms_protocol::audit`]),
//! as `nekms audit verify` does: each start line's audit key against its
//! attestation document, the chain of hashes, every checkpoint's and lost
//! marker's signature. It reads bytes root may have written, so it takes
//! any input without panicking and names the first line that fails.

use std::collections::HashMap;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_protocol::audit::{checkpoint_message, lost_message, START_PREFIX};
use serde_json::Value;

use crate::{Verifier, VerifyOptions};

/// One trail (one start of an enclave) as verified.
#[derive(Clone, Debug)]
pub struct Trail {
    /// The audit key (Ed25519, 32 bytes).
    pub key: Vec<u8>,
    /// The PCR0 of the image that started it.
    pub pcr0: String,
    /// The next `seq` expected, and the hash of the last line.
    pub expected: u64,
    prev: [u8; 32],
    /// Every chained line's hash by `seq`.
    pub hashes: HashMap<u64, [u8; 32]>,
    pub records: u64,
    /// Records the enclave said it dropped.
    pub lost: u64,
    /// The last checkpoint: its `seq` and its line's hash.
    pub last_checkpoint: Option<(u64, [u8; 32])>,
}

/// Why a file fails: the line (1-based) and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Failure {
    pub line: usize,
    pub reason: String,
}

fn hex32(v: &Value, field: &str) -> Result<[u8; 32], String> {
    let s = v[field].as_str().ok_or_else(|| format!("no {field}"))?;
    hex::decode(s).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| format!("{field} is not 32 bytes of hex"))
}

fn signed_by(key: &[u8], message: &[u8], v: &Value) -> Result<(), String> {
    let sig = B64.decode(v["signature"].as_str().ok_or("no signature")?).map_err(|_| "the signature is not base64".to_owned())?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, &sig)
        .map_err(|_| "its signature does not verify under the trail's audit key".into())
}

/// Verify a whole file; its trails, in order.
pub fn verify(text: &str, verifier: &Verifier, pcr0: &[String]) -> Result<Vec<Trail>, Failure> {
    let mut trails: Vec<Trail> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        check_line(&mut trails, line, n, verifier, pcr0).map_err(|reason| Failure { line: n + 1, reason })?;
    }
    Ok(trails)
}

fn check_line(trails: &mut Vec<Trail>, line: &str, n: usize, verifier: &Verifier, pcr0: &[String]) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON line: {e}"))?;
    let hash: [u8; 32] = digest(&SHA256, line.as_bytes()).as_ref().try_into().expect("32 bytes");
    match v["kind"].as_str() {
        Some("start") => {
            let key = B64.decode(v["audit_key"].as_str().unwrap_or_default()).map_err(|e| format!("audit_key: {e}"))?;
            let doc = B64.decode(v["document"].as_str().unwrap_or_default()).map_err(|e| format!("document: {e}"))?;
            let opts = VerifyOptions::at_document_time(&doc).map_err(|e| format!("the start document: {e}"))?;
            let checked = verifier.verify(&doc, &opts).map_err(|e| format!("the start document does not verify: {e}"))?;
            if key.len() != 32 || checked.document.user_data.as_deref() != Some(&[START_PREFIX, &key].concat()[..]) {
                return Err("the start document is not over this audit key".into());
            }
            let own = checked.document.pcrs.get(&0).map(|p| p.to_hex()).unwrap_or_default();
            if !pcr0.is_empty() && !pcr0.iter().any(|p| p.eq_ignore_ascii_case(&own)) {
                return Err(format!("the trail was started by an image with PCR0 {own}, not one of --pcr0"));
            }
            if v["seq"].as_u64() != Some(0) || v["prev"].as_str() != Some(&"0".repeat(64)) {
                return Err("a start line is seq 0 after nothing".into());
            }
            trails.push(Trail {
                key,
                pcr0: own,
                expected: 1,
                prev: hash,
                hashes: HashMap::from([(0, hash)]),
                records: 1,
                lost: 0,
                last_checkpoint: None,
            });
        }
        Some("lost") => {
            let t = trails.last_mut().ok_or("a line before any start line")?;
            let (from, to) = (v["from"].as_u64().unwrap_or(0), v["to"].as_u64().unwrap_or(0));
            let (after, last) = (hex32(&v, "after")?, hex32(&v, "last")?);
            signed_by(&t.key, &lost_message(from, to, &after, &last), &v)?;
            let before = if from == t.expected { Some(t.prev) } else { t.hashes.get(&from.wrapping_sub(1)).copied() };
            if from == 0 || from > t.expected || to < from || to == u64::MAX || before != Some(after) {
                return Err(format!("a lost-records marker for {from}..={to} that does not meet the records before it"));
            }
            t.lost += to + 1 - t.expected.max(from);
            (t.expected, t.prev) = (to + 1, last);
        }
        Some(kind) => {
            let t = trails.last_mut().ok_or("a line before any start line")?;
            let seq = v["seq"].as_u64().unwrap_or(u64::MAX);
            if seq != t.expected {
                return Err(format!("seq {seq} where {} comes next: a record was removed or reordered", t.expected));
            }
            if hex32(&v, "prev").ok() != Some(t.prev) {
                return Err(format!(
                    "seq {seq} does not follow seq {} (line {n}): that record was edited, or one between them removed",
                    seq - 1
                ));
            }
            if kind == "checkpoint" {
                signed_by(&t.key, &checkpoint_message(seq, &t.prev), &v).map_err(|e| format!("checkpoint {seq}: {e}"))?;
                t.last_checkpoint = Some((seq, hash));
            }
            t.hashes.insert(seq, hash);
            (t.expected, t.prev, t.records) = (seq + 1, hash, t.records + 1);
        }
        None => return Err("no kind".into()),
    }
    Ok(())
}
