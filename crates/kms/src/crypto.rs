//! Asymmetric key material: generation, public keys, signing, verification
//! and key agreement, all with aws-lc-rs. Private keys are PKCS#8 DER and
//! live only in `Zeroizing` buffers.

use aws_lc_rs::agreement::{self, UnparsedPublicKey as AgreementPublicKey};
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair, RsaKeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::model::KeySpec;

/// A key pair's private half (PKCS#8 DER) and public half (SPKI DER).
pub struct GeneratedPair {
    pub private_pkcs8: Zeroizing<Vec<u8>>,
    pub public_spki: Vec<u8>,
}

fn failed(what: &str) -> KmsError {
    KmsError::internal(format!("{what} failed"))
}

fn ecdsa_alg(spec: KeySpec) -> Option<&'static EcdsaSigningAlgorithm> {
    Some(match spec {
        KeySpec::EccNistP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        KeySpec::EccNistP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        KeySpec::EccNistP521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        KeySpec::EccSecgP256k1 => &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
        _ => return None,
    })
}

fn ecdh_alg(spec: KeySpec) -> Option<&'static agreement::Algorithm> {
    Some(match spec {
        KeySpec::EccNistP256 => &agreement::ECDH_P256,
        KeySpec::EccNistP384 => &agreement::ECDH_P384,
        KeySpec::EccNistP521 => &agreement::ECDH_P521,
        _ => return None,
    })
}

fn rsa_size(spec: KeySpec) -> Option<KeySize> {
    Some(match spec {
        KeySpec::Rsa2048 => KeySize::Rsa2048,
        KeySpec::Rsa3072 => KeySize::Rsa3072,
        KeySpec::Rsa4096 => KeySize::Rsa4096,
        _ => return None,
    })
}

/// Generate a key pair of `spec` (RSA or ECC).
pub fn generate(spec: KeySpec) -> Result<GeneratedPair, KmsError> {
    if let Some(size) = rsa_size(spec) {
        let kp = RsaKeyPair::generate(size).map_err(|_| failed("RSA key generation"))?;
        let der: Pkcs8V1Der = kp.as_der().map_err(|_| failed("PKCS#8 encoding"))?;
        let spki: PublicKeyX509Der = kp.public_key().as_der().map_err(|_| failed("SPKI encoding"))?;
        return Ok(GeneratedPair { private_pkcs8: Zeroizing::new(der.as_ref().to_vec()), public_spki: spki.as_ref().to_vec() });
    }
    let alg = ecdsa_alg(spec).ok_or_else(|| KmsError::internal(format!("{} is not an asymmetric key spec", spec.name())))?;
    let kp = EcdsaKeyPair::generate(alg).map_err(|_| failed("EC key generation"))?;
    let der = kp.to_pkcs8v1().map_err(|_| failed("PKCS#8 encoding"))?;
    let spki: PublicKeyX509Der = kp.public_key().as_der().map_err(|_| failed("SPKI encoding"))?;
    Ok(GeneratedPair { private_pkcs8: Zeroizing::new(der.as_ref().to_vec()), public_spki: spki.as_ref().to_vec() })
}

/// The SPKI DER of a stored private key.
pub fn public_key(spec: KeySpec, pkcs8: &[u8]) -> Result<Vec<u8>, KmsError> {
    let spki: PublicKeyX509Der = if rsa_size(spec).is_some() {
        RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| failed("loading the RSA key"))?.public_key().as_der()
    } else {
        let alg = ecdsa_alg(spec).ok_or_else(|| failed("loading the key"))?;
        EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| failed("loading the EC key"))?.public_key().as_der()
    }
    .map_err(|_| failed("SPKI encoding"))?;
    Ok(spki.as_ref().to_vec())
}

/// A signing algorithm KMS names, resolved for one key spec.
#[derive(Clone, Copy)]
pub struct SigningAlgorithm {
    pub name: &'static str,
    digest: &'static digest::Algorithm,
    kind: SigKind,
}

#[derive(Clone, Copy)]
enum SigKind {
    Ecdsa,
    RsaPss,
    RsaPkcs1,
}

impl SigningAlgorithm {
    /// `name` if it is one `spec` supports.
    pub fn for_key(name: &str, spec: KeySpec) -> Option<SigningAlgorithm> {
        let (digest, kind): (&'static digest::Algorithm, SigKind) = match name {
            "ECDSA_SHA_256" => (&digest::SHA256, SigKind::Ecdsa),
            "ECDSA_SHA_384" => (&digest::SHA384, SigKind::Ecdsa),
            "ECDSA_SHA_512" => (&digest::SHA512, SigKind::Ecdsa),
            "RSASSA_PSS_SHA_256" => (&digest::SHA256, SigKind::RsaPss),
            "RSASSA_PSS_SHA_384" => (&digest::SHA384, SigKind::RsaPss),
            "RSASSA_PSS_SHA_512" => (&digest::SHA512, SigKind::RsaPss),
            "RSASSA_PKCS1_V1_5_SHA_256" => (&digest::SHA256, SigKind::RsaPkcs1),
            "RSASSA_PKCS1_V1_5_SHA_384" => (&digest::SHA384, SigKind::RsaPkcs1),
            "RSASSA_PKCS1_V1_5_SHA_512" => (&digest::SHA512, SigKind::RsaPkcs1),
            _ => return None,
        };
        let allowed = spec.algorithms(crate::model::KeyUsage::SignVerify);
        let name = allowed.into_iter().find(|a| *a == name)?;
        Some(SigningAlgorithm { name, digest, kind })
    }

    /// Length of a digest this algorithm signs.
    pub fn digest_len(&self) -> usize {
        self.digest.output_len()
    }

    fn digest_of(&self, message: &[u8], is_digest: bool) -> Result<Digest, KmsError> {
        if is_digest {
            if message.len() != self.digest_len() {
                return Err(KmsError::validation(format!(
                    "Digest is invalid length for algorithm {}: expected {} bytes, got {}",
                    self.name,
                    self.digest_len(),
                    message.len()
                )));
            }
            Digest::import_less_safe(message, self.digest).map_err(|_| failed("importing the digest"))
        } else {
            Ok(digest::digest(self.digest, message))
        }
    }

    /// Sign `message` (or a precomputed digest) with the PKCS#8 key.
    pub fn sign(&self, spec: KeySpec, pkcs8: &[u8], message: &[u8], is_digest: bool) -> Result<Vec<u8>, KmsError> {
        let digest = self.digest_of(message, is_digest)?;
        match self.kind {
            SigKind::Ecdsa => {
                let alg = ecdsa_alg(spec).ok_or_else(|| failed("signing"))?;
                let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| failed("loading the EC key"))?;
                Ok(kp.sign_digest(&digest).map_err(|_| failed("ECDSA signing"))?.as_ref().to_vec())
            }
            SigKind::RsaPss | SigKind::RsaPkcs1 => {
                let kp = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| failed("loading the RSA key"))?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign_digest(self.rsa_encoding(), &digest, &mut sig).map_err(|_| failed("RSA signing"))?;
                Ok(sig)
            }
        }
    }

    fn rsa_encoding(&self) -> &'static dyn signature::RsaEncoding {
        match (self.kind, self.digest_len()) {
            (SigKind::RsaPss, 32) => &signature::RSA_PSS_SHA256,
            (SigKind::RsaPss, 48) => &signature::RSA_PSS_SHA384,
            (SigKind::RsaPss, _) => &signature::RSA_PSS_SHA512,
            (_, 32) => &signature::RSA_PKCS1_SHA256,
            (_, 48) => &signature::RSA_PKCS1_SHA384,
            _ => &signature::RSA_PKCS1_SHA512,
        }
    }

    /// Whether `sig` is a valid signature of `message` (or digest) under `spki`.
    pub fn verify(&self, spec: KeySpec, spki: &[u8], message: &[u8], is_digest: bool, sig: &[u8]) -> Result<bool, KmsError> {
        let digest = self.digest_of(message, is_digest)?;
        let alg: &'static dyn signature::VerificationAlgorithm = match (self.kind, spec, self.digest_len()) {
            (SigKind::Ecdsa, KeySpec::EccNistP256, _) => &signature::ECDSA_P256_SHA256_ASN1,
            (SigKind::Ecdsa, KeySpec::EccNistP384, _) => &signature::ECDSA_P384_SHA384_ASN1,
            (SigKind::Ecdsa, KeySpec::EccNistP521, _) => &signature::ECDSA_P521_SHA512_ASN1,
            (SigKind::Ecdsa, _, _) => &signature::ECDSA_P256K1_SHA256_ASN1,
            (SigKind::RsaPss, _, 32) => &signature::RSA_PSS_2048_8192_SHA256,
            (SigKind::RsaPss, _, 48) => &signature::RSA_PSS_2048_8192_SHA384,
            (SigKind::RsaPss, _, _) => &signature::RSA_PSS_2048_8192_SHA512,
            (_, _, 32) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (_, _, 48) => &signature::RSA_PKCS1_2048_8192_SHA384,
            _ => &signature::RSA_PKCS1_2048_8192_SHA512,
        };
        // The SPKI wraps the raw key the verifier wants.
        let raw = spki_public_key_bits(spki).ok_or_else(|| failed("reading the public key"))?;
        Ok(UnparsedPublicKey::new(alg, raw).verify_digest(&digest, sig).is_ok())
    }
}

/// The subjectPublicKey BIT STRING contents of an SPKI (DER).
fn spki_public_key_bits(spki: &[u8]) -> Option<&[u8]> {
    let outer = nekms_cms::parse_ber(spki).ok()?;
    let children = outer.children()?;
    let bits = children.get(1)?.primitive()?;
    let start = spki.len() - bits.len();
    // Skip the unused-bits octet.
    spki.get(start + 1..)
}

/// ECDH between a stored KEY_AGREEMENT key and a peer's SPKI public key:
/// the raw shared secret (the x coordinate), as KMS returns it.
pub fn derive_shared_secret(spec: KeySpec, pkcs8: &[u8], peer_spki: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let alg = ecdh_alg(spec).ok_or_else(|| KmsError::key_usage(format!("{} keys cannot agree keys", spec.name())))?;
    let private = agreement::PrivateKey::from_private_key_der(alg, pkcs8).map_err(|_| failed("loading the EC key"))?;
    let raw = spki_public_key_bits(peer_spki)
        .ok_or_else(|| KmsError::validation("PublicKey must be a DER-encoded X.509 SubjectPublicKeyInfo"))?;
    agreement::agree(
        &private,
        AgreementPublicKey::new(alg, raw),
        KmsError::validation(format!("PublicKey is not a valid {} public key on the key's curve", spec.name())),
        |secret| Ok(Zeroizing::new(secret.to_vec())),
    )
}

/// Generate a key agreement pair (KEY_AGREEMENT keys).
pub fn generate_agreement(spec: KeySpec) -> Result<GeneratedPair, KmsError> {
    let alg = ecdh_alg(spec).ok_or_else(|| KmsError::validation(format!("{} cannot be used for KEY_AGREEMENT", spec.name())))?;
    let private = agreement::PrivateKey::generate(alg).map_err(|_| failed("EC key generation"))?;
    let der: Pkcs8V1Der = private.as_der().map_err(|_| failed("PKCS#8 encoding"))?;
    let public: PublicKeyX509Der =
        private.compute_public_key().map_err(|_| failed("public key"))?.as_der().map_err(|_| failed("SPKI encoding"))?;
    Ok(GeneratedPair { private_pkcs8: Zeroizing::new(der.as_ref().to_vec()), public_spki: public.as_ref().to_vec() })
}

/// The SPKI of a stored KEY_AGREEMENT key.
pub fn agreement_public_key(spec: KeySpec, pkcs8: &[u8]) -> Result<Vec<u8>, KmsError> {
    let alg = ecdh_alg(spec).ok_or_else(|| failed("loading the key"))?;
    let private = agreement::PrivateKey::from_private_key_der(alg, pkcs8).map_err(|_| failed("loading the EC key"))?;
    let public: PublicKeyX509Der =
        private.compute_public_key().map_err(|_| failed("public key"))?.as_der().map_err(|_| failed("SPKI encoding"))?;
    Ok(public.as_ref().to_vec())
}

/// Fresh random bytes.
pub fn random(n: usize) -> Zeroizing<Vec<u8>> {
    use aws_lc_rs::rand::SecureRandom;
    let mut out = Zeroizing::new(vec![0u8; n]);
    SystemRandom::new().fill(&mut out).expect("system RNG");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signing_spec_signs_and_verifies_raw_and_digest() {
        for spec in [KeySpec::EccNistP256, KeySpec::EccNistP384, KeySpec::EccNistP521, KeySpec::EccSecgP256k1, KeySpec::Rsa2048] {
            let pair = generate(spec).unwrap();
            assert_eq!(public_key(spec, &pair.private_pkcs8).unwrap(), pair.public_spki);
            for name in spec.algorithms(crate::model::KeyUsage::SignVerify) {
                let alg = SigningAlgorithm::for_key(name, spec).unwrap();
                let sig = alg.sign(spec, &pair.private_pkcs8, b"message", false).unwrap();
                assert!(alg.verify(spec, &pair.public_spki, b"message", false, &sig).unwrap(), "{name}");
                assert!(!alg.verify(spec, &pair.public_spki, b"massage", false, &sig).unwrap(), "{name}");
                let d = digest::digest(alg.digest, b"message");
                assert!(alg.verify(spec, &pair.public_spki, d.as_ref(), true, &sig).unwrap(), "{name} digest");
                assert!(alg.sign(spec, &pair.private_pkcs8, &d.as_ref()[1..], true).is_err());
            }
        }
        assert!(SigningAlgorithm::for_key("ECDSA_SHA_384", KeySpec::EccNistP256).is_none());
    }

    #[test]
    fn both_sides_of_ecdh_derive_the_same_secret() {
        for spec in [KeySpec::EccNistP256, KeySpec::EccNistP384, KeySpec::EccNistP521] {
            let a = generate_agreement(spec).unwrap();
            let b = generate_agreement(spec).unwrap();
            assert_eq!(agreement_public_key(spec, &a.private_pkcs8).unwrap(), a.public_spki);
            let ab = derive_shared_secret(spec, &a.private_pkcs8, &b.public_spki).unwrap();
            let ba = derive_shared_secret(spec, &b.private_pkcs8, &a.public_spki).unwrap();
            assert_eq!(ab, ba);
        }
        let a = generate_agreement(KeySpec::EccNistP256).unwrap();
        let other_curve = generate_agreement(KeySpec::EccNistP384).unwrap();
        assert_eq!(
            derive_shared_secret(KeySpec::EccNistP256, &a.private_pkcs8, &other_curve.public_spki).unwrap_err().kind,
            "ValidationException"
        );
        assert_eq!(derive_shared_secret(KeySpec::EccNistP256, &a.private_pkcs8, b"junk").unwrap_err().kind, "ValidationException");
    }
}
