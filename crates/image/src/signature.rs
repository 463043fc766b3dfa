//! The check `nitro-cli run-enclave` makes before it boots a signed image,
//! made by nekms's own code (no OpenSSL,
//! [`nekms_attestation::image_signature`]): the first signature is a
//! COSE_Sign1 with ES384 over `{register_index: 0, register_value: PCR0}`
//! that verifies under the key of the signing certificate, which is valid
//! now. An image that fails it must not be booted, and its PCR8 means
//! nothing: anyone may copy a signature section (and so a signer's
//! certificate) onto another image.

use std::io::{Read, Seek, SeekFrom};

use nekms_attestation::image_signature::{self, SignedImage};
use nekms_attestation::Pcr48;

use crate::eif::{Kind, Layout};

/// Whether the image is signed; if it is, check its signature over `pcr0`
/// (hex) and say who signed, else say why the signature fails.
pub fn verify<R: Read + Seek>(file: &mut R, layout: &Layout, pcr0: &str) -> Result<Option<SignedImage>, String> {
    let Some(s) = layout.sections.iter().find(|s| s.kind == Kind::Signature) else { return Ok(None) };
    if s.len > image_signature::MAX_SECTION as u64 {
        return Err(format!("the signature section is {} bytes, more than {}", s.len, image_signature::MAX_SECTION));
    }
    let mut section = vec![0u8; s.len as usize];
    file.seek(SeekFrom::Start(s.offset)).map_err(|e| e.to_string())?;
    file.read_exact(&mut section).map_err(|e| e.to_string())?;
    let pcr0: Pcr48 = pcr0.parse().map_err(|e| format!("PCR0: {e}"))?;
    image_signature::verify(&section, &pcr0, time::OffsetDateTime::now_utc()).map(Some)
}
