//! The check `nitro-cli run-enclave` makes before it boots a signed image,
//! made by nekms's own code (no OpenSSL): the first signature is a
//! COSE_Sign1 with ES384 over `{register_index: 0, register_value: PCR0}`
//! that verifies under the key of the signing certificate, which is valid
//! now. An image that fails it must not be booted, and its PCR8 means
//! nothing: anyone may copy a signature section (and so a signer's
//! certificate) onto another image. ES384 (a P-384 signer) only, as
//! nekms's COSE decoder reads only what an NSM writes.

use std::io::{Read, Seek, SeekFrom};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use nekms_attestation::CoseSign1;

use crate::eif::{Kind, Layout};
use crate::pcr::{bytes_of, signature_field};

/// Whether the image is signed; if it is, check its signature over `pcr0`
/// (hex) and return Ok(true), else say why not.
pub fn verify<R: Read + Seek>(file: &mut R, layout: &Layout, pcr0: &str) -> Result<bool, String> {
    let Some(s) = layout.sections.iter().find(|s| s.kind == Kind::Signature) else { return Ok(false) };
    let mut section = vec![0u8; s.len as usize];
    file.seek(SeekFrom::Start(s.offset)).map_err(|e| e.to_string())?;
    file.read_exact(&mut section).map_err(|e| e.to_string())?;
    let cert_pem = signature_field(&section, "signing_certificate")?;
    let cose = signature_field(&section, "signature")?;
    let cose = CoseSign1::decode(&cose).map_err(|e| format!("the signature is not an ES384 COSE_Sign1: {e}"))?;

    let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem).map_err(|e| format!("the signing certificate is not PEM: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("the signing certificate: {e}"))?;
    if !cert.validity().is_valid() {
        return Err(format!("the signing certificate is not valid now ({} to {})", cert.validity().not_before, cert.validity().not_after));
    }
    let point = &cert.public_key().subject_public_key.data;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point.as_ref())
        .verify(&cose.to_be_signed(), &cose.signature)
        .map_err(|_| "the signature does not verify under the signing certificate's key".to_string())?;

    let payload: ciborium::Value = ciborium::from_reader(cose.payload.as_slice()).map_err(|e| format!("the signed payload: {e}"))?;
    let map = payload.as_map().ok_or("the signed payload is not a map")?;
    let get = |k: &str| map.iter().find(|(key, _)| key.as_text() == Some(k)).map(|(_, v)| v);
    let index = get("register_index").and_then(|v| v.as_integer()).and_then(|i| i64::try_from(i).ok());
    if index != Some(0) {
        return Err("the signature is not over PCR0".into());
    }
    let value = bytes_of(get("register_value").ok_or("the signed payload holds no register_value")?)?;
    if hex::encode(value) != pcr0 {
        return Err("the signature is over another image's PCR0".into());
    }
    Ok(true)
}
