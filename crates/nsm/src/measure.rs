//! Simulated measurement: PCR0, PCR1 and PCR2 of a simulated enclave, derived
//! deterministically from its image.
//!
//! A real enclave image file (EIF) is measured by the Nitro hypervisor: PCR0
//! covers the whole image, PCR1 the kernel and boot ramdisk, PCR2 the user
//! application. The simulator has no EIF; its "image" is the enclave binary
//! plus an optional configuration file, and it measures them like this
//! (H = SHA-384, `len64` = 8-byte big-endian length, `Z` = 48 zero bytes):
//!
//! ```text
//! kernel = H("nekms simulated kernel v1")
//! app    = H("nekms simulated application v1" || len64(binary) || binary
//!            || len64(config) || config)            (config empty if none)
//! PCR1   = H(Z || kernel)
//! PCR2   = H(Z || app)
//! PCR0   = H(Z || H("nekms simulated image v1" || kernel || app))
//! ```
//!
//! Each PCR is one extension of a zeroed register, as on the real NSM. A
//! changed binary or configuration changes PCR0 and PCR2; PCR1 changes only
//! with the simulator's version string.

use std::io;
use std::path::Path;

use aws_lc_rs::digest::{digest, Context, SHA384};
use nekms_attestation::Pcr48;

const KERNEL: &[u8] = b"nekms simulated kernel v1";
const APP: &[u8] = b"nekms simulated application v1";
const IMAGE: &[u8] = b"nekms simulated image v1";

/// The boot measurements of an enclave image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Measurement {
    pub pcr0: Pcr48,
    pub pcr1: Pcr48,
    pub pcr2: Pcr48,
}

impl Measurement {
    /// Measure an image given as bytes.
    pub fn of_image(binary: &[u8], config: Option<&[u8]>) -> Measurement {
        let config = config.unwrap_or(&[]);
        let kernel = digest(&SHA384, KERNEL);
        let mut app = Context::new(&SHA384);
        app.update(APP);
        app.update(&(binary.len() as u64).to_be_bytes());
        app.update(binary);
        app.update(&(config.len() as u64).to_be_bytes());
        app.update(config);
        let app = app.finish();
        let mut image = Context::new(&SHA384);
        image.update(IMAGE);
        image.update(kernel.as_ref());
        image.update(app.as_ref());
        let image = image.finish();
        Measurement {
            pcr0: Pcr48::ZERO.extended(image.as_ref()),
            pcr1: Pcr48::ZERO.extended(kernel.as_ref()),
            pcr2: Pcr48::ZERO.extended(app.as_ref()),
        }
    }

    /// Measure an image from files.
    pub fn of_files(binary: &Path, config: Option<&Path>) -> io::Result<Measurement> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())));
        let binary = read(binary)?;
        let config = config.map(read).transpose()?;
        Ok(Measurement::of_image(&binary, config.as_deref()))
    }

    /// The JSON `nitro-cli build-enclave` prints, so policies can be written
    /// the same way for simulated and real images.
    pub fn to_nitro_cli_json(&self) -> String {
        let v = serde_json::json!({
            "Measurements": {
                "HashAlgorithm": "Sha384 { ... }",
                "PCR0": self.pcr0.to_hex(),
                "PCR1": self.pcr1.to_hex(),
                "PCR2": self.pcr2.to_hex(),
            }
        });
        serde_json::to_string_pretty(&v).expect("JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_matches_the_documented_recipe() {
        // Computed with Python's hashlib from the recipe in the module docs:
        //   k=H(b"nekms simulated kernel v1"); a=H(b"nekms simulated application v1"+
        //   (3).to_bytes(8,"big")+b"bin"+(0).to_bytes(8,"big"))
        let m = Measurement::of_image(b"bin", None);
        assert_eq!(m.pcr1.to_hex(), PCR1_PY);
        assert_eq!(m.pcr2.to_hex(), PCR2_PY);
        assert_eq!(m.pcr0.to_hex(), PCR0_PY);
    }

    #[test]
    fn config_changes_pcr0_and_pcr2_but_not_pcr1() {
        let a = Measurement::of_image(b"bin", None);
        let b = Measurement::of_image(b"bin", Some(b"port = 5000"));
        assert_eq!(a.pcr1, b.pcr1);
        assert_ne!(a.pcr0, b.pcr0);
        assert_ne!(a.pcr2, b.pcr2);
        // Moving bytes between binary and config is a different image.
        assert_ne!(Measurement::of_image(b"ab", Some(b"c")), Measurement::of_image(b"a", Some(b"bc")));
    }

    #[test]
    fn nitro_cli_json_has_the_expected_shape() {
        let j: serde_json::Value = serde_json::from_str(&Measurement::of_image(b"x", None).to_nitro_cli_json()).unwrap();
        let m = &j["Measurements"];
        assert_eq!(m["HashAlgorithm"], "Sha384 { ... }");
        for k in ["PCR0", "PCR1", "PCR2"] {
            assert_eq!(m[k].as_str().unwrap().len(), 96);
        }
    }

    const PCR0_PY: &str = "0ce2798483db31e7619c06e6f7809c244fbe940640f7c804b422b60b080230caddeb5aeec139b7a95395e4cc5a511cf4";
    const PCR1_PY: &str = "dc6c497a47ee01541150e8818e5984df41cf1676ea37a05baa2c4088456aa89d680f8bad8bf5f824b81af7248fcfd7da";
    const PCR2_PY: &str = "fc6dd4f992b2c2ce748047ee675523a1d948aae8187c7380f955404d3e16ca441c0e97bd341db8b5bacc08d7218010ed";
}
