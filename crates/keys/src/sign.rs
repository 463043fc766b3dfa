//! Signing with a [`PrivateKey`] and verifying with a [`PublicKey`].

use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};


use crate::der::{ecdsa_der_to_fixed, ecdsa_fixed_to_der};
use crate::eth::{personal_hash, typed_data_hash, SignedTransaction, TxRequest};
use crate::private::{Inner, PrivateKey};
use crate::public::PublicKey;
use crate::rsa_raw;
use crate::{Hash, HashExt, Payload, Scheme, Signature};
use crate::KeySpec;
use crate::KeyError;

/// The hash an ECDSA or RSA scheme signs: the message hashed, or a digest of the right length.
fn prehash(scheme: Scheme, spec: KeySpec, payload: &Payload) -> Result<(Hash, Vec<u8>), KeyError> {
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

/// The 32-byte hash an Ethereum scheme signs, and the transaction if any.
fn eth_hash(scheme: Scheme, payload: &Payload) -> Result<([u8; 32], Option<TxRequest>), KeyError> {
    match (scheme, payload) {
        (Scheme::EthPersonal, Payload::Message(m)) => Ok((personal_hash(m), None)),
        (Scheme::Eip712, Payload::TypedData(json)) => Ok((typed_data_hash(json)?, None)),
        (Scheme::Eip712, Payload::Digest(d)) => Ok((
            d.as_slice().try_into().map_err(|_| KeyError::Payload(format!("an EIP-712 signing hash is 32 bytes, not {}", d.len())))?,
            None,
        )),
        (Scheme::EthTransaction, Payload::Transaction(json)) => {
            let tx = TxRequest::from_json(json)?;
            Ok((tx.signature_hash(), Some(tx)))
        }
        (Scheme::EcdsaRecoverable, p) => {
            let (_, d) = prehash(scheme, KeySpec::Secp256k1, p)?;
            Ok((d.try_into().expect("SHA-256"), None))
        }
        (Scheme::EthPersonal, _) => Err(KeyError::Payload("eth-personal signs a message".into())),
        (Scheme::Eip712, _) => Err(KeyError::Payload("eip712 signs typed-data JSON or its 32-byte signing hash".into())),
        _ => Err(KeyError::Payload("eth-tx signs a transaction (JSON)".into())),
    }
}

fn crypto(what: &'static str) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> KeyError {
    move |_| KeyError::Crypto(what)
}

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
            _ if spec == KeySpec::Secp256k1 => {
                let pk = secp256k1::PublicKey::from_slice(self.point()).map_err(|_| KeyError::PublicKey("not a secp256k1 point".into()))?;
                let (hash, _) = match scheme {
                    Scheme::EcdsaDer | Scheme::EcdsaRaw => {
                        let (_, d) = prehash(scheme, spec, payload)?;
                        (<[u8; 32]>::try_from(d).expect("SHA-256"), None)
                    }
                    _ => eth_hash(scheme, payload)?,
                };
                let msg = secp256k1::Message::from_digest(hash);
                match scheme {
                    Scheme::EcdsaDer | Scheme::EcdsaRaw => {
                        let mut s = if scheme == Scheme::EcdsaDer {
                            secp256k1::ecdsa::Signature::from_der(signature)
                        } else {
                            secp256k1::ecdsa::Signature::from_compact(signature)
                        }
                        .map_err(|_| invalid())?;
                        // libsecp256k1 only accepts low-s; a high-s signature is still valid ECDSA.
                        s.normalize_s();
                        secp256k1::SECP256K1.verify_ecdsa(&msg, &s, &pk).map_err(|_| invalid())
                    }
                    _ => {
                        if signature.len() != 65 {
                            return Err(KeyError::BadSignature(format!("a recoverable signature is 65 bytes, not {}", signature.len())));
                        }
                        let v = signature[64];
                        let rid = match (scheme, v) {
                            (Scheme::EcdsaRecoverable, 0 | 1) => v,
                            (Scheme::EthPersonal | Scheme::Eip712, 27 | 28) => v - 27,
                            _ => return Err(KeyError::BadSignature(format!("recovery byte {v} is not valid for {scheme}"))),
                        };
                        let rid = secp256k1::ecdsa::RecoveryId::try_from(rid as i32).map_err(|_| invalid())?;
                        let rs = secp256k1::ecdsa::RecoverableSignature::from_compact(&signature[..64], rid).map_err(|_| invalid())?;
                        let recovered = secp256k1::SECP256K1.recover_ecdsa(&msg, &rs).map_err(|_| invalid())?;
                        if recovered == pk {
                            Ok(())
                        } else {
                            Err(invalid())
                        }
                    }
                }
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
                let alg: &'static dyn sig::VerificationAlgorithm =
                    if spec == KeySpec::P256 { &sig::ECDSA_P256_SHA256_ASN1 } else { &sig::ECDSA_P384_SHA384_ASN1 };
                let digest = Digest::import_less_safe(&d, hash.algorithm()).map_err(crypto("digest"))?;
                UnparsedPublicKey::new(alg, self.point()).verify_digest(&digest, signature).map_err(|_| invalid())
            }
        }
    }
}
