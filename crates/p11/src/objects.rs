//! The objects of a token and their attributes: for each key a private key
//! (visible after login), a public key, and its certificates.
//!
//! Object handles say where an object is: `(slot + 1) << 24 | key << 8 | kind`,
//! kind 0 the private key, 1 the public key, 2 + n the n-th certificate.
//! The private key's secret parts do not exist here: asking for CKA_VALUE,
//! CKA_PRIVATE_EXPONENT and the like answers CKR_ATTRIBUTE_SENSITIVE.

use cryptoki_sys::*;
use nekms_protocol::rpc::{P11PublicKey, P11Slot};
use nekms_protocol::KeySpec;

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Private,
    Public,
    Certificate(usize),
}

/// An object resolved to its token key.
pub struct Object<'a> {
    pub key: &'a P11PublicKey,
    pub kind: Kind,
}

pub fn handle(slot: u64, key: usize, kind: Kind) -> CK_OBJECT_HANDLE {
    let k = match kind {
        Kind::Private => 0,
        Kind::Public => 1,
        Kind::Certificate(n) => 2 + n as u64,
    };
    ((slot + 1) << 24) | ((key as u64) << 8) | k
}

/// The slot, key index and kind a handle names.
pub fn parse_handle(h: CK_OBJECT_HANDLE) -> Option<(u64, usize, Kind)> {
    let slot = (h >> 24).checked_sub(1)?;
    let key = ((h >> 8) & 0xffff) as usize;
    let kind = match h & 0xff {
        0 => Kind::Private,
        1 => Kind::Public,
        n => Kind::Certificate((n - 2) as usize),
    };
    Some((slot, key, kind))
}

/// Every object of a slot, in order; private keys only when logged in.
pub fn objects(slot: &P11Slot, logged_in: bool) -> Vec<(CK_OBJECT_HANDLE, Object<'_>)> {
    let mut out = Vec::new();
    for (i, key) in slot.keys.iter().enumerate() {
        if logged_in {
            out.push((handle(slot.slot, i, Kind::Private), Object { key, kind: Kind::Private }));
        }
        out.push((handle(slot.slot, i, Kind::Public), Object { key, kind: Kind::Public }));
        for n in 0..key.certificates.len() {
            out.push((handle(slot.slot, i, Kind::Certificate(n)), Object { key, kind: Kind::Certificate(n) }));
        }
    }
    out
}

/// An attribute's value, or why there is none.
pub enum Value {
    Bytes(Vec<u8>),
    /// CKR_ATTRIBUTE_SENSITIVE.
    Sensitive,
    /// CKR_ATTRIBUTE_TYPE_INVALID.
    Invalid,
}

fn ulong(v: CK_ULONG) -> Value {
    Value::Bytes(v.to_ne_bytes().to_vec())
}

fn boolean(v: bool) -> Value {
    Value::Bytes(vec![v as u8])
}

pub fn key_type(spec: KeySpec) -> CK_KEY_TYPE {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => CKK_RSA,
        KeySpec::Ed25519 => CKK_EC_EDWARDS,
        KeySpec::P256 | KeySpec::P384 | KeySpec::Secp256k1 => CKK_EC,
    }
}

/// DER of the curve's OID (CKA_EC_PARAMS).
pub fn ec_params(spec: KeySpec) -> Option<&'static [u8]> {
    Some(match spec {
        KeySpec::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        KeySpec::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        KeySpec::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        KeySpec::Ed25519 => &[0x06, 0x03, 0x2b, 0x65, 0x70],
        _ => return None,
    })
}

/// Modulus and public exponent (without leading zeros), or the EC point,
/// from a SubjectPublicKeyInfo.
pub enum PublicParts {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// The point as CKA_EC_POINT holds it: a DER OCTET STRING.
    Ec(Vec<u8>),
}

fn strip(b: &[u8]) -> Vec<u8> {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len().saturating_sub(1));
    b[i..].to_vec()
}

pub fn public_parts(spki: &[u8]) -> Option<PublicParts> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    match info.parsed() {
        Ok(PublicKey::RSA(rsa)) => Some(PublicParts::Rsa { modulus: strip(rsa.modulus), exponent: strip(rsa.exponent) }),
        _ => {
            let point = info.subject_public_key.data.to_vec();
            if point.len() > 127 {
                return None;
            }
            let mut der = vec![0x04, point.len() as u8];
            der.extend_from_slice(&point);
            Some(PublicParts::Ec(der))
        }
    }
}

/// Subject, issuer and serial number (DER) of a certificate.
fn certificate_names(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let serial = tbs.raw_serial();
    let mut serial_der = vec![0x02];
    if serial.len() < 128 {
        serial_der.push(serial.len() as u8);
    } else {
        serial_der.extend_from_slice(&[0x81, serial.len() as u8]);
    }
    serial_der.extend_from_slice(serial);
    Some((tbs.subject.as_raw().to_vec(), tbs.issuer.as_raw().to_vec(), serial_der))
}

/// The signature length for a key (RSA: the modulus; EC: r || s; Ed25519: 64).
pub fn signature_len(key: &P11PublicKey) -> usize {
    match key.spec {
        KeySpec::Rsa2048 => 256,
        KeySpec::Rsa3072 => 384,
        KeySpec::Rsa4096 => 512,
        KeySpec::P384 => 96,
        KeySpec::P256 | KeySpec::Secp256k1 | KeySpec::Ed25519 => 64,
    }
}

impl Object<'_> {
    pub fn attribute(&self, t: CK_ATTRIBUTE_TYPE) -> Value {
        let key = self.key;
        let private = self.kind == Kind::Private;
        // Attributes every object has.
        match t {
            CKA_TOKEN => return boolean(true),
            CKA_PRIVATE => return boolean(private),
            CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE => return boolean(false),
            CKA_LABEL => return Value::Bytes(key.label.as_bytes().to_vec()),
            CKA_ID => return Value::Bytes(key.id.clone()),
            _ => {}
        }
        if let Kind::Certificate(n) = self.kind {
            let der = &key.certificates[n];
            let names = certificate_names(der);
            return match t {
                CKA_CLASS => ulong(CKO_CERTIFICATE),
                CKA_CERTIFICATE_TYPE => ulong(CKC_X_509),
                CKA_VALUE => Value::Bytes(der.to_vec()),
                CKA_SUBJECT => names.map(|n| Value::Bytes(n.0)).unwrap_or(Value::Invalid),
                CKA_ISSUER => names.map(|n| Value::Bytes(n.1)).unwrap_or(Value::Invalid),
                CKA_SERIAL_NUMBER => names.map(|n| Value::Bytes(n.2)).unwrap_or(Value::Invalid),
                CKA_TRUSTED => boolean(false),
                CKA_CERTIFICATE_CATEGORY => ulong(if n == 0 { 1 } else { 2 }),
                CKA_JAVA_MIDP_SECURITY_DOMAIN => ulong(0),
                CKA_START_DATE | CKA_END_DATE | CKA_URL | CKA_HASH_OF_SUBJECT_PUBLIC_KEY | CKA_HASH_OF_ISSUER_PUBLIC_KEY => {
                    Value::Bytes(Vec::new())
                }
                _ => Value::Invalid,
            };
        }
        let parts = public_parts(&key.public_key);
        let leaf_subject = key.certificates.first().and_then(|c| certificate_names(c)).map(|n| n.0).unwrap_or_default();
        let common = match t {
            CKA_CLASS => Some(ulong(if private { CKO_PRIVATE_KEY } else { CKO_PUBLIC_KEY })),
            CKA_KEY_TYPE => Some(ulong(key_type(key.spec))),
            CKA_SUBJECT => Some(Value::Bytes(leaf_subject)),
            CKA_LOCAL => Some(boolean(true)),
            CKA_DERIVE => Some(boolean(false)),
            CKA_START_DATE | CKA_END_DATE => Some(Value::Bytes(Vec::new())),
            CKA_KEY_GEN_MECHANISM => Some(ulong(CK_UNAVAILABLE_INFORMATION)),
            CKA_PUBLIC_KEY_INFO => Some(Value::Bytes(key.public_key.clone())),
            CKA_MODULUS | CKA_PUBLIC_EXPONENT | CKA_MODULUS_BITS => match &parts {
                Some(PublicParts::Rsa { modulus, exponent }) => Some(match t {
                    CKA_MODULUS => Value::Bytes(modulus.clone()),
                    CKA_PUBLIC_EXPONENT => Value::Bytes(exponent.clone()),
                    _ => ulong(modulus.len() as CK_ULONG * 8),
                }),
                _ => Some(Value::Invalid),
            },
            CKA_EC_PARAMS => Some(ec_params(key.spec).map(|p| Value::Bytes(p.to_vec())).unwrap_or(Value::Invalid)),
            CKA_EC_POINT => match &parts {
                Some(PublicParts::Ec(point)) if key_type(key.spec) != CKK_RSA => Some(Value::Bytes(point.clone())),
                _ => Some(Value::Invalid),
            },
            _ => None,
        };
        if let Some(v) = common {
            return v;
        }
        if private {
            match t {
                CKA_SIGN => boolean(true),
                CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE => boolean(true),
                CKA_DECRYPT => boolean(key.decrypt && key_type(key.spec) == CKK_RSA),
                CKA_EXTRACTABLE | CKA_ALWAYS_AUTHENTICATE | CKA_WRAP_WITH_TRUSTED | CKA_SIGN_RECOVER | CKA_UNWRAP => boolean(false),
                CKA_VALUE | CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1 | CKA_EXPONENT_2 | CKA_COEFFICIENT => {
                    Value::Sensitive
                }
                _ => Value::Invalid,
            }
        } else {
            match t {
                CKA_VERIFY => boolean(true),
                // Encryption runs in the module with the public key.
                CKA_ENCRYPT => boolean(key_type(key.spec) == CKK_RSA),
                CKA_WRAP | CKA_VERIFY_RECOVER | CKA_TRUSTED => boolean(false),
                _ => Value::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip() {
        for (slot, key, kind) in [(0, 0, Kind::Private), (5, 63, Kind::Public), (1023, 7, Kind::Certificate(7))] {
            let h = handle(slot, key, kind);
            assert_ne!(h, CK_INVALID_HANDLE);
            assert_eq!(parse_handle(h), Some((slot, key, kind)));
        }
        assert_eq!(parse_handle(5), None);
    }
}
