//! `nekms-enclave`: the only program inside the enclave.
//!
//! At start it opens the NSM (`/dev/nsm`, or the simulator when told),
//! makes an ephemeral RSA-2048 recipient key that never leaves its memory,
//! and serves kmstool's protocol ([`kmstool`]). KMS is reached through the
//! parent's proxy with TLS end to end ([`nekms_kms_client`]); every release
//! of key material is sealed to the recipient key by KMS and opened here.
//! Plaintext and credentials are never logged.
#![forbid(unsafe_code)]

pub mod config;
pub mod kmstool;

use std::sync::Arc;

use nekms_kms_client::{ChannelHttpClient, EnclaveKms, TlsRoots};
use nekms_nsm::Nsm;

/// What every service of the enclave shares.
pub struct Enclave {
    pub nsm: Arc<dyn Nsm>,
    pub kms: EnclaveKms,
    /// A region fixed by the enclave's configuration wins over the parent's.
    pub region: Option<String>,
}

impl Enclave {
    pub fn new(nsm: Arc<dyn Nsm>, config: &config::EnclaveConfig) -> anyhow::Result<Enclave> {
        let roots = match &config.kms_ca {
            Some(path) => TlsRoots::Pem(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
            None => TlsRoots::WebPki,
        };
        let http = ChannelHttpClient::new(config.proxy.parse()?, roots).map_err(anyhow::Error::msg)?;
        let kms = EnclaveKms::new(nsm.clone(), http, config.kms_endpoint.clone())?;
        Ok(Enclave { nsm, kms, region: config.region.clone() })
    }
}
