//! The kinds of key nekms keeps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A key's algorithm and size. Parsed once; everything else matches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySpec {
    Secp256k1,
    Ed25519,
    P256,
    P384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeySpec {
    pub const ALL: [KeySpec; 7] =
        [KeySpec::Secp256k1, KeySpec::Ed25519, KeySpec::P256, KeySpec::P384, KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096];

    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::Secp256k1 => "secp256k1",
            KeySpec::Ed25519 => "ed25519",
            KeySpec::P256 => "p256",
            KeySpec::P384 => "p384",
            KeySpec::Rsa2048 => "rsa2048",
            KeySpec::Rsa3072 => "rsa3072",
            KeySpec::Rsa4096 => "rsa4096",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
    }

    pub fn is_ecdsa(self) -> bool {
        matches!(self, KeySpec::Secp256k1 | KeySpec::P256 | KeySpec::P384)
    }

    /// Bytes of the secret scalar or seed (RSA keys are sealed as PKCS#8).
    pub fn scalar_len(self) -> Option<usize> {
        match self {
            KeySpec::Secp256k1 | KeySpec::Ed25519 | KeySpec::P256 => Some(32),
            KeySpec::P384 => Some(48),
            _ => None,
        }
    }

    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key spec name that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown key spec {0:?}; use one of secp256k1, ed25519, p256, p384, rsa2048, rsa3072, rsa4096")]
pub struct UnknownSpec(pub String);

impl FromStr for KeySpec {
    type Err = UnknownSpec;
    fn from_str(s: &str) -> Result<KeySpec, UnknownSpec> {
        let norm: String = s.chars().filter(|c| !matches!(c, '-' | '_')).collect::<String>().to_ascii_lowercase();
        Ok(match norm.as_str() {
            "secp256k1" | "eccsecgp256k1" => KeySpec::Secp256k1,
            "ed25519" => KeySpec::Ed25519,
            "p256" | "eccnistp256" | "prime256v1" | "secp256r1" => KeySpec::P256,
            "p384" | "eccnistp384" | "secp384r1" => KeySpec::P384,
            "rsa2048" => KeySpec::Rsa2048,
            "rsa3072" => KeySpec::Rsa3072,
            "rsa4096" => KeySpec::Rsa4096,
            _ => return Err(UnknownSpec(s.to_owned())),
        })
    }
}

impl Serialize for KeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeySpec, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_round_trips_through_its_name() {
        for spec in KeySpec::ALL {
            assert_eq!(spec.as_str().parse::<KeySpec>().unwrap(), spec);
        }
        assert_eq!("ECC_SECG_P256K1".parse::<KeySpec>().unwrap(), KeySpec::Secp256k1);
        assert_eq!("P-384".parse::<KeySpec>().unwrap(), KeySpec::P384);
        assert!("rsa1024".parse::<KeySpec>().unwrap_err().to_string().contains("rsa1024"));
    }
}
