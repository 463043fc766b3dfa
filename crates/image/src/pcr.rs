//! Measurements without AWS's crate: PCR0, PCR1, PCR2 and PCR8 of an EIF
//! computed from its sections (a second reader, and the one the production
//! CLI uses for `nekms policy custody --image`), and PCR8 of a certificate.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use aws_lc_rs::digest::{digest, Context, SHA384};

use crate::eif::{Kind, Layout};

/// The hash algorithm as nitro-cli documents it. (nitro-cli prints its
/// hasher's `Debug` text here, which changed to `Sha512_48 { .. }` with
/// sha2 0.10; readers should not depend on the field.)
pub const HASH_ALGORITHM: &str = "Sha384 { ... }";

/// PCR0, PCR1, PCR2 and (signed) PCR8, hex, as nitro-cli names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurements(pub BTreeMap<String, String>);

impl Measurements {
    pub fn pcr(&self, index: u8) -> Option<&str> {
        self.0.get(&format!("PCR{index}")).map(String::as_str)
    }

    /// `{"Measurements": {...}}`, as `nitro-cli build-enclave` prints it.
    pub fn to_nitro_cli_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({ "Measurements": self.0 })).expect("JSON")
    }
}

/// Measure the image `layout` describes: PCR0 over the kernel, the command
/// line and every ramdisk, PCR1 over the kernel, the command line and the
/// first ramdisk, PCR2 over the others, PCR8 over the signing certificate.
pub fn measure<R: Read + Seek>(file: &mut R, layout: &Layout) -> Result<Measurements, String> {
    let (mut image, mut boot, mut app) = (Context::new(&SHA384), Context::new(&SHA384), Context::new(&SHA384));
    let mut ramdisks = 0;
    let mut pcr8 = None;
    let mut buf = vec![0u8; 1 << 20];
    for s in &layout.sections {
        file.seek(SeekFrom::Start(s.offset)).map_err(|e| e.to_string())?;
        match s.kind {
            Kind::Kernel | Kind::Cmdline | Kind::Ramdisk => {
                let first_ramdisk = s.kind == Kind::Ramdisk && ramdisks == 0;
                let mut left = s.len;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    file.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
                    image.update(&buf[..n]);
                    if s.kind != Kind::Ramdisk || first_ramdisk {
                        boot.update(&buf[..n]);
                    } else {
                        app.update(&buf[..n]);
                    }
                    left -= n as u64;
                }
                if s.kind == Kind::Ramdisk {
                    ramdisks += 1;
                }
            }
            Kind::Signature => {
                let mut sig = vec![0u8; s.len as usize];
                file.read_exact(&mut sig).map_err(|e| e.to_string())?;
                // The same reader the signature check uses, so both see one certificate.
                let (cert, _) = nekms_attestation::image_signature::section_fields(&sig)?;
                pcr8 = Some(pcr8_of_certificate(&cert)?);
            }
            Kind::Metadata => {}
        }
    }
    let mut m = BTreeMap::new();
    m.insert("HashAlgorithm".to_string(), HASH_ALGORITHM.to_string());
    m.insert("PCR0".into(), extend(image.finish().as_ref()));
    m.insert("PCR1".into(), extend(boot.finish().as_ref()));
    m.insert("PCR2".into(), extend(app.finish().as_ref()));
    if let Some(p) = pcr8 {
        m.insert("PCR8".into(), p);
    }
    Ok(Measurements(m))
}

/// PCR8 of an image signed with this certificate (PEM or DER): SHA-384
/// extended once over SHA-384 of the certificate's DER, as `nitro-cli pcr
/// --signing-certificate` prints it.
pub fn pcr8_of_certificate(bytes: &[u8]) -> Result<String, String> {
    let der = nekms_attestation::image_signature::certificate_der(bytes)?;
    Ok(nekms_attestation::image_signature::pcr8_of_certificate_der(&der).to_hex())
}

/// One TPM-style extension of a zeroed 48-byte register.
pub(crate) fn extend(value: &[u8]) -> String {
    let mut reg = vec![0u8; 48];
    reg.extend_from_slice(value);
    hex::encode(digest(&SHA384, &reg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::cbor;

    #[test]
    fn extension_of_a_zeroed_register() {
        // SHA-384 over 48 zero bytes and then 48 bytes of 0x01.
        let mut input = vec![0u8; 48];
        input.extend_from_slice(&[1u8; 48]);
        assert_eq!(extend(&[1u8; 48]), hex::encode(digest(&SHA384, &input)));
    }

    #[test]
    fn certificate_bytes_in_either_cbor_form() {
        let as_bytes =
            cbor!([{ "signing_certificate" => ciborium::Value::Bytes(b"PEM".to_vec()), "signature" => ciborium::Value::Bytes(vec![]) }])
                .unwrap();
        let as_ints = cbor!([{ "signing_certificate" => [80, 69, 77], "signature" => [] }]).unwrap();
        for v in [as_bytes, as_ints] {
            let mut b = Vec::new();
            ciborium::into_writer(&v, &mut b).unwrap();
            assert_eq!(nekms_attestation::image_signature::section_fields(&b).unwrap().0, b"PEM");
        }
        assert!(pcr8_of_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }
}
