//! What a VM launcher (`nekms dev vm`) hands a guest's simulated NSM through
//! a hypervisor channel (QEMU's fw_cfg), as the Nitro hypervisor gives the
//! real NSM its measurement: the image's PCRs, computed by the launcher from
//! the EIF it boots (never by the guest from itself), and a CA for this boot
//! under the development root, which signs the guest's documents.

use std::collections::BTreeMap;
use std::fmt;

use nekms_attestation::pki::{CaMaterial, DocumentSigner, PkiError};
use nekms_attestation::Pcr48;
use zeroize::Zeroizing;

use crate::measure::Measurement;
use crate::SimConfig;

/// Where the guest finds the handover: fw_cfg's file `opt/nekms/nsm`.
pub const FW_CFG_NAME: &str = "opt/nekms/nsm";
pub const GUEST_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/nekms/nsm/raw";

/// The handover, JSON.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// PCR index to hex value: 0, 1, 2, and 8 for a signed image.
    pub pcrs: BTreeMap<u8, String>,
    /// The development root (PEM) the boot CA chains to.
    pub root_pem: String,
    /// The boot CA: its certificate and its PKCS#8 key (PEM).
    pub ca_cert_pem: String,
    pub ca_key_pem: Zeroizing<String>,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover").field("pcrs", &self.pcrs).field("ca_key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// Why a handover cannot boot an NSM.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("not a handover: {0}")]
    Json(#[from] serde_json::Error),
    #[error("PCR{index}: {message}")]
    Pcr { index: u8, message: String },
    #[error("the handover lacks PCR{0}")]
    Missing(u8),
    #[error("the boot CA: {0}")]
    Pki(#[from] PkiError),
}

impl Handover {
    pub fn parse(bytes: &[u8]) -> Result<Handover, HandoverError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    fn pcr(&self, index: u8) -> Result<Option<Pcr48>, HandoverError> {
        self.pcrs.get(&index).map(|h| h.parse::<Pcr48>().map_err(|e| HandoverError::Pcr { index, message: e.to_string() })).transpose()
    }

    /// The simulator's configuration and document signer this handover gives.
    pub fn boot_parts(&self) -> Result<(SimConfig, DocumentSigner), HandoverError> {
        let get = |i: u8| self.pcr(i)?.ok_or(HandoverError::Missing(i));
        let measurement = Measurement { pcr0: get(0)?, pcr1: get(1)?, pcr2: get(2)? };
        let mut config = SimConfig::new(measurement);
        config.pcr8 = self.pcr(8)?;
        let ca = CaMaterial { cert_pem: self.ca_cert_pem.clone(), key_pem: self.ca_key_pem.clone() };
        Ok((config, DocumentSigner::new(&self.root_pem, &ca)?))
    }
}
