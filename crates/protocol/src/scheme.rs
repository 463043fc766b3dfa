//! Signature schemes and what they sign.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::KeyError;
use crate::spec::KeySpec;

/// How a payload becomes a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// ECDSA, DER signature; the message is hashed with the curve's hash
    /// (SHA-256 for secp256k1 and P-256, SHA-384 for P-384).
    EcdsaDer,
    /// ECDSA, `r || s`.
    EcdsaRaw,
    /// secp256k1 only: `r || s || recovery id` (0 or 1).
    EcdsaRecoverable,
    /// EIP-191 personal_sign: `r || s || v` with v 27 or 28.
    EthPersonal,
    /// EIP-712 typed data (the JSON or its 32-byte signing hash): `r || s || v`.
    Eip712,
    /// A legacy (EIP-155) or EIP-1559 transaction, given as JSON.
    EthTransaction,
    Ed25519,
    RsaPkcs1(Hash),
    /// PSS with MGF1 over the same hash and a salt as long as the hash.
    RsaPss(Hash),
    /// PSS with its parameters spelled out: hash, MGF1's hash, salt length.
    RsaPssParams(Hash, Hash, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    /// Legacy: for PKCS#11 clients that still ask for it.
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha224 => "sha224",
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }
}

impl Scheme {
    /// The scheme used when none is named.
    pub fn default_for(spec: KeySpec) -> Scheme {
        match spec {
            KeySpec::Ed25519 => Scheme::Ed25519,
            s if s.is_rsa() => Scheme::RsaPkcs1(Hash::Sha256),
            _ => Scheme::EcdsaDer,
        }
    }

    /// The scheme a payload implies (transactions and typed data have one),
    /// else the spec's default.
    pub fn default_for_payload(spec: KeySpec, payload: &Payload) -> Scheme {
        match payload {
            Payload::Transaction(_) => Scheme::EthTransaction,
            Payload::TypedData(_) => Scheme::Eip712,
            _ => Scheme::default_for(spec),
        }
    }

    pub fn name(self) -> String {
        match self {
            Scheme::EcdsaDer => "ecdsa".into(),
            Scheme::EcdsaRaw => "ecdsa-raw".into(),
            Scheme::EcdsaRecoverable => "ecdsa-recoverable".into(),
            Scheme::EthPersonal => "eth-personal".into(),
            Scheme::Eip712 => "eip712".into(),
            Scheme::EthTransaction => "eth-tx".into(),
            Scheme::Ed25519 => "ed25519".into(),
            Scheme::RsaPkcs1(h) => format!("rsa-pkcs1-{}", h.name()),
            Scheme::RsaPss(h) => format!("rsa-pss-{}", h.name()),
            Scheme::RsaPssParams(h, m, salt) => format!("rsa-pss-{}-mgf1-{}-salt-{salt}", h.name(), m.name()),
        }
    }

    /// Whether a key of `spec` can sign with this scheme.
    pub fn check_spec(self, spec: KeySpec) -> Result<(), KeyError> {
        let ok = match self {
            Scheme::EcdsaDer | Scheme::EcdsaRaw => spec.is_ecdsa(),
            Scheme::EcdsaRecoverable | Scheme::EthPersonal | Scheme::Eip712 | Scheme::EthTransaction => spec == KeySpec::Secp256k1,
            Scheme::Ed25519 => spec == KeySpec::Ed25519,
            Scheme::RsaPkcs1(_) | Scheme::RsaPss(_) | Scheme::RsaPssParams(..) => spec.is_rsa(),
        };
        if ok {
            Ok(())
        } else {
            Err(KeyError::Scheme(format!("a {spec} key cannot sign with {}", self.name())))
        }
    }

    /// The hash a message is reduced with before an ECDSA or RSA signature.
    pub fn message_hash(self, spec: KeySpec) -> Option<Hash> {
        match self {
            Scheme::EcdsaDer | Scheme::EcdsaRaw | Scheme::EcdsaRecoverable => {
                Some(if spec == KeySpec::P384 { Hash::Sha384 } else { Hash::Sha256 })
            }
            Scheme::RsaPkcs1(h) | Scheme::RsaPss(h) | Scheme::RsaPssParams(h, _, _) => Some(h),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Scheme {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Scheme, KeyError> {
        let hash = |h: &str| match h {
            "sha1" => Some(Hash::Sha1),
            "sha224" => Some(Hash::Sha224),
            "sha256" => Some(Hash::Sha256),
            "sha384" => Some(Hash::Sha384),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        };
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "ecdsa" | "ecdsa-der" => Scheme::EcdsaDer,
            "ecdsa-raw" => Scheme::EcdsaRaw,
            "ecdsa-recoverable" => Scheme::EcdsaRecoverable,
            "eth-personal" | "eip191" | "personal-sign" => Scheme::EthPersonal,
            "eip712" => Scheme::Eip712,
            "eth-tx" | "eth-transaction" => Scheme::EthTransaction,
            "ed25519" | "eddsa" => Scheme::Ed25519,
            other => {
                let pss_params = || -> Option<Scheme> {
                    let rest = other.strip_prefix("rsa-pss-")?;
                    let (h, rest) = rest.split_once("-mgf1-")?;
                    let (m, salt) = rest.split_once("-salt-")?;
                    Some(Scheme::RsaPssParams(hash(h)?, hash(m)?, salt.parse().ok()?))
                };
                if let Some(h) = other.strip_prefix("rsa-pkcs1-").and_then(hash) {
                    Scheme::RsaPkcs1(h)
                } else if let Some(h) = other.strip_prefix("rsa-pss-").and_then(hash) {
                    Scheme::RsaPss(h)
                } else if let Some(s) = pss_params() {
                    s
                } else {
                    return Err(KeyError::Scheme(format!(
                        "unknown scheme {s:?}; use ecdsa, ecdsa-raw, ecdsa-recoverable, eth-personal, eip712, eth-tx, ed25519, rsa-pkcs1-sha1|224|256|384|512, rsa-pss-sha1|224|256|384|512 or rsa-pss-HASH-mgf1-HASH-salt-N"
                    )));
                }
            }
        })
    }
}

impl Serialize for Scheme {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Scheme {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scheme, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// Bytes the scheme hashes (or, for Ed25519 and personal_sign, takes whole).
    Message(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// A hash computed by the caller (ECDSA and RSA prehash, EIP-712 signing hash).
    Digest(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// EIP-712 typed data, JSON.
    TypedData(String),
    /// An Ethereum transaction, JSON (see [`crate::eth::TxRequest`]).
    Transaction(String),
}

/// Bytes as a CBOR byte string, or as hex in JSON.
pub(crate) mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s.strip_prefix("0x").unwrap_or(&s)).map_err(serde::de::Error::custom)
        } else {
            serde_bytes::ByteBuf::deserialize(d).map(|b| b.into_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_round_trip() {
        for s in [
            Scheme::EcdsaDer,
            Scheme::EcdsaRaw,
            Scheme::EcdsaRecoverable,
            Scheme::EthPersonal,
            Scheme::Eip712,
            Scheme::EthTransaction,
            Scheme::Ed25519,
            Scheme::RsaPkcs1(Hash::Sha384),
            Scheme::RsaPss(Hash::Sha512),
        ] {
            assert_eq!(s.name().parse::<Scheme>().unwrap(), s);
        }
        assert!("rsa-pss-md5".parse::<Scheme>().is_err());
    }

    #[test]
    fn schemes_are_refused_for_keys_that_cannot_use_them() {
        assert!(Scheme::EthTransaction.check_spec(KeySpec::P256).is_err());
        assert!(Scheme::Ed25519.check_spec(KeySpec::Secp256k1).is_err());
        assert!(Scheme::RsaPss(Hash::Sha256).check_spec(KeySpec::Rsa4096).is_ok());
        assert!(Scheme::EcdsaRaw.check_spec(KeySpec::P384).is_ok());
    }
}
