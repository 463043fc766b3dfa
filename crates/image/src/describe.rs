//! `nekms image describe`: what `nitro-cli describe-eif` reports, for any
//! EIF, read with AWS's reader after nekms's structural walk.

use std::path::Path;

use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use serde_json::{json, Map, Value};

use crate::build::from_crate;
use crate::{eif, ImageError};

/// The largest section `describe` hands to AWS's reader.
const MAX_SECTION: u64 = 2 << 30;

/// describe-eif's JSON: `EifVersion`, `Measurements`, `IsSigned`,
/// `CheckCRC`, and for a signed image `SigningCertificate` and
/// `SignatureCheck`, then `ImageName`, `ImageVersion` and `Metadata` when
/// the image has a metadata section.
pub fn describe(path: &Path) -> Result<Value, ImageError> {
    let mut file = std::fs::File::open(path).map_err(|e| ImageError::file(path, e))?;
    let len = file.metadata().map_err(|e| ImageError::file(path, e))?.len();
    let layout = eif::walk(&mut file, len).map_err(|m| ImageError::input(path, m))?;
    // AWS's reader allocates each section whole: refuse sizes no image has
    // (a sparse file can claim any) rather than abort on the allocation.
    if let Some(s) = layout.sections.iter().find(|s| s.len > MAX_SECTION) {
        return Err(ImageError::input(path, format!("a {:?} section of {} bytes, more than an image holds (2 GiB)", s.kind, s.len)));
    }
    let p = path.to_string_lossy().into_owned();
    let described = crate::isolated("describe", move || -> Result<Value, String> {
        let mut reader = EifReader::from_eif(p)?;
        let crc = reader.check_crc();
        let measured = reader.get_measurements()?;
        let signed = reader.signature_section.is_some();
        let mut out = Map::new();
        out.insert("EifVersion".into(), json!(layout.version));
        out.insert("Measurements".into(), json!(from_crate(measured.clone()).0));
        out.insert("IsSigned".into(), json!(signed));
        out.insert("CheckCRC".into(), json!(crc));
        if signed {
            let cert = reader.get_certificate_info(measured)?;
            out.insert("SigningCertificate".into(), serde_json::to_value(&cert).map_err(|e| e.to_string())?);
            out.insert("SignatureCheck".into(), json!(reader.sign_check == Some(true)));
        }
        if let Some(meta) = reader.get_metadata() {
            out.insert("ImageName".into(), json!(meta.img_name));
            out.insert("ImageVersion".into(), json!(meta.img_version));
            let mut m = Map::new();
            let b = &meta.build_info;
            m.insert("BuildTime".into(), json!(b.build_time));
            m.insert("BuildTool".into(), json!(b.build_tool));
            m.insert("BuildToolVersion".into(), json!(b.build_tool_version));
            m.insert("OperatingSystem".into(), json!(b.img_os));
            m.insert("KernelVersion".into(), json!(b.img_kernel));
            m.insert("DockerInfo".into(), meta.docker_info.clone());
            if let Value::Object(custom) = meta.custom_info {
                m.extend(custom);
            }
            out.insert("Metadata".into(), Value::Object(m));
        }
        Ok(Value::Object(out))
    });
    match described {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(m)) | Err(m) => Err(ImageError::input(path, m)),
    }
}
