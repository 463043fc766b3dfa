//! The development world's NSM and attestation root, compiled in only with
//! the `sim` feature. A binary built for an image (without it) refuses
//! `--sim` and trusts no development root: it has neither the simulator nor
//! the development world's code.

use std::sync::Arc;

use nekms_nsm::Nsm;

use crate::config::EnclaveConfig;

/// What an image's binary says when asked for the simulator; `nekms image
/// build` requires these words in the binary it packs.
#[cfg(not(feature = "sim"))]
pub const IMAGE_BINARY: &str = "this nekms-enclave is built for an enclave image, without the simulated NSM (cargo feature `sim`)";

/// What a development binary says when it boots the simulator; `nekms image
/// build` refuses a binary holding these words.
#[cfg(feature = "sim")]
pub const DEVELOPMENT_BINARY: &str = "this nekms-enclave is built with the simulated NSM, for development only";

/// Boot the simulated NSM over the development world's document signer,
/// measuring this executable (or `--image`) and the configuration file.
#[cfg(feature = "sim")]
pub fn open_simulated(c: &EnclaveConfig) -> anyhow::Result<Arc<dyn Nsm>> {
    use anyhow::Context;
    use nekms_nsm::measure::Measurement;
    use nekms_nsm::{SimConfig, SimulatedNsm};

    if let Some(path) = &c.sim_from {
        // In a guest VM: what the launcher measured, and its boot CA.
        let handover = read_handover(path)?;
        let (mut sim, signer) = handover.boot_parts().with_context(|| path.display().to_string())?;
        tracing::warn!("{DEVELOPMENT_BINARY}: booting the simulator from the launcher's handover {}", path.display());
        sim.debug_mode = c.debug_mode;
        return Ok(Arc::new(SimulatedNsm::boot(sim, signer)));
    }
    let dev = nekms_devworld::DevDir::resolve(c.dev_dir.as_deref())?;
    let image = match &c.image {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    // The configuration file is part of the image: it is measured with it.
    let measurement = Measurement::of_files(&image, c.config_file.as_deref()).with_context(|| format!("measuring {}", image.display()))?;
    tracing::warn!("{DEVELOPMENT_BINARY}: booting the simulator");
    let pcr0 = measurement.pcr0;
    let mut sim = SimConfig::new(measurement);
    sim.debug_mode = c.debug_mode;
    if let Some(path) = &c.sim_signature {
        // As nitro-cli run-enclave: the signature must be over this image's
        // PCR0, so a signature copied from another image gives no PCR8.
        let section = std::fs::read(path).with_context(|| format!("--sim-signature {}", path.display()))?;
        let signed = nekms_attestation::image_signature::verify_now(&section, &pcr0)
            .map_err(|e| anyhow::anyhow!("--sim-signature {}: {e}; nitro-cli would not boot this image", path.display()))?;
        tracing::info!("the image is signed by {} (PCR8 {})", signed.subject, signed.pcr8);
        sim.pcr8 = Some(signed.pcr8);
    }
    sim.parent_instance_id = dev.config().ok().map(|c| c.instance_id);
    Ok(Arc::new(SimulatedNsm::boot(sim, dev.document_signer()?)))
}

#[cfg(not(feature = "sim"))]
pub fn open_simulated(_: &EnclaveConfig) -> anyhow::Result<Arc<dyn Nsm>> {
    anyhow::bail!("{IMAGE_BINARY}: --sim is refused")
}

/// The development world's root certificate (PEM), which a simulated NSM's
/// documents chain to.
#[cfg(feature = "sim")]
pub fn dev_root_pem(c: &EnclaveConfig) -> anyhow::Result<String> {
    if let Some(path) = &c.sim_from {
        return Ok(read_handover(path)?.root_pem);
    }
    Ok(nekms_devworld::DevDir::resolve(c.dev_dir.as_deref())?.root_pem()?)
}

#[cfg(feature = "sim")]
fn read_handover(path: &std::path::Path) -> anyhow::Result<nekms_nsm::handover::Handover> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("{}: the launcher's handover", path.display()))?;
    nekms_nsm::handover::Handover::parse(&bytes).with_context(|| path.display().to_string())
}

#[cfg(not(feature = "sim"))]
pub fn dev_root_pem(_: &EnclaveConfig) -> anyhow::Result<String> {
    anyhow::bail!("no development root in an image's nekms-enclave")
}
