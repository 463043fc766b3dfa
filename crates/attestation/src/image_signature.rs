//! An enclave image's signature, as `nitro-cli build-enclave --signing-certificate
//! --private-key` writes it and `nitro-cli run-enclave` checks it: a CBOR
//! array whose first entry maps `signing_certificate` (PEM) and `signature`
//! (a COSE_Sign1, ES384, over `{register_index: 0, register_value: PCR0}`),
//! each a byte string or, as AWS's crate writes a `Vec<u8>`, an array of
//! integers.
//!
//! PCR8 is SHA-384 extended once over SHA-384 of the certificate's DER, so it
//! names the certificate, not the image: anyone can copy a signature section
//! onto another image. Only a signature that verifies over the image's own
//! PCR0 makes PCR8 mean "signed by the holder of this key". [`verify`] is
//! that check; the VM launcher, `nekms image measure --check-signature` and
//! the simulated enclave's `--sim-signature` all make it with this code.
//! [`sign`] writes the same bytes for the development world's simulated
//! images (only P-384 signers: nekms's COSE decoder reads ES384 only).

use aws_lc_rs::digest::{digest, SHA384};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use time::OffsetDateTime;

use crate::cose::{es384_protected_header, sig_structure, CoseSign1};
use crate::pcr::Pcr48;

/// The largest signature section read (a certificate chain is a few KiB).
pub const MAX_SECTION: usize = 64 * 1024;

/// What a signature that verified says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedImage {
    /// PCR8 of the image: the signing certificate's measurement.
    pub pcr8: Pcr48,
    /// The signing certificate's subject, for messages.
    pub subject: String,
    /// When the certificate expires: nitro-cli refuses to boot after it.
    pub not_after: OffsetDateTime,
}

/// PCR8 of an image signed with the certificate `der`, as `nitro-cli pcr
/// --signing-certificate` prints it.
pub fn pcr8_of_certificate_der(der: &[u8]) -> Pcr48 {
    Pcr48::ZERO.extended(digest(&SHA384, der).as_ref())
}

/// The DER of a PEM or DER certificate.
pub fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| format!("not a PEM certificate: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!("a PEM {}, not a CERTIFICATE", pem.label));
        }
        pem.contents
    } else {
        bytes.to_vec()
    };
    let (rest, _) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        // PCR8 hashes the certificate's DER: bytes after it would give a PCR8 no enclave reports.
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    Ok(der)
}

/// The first signature's certificate (PEM or DER bytes, as written) and
/// COSE_Sign1 from a signature section.
pub fn section_fields(section: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if section.len() > MAX_SECTION {
        return Err(format!("signature section: {} bytes, more than {MAX_SECTION}", section.len()));
    }
    let err = |e: minicbor::decode::Error| format!("signature section: {e}");
    let mut d = Decoder::new(section);
    let n = match d.array().map_err(err)? {
        Some(n) if n >= 1 => n,
        _ => return Err("signature section: no signature".into()),
    };
    let entries = d.map().map_err(err)?.ok_or("signature section: an indefinite map")?;
    let (mut cert, mut signature) = (None, None);
    for _ in 0..entries {
        let key = d.str().map_err(err)?;
        let slot = match key {
            "signing_certificate" => &mut cert,
            "signature" => &mut signature,
            _ => return Err(format!("signature section: an unknown field {key:?}")),
        };
        // Two readers taking different copies of a repeated field would disagree about the signer.
        if slot.is_some() {
            return Err(format!("signature section: {key} twice"));
        }
        *slot = Some(bytes_of(&mut d).map_err(|e| format!("signature section: {key}: {e}"))?);
    }
    // Further signatures (nitro-cli checks only the first), then nothing.
    for _ in 1..n {
        d.skip().map_err(err)?;
    }
    if d.position() != section.len() {
        return Err("signature section: bytes after the signatures".into());
    }
    Ok((cert.ok_or("signature section: no signing_certificate")?, signature.ok_or("signature section: no signature")?))
}

/// A CBOR byte string, or a definite array of integers 0-255.
fn bytes_of(d: &mut Decoder<'_>) -> Result<Vec<u8>, String> {
    let err = |e: minicbor::decode::Error| e.to_string();
    match d.datatype().map_err(err)? {
        Type::Bytes => Ok(d.bytes().map_err(err)?.to_vec()),
        Type::Array => {
            let n = d.array().map_err(err)?.ok_or("an indefinite array")?;
            if n as usize > MAX_SECTION {
                return Err("too long".into());
            }
            (0..n).map(|_| d.u8().map_err(|_| "a byte out of range".to_string())).collect()
        }
        other => Err(format!("{other}, not bytes")),
    }
}

/// Check a signature section against the image's `pcr0` at `now`: the
/// COSE_Sign1 verifies under the certificate's P-384 key, the certificate is
/// valid at `now`, and the signed payload is exactly register 0 = `pcr0`.
pub fn verify(section: &[u8], pcr0: &Pcr48, now: OffsetDateTime) -> Result<SignedImage, String> {
    let (cert, cose) = section_fields(section)?;
    if !cert.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Err("the signing certificate is not PEM, as nitro-cli requires".into());
    }
    let der = certificate_der(&cert).map_err(|e| format!("the signing certificate: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("the signing certificate: {e}"))?;
    let validity = parsed.validity();
    let at = x509_parser::time::ASN1Time::from_timestamp(now.unix_timestamp()).map_err(|e| e.to_string())?;
    if at < validity.not_before || at > validity.not_after {
        return Err(format!("the signing certificate is not valid now ({} to {})", validity.not_before, validity.not_after));
    }
    let cose = CoseSign1::decode(&cose).map_err(|e| format!("the signature is not an ES384 COSE_Sign1: {e}"))?;
    let point = &parsed.public_key().subject_public_key.data;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point.as_ref())
        .verify(&cose.to_be_signed(), &cose.signature)
        .map_err(|_| "the signature does not verify under the signing certificate's key".to_string())?;
    let (index, value) = payload_fields(&cose.payload)?;
    if index != 0 {
        return Err("the signature is not over PCR0".into());
    }
    if value != pcr0.0 {
        return Err("the signature is over another image's PCR0".into());
    }
    Ok(SignedImage {
        pcr8: pcr8_of_certificate_der(&der),
        subject: parsed.subject().to_string(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// [`verify`] at the system clock's time.
pub fn verify_now(section: &[u8], pcr0: &Pcr48) -> Result<SignedImage, String> {
    verify(section, pcr0, OffsetDateTime::now_utc())
}

/// `{register_index, register_value}` of a signed payload.
fn payload_fields(payload: &[u8]) -> Result<(i64, Vec<u8>), String> {
    let err = |e: minicbor::decode::Error| format!("the signed payload: {e}");
    let mut d = Decoder::new(payload);
    let n = d.map().map_err(err)?.ok_or("the signed payload: an indefinite map")?;
    let (mut index, mut value) = (None, None);
    for _ in 0..n {
        match d.str().map_err(err)? {
            "register_index" => index = Some(d.i64().map_err(err)?),
            "register_value" => value = Some(bytes_of(&mut d).map_err(|e| format!("the signed payload: register_value: {e}"))?),
            _ => d.skip().map_err(err)?,
        }
    }
    Ok((index.ok_or("the signed payload holds no register_index")?, value.ok_or("the signed payload holds no register_value")?))
}

/// A signature section over `pcr0` by the P-384 key `key_pkcs8` (DER),
/// carrying `cert_pem`, in the form AWS's crate writes (arrays of integers,
/// an untagged COSE_Sign1).
pub fn sign(pcr0: &Pcr48, key_pkcs8: &[u8], cert_pem: &str) -> Result<Vec<u8>, String> {
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, key_pkcs8)
        .map_err(|_| "the image-signing key is not a P-384 PKCS#8 key".to_string())?;
    let der = certificate_der(cert_pem.as_bytes())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    if parsed.public_key().subject_public_key.data.as_ref() != aws_lc_rs::signature::KeyPair::public_key(&key).as_ref() {
        return Err("the certificate is not the image-signing key's".into());
    }
    let mut payload = Encoder::new(Vec::new());
    payload.map(2).and_then(|e| e.str("register_index")).and_then(|e| e.u8(0)).and_then(|e| e.str("register_value")).expect("Vec");
    int_array(&mut payload, &pcr0.0);
    let payload = payload.into_writer();
    let protected = es384_protected_header();
    let signature = key.sign(&SystemRandom::new(), &sig_structure(&protected, &payload)).map_err(|_| "signing failed".to_string())?;
    let mut cose = Encoder::new(Vec::new());
    cose.array(4)
        .and_then(|e| e.bytes(&protected))
        .and_then(|e| e.map(0))
        .and_then(|e| e.bytes(&payload))
        .and_then(|e| e.bytes(signature.as_ref()))
        .expect("Vec");
    let cose = cose.into_writer();
    let mut section = Encoder::new(Vec::new());
    section.array(1).and_then(|e| e.map(2)).and_then(|e| e.str("signing_certificate")).expect("Vec");
    int_array(&mut section, cert_pem.as_bytes());
    section.str("signature").expect("Vec");
    int_array(&mut section, &cose);
    Ok(section.into_writer())
}

/// [`sign`] with a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`).
pub fn sign_pem(pcr0: &Pcr48, key_pem: &str, cert_pem: &str) -> Result<Vec<u8>, String> {
    let der = x509_parser::pem::Pem::iter_from_buffer(key_pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "PRIVATE KEY")
        .map(|p| zeroize::Zeroizing::new(p.contents))
        .ok_or("the image-signing key is not a PKCS#8 PEM PRIVATE KEY")?;
    sign(pcr0, &der, cert_pem)
}

fn int_array(e: &mut Encoder<Vec<u8>>, bytes: &[u8]) {
    e.array(bytes.len() as u64).expect("Vec");
    for b in bytes {
        e.u8(*b).expect("Vec");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    #[test]
    fn a_signature_verifies_over_its_pcr0_only() {
        let now = OffsetDateTime::now_utc();
        let signer = pki::generate_image_signer("test", now).unwrap();
        let pcr0 = Pcr48([7; 48]);
        let section = sign(&pcr0, &signer.key_der().unwrap(), &signer.cert_pem).unwrap();
        let ok = verify(&section, &pcr0, now).unwrap();
        assert_eq!(ok.pcr8, pcr8_of_certificate_der(&signer.cert_der().unwrap()));
        assert!(verify(&section, &Pcr48([8; 48]), now).unwrap_err().contains("another image's PCR0"));
        assert!(verify(&section, &pcr0, now + time::Duration::days(365 * 31)).unwrap_err().contains("not valid"));
        let other = pki::generate_image_signer("other", now).unwrap();
        assert!(sign(&pcr0, &other.key_der().unwrap(), &signer.cert_pem).unwrap_err().contains("not the image-signing key's"));
        // Another signer's certificate over the same COSE signature.
        let (_, cose) = section_fields(&section).unwrap();
        let mut e = Encoder::new(Vec::new());
        e.array(1)
            .and_then(|e| e.map(2))
            .and_then(|e| e.str("signing_certificate"))
            .and_then(|e| e.bytes(other.cert_pem.as_bytes()))
            .unwrap();
        e.str("signature").and_then(|e| e.bytes(&cose)).unwrap();
        assert!(verify(&e.into_writer(), &pcr0, now).unwrap_err().contains("does not verify"));
        // A repeated field (two readers could take different copies), bytes after the list, a DER certificate.
        let mut twice = Encoder::new(Vec::new());
        twice
            .array(1)
            .and_then(|e| e.map(3))
            .and_then(|e| e.str("signing_certificate"))
            .and_then(|e| e.bytes(other.cert_pem.as_bytes()))
            .unwrap();
        twice.str("signing_certificate").and_then(|e| e.bytes(signer.cert_pem.as_bytes())).unwrap();
        twice.str("signature").and_then(|e| e.bytes(&cose)).unwrap();
        assert!(verify(&twice.into_writer(), &pcr0, now).unwrap_err().contains("signing_certificate twice"));
        let mut trailing = section.clone();
        trailing.push(0);
        assert!(verify(&trailing, &pcr0, now).unwrap_err().contains("bytes after"));
        let mut der = Encoder::new(Vec::new());
        der.array(1)
            .and_then(|e| e.map(2))
            .and_then(|e| e.str("signing_certificate"))
            .and_then(|e| e.bytes(&signer.cert_der().unwrap()))
            .unwrap();
        der.str("signature").and_then(|e| e.bytes(&cose)).unwrap();
        assert!(verify(&der.into_writer(), &pcr0, now).unwrap_err().contains("not PEM"));
        let mut padded = signer.cert_der().unwrap();
        padded.push(0);
        assert!(certificate_der(&padded).unwrap_err().contains("after the certificate"));
        for bad in [&b""[..], &[0x80], &[0x81, 0xa0], &section[..section.len() - 1]] {
            assert!(verify(bad, &pcr0, now).is_err());
        }
    }
}
