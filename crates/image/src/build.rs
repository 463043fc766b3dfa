//! Building an image: the two ramdisks, AWS's `EifBuilder`, a read-back
//! with AWS's reader, then the rename into place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo, EIF_HDR_ARCH_ARM64};
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::{EifBuilder, PcrSignatureChecker, SignKeyData};

use crate::elf::Arch;
use crate::inputs::{Blobs, Payload};
use crate::pcr::{Measurements, HASH_ALGORITHM};
use crate::{cpio, ImageError};

/// How to sign: a PEM private key file or a KMS key ARN (as nitro-cli's
/// `--private-key` takes either), and the signing certificate (PEM).
#[derive(Clone, Debug)]
pub struct Signing {
    pub key: String,
    pub certificate: PathBuf,
}

/// The image's identity, in its metadata section (not measured).
#[derive(Clone, Debug)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    /// RFC 3339. Fixed by default so that builds are byte for byte equal.
    pub build_time: String,
}

/// The crate's measurements, with nitro-cli's documented HashAlgorithm.
pub(crate) fn from_crate(mut m: BTreeMap<String, String>) -> Measurements {
    m.insert("HashAlgorithm".into(), HASH_ALGORITHM.into());
    Measurements(m)
}

/// Build the image at `out`. Nothing is left at `out` unless the image was
/// written, read back, measured to the same PCRs and, when signed, its
/// signature verified against the certificate.
pub fn build(blobs: &Blobs, payload: &Payload, signing: Option<&Signing>, meta: &Metadata, out: &Path) -> Result<Measurements, ImageError> {
    let (customer, arch) = payload.entries()?;
    if arch != blobs.arch {
        return Err(ImageError::input(&payload.enclave_bin, format!("built for {}, the blobs are for {}", arch.name(), blobs.arch.name())));
    }
    if let Some(s) = signing {
        if !s.key.starts_with("arn:") {
            std::fs::metadata(&s.key).map_err(|e| ImageError::file(Path::new(&s.key), e))?;
        }
        std::fs::metadata(&s.certificate).map_err(|e| ImageError::file(&s.certificate, e))?;
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = tempfile::Builder::new().prefix(".nekms-image.").tempdir_in(dir).map_err(|e| ImageError::output(dir, e.to_string()))?;
    let bootstrap = work.path().join("bootstrap.cpio");
    let customer_path = work.path().join("customer.cpio");
    let write = |p: &Path, bytes: &[u8]| std::fs::write(p, bytes).map_err(|e| ImageError::output(p, e.to_string()));
    write(&bootstrap, &cpio::archive(&blobs.bootstrap_entries()))?;
    write(&customer_path, &cpio::archive(&customer))?;
    let eif = work.path().join("image.eif");

    let sign_data = match signing {
        Some(s) => {
            let (key, cert) = (s.key.clone(), s.certificate.clone());
            let data = crate::isolated("signing key", move || SignKeyData::new(&key, &cert)).map_err(ImageError::Signing)?;
            Some(data.map_err(|e| ImageError::Signing(format!("{}: {e}", s.key)))?)
        }
        None => None,
    };
    let info = EifIdentityInfo {
        img_name: meta.name.clone(),
        img_version: meta.version.clone(),
        build_info: EifBuildInfo {
            build_time: meta.build_time.clone(),
            build_tool: "nekms".into(),
            build_tool_version: env!("CARGO_PKG_VERSION").into(),
            img_os: "Linux".into(),
            img_kernel: blobs.kernel_version.clone(),
        },
        docker_info: serde_json::json!({}),
        custom_info: serde_json::json!({
            "EnclaveBinary": payload.enclave_bin.file_name().map(|n| n.to_string_lossy().into_owned()),
            "Arch": arch.name(),
            "Development": payload.development,
        }),
    };
    let flags = match arch {
        Arch::X86_64 => 0,
        Arch::Aarch64 => EIF_HDR_ARCH_ARM64,
    };
    let (kernel, cmdline, eif_path) = (blobs.kernel.clone(), blobs.cmdline.clone(), eif.clone());
    let written = crate::isolated("image build", move || -> Result<BTreeMap<String, String>, String> {
        let mut builder = EifBuilder::new(&kernel, cmdline, sign_data, sha2::Sha384::default(), flags, info);
        builder.add_ramdisk(&bootstrap);
        builder.add_ramdisk(&customer_path);
        let mut file = std::fs::File::create(&eif_path).map_err(|e| e.to_string())?;
        let m = builder.write_to(&mut file);
        file.flush().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok(m)
    });
    let written = match written {
        Ok(Ok(m)) => m,
        Ok(Err(e)) | Err(e) => return Err(classify(signing.is_some(), e, out)),
    };
    let measured =
        read_back(&eif, signing.is_some()).map_err(|e| ImageError::output(out, format!("the image written does not check: {e}")))?;
    if measured != written {
        return Err(ImageError::output(out, "the image read back measures differently from the image written"));
    }
    std::fs::rename(&eif, out).map_err(|e| ImageError::output(out, e.to_string()))?;
    Ok(from_crate(written))
}

fn classify(signed: bool, e: String, out: &Path) -> ImageError {
    if signed && e.contains("signature") {
        ImageError::Signing(e)
    } else {
        ImageError::output(out, e)
    }
}

/// Read an image back with AWS's reader: its CRC, its measurements, and
/// for a signed image the signature over PCR0 and the certificate's
/// validity (what `nitro-cli run-enclave` checks before it boots one).
fn read_back(path: &Path, signed: bool) -> Result<BTreeMap<String, String>, String> {
    let path = path.to_string_lossy().into_owned();
    crate::isolated("image read-back", move || {
        let mut reader = EifReader::from_eif(path.clone())?;
        if !reader.check_crc() {
            return Err("its CRC does not match".to_string());
        }
        let m = reader.get_measurements()?;
        if signed {
            let hint = |e: String| {
                format!("its signature does not verify under the certificate's key ({e}): does --sign-cert hold --sign-key's public key?")
            };
            reader.get_certificate_info(m.clone()).map_err(hint)?;
            if reader.sign_check != Some(true) {
                return Err("the signature's payload is not this image's PCR0".into());
            }
            let mut checker = PcrSignatureChecker::from_eif(&path)?;
            checker.verify().map_err(|e| {
                if e.contains("expired") {
                    format!("{e}: nitro-cli run-enclave refuses such an image")
                } else {
                    hint(e)
                }
            })?;
        }
        Ok(m)
    })?
}
