//! Signing with a [`PrivateKey`].

use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature as sig;

use crate::der::ecdsa_der_to_fixed;
use crate::eth::{eth_hash, SignedTransaction};
use crate::private::{Inner, PrivateKey};
use crate::rsa_raw;
use crate::verify::{crypto, prehash};
use crate::KeyError;
use crate::{Hash, HashExt, Payload, Scheme, Signature};

impl PrivateKey {
    /// Sign `payload` with `scheme`.
    pub fn sign(&self, scheme: Scheme, payload: &Payload) -> Result<Signature, KeyError> {
        let spec = self.spec();
        scheme.check_spec(spec)?;
        let done =
            |signature: Vec<u8>, digest: Vec<u8>| Signature { scheme, signature, digest, raw_transaction: None, transaction_hash: None };
        match (&self.inner, scheme) {
            (Inner::Secp256k1(sk), Scheme::EcdsaDer | Scheme::EcdsaRaw) => {
                let (_, d) = prehash(scheme, spec, payload)?;
                let msg = secp256k1::Message::from_digest(d.as_slice().try_into().expect("SHA-256"));
                let s = secp256k1::SECP256K1.sign_ecdsa(&msg, sk);
                let out = if scheme == Scheme::EcdsaDer { s.serialize_der().to_vec() } else { s.serialize_compact().to_vec() };
                Ok(done(out, d))
            }
            (Inner::Secp256k1(sk), _) => {
                let (hash, tx) = eth_hash(scheme, payload)?;
                let msg = secp256k1::Message::from_digest(hash);
                let (rid, rs) = secp256k1::SECP256K1.sign_ecdsa_recoverable(&msg, sk).serialize_compact();
                let parity = i32::from(rid) == 1;
                if let Some(tx) = tx {
                    let SignedTransaction { raw, hash: tx_hash } = tx.into_signed(&rs, parity);
                    let mut out = rs.to_vec();
                    out.push(parity as u8);
                    return Ok(Signature {
                        scheme,
                        signature: out,
                        digest: hash.to_vec(),
                        raw_transaction: Some(raw),
                        transaction_hash: Some(tx_hash.to_vec()),
                    });
                }
                let mut out = rs.to_vec();
                out.push(if scheme == Scheme::EcdsaRecoverable { parity as u8 } else { 27 + parity as u8 });
                Ok(done(out, hash.to_vec()))
            }
            (Inner::Ed25519(kp), _) => match payload {
                Payload::Message(m) => Ok(done(kp.sign(m).as_ref().to_vec(), Vec::new())),
                _ => Err(KeyError::Payload("Ed25519 signs the message itself, not a digest".into())),
            },
            (Inner::Ecdsa(kp), _) => {
                let (hash, d) = prehash(scheme, spec, payload)?;
                let digest = Digest::import_less_safe(&d, hash.algorithm()).map_err(crypto("digest"))?;
                let der = kp.sign_digest(&digest).map_err(crypto("ECDSA signing"))?.as_ref().to_vec();
                let out = if scheme == Scheme::EcdsaRaw {
                    ecdsa_der_to_fixed(&der, spec.scalar_len().expect("EC")).ok_or(KeyError::Crypto("ECDSA signature form"))?
                } else {
                    der
                };
                Ok(done(out, d))
            }
            (Inner::Rsa(kp), Scheme::RsaPkcs1(_) | Scheme::RsaPss(_) | Scheme::RsaPssParams(..)) => {
                let (hash, d) = prehash(scheme, spec, payload)?;
                if let Some(padding) = rsa_padding(scheme) {
                    let digest = Digest::import_less_safe(&d, hash.algorithm()).map_err(crypto("digest"))?;
                    let mut out = vec![0u8; kp.public_modulus_len()];
                    kp.sign_digest(padding, &digest, &mut out).map_err(crypto("RSA signing"))?;
                    return Ok(done(out, d));
                }
                // What aws-lc-rs does not sign: SHA-1 and SHA-224, and PSS
                // with other parameters.
                let pkcs8 = self.secret_bytes()?;
                let out = match scheme {
                    Scheme::RsaPkcs1(h) => rsa_raw::sign_pkcs1(&pkcs8, &rsa_raw::digest_info(h, &d))?,
                    Scheme::RsaPss(h) => rsa_raw::sign_pss(&pkcs8, &d, h, h, h.output_len())?,
                    Scheme::RsaPssParams(h, m, salt) => rsa_raw::sign_pss(&pkcs8, &d, h, m, salt.into())?,
                    _ => unreachable!("matched above"),
                };
                Ok(done(out, d))
            }
            _ => Err(KeyError::Scheme(format!("a {spec} key cannot sign with {scheme}"))),
        }
    }
}

/// aws-lc-rs's encoding for a scheme, where it has one (else `rsa_raw`).
fn rsa_padding(scheme: Scheme) -> Option<&'static dyn sig::RsaEncoding> {
    Some(match scheme {
        Scheme::RsaPkcs1(Hash::Sha256) => &sig::RSA_PKCS1_SHA256,
        Scheme::RsaPkcs1(Hash::Sha384) => &sig::RSA_PKCS1_SHA384,
        Scheme::RsaPkcs1(Hash::Sha512) => &sig::RSA_PKCS1_SHA512,
        Scheme::RsaPss(Hash::Sha256) => &sig::RSA_PSS_SHA256,
        Scheme::RsaPss(Hash::Sha384) => &sig::RSA_PSS_SHA384,
        Scheme::RsaPss(Hash::Sha512) => &sig::RSA_PSS_SHA512,
        _ => return None,
    })
}
