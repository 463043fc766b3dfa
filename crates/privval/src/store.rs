//! The state store's messages: how the enclave asks the parent's state
//! process (`nekms privval persist`) to keep a state record, and reads one
//! back. Each message is one frame of nekms's transport (a 4-byte
//! big-endian length and a body); the body is one of:
//!
//! ```text
//! request: 1 (get) | 2 (put), name (u16 length and UTF-8), then for put the record (the rest)
//! reply:   0 (none) | 1 (found, the record follows) | 2 (stored: durable) | 3 (failed, UTF-8 reason follows)
//!          | 4 (slots: each a u32 length and a record; what a two-slot store holds)
//! ```
//!
//! `nekms privval persist` keeps two slots per name and writes each new
//! record over the older one (the slot is the record's counter modulo 2),
//! with one `fdatasync` of a fixed-size file: a write torn by a crash spoils
//! only the record being written, which was not acknowledged, and the other
//! slot still holds the one before. A read returns both; the enclave takes
//! the newest whose tag verifies.
//!
//! "Stored" is the acknowledgement: the parent answers it only after the
//! record is on disk (file and directory synced). Nothing here is trusted
//! by the enclave beyond that: records are authenticated ([`crate::record`]),
//! and a parent that lies about durability is what local mode cannot stop.

/// Longest name: a key fingerprint (64 hex), `/`, and a chain id (≤ 50 bytes).
pub const MAX_NAME: usize = 128;
/// Largest record: sign bytes are under 64 KiB ([`crate::record`]).
pub const MAX_RECORD: usize = 80 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRequest {
    Get { name: String },
    Put { name: String, record: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReply {
    None,
    Found(Vec<u8>),
    Stored,
    Failed(String),
    Slots(Vec<Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not a state-store message: {0}")]
    Malformed(&'static str),
}

/// A record's name: `<fingerprint hex>/<chain id>`.
pub fn name(fingerprint_hex: &str, chain_id: &str) -> String {
    format!("{fingerprint_hex}/{chain_id}")
}

/// Whether `name` is one [`name`] makes: 64 lowercase hex, `/`, 1-50 bytes of chain id.
pub fn check_name(name: &str) -> Result<(&str, &str), StoreError> {
    let (fp, chain) = name.split_once('/').ok_or(StoreError::Malformed("a name is <fingerprint>/<chain id>"))?;
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(StoreError::Malformed("a fingerprint is 64 lowercase hex digits"));
    }
    if chain.is_empty() || chain.len() > 50 {
        return Err(StoreError::Malformed("a chain id is 1-50 bytes"));
    }
    Ok((fp, chain))
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

impl StoreRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            StoreRequest::Get { name } => {
                out.push(1);
                put_name(&mut out, name);
            }
            StoreRequest::Put { name, record } => {
                out.push(2);
                put_name(&mut out, name);
                out.extend_from_slice(record);
            }
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<StoreRequest, StoreError> {
        let (&op, rest) = body.split_first().ok_or(StoreError::Malformed("empty"))?;
        if rest.len() < 2 {
            return Err(StoreError::Malformed("no name"));
        }
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if n > MAX_NAME || rest.len() < 2 + n {
            return Err(StoreError::Malformed("the name's length"));
        }
        let name = std::str::from_utf8(&rest[2..2 + n]).map_err(|_| StoreError::Malformed("the name is not UTF-8"))?.to_owned();
        check_name(&name)?;
        let tail = &rest[2 + n..];
        match op {
            1 if tail.is_empty() => Ok(StoreRequest::Get { name }),
            2 if !tail.is_empty() && tail.len() <= MAX_RECORD => Ok(StoreRequest::Put { name, record: tail.to_vec() }),
            1 | 2 => Err(StoreError::Malformed("the record's length")),
            _ => Err(StoreError::Malformed("unknown operation")),
        }
    }
}

impl StoreReply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StoreReply::None => vec![0],
            StoreReply::Found(r) => [&[1u8][..], r].concat(),
            StoreReply::Stored => vec![2],
            StoreReply::Failed(why) => [&[3u8][..], why.as_bytes()].concat(),
            StoreReply::Slots(records) => {
                let mut out = vec![4u8];
                for r in records {
                    out.extend_from_slice(&(r.len() as u32).to_be_bytes());
                    out.extend_from_slice(r);
                }
                out
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<StoreReply, StoreError> {
        let (&op, rest) = body.split_first().ok_or(StoreError::Malformed("empty"))?;
        match op {
            0 if rest.is_empty() => Ok(StoreReply::None),
            1 if !rest.is_empty() && rest.len() <= MAX_RECORD => Ok(StoreReply::Found(rest.to_vec())),
            2 if rest.is_empty() => Ok(StoreReply::Stored),
            3 => Ok(StoreReply::Failed(String::from_utf8_lossy(&rest[..rest.len().min(1024)]).into_owned())),
            4 => {
                let mut records = Vec::new();
                let mut rest = rest;
                while !rest.is_empty() {
                    if rest.len() < 4 || records.len() == 2 {
                        return Err(StoreError::Malformed("slots"));
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if n == 0 || n > MAX_RECORD || rest.len() < 4 + n {
                        return Err(StoreError::Malformed("a slot's length"));
                    }
                    records.push(rest[4..4 + n].to_vec());
                    rest = &rest[4 + n..];
                }
                Ok(StoreReply::Slots(records))
            }
            _ => Err(StoreError::Malformed("unknown reply")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let name = name(&"ab".repeat(32), "chain-a");
        for r in [StoreRequest::Get { name: name.clone() }, StoreRequest::Put { name: name.clone(), record: vec![1, 2, 3] }] {
            assert_eq!(StoreRequest::decode(&r.encode()), Ok(r));
        }
        for r in [
            StoreReply::None,
            StoreReply::Found(vec![7]),
            StoreReply::Stored,
            StoreReply::Failed("disk full".into()),
            StoreReply::Slots(vec![vec![1], vec![2, 3]]),
        ] {
            assert_eq!(StoreReply::decode(&r.encode()), Ok(r));
        }
        for bad in [&b""[..], b"\x01", b"\x01\x00\x05abc", b"\x09\x00\x00", b"\x02\x00\x03a/b"] {
            assert!(StoreRequest::decode(bad).is_err(), "{bad:?}");
        }
        // A name that would escape the store's directory is no name.
        assert!(check_name("../../etc/passwd").is_err());
        assert!(check_name(&format!("{}/{}", "AB".repeat(32), "c")).is_err());
        assert!(StoreReply::decode(b"\x02x").is_err() && StoreReply::decode(b"\x07").is_err());
    }
}
