//! COSE_Sign1 (RFC 9052) as NSMs produce it: ES384, protected header `{1: -35}`.
//!
//! Why not `coset`: a general COSE decoder accepts every algorithm, header
//! and encoding COSE allows, and the verifier would then have to refuse them
//! one by one. This decoder accepts only what an NSM writes (tag 18 or
//! untagged, ES384, a 96-byte signature, a bounded size), so anything else
//! fails at the first byte that differs. It is fuzzed, and the Python tests
//! check it against pycose on the real documents in testdata/.

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::document::MAX_DOCUMENT_SIZE;
use crate::error::DecodeError;

/// CBOR tag of COSE_Sign1.
pub const COSE_SIGN1_TAG: u64 = 18;
/// COSE algorithm identifier of ES384.
pub const ES384: i64 = -35;
const ES384_SIGNATURE_LEN: usize = 96;

/// A decoded COSE_Sign1 whose algorithm is known to be ES384.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoseSign1 {
    /// The serialized protected header, exactly as signed.
    pub protected: Vec<u8>,
    pub payload: Vec<u8>,
    /// `r || s`, 96 bytes.
    pub signature: Vec<u8>,
}

pub(crate) fn cbor_error(context: &'static str) -> impl Fn(minicbor::decode::Error) -> DecodeError {
    move |e| DecodeError::Cbor { context, detail: e.to_string() }
}

impl CoseSign1 {
    /// Decode a COSE_Sign1, tagged (18) or untagged as real NSMs emit it.
    pub fn decode(bytes: &[u8]) -> Result<CoseSign1, DecodeError> {
        if bytes.len() > MAX_DOCUMENT_SIZE {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_DOCUMENT_SIZE });
        }
        let err = cbor_error("COSE_Sign1");
        let mut d = Decoder::new(bytes);
        if d.datatype().map_err(&err)? == Type::Tag {
            let tag = d.tag().map_err(&err)?.as_u64();
            if tag != COSE_SIGN1_TAG {
                return Err(DecodeError::WrongTag(tag));
            }
        }
        match d.datatype().map_err(&err)? {
            Type::Array => match d.array().map_err(&err)? {
                Some(4) => {}
                Some(n) => return Err(DecodeError::NotSign1Array(format!("an array of {n}"))),
                None => unreachable!("definite array"),
            },
            other => return Err(DecodeError::NotSign1Array(describe(other))),
        }
        let protected = definite_bytes(&mut d, "COSE protected header")?.to_vec();
        check_protected(&protected)?;
        match d.datatype().map_err(&err)? {
            Type::Map if d.map().map_err(&err)? == Some(0) => {}
            _ => return Err(DecodeError::UnprotectedHeader),
        }
        let payload = definite_bytes(&mut d, "COSE payload")?.to_vec();
        let signature = definite_bytes(&mut d, "COSE signature")?.to_vec();
        if signature.len() != ES384_SIGNATURE_LEN {
            return Err(DecodeError::SignatureLength(signature.len()));
        }
        let rest = bytes.len() - d.position();
        if rest != 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(CoseSign1 { protected, payload, signature })
    }

    /// The bytes the signature covers: `Sig_structure = ["Signature1",
    /// protected, external_aad = h'', payload]`.
    pub fn to_be_signed(&self) -> Vec<u8> {
        sig_structure(&self.protected, &self.payload)
    }

    /// Encode with tag 18.
    pub fn encode_tagged(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::with_capacity(self.payload.len() + 128));
        e.tag(Tag::new(COSE_SIGN1_TAG))
            .and_then(|e| e.array(4))
            .and_then(|e| e.bytes(&self.protected))
            .and_then(|e| e.map(0))
            .and_then(|e| e.bytes(&self.payload))
            .and_then(|e| e.bytes(&self.signature))
            .expect("writing to a Vec cannot fail");
        e.into_writer()
    }
}

/// The serialized ES384 protected header, `{1: -35}`.
pub fn es384_protected_header() -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(1).and_then(|e| e.u8(1)).and_then(|e| e.i64(ES384)).expect("Vec");
    e.into_writer()
}

pub(crate) fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::with_capacity(payload.len() + 64));
    e.array(4)
        .and_then(|e| e.str("Signature1"))
        .and_then(|e| e.bytes(protected))
        .and_then(|e| e.bytes(&[]))
        .and_then(|e| e.bytes(payload))
        .expect("Vec");
    e.into_writer()
}

fn check_protected(protected: &[u8]) -> Result<(), DecodeError> {
    let bad = |m: &str| DecodeError::ProtectedHeader(m.to_owned());
    let mut d = Decoder::new(protected);
    let err = cbor_error("COSE protected header");
    if d.datatype().map_err(&err)? != Type::Map {
        return Err(bad("not a map"));
    }
    let Some(n) = d.map().map_err(&err)? else { return Err(bad("indefinite-length map")) };
    let mut alg = None;
    for _ in 0..n {
        match d.datatype().map_err(&err)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {}
            _ => return Err(bad("only the alg label (1) is allowed")),
        }
        let label = d.u64().map_err(&err)?;
        if label != 1 || alg.is_some() {
            return Err(bad(&format!("unexpected label {label}; only alg (1) is allowed, once")));
        }
        alg = Some(d.i64().map_err(|_| bad("alg is not an integer"))?);
    }
    if d.position() != protected.len() {
        return Err(bad("trailing bytes"));
    }
    match alg {
        None => Err(bad("no algorithm")),
        Some(ES384) => Ok(()),
        Some(other) => Err(DecodeError::UnsupportedAlgorithm(other)),
    }
}

/// A definite-length byte string borrowed from the input.
pub(crate) fn definite_bytes<'b>(d: &mut Decoder<'b>, field: &'static str) -> Result<&'b [u8], DecodeError> {
    match d.datatype().map_err(cbor_error(field))? {
        Type::Bytes => d.bytes().map_err(cbor_error(field)),
        _ => Err(DecodeError::FieldType { field, expected: "a definite-length byte string" }),
    }
}

pub(crate) fn describe(t: Type) -> String {
    format!("{t}")
}
