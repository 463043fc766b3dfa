//! The attestation document payload: a CBOR map of fixed fields.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::cose::{cbor_error, definite_bytes};
use crate::error::DecodeError;
use crate::pcr::{Pcr48, PCR_COUNT};

/// Largest document accepted. The NSM driver's response buffer is 12 KiB;
/// this leaves headroom without letting a peer make us parse megabytes.
pub const MAX_DOCUMENT_SIZE: usize = 16 * 1024;
/// Most certificates accepted in `cabundle` (AWS sends 4).
pub const MAX_CABUNDLE: usize = 8;
/// Largest `public_key`, `user_data` or `nonce` in a document. AWS documents
/// `user_data` and `nonce` as at most 512 bytes, yet real NSMs sign 1024-byte
/// values for all three (see the blocky-nitrite vectors), so the verifier
/// accepts what the hardware produces.
pub const MAX_OPTIONAL_FIELD: usize = 1024;
const MAX_CERT: usize = 1024;
const MAX_MODULE_ID: usize = 256;

/// A decoded attestation document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttestationDocument {
    pub module_id: String,
    /// Always "SHA384" (anything else is refused when decoding).
    pub digest: String,
    /// Milliseconds since the Unix epoch, when the NSM signed.
    pub timestamp: u64,
    pub pcrs: BTreeMap<u8, Pcr48>,
    #[serde(serialize_with = "hex_bytes")]
    pub certificate: Vec<u8>,
    #[serde(serialize_with = "hex_list")]
    pub cabundle: Vec<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub public_key: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub user_data: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub nonce: Option<Vec<u8>>,
}

fn hex_bytes<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}
fn hex_list<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}
fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

const FIELDS: [&str; 9] = ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"];

impl AttestationDocument {
    /// Decode a payload. Every field is checked for type and size.
    pub fn decode(payload: &[u8]) -> Result<AttestationDocument, DecodeError> {
        if payload.len() > MAX_DOCUMENT_SIZE {
            return Err(DecodeError::TooLarge { len: payload.len(), max: MAX_DOCUMENT_SIZE });
        }
        let err = cbor_error("document payload");
        let mut d = Decoder::new(payload);
        let entries = match d.datatype().map_err(&err)? {
            Type::Map => d.map().map_err(&err)?.expect("definite map"),
            _ => return Err(DecodeError::FieldType { field: "payload", expected: "a definite-length map" }),
        };
        if entries > FIELDS.len() as u64 {
            return Err(DecodeError::FieldSize { field: "payload", len: entries as usize, min: 6, max: FIELDS.len() });
        }
        let mut seen = [false; FIELDS.len()];
        let mut doc = Partial::default();
        for _ in 0..entries {
            let key = match d.datatype().map_err(&err)? {
                Type::String => d.str().map_err(&err)?,
                _ => return Err(DecodeError::FieldType { field: "payload key", expected: "a text string" }),
            };
            let Some(slot) = FIELDS.iter().position(|f| *f == key) else {
                return Err(DecodeError::UnknownField(key.chars().take(64).collect()));
            };
            let field = FIELDS[slot];
            if std::mem::replace(&mut seen[slot], true) {
                return Err(DecodeError::DuplicateField(field));
            }
            match field {
                "module_id" => {
                    let s = text(&mut d, field)?;
                    check_size(field, s.len(), 1, MAX_MODULE_ID)?;
                    doc.module_id = Some(s.to_owned());
                }
                "digest" => {
                    let s = text(&mut d, field)?;
                    if s != "SHA384" {
                        return Err(DecodeError::UnsupportedDigest(s.chars().take(16).collect()));
                    }
                    doc.digest = Some(s.to_owned());
                }
                "timestamp" => {
                    let t = unsigned(&mut d, field)?;
                    if t == 0 {
                        return Err(DecodeError::Timestamp);
                    }
                    doc.timestamp = Some(t);
                }
                "pcrs" => doc.pcrs = Some(pcrs(&mut d)?),
                "certificate" => {
                    let b = definite_bytes(&mut d, field)?;
                    check_size(field, b.len(), 1, MAX_CERT)?;
                    doc.certificate = Some(b.to_vec());
                }
                "cabundle" => doc.cabundle = Some(cabundle(&mut d)?),
                "public_key" => doc.public_key = optional_bytes(&mut d, field, 1)?,
                "user_data" => doc.user_data = optional_bytes(&mut d, field, 0)?,
                "nonce" => doc.nonce = optional_bytes(&mut d, field, 0)?,
                _ => unreachable!("FIELDS"),
            }
        }
        let rest = payload.len() - d.position();
        if rest != 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(AttestationDocument {
            module_id: doc.module_id.ok_or(DecodeError::MissingField("module_id"))?,
            digest: doc.digest.ok_or(DecodeError::MissingField("digest"))?,
            timestamp: doc.timestamp.ok_or(DecodeError::MissingField("timestamp"))?,
            pcrs: doc.pcrs.ok_or(DecodeError::MissingField("pcrs"))?,
            certificate: doc.certificate.ok_or(DecodeError::MissingField("certificate"))?,
            cabundle: doc.cabundle.ok_or(DecodeError::MissingField("cabundle"))?,
            public_key: doc.public_key,
            user_data: doc.user_data,
            nonce: doc.nonce,
        })
    }

    /// Encode as an NSM does: every field present, absent optional ones as null.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::with_capacity(4096));
        let opt = |e: &mut Encoder<Vec<u8>>, v: &Option<Vec<u8>>| match v {
            Some(b) => e.bytes(b).map(|_| ()),
            None => e.null().map(|_| ()),
        };
        (|| -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
            e.map(9)?;
            e.str("module_id")?.str(&self.module_id)?;
            e.str("digest")?.str(&self.digest)?;
            e.str("timestamp")?.u64(self.timestamp)?;
            e.str("pcrs")?.map(self.pcrs.len() as u64)?;
            for (i, v) in &self.pcrs {
                e.u8(*i)?.bytes(&v.0)?;
            }
            e.str("certificate")?.bytes(&self.certificate)?;
            e.str("cabundle")?.array(self.cabundle.len() as u64)?;
            for c in &self.cabundle {
                e.bytes(c)?;
            }
            e.str("public_key")?;
            opt(&mut e, &self.public_key)?;
            e.str("user_data")?;
            opt(&mut e, &self.user_data)?;
            e.str("nonce")?;
            opt(&mut e, &self.nonce)?;
            Ok(())
        })()
        .expect("writing to a Vec cannot fail");
        e.into_writer()
    }
}

#[derive(Default)]
struct Partial {
    module_id: Option<String>,
    digest: Option<String>,
    timestamp: Option<u64>,
    pcrs: Option<BTreeMap<u8, Pcr48>>,
    certificate: Option<Vec<u8>>,
    cabundle: Option<Vec<Vec<u8>>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

fn check_size(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), DecodeError> {
    if len < min || len > max {
        return Err(DecodeError::FieldSize { field, len, min, max });
    }
    Ok(())
}

fn text<'b>(d: &mut Decoder<'b>, field: &'static str) -> Result<&'b str, DecodeError> {
    match d.datatype().map_err(cbor_error(field))? {
        Type::String => d.str().map_err(cbor_error(field)),
        _ => Err(DecodeError::FieldType { field, expected: "a definite-length text string" }),
    }
}

fn unsigned(d: &mut Decoder<'_>, field: &'static str) -> Result<u64, DecodeError> {
    match d.datatype().map_err(cbor_error(field))? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64().map_err(cbor_error(field)),
        _ => Err(DecodeError::FieldType { field, expected: "an unsigned integer" }),
    }
}

fn optional_bytes(d: &mut Decoder<'_>, field: &'static str, min: usize) -> Result<Option<Vec<u8>>, DecodeError> {
    if d.datatype().map_err(cbor_error(field))? == Type::Null {
        d.null().map_err(cbor_error(field))?;
        return Ok(None);
    }
    let b = definite_bytes(d, field)?;
    check_size(field, b.len(), min, MAX_OPTIONAL_FIELD)?;
    Ok(Some(b.to_vec()))
}

fn pcrs(d: &mut Decoder<'_>) -> Result<BTreeMap<u8, Pcr48>, DecodeError> {
    let field = "pcrs";
    let n = match d.datatype().map_err(cbor_error(field))? {
        Type::Map => d.map().map_err(cbor_error(field))?.expect("definite map"),
        _ => return Err(DecodeError::FieldType { field, expected: "a definite-length map" }),
    };
    check_size(field, n.min(usize::MAX as u64) as usize, 1, PCR_COUNT as usize)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let index = unsigned(d, "pcrs index")?;
        if index >= PCR_COUNT as u64 {
            return Err(DecodeError::PcrIndex(index));
        }
        let value = definite_bytes(d, "pcrs value")?;
        let pcr = Pcr48::from_slice(value).ok_or(DecodeError::PcrLength { index, len: value.len() })?;
        if out.insert(index as u8, pcr).is_some() {
            return Err(DecodeError::DuplicateField("pcrs index"));
        }
    }
    Ok(out)
}

fn cabundle(d: &mut Decoder<'_>) -> Result<Vec<Vec<u8>>, DecodeError> {
    let field = "cabundle";
    let n = match d.datatype().map_err(cbor_error(field))? {
        Type::Array => d.array().map_err(cbor_error(field))?.expect("definite array"),
        _ => return Err(DecodeError::FieldType { field, expected: "a definite-length array" }),
    };
    check_size(field, n.min(usize::MAX as u64) as usize, 1, MAX_CABUNDLE)?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let b = definite_bytes(d, "cabundle entry")?;
        check_size("cabundle entry", b.len(), 1, MAX_CERT)?;
        out.push(b.to_vec());
    }
    Ok(out)
}
