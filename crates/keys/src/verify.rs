//! Verifying with a [`PublicKey`]: ECDSA (secp256k1, P-256, P-384) in DER
//! or `r || s`, Ed25519, RSA PKCS#1 v1.5 and PSS, all through AWS-LC; the
//! recoverable (Ethereum) schemes through [`crate::eth`], where built.

use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};

use crate::der::ecdsa_fixed_to_der;
use crate::public::PublicKey;
use crate::rsa_raw;
use crate::{Hash, HashExt, KeyError, KeySpec, Payload, Scheme};

/// The hash an ECDSA or RSA scheme signs: the message hashed, or a digest of the right length.
pub(crate) fn prehash(scheme: Scheme, spec: KeySpec, payload: &Payload) -> Result<(Hash, Vec<u8>), KeyError> {
    let hash = scheme.message_hash(spec).expect("ECDSA and RSA schemes name a hash");
    match payload {
        Payload::Message(m) => Ok((hash, hash.digest(m))),
        Payload::Digest(d) if d.len() == hash.output_len() => Ok((hash, d.clone())),
        Payload::Digest(d) => Err(KeyError::Payload(format!(
            "{scheme} with a {spec} key signs a {}-byte {} digest, not {} bytes",
            hash.output_len(),
            hash.name(),
            d.len()
        ))),
        _ => Err(KeyError::Payload(format!("{scheme} signs a message or a digest"))),
    }
}

pub(crate) fn crypto(what: &'static str) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> KeyError {
    move |_| KeyError::Crypto(what)
}

fn rsa_verification(scheme: Scheme) -> Option<&'static dyn sig::VerificationAlgorithm> {
    Some(match scheme {
        Scheme::RsaPkcs1(Hash::Sha256) => &sig::RSA_PKCS1_2048_8192_SHA256,
        Scheme::RsaPkcs1(Hash::Sha384) => &sig::RSA_PKCS1_2048_8192_SHA384,
        Scheme::RsaPkcs1(Hash::Sha512) => &sig::RSA_PKCS1_2048_8192_SHA512,
        Scheme::RsaPss(Hash::Sha256) => &sig::RSA_PSS_2048_8192_SHA256,
        Scheme::RsaPss(Hash::Sha384) => &sig::RSA_PSS_2048_8192_SHA384,
        Scheme::RsaPss(Hash::Sha512) => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl PublicKey {
    /// Check `signature` over `payload`. Ethereum schemes recover the signer
    /// and compare addresses. Transactions are not verified here (decode the
    /// raw transaction with any Ethereum library).
    pub fn verify(&self, scheme: Scheme, payload: &Payload, signature: &[u8]) -> Result<(), KeyError> {
        let spec = self.spec();
        scheme.check_spec(spec)?;
        let invalid = || KeyError::BadSignature(format!("the {scheme} signature does not verify with this {spec} key"));
        match scheme {
            Scheme::EthTransaction => {
                Err(KeyError::Scheme("verify a signed transaction by recovering its sender with an Ethereum library".into()))
            }
            Scheme::Ed25519 => match payload {
                Payload::Message(m) => UnparsedPublicKey::new(&sig::ED25519, self.point()).verify(m, signature).map_err(|_| invalid()),
                _ => Err(KeyError::Payload("Ed25519 signs the message itself".into())),
            },
            Scheme::RsaPkcs1(_) | Scheme::RsaPss(_) | Scheme::RsaPssParams(..) => {
                let (hash, d) = prehash(scheme, spec, payload)?;
                if let Some(alg) = rsa_verification(scheme) {
                    let digest = Digest::import_less_safe(&d, hash.algorithm()).map_err(crypto("digest"))?;
                    return UnparsedPublicKey::new(alg, self.spki()).verify_digest(&digest, signature).map_err(|_| invalid());
                }
                let ok = match scheme {
                    Scheme::RsaPkcs1(h) => rsa_raw::verify_pkcs1(self.spki(), &rsa_raw::digest_info(h, &d), signature),
                    Scheme::RsaPss(h) => rsa_raw::verify_pss(self.spki(), &d, h, h, h.output_len(), signature),
                    Scheme::RsaPssParams(h, m, salt) => rsa_raw::verify_pss(self.spki(), &d, h, m, salt.into(), signature),
                    _ => unreachable!("matched above"),
                };
                ok.then_some(()).ok_or_else(invalid)
            }
            #[cfg(feature = "private-keys")]
            Scheme::EcdsaRecoverable | Scheme::EthPersonal | Scheme::Eip712 => {
                crate::eth::verify_recoverable(self, scheme, payload, signature)
            }
            #[cfg(not(feature = "private-keys"))]
            Scheme::EcdsaRecoverable | Scheme::EthPersonal | Scheme::Eip712 => {
                Err(KeyError::Scheme(format!("{scheme} signatures are verified by nekms-keys built with private-keys")))
            }
            _ => {
                let (hash, d) = prehash(scheme, spec, payload)?;
                let der;
                let signature = if scheme == Scheme::EcdsaRaw {
                    if signature.len() != 2 * spec.scalar_len().expect("EC") {
                        return Err(invalid());
                    }
                    der = ecdsa_fixed_to_der(signature);
                    der.as_slice()
                } else {
                    signature
                };
                // libsecp256k1 accepts only low-s; AWS-LC, like ECDSA itself, accepts both.
                let alg: &'static dyn sig::VerificationAlgorithm = match spec {
                    KeySpec::Secp256k1 => &sig::ECDSA_P256K1_SHA256_ASN1,
                    KeySpec::P256 => &sig::ECDSA_P256_SHA256_ASN1,
                    _ => &sig::ECDSA_P384_SHA384_ASN1,
                };
                let digest = Digest::import_less_safe(&d, hash.algorithm()).map_err(crypto("digest"))?;
                UnparsedPublicKey::new(alg, self.point()).verify_digest(&digest, signature).map_err(|_| invalid())
            }
        }
    }
}
