//! Which file a simulated enclave's measurement is taken from, and a
//! simulated enclave booted from it (`nekms attest sim`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nekms_devworld::DevDir;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, Nsm, SimConfig, SimulatedNsm};

/// The enclave image to measure: `explicit`, else `nekms-enclave` next to
/// this executable, else this executable itself (labelled as a stand-in).
pub fn enclave_image(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, &'static str)> {
    if let Some(p) = explicit {
        return Ok((p, "given image"));
    }
    let me = std::env::current_exe().context("cannot locate the running executable")?;
    let sibling = me.with_file_name("nekms-enclave");
    if sibling.is_file() {
        return Ok((sibling, "nekms-enclave beside this binary"));
    }
    Ok((me, "this nekms binary, standing in for nekms-enclave (not built yet)"))
}

/// A simulated NSM measured from an enclave image (and its configuration
/// file), on the development world's simulated parent instance.
pub struct SimulatedEnclave {
    nsm: SimulatedNsm,
    /// The image measured.
    pub image: PathBuf,
    /// Where the image came from (see [`enclave_image`]).
    pub label: &'static str,
}

impl SimulatedEnclave {
    /// Measure `image` (see [`enclave_image`]) with `image_config`, and boot;
    /// `debug_mode` reports all-zero PCRs, like an enclave started with --debug-mode.
    pub fn boot(dev: &DevDir, image: Option<PathBuf>, image_config: Option<&Path>, debug_mode: bool) -> anyhow::Result<SimulatedEnclave> {
        let config = dev.config()?;
        let (image, label) = enclave_image(image)?;
        let measurement = Measurement::of_files(&image, image_config)?;
        let mut sim_config = SimConfig::new(measurement);
        sim_config.debug_mode = debug_mode;
        sim_config.parent_instance_id = Some(config.instance_id);
        let nsm = SimulatedNsm::boot(sim_config, dev.document_signer()?);
        Ok(SimulatedEnclave { nsm, image, label })
    }

    /// An attestation document signed by the development PKI.
    pub fn attest(&self, request: AttestationRequest) -> anyhow::Result<Vec<u8>> {
        let doc = self.nsm.attestation(request)?;
        if doc.is_empty() {
            bail!("the simulator produced an empty document");
        }
        Ok(doc)
    }

    pub fn module_id(&self) -> &str {
        self.nsm.module_id()
    }
}
