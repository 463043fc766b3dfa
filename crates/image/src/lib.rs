//! `nekms image`: build, sign, measure and describe nekms's enclave image
//! (EIF) without Docker.
//!
//! The EIF itself (its header, sections, CRC, measurement and COSE
//! signature) is written and read by AWS's `aws-nitro-enclaves-image-format`
//! crate, the code nitro-cli uses; nekms makes what goes into it:
//!
//! - the **bootstrap ramdisk** from nitro-cli's blobs (`dev`, `init`,
//!   `nsm.ko`), laid out as nitro-cli's linuxkit lays it out;
//! - the **customer ramdisk**: `rootfs/` holding `usr/bin/nekms-enclave`,
//!   `etc/nekms/enclave.toml` and any extra files, and the `cmd` and `env`
//!   files AWS's init reads;
//!
//! each a reproducible cpio archive ([`cpio`]), so the same inputs give the
//! same bytes and the same PCRs. Every input is checked before anything is
//! written ([`inputs`]), the image is written to a temporary file, read back
//! and verified, and only then renamed into place: a failed build leaves no
//! file behind.
//!
//! That crate links OpenSSL, which nothing else in nekms does, so it comes
//! only with this crate's `build` feature (the `nekms` CLI's `image`
//! feature): `deny.toml` admits OpenSSL through it alone, and the enclave,
//! the PKCS#11 module and the parent's daemons never link it. Without the
//! feature this crate still walks and measures any EIF with its own code
//! ([`eif`], [`pcr`]), which is how the production CLI reads PCR0 from an
//! image for `nekms policy custody --image`.

#[cfg(feature = "build")]
pub mod build;
pub mod cpio;
#[cfg(feature = "build")]
pub mod describe;
pub mod eif;
pub mod elf;
#[cfg(feature = "build")]
pub mod inputs;
pub mod pcr;
pub mod signature;

use std::path::Path;

#[cfg(feature = "build")]
pub use build::{build, Metadata, Signing};
#[cfg(feature = "build")]
pub use describe::describe;
pub use elf::Arch;
#[cfg(feature = "build")]
pub use inputs::{Blobs, Payload, DEFAULT_BLOBS};
pub use pcr::{pcr8_of_certificate, Measurements};

/// Check the signature of the EIF at `path` over `pcr0` ([`signature::verify`]);
/// an unsigned image passes (`None`).
pub fn check_signature_file(path: &Path, pcr0: &str) -> Result<Option<nekms_attestation::image_signature::SignedImage>, ImageError> {
    let mut file = std::fs::File::open(path).map_err(|e| ImageError::file(path, e))?;
    let len = file.metadata().map_err(|e| ImageError::file(path, e))?.len();
    let layout = eif::walk(&mut file, len).map_err(|m| ImageError::input(path, m))?;
    signature::verify(&mut file, &layout, pcr0).map_err(|m| ImageError::input(path, m))
}

/// Measure the EIF at `path` with nekms's own reader.
pub fn measure_file(path: &Path) -> Result<Measurements, ImageError> {
    let mut file = std::fs::File::open(path).map_err(|e| ImageError::file(path, e))?;
    let len = file.metadata().map_err(|e| ImageError::file(path, e))?.len();
    let layout = eif::walk(&mut file, len).map_err(|m| ImageError::input(path, m))?;
    pcr::measure(&mut file, &layout).map_err(|m| ImageError::input(path, m))
}

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file given as input is missing, unreadable or unfit.
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    /// A flag's value is unfit.
    #[error("{0}")]
    Usage(String),
    /// Signing failed (the key, the certificate, or KMS).
    #[error("signing: {0}")]
    Signing(String),
    /// Writing or verifying the output failed.
    #[error("{path}: {message}")]
    Output { path: String, message: String },
}

impl ImageError {
    pub fn input(path: &Path, message: impl Into<String>) -> ImageError {
        ImageError::Input { path: path.display().to_string(), message: message.into() }
    }

    pub fn file(path: &Path, e: std::io::Error) -> ImageError {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        };
        ImageError::Input { path: path.display().to_string(), message }
    }

    pub fn output(path: &Path, message: impl Into<String>) -> ImageError {
        ImageError::Output { path: path.display().to_string(), message: message.into() }
    }
}

/// Run `f` on a thread of its own, turning a panic into an error. AWS's
/// crate reports most failures by panicking, and its KMS signer starts a
/// runtime of its own, which may not happen inside a caller's runtime.
#[cfg(feature = "build")]
pub(crate) fn isolated<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    // The panic becomes the error message; the default hook would print it
    // a second time, with a source location meaningless to the user.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !std::thread::current().name().is_some_and(|n| n.starts_with("nekms-image ")) {
                previous(info)
            }
        }))
    });
    let handle = std::thread::Builder::new().name(format!("nekms-image {what}")).spawn(f).map_err(|e| e.to_string())?;
    handle.join().map_err(|panic| {
        let text =
            panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("no message");
        format!("{what} failed: {text}")
    })
}
