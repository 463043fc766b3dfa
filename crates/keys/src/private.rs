//! Private keys: generated from mixed entropy, imported, opened from a seal.
//! They live only in the enclave, have no `Debug` that shows them, and their
//! secret bytes are wiped when dropped (AWS-LC clears its own key structures
//! when it frees them; our copies are `Zeroizing`).

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use zeroize::Zeroizing;

use crate::der;
use crate::public::{oaep_algorithm, secp256k1_spki, PublicKey};
use crate::KeyError;
use crate::{KeySpec, RsaPadding};

pub(crate) enum Inner {
    Secp256k1(secp256k1::SecretKey),
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Secp256k1(k) = self {
            k.non_secure_erase();
        }
    }
}

/// A private key and its public half.
pub struct PrivateKey {
    pub(crate) inner: Inner,
    public: PublicKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, public {}, secret redacted)", self.public.spec(), hex::encode(self.public.fingerprint()))
    }
}

/// The ECDSA signing algorithm (DER signatures) of an AWS-LC curve.
pub(crate) fn ecdsa_alg(spec: KeySpec) -> &'static aws_lc_rs::signature::EcdsaSigningAlgorithm {
    match spec {
        KeySpec::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        KeySpec::P384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        _ => &aws_lc_rs::signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
    }
}

impl PrivateKey {
    /// A new key of `spec`. Elliptic-curve and Ed25519 keys are derived from
    /// `seed`, the caller's mix of entropy sources (at least 32 bytes), by
    /// HMAC-SHA-512 with a counter until a valid scalar comes out. RSA keys
    /// come from AWS-LC's generator, whose DRBG the enclave's kernel seeds
    /// from the NSM; AWS-LC offers no way to feed it a seed.
    pub fn generate(spec: KeySpec, seed: &[u8]) -> Result<PrivateKey, KeyError> {
        if seed.len() < 32 {
            return Err(KeyError::Entropy(format!("{} bytes of entropy; at least 32 are needed", seed.len())));
        }
        if let Some(bits) = spec.rsa_bits() {
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                _ => KeySize::Rsa4096,
            };
            let key = RsaKeyPair::generate(size).map_err(|_| KeyError::Crypto("RSA key generation failed"))?;
            return PrivateKey::from_rsa(spec, key);
        }
        let len = spec.scalar_len().expect("non-RSA specs have a scalar length");
        let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, seed);
        for counter in 0u32..64 {
            let mut ctx = aws_lc_rs::hmac::Context::with_key(&hmac_key);
            ctx.update(b"nekms key generation v1\0");
            ctx.update(spec.as_str().as_bytes());
            ctx.update(&counter.to_be_bytes());
            let tag = ctx.sign();
            let candidate = Zeroizing::new(tag.as_ref()[..len].to_vec());
            // A zero or out-of-range scalar has probability about 2^-128.
            if let Ok(key) = PrivateKey::from_secret(spec, &candidate) {
                return Ok(key);
            }
        }
        Err(KeyError::Entropy("no valid scalar after 64 tries; the entropy source is broken".into()))
    }

    /// From the form [`PrivateKey::secret_bytes`] gives: the scalar
    /// (secp256k1, P-256, P-384), the 32-byte seed (Ed25519) or PKCS#8 (RSA).
    pub fn from_secret(spec: KeySpec, secret: &[u8]) -> Result<PrivateKey, KeyError> {
        let bad = |what: &str| KeyError::Import(format!("not a valid {spec} {what}"));
        match spec {
            KeySpec::Secp256k1 => {
                let sk = secp256k1::SecretKey::from_slice(secret).map_err(|_| bad("private key (32-byte scalar)"))?;
                let point = sk.public_key(secp256k1::SECP256K1).serialize_uncompressed();
                Ok(PrivateKey { inner: Inner::Secp256k1(sk), public: PublicKey::from_parts(spec, secp256k1_spki(&point)) })
            }
            KeySpec::Ed25519 => {
                if secret.len() != 32 {
                    return Err(bad("seed (32 bytes)"));
                }
                let kp = Ed25519KeyPair::from_seed_unchecked(secret).map_err(|_| bad("seed"))?;
                let spki = kp.public_key().as_der().map_err(|_| KeyError::Crypto("Ed25519 public key encoding"))?.as_ref().to_vec();
                Ok(PrivateKey { inner: Inner::Ed25519(kp), public: PublicKey::from_parts(spec, spki) })
            }
            KeySpec::P256 | KeySpec::P384 => {
                if Some(secret.len()) != spec.scalar_len() {
                    return Err(bad("private scalar"));
                }
                let der = der::ec_private_key(spec, secret);
                let kp = EcdsaKeyPair::from_private_key_der(ecdsa_alg(spec), &der).map_err(|_| bad("private scalar"))?;
                PrivateKey::from_ecdsa(spec, kp)
            }
            _ => {
                let kp = RsaKeyPair::from_pkcs8(secret).map_err(|_| bad("PKCS#8 key"))?;
                PrivateKey::from_rsa(spec, kp)
            }
        }
    }

    pub(crate) fn from_ecdsa(spec: KeySpec, kp: EcdsaKeyPair) -> Result<PrivateKey, KeyError> {
        let spki = kp.public_key().as_der().map_err(|_| KeyError::Crypto("EC public key encoding"))?.as_ref().to_vec();
        Ok(PrivateKey { inner: Inner::Ecdsa(kp), public: PublicKey::from_parts(spec, spki) })
    }

    pub(crate) fn from_rsa(spec: KeySpec, kp: RsaKeyPair) -> Result<PrivateKey, KeyError> {
        let bits = kp.public_modulus_len() * 8;
        if Some(bits) != spec.rsa_bits() {
            return Err(KeyError::Import(format!("an RSA key of {bits} bits is not {spec}")));
        }
        let spki = kp.public_key().as_der().map_err(|_| KeyError::Crypto("RSA public key encoding"))?.as_ref().to_vec();
        Ok(PrivateKey { inner: Inner::Rsa(kp), public: PublicKey::from_parts(spec, spki) })
    }

    /// What gets sealed. Wiped when dropped.
    pub fn secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        Ok(Zeroizing::new(match &self.inner {
            Inner::Secp256k1(sk) => sk.secret_bytes().to_vec(),
            Inner::Ed25519(kp) => kp
                .seed()
                .map_err(|_| KeyError::Crypto("Ed25519 seed"))?
                .as_be_bytes()
                .map_err(|_| KeyError::Crypto("Ed25519 seed"))?
                .as_ref()
                .to_vec(),
            Inner::Ecdsa(kp) => kp.private_key().as_be_bytes().map_err(|_| KeyError::Crypto("EC scalar"))?.as_ref().to_vec(),
            Inner::Rsa(kp) => {
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(kp).map_err(|_| KeyError::Crypto("RSA PKCS#8"))?.as_ref().to_vec()
            }
        }))
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// RSA decryption (PKCS#11's C_Decrypt): PKCS#1 v1.5, OAEP with MGF1
    /// over the same hash and an optional label, or the raw operation
    /// (`CKM_RSA_X_509`, k bytes in and out). Only RSA keys decrypt.
    pub fn rsa_decrypt(&self, padding: RsaPadding, ciphertext: &[u8], label: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};
        let Inner::Rsa(kp) = &self.inner else {
            return Err(KeyError::Scheme(format!("a {} key does not decrypt", self.spec())));
        };
        let der = Zeroizing::new(
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(kp).map_err(|_| KeyError::Crypto("RSA PKCS#8"))?.as_ref().to_vec(),
        );
        if padding == RsaPadding::Raw {
            return crate::rsa_raw::private_raw(&der, ciphertext);
        }
        let key = PrivateDecryptingKey::from_pkcs8(&der).map_err(|_| KeyError::Crypto("RSA decryption key"))?;
        let failed = || KeyError::Payload("the ciphertext does not decrypt with this key and padding".into());
        let mut out = Zeroizing::new(vec![0u8; key.key_size_bytes()]);
        let n = match padding {
            RsaPadding::Pkcs1 => {
                let k = Pkcs1PrivateDecryptingKey::new(key).map_err(|_| KeyError::Crypto("RSA decryption key"))?;
                k.decrypt(ciphertext, &mut out).map_err(|_| failed())?.len()
            }
            RsaPadding::Raw => unreachable!("returned above"),
            RsaPadding::Oaep(hash) => {
                let k = OaepPrivateDecryptingKey::new(key).map_err(|_| KeyError::Crypto("RSA decryption key"))?;
                let alg = oaep_algorithm(hash);
                k.decrypt(alg, ciphertext, &mut out, label).map_err(|_| failed())?.len()
            }
        };
        out.truncate(n);
        Ok(out)
    }

    pub fn spec(&self) -> KeySpec {
        self.public.spec()
    }
}
