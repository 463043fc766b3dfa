//! The double-sign state as the parent keeps it: the last thing signed for
//! one key and chain, a counter that grows with every write, and an
//! HMAC-SHA256 tag under a key only the enclave holds. A forged, truncated
//! or edited record, or one for another key or chain, is refused.
//!
//! The tag stops forgery, not replay: an older record with a valid tag
//! still verifies. Freshness comes from elsewhere (the anchor, see
//! `docs/privval-design.md`); the counter is what the anchor compares.
//!
//! The record keeps the sign bytes but never the signature: the parent
//! receives the record before it acknowledges it, and a signature in it
//! would leave the enclave before the state holding it is durable (root
//! could keep it, withhold the acknowledgement, and ask again). Both
//! consensus signatures are deterministic (Ed25519; RFC 6979 ECDSA), so the
//! enclave signs the kept bytes again when it needs the signature back.
//!
//! Layout (all integers big-endian): the magic `nekms-privval-state v1\0`,
//! then the key id and the chain id (u16 length and bytes each), the
//! counter (u64), height (i64), round (i32), step (u8: 0-3), the sign bytes
//! (u32 length and bytes; empty when absent), then the 32-byte tag over
//! everything before it.

use aws_lc_rs::hmac;

use crate::state::{LastSigned, Step};

const MAGIC: &[u8] = b"nekms-privval-state v1\0";
const TAG: usize = 32;
/// Sign bytes and signatures are small (a vote's are under 300 bytes).
const MAX_FIELD: usize = 64 * 1024;

/// One chain's state for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRecord {
    pub key_id: String,
    pub chain_id: String,
    pub counter: u64,
    pub last: LastSigned,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a nekms privval state record (wrong magic, truncated, or trailing bytes)")]
    Malformed,
    #[error("the state record's tag does not verify: it was altered, or made under another key")]
    BadTag,
    #[error("the state record is for key {key_id:?} and chain {chain_id:?}, not the ones asked for")]
    OtherKeyOrChain { key_id: String, chain_id: String },
}

fn step_byte(s: Option<Step>) -> u8 {
    s.map_or(0, |s| s as u8)
}

fn step_of_byte(b: u8) -> Option<Option<Step>> {
    Some(match b {
        0 => None,
        1 => Some(Step::Propose),
        2 => Some(Step::Prevote),
        3 => Some(Step::Precommit),
        _ => return None,
    })
}

impl StateRecord {
    fn body(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for s in [&self.key_id, &self.chain_id] {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.last.height.to_be_bytes());
        out.extend_from_slice(&self.last.round.to_be_bytes());
        out.push(step_byte(self.last.step));
        let b = self.last.sign_bytes.as_deref().unwrap_or_default();
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
        out
    }

    /// The record's bytes with its tag under `mac_key` (the signature left out).
    pub fn seal(&self, mac_key: &hmac::Key) -> Vec<u8> {
        let mut out = self.body();
        let tag = hmac::sign(mac_key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Read a record, check its tag, and that it is for `key_id` and `chain_id`.
    pub fn open(bytes: &[u8], mac_key: &hmac::Key, key_id: &str, chain_id: &str) -> Result<StateRecord, RecordError> {
        let body_len = bytes.len().checked_sub(TAG).ok_or(RecordError::Malformed)?;
        let (body, tag) = bytes.split_at(body_len);
        // The tag first: nothing unauthenticated is parsed for meaning.
        hmac::verify(mac_key, body, tag).map_err(|_| RecordError::BadTag)?;
        let record = parse(body).ok_or(RecordError::Malformed)?;
        if record.key_id != key_id || record.chain_id != chain_id {
            return Err(RecordError::OtherKeyOrChain { key_id: record.key_id, chain_id: record.chain_id });
        }
        Ok(record)
    }
}

/// Read a record without its tag checked: for display on the parent, which
/// cannot check it. Nothing decides on what this returns.
pub fn peek(bytes: &[u8]) -> Option<StateRecord> {
    parse(&bytes[..bytes.len().checked_sub(TAG)?])
}

fn parse(body: &[u8]) -> Option<StateRecord> {
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let key_id = r.string()?;
    let chain_id = r.string()?;
    let counter = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let height = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let round = i32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let step = step_of_byte(r.take(1)?[0])?;
    let sign_bytes = r.bytes()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(StateRecord { key_id, chain_id, counter, last: LastSigned { height, round, step, sign_bytes, signature: None } })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn bytes(&mut self) -> Option<Option<Vec<u8>>> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        if n > MAX_FIELD {
            return None;
        }
        let b = self.take(n)?;
        Some((!b.is_empty()).then(|| b.to_vec()))
    }
}
