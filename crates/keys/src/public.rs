//! Public keys: SubjectPublicKeyInfo DER, PEM, Ethereum addresses.

use aws_lc_rs::encoding::AsDer;
use base64::Engine;

#[cfg(feature = "private-keys")]
use crate::der;
use crate::KeyError;
use crate::KeySpec;

// SubjectPublicKeyInfo prefixes for the fixed-size keys; the point or key follows.
pub(crate) const SPKI_SECP256K1: &[u8] = &[
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a, 0x03, 0x42,
    0x00,
];
pub(crate) const SPKI_P256: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
    0x07, 0x03, 0x42, 0x00,
];
pub(crate) const SPKI_P384: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62,
    0x00,
];
pub(crate) const SPKI_ED25519: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A public key of a known spec, kept as SubjectPublicKeyInfo DER.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    spec: KeySpec,
    spki: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.spec, hex::encode(&self.spki))
    }
}

impl PublicKey {
    /// RSA encryption to this key (PKCS#11's C_Encrypt, done by whoever
    /// holds the public key): PKCS#1 v1.5, OAEP with MGF1 over the same hash
    /// and an optional label, or the raw operation (k bytes in, below the
    /// modulus).
    pub fn rsa_encrypt(&self, padding: crate::RsaPadding, plaintext: &[u8], label: Option<&[u8]>) -> Result<Vec<u8>, KeyError> {
        use crate::RsaPadding;
        use aws_lc_rs::rsa::{OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey};
        if !self.spec().is_rsa() {
            return Err(KeyError::Scheme(format!("a {} key does not encrypt", self.spec())));
        }
        let too_long = |max: usize| KeyError::Payload(format!("this key and padding encrypt at most {max} bytes, not {}", plaintext.len()));
        if padding == RsaPadding::Raw {
            return crate::rsa_raw::public_raw(self.spki(), plaintext)
                .ok_or_else(|| KeyError::Payload("the raw RSA operation takes as many bytes as the modulus, below it".into()));
        }
        let key = PublicEncryptingKey::from_der(self.spki()).map_err(|_| KeyError::Crypto("RSA public key"))?;
        let mut out = vec![0u8; key.key_size_bytes()];
        let n = match padding {
            RsaPadding::Pkcs1 => {
                let k = Pkcs1PublicEncryptingKey::new(key).map_err(|_| KeyError::Crypto("RSA public key"))?;
                if plaintext.len() > k.max_plaintext_size() {
                    return Err(too_long(k.max_plaintext_size()));
                }
                k.encrypt(plaintext, &mut out).map_err(|_| KeyError::Crypto("RSA encryption"))?.len()
            }
            RsaPadding::Oaep(hash) => {
                let k = OaepPublicEncryptingKey::new(key).map_err(|_| KeyError::Crypto("RSA public key"))?;
                let alg = oaep_algorithm(hash);
                if plaintext.len() > k.max_plaintext_size(alg) {
                    return Err(too_long(k.max_plaintext_size(alg)));
                }
                k.encrypt(alg, plaintext, &mut out, label).map_err(|_| KeyError::Crypto("RSA encryption"))?.len()
            }
            RsaPadding::Raw => unreachable!("returned above"),
        };
        out.truncate(n);
        Ok(out)
    }

    /// Parse a SubjectPublicKeyInfo (DER) and learn its spec from it.
    pub fn from_spki(spki: &[u8]) -> Result<PublicKey, KeyError> {
        let fixed = [
            (SPKI_SECP256K1, 65, KeySpec::Secp256k1),
            (SPKI_P256, 65, KeySpec::P256),
            (SPKI_P384, 97, KeySpec::P384),
            (SPKI_ED25519, 32, KeySpec::Ed25519),
        ];
        for (prefix, len, spec) in fixed {
            if spki.len() == prefix.len() + len && spki.starts_with(prefix) {
                if spec.is_ecdsa() && spki[prefix.len()] != 0x04 {
                    return Err(KeyError::PublicKey("only uncompressed EC points are accepted".into()));
                }
                let key = PublicKey { spec, spki: spki.to_vec() };
                if spec.is_ecdsa() {
                    key.ecdsa_check()?;
                }
                return Ok(key);
            }
        }
        let rsa = aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki)
            .map_err(|_| KeyError::PublicKey("not a SubjectPublicKeyInfo for secp256k1, Ed25519, P-256, P-384 or RSA".into()))?;
        let spec = match rsa.key_size_bits() {
            2048 => KeySpec::Rsa2048,
            3072 => KeySpec::Rsa3072,
            4096 => KeySpec::Rsa4096,
            n => return Err(KeyError::PublicKey(format!("an RSA key of {n} bits; nekms keeps 2048, 3072 or 4096"))),
        };
        // Re-encode so the stored form is canonical whatever the input's framing.
        let spki = rsa.as_der().map_err(|_| KeyError::PublicKey("RSA key cannot be encoded".into()))?.as_ref().to_vec();
        Ok(PublicKey { spec, spki })
    }

    /// Parse PEM ("PUBLIC KEY") or DER.
    pub fn parse(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        match pem_block(bytes) {
            Some(("PUBLIC KEY", der)) => PublicKey::from_spki(&der),
            Some((label, _)) => Err(KeyError::PublicKey(format!("a PEM {label}; give a PUBLIC KEY"))),
            None => PublicKey::from_spki(bytes),
        }
    }

    fn ecdsa_check(&self) -> Result<(), KeyError> {
        let alg: &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm = match self.spec {
            KeySpec::Secp256k1 => &aws_lc_rs::signature::ECDSA_P256K1_SHA256_ASN1,
            KeySpec::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            _ => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
        };
        aws_lc_rs::signature::ParsedPublicKey::new(alg, self.point())
            .map(|_| ())
            .map_err(|_| KeyError::PublicKey(format!("not a point on {}", self.spec)))
    }

    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki)
    }

    /// The raw key: an uncompressed SEC1 point, the 32 Ed25519 bytes, or for
    /// RSA the whole SubjectPublicKeyInfo.
    pub fn point(&self) -> &[u8] {
        let prefix = match self.spec {
            KeySpec::Secp256k1 => SPKI_SECP256K1.len(),
            KeySpec::P256 => SPKI_P256.len(),
            KeySpec::P384 => SPKI_P384.len(),
            KeySpec::Ed25519 => SPKI_ED25519.len(),
            _ => 0,
        };
        &self.spki[prefix..]
    }

    /// SHA-256 of the SubjectPublicKeyInfo: what an attestation commits to.
    pub fn fingerprint(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki);
        d.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    #[cfg(feature = "private-keys")]
    pub(crate) fn from_parts(spec: KeySpec, spki: Vec<u8>) -> PublicKey {
        PublicKey { spec, spki }
    }
}

/// The first PEM block in `bytes`: its label and decoded body.
pub(crate) fn pem_block(bytes: &[u8]) -> Option<(&str, Vec<u8>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body_start = &rest[label_end + 5..];
    let end = body_start.find(&format!("-----END {label}-----"))?;
    let b64: String = body_start[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(feature = "private-keys")]
/// Build the SubjectPublicKeyInfo of a secp256k1 point.
pub(crate) fn secp256k1_spki(point: &[u8; 65]) -> Vec<u8> {
    let mut spki = SPKI_SECP256K1.to_vec();
    spki.extend_from_slice(point);
    debug_assert_eq!(der::outer_len(&spki), Some(spki.len()));
    spki
}

/// AWS-LC's OAEP with this hash and MGF1 over the same.
pub(crate) fn oaep_algorithm(hash: crate::OaepHash) -> &'static aws_lc_rs::rsa::OaepAlgorithm {
    match hash {
        crate::OaepHash::Sha1 => &aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1,
        crate::OaepHash::Sha256 => &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
        crate::OaepHash::Sha384 => &aws_lc_rs::rsa::OAEP_SHA384_MGF1SHA384,
        crate::OaepHash::Sha512 => &aws_lc_rs::rsa::OAEP_SHA512_MGF1SHA512,
    }
}
