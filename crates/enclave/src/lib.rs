//! `nekms-enclave`: the only program inside the enclave.
//!
//! At start it opens the NSM (`/dev/nsm`, or the simulator when told),
//! makes an ephemeral RSA-2048 recipient key that never leaves its memory,
//! and serves the native RPC ([`rpc`], [`nekms_rpc`]) and kmstool's protocol
//! ([`kmstool`]). KMS is reached through the
//! parent's proxy with TLS end to end ([`nekms_kms_client`]); every release
//! of key material is sealed to the recipient key by KMS and opened here.
//! Plaintext and credentials are never logged.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod companion;
pub mod config;
pub mod custody;
pub mod kmstool;
pub mod migrate;
pub mod p11;
mod p11_public;
pub mod privval;
pub mod privval_anchor;
pub mod rpc;
mod sim;
pub mod trust;

use std::sync::Arc;
use std::time::SystemTime;

use nekms_kms_client::{ChannelHttpClient, Credentials, EnclaveKms, TlsRoots};
use nekms_nsm::Nsm;
use zeroize::Zeroizing;

/// What every service of the enclave shares.
pub struct Enclave {
    pub nsm: Arc<dyn Nsm>,
    pub kms: EnclaveKms,
    /// A region fixed by the enclave's configuration wins over the parent's.
    pub region: Option<String>,
    /// For Describe: the KMS endpoint if fixed, the proxy, kmstool's address.
    pub kms_endpoint: Option<String>,
    pub proxy: String,
    pub kmstool: Option<String>,
    /// Opened keys ([`custody`]).
    pub keys: custody::KeyCache,
    /// What the enclave trusts and refuses ([`trust`]).
    pub trust: trust::Trust,
    /// PKCS#11 tokens ([`p11`]).
    pub p11: p11::Tokens,
    /// The validator signer ([`privval`]).
    pub privval: privval::Signer,
    /// Moving custody to another key under a quorum ([`migrate`]).
    pub migrations: migrate::Migrations,
    /// The audit trail ([`audit`]).
    pub audit: audit::Audit,
}

impl Enclave {
    pub fn new(nsm: Arc<dyn Nsm>, config: &config::EnclaveConfig) -> anyhow::Result<Enclave> {
        let roots = match &config.kms_ca {
            Some(path) => TlsRoots::Pem(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
            None => TlsRoots::WebPki,
        };
        let http = ChannelHttpClient::new(config.proxy.parse()?, roots).map_err(anyhow::Error::msg)?;
        let kms = EnclaveKms::new(nsm.clone(), http, config.kms_endpoint.clone())?;
        let own_pcr0 = nsm.describe_pcr(0).map_err(|e| anyhow::anyhow!("reading PCR0: {e}"))?.value;
        let own_pcr8 = nsm.describe_pcr(8).map_err(|e| anyhow::anyhow!("reading PCR8: {e}"))?.value;
        let verifier = origin_verifier(&*nsm, config)?;
        let audit = audit::Audit::new(&*nsm)?;
        let mut trust = trust::Trust::new(&config.trust, (own_pcr0, own_pcr8), verifier, nsm.is_simulated())
            .map_err(|e| anyhow::anyhow!("the enclave's configuration: {e}"))?;
        // The custody keys fix the region; a configured one must agree.
        let region = match (trust.region(), &config.region) {
            (Some(pinned), Some(given)) if pinned != given => {
                anyhow::bail!("the enclave's configuration: region {given} differs from the custody keys' region {pinned}")
            }
            (Some(pinned), _) => Some(pinned.to_owned()),
            (None, given) => given.clone(),
        };
        let anchor = anchor(config, &region, nsm.is_simulated())?;
        let migrations = migrate::Migrations::new(&config.trust.migration_approvers, config.trust.migration_threshold)
            .map_err(|e| anyhow::anyhow!("the enclave's configuration: {e}"))?;
        let (approvers, threshold) = migrations.approvers();
        trust.set_migration_approvers(approvers, threshold);
        Ok(Enclave {
            nsm,
            kms,
            region,
            kms_endpoint: config.kms_endpoint.clone(),
            proxy: config.proxy.clone(),
            kmstool: Some(config.kmstool.clone()),
            keys: custody::KeyCache::new(config.key_cache, std::time::Duration::from_secs(config.key_cache_ttl)),
            trust,
            p11: p11::Tokens::default(),
            privval: privval::Signer::new(
                config.privval_state.as_deref().map(str::parse).transpose().map_err(|e| anyhow::anyhow!("--privval-state: {e}"))?,
                config.trust.privval_max_height_jump,
                anchor,
            )?,
            migrations,
            audit,
        })
    }

    /// Install the enclave's credentials from the parent (the RPC's
    /// SetCredentials). The region: the enclave's own setting, else the
    /// parent's, else us-east-1, as kmstool documents.
    pub fn set_credentials(
        &self,
        access_key_id: String,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        region: Option<String>,
        expiration: Option<SystemTime>,
    ) -> nekms_rpc::CredentialsInfo {
        let region = self.region.clone().or(region).unwrap_or_else(|| "us-east-1".into());
        self.kms.set_credentials(Credentials { access_key_id, secret_access_key, session_token, region, expiration });
        self.credentials_info().expect("credentials were just set")
    }

    /// Credentials for one kmstool connection, with the same region rule;
    /// the enclave's own credentials stay as they are.
    pub fn kmstool_session(
        &self,
        access_key_id: String,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        region: Option<String>,
    ) -> nekms_kms_client::KmsSession {
        let region = self.region.clone().or(region).unwrap_or_else(|| "us-east-1".into());
        self.kms.session(Credentials { access_key_id, secret_access_key, session_token, region, expiration: None })
    }
}

/// The validator signer's anchor, when the measured configuration names one.
///
/// On hardware the table must be an ARN (DynamoDB takes one as the table
/// name, so the account is fixed whatever credentials arrive) and the
/// endpoint HTTPS; a simulated enclave may name a local table over HTTP (moto).
fn anchor(config: &config::EnclaveConfig, region: &Option<String>, simulated: bool) -> anyhow::Result<Option<privval_anchor::Anchor>> {
    let Some(table) = &config.trust.privval_anchor_table else {
        return Ok(None);
    };
    if !simulated {
        if !table.starts_with("arn:aws:dynamodb:") || !table.contains(":table/") {
            anyhow::bail!("privval-anchor-table {table:?}: give the table's ARN (arn:aws:dynamodb:REGION:ACCOUNT:table/NAME), so the account is pinned");
        }
        if config.trust.privval_anchor_endpoint.as_deref().is_some_and(|e| !e.starts_with("https://")) {
            anyhow::bail!("privval-anchor-endpoint: HTTPS only outside a simulated enclave");
        }
    }
    let region = config.trust.privval_anchor_region.clone().or(region.clone()).unwrap_or_else(|| "us-east-1".into());
    check_region(&region).map_err(anyhow::Error::msg)?;
    let proxy = config.privval_anchor_proxy.clone().unwrap_or_else(|| "vsock://parent:8001".into());
    let roots = match &config.kms_ca {
        Some(path) => TlsRoots::Pem(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
        None => TlsRoots::WebPki,
    };
    Ok(Some(privval_anchor::Anchor::new(table.clone(), config.trust.privval_anchor_endpoint.clone(), region, &proxy.parse()?, roots)?))
}

/// A region name as AWS spells them (`eu-west-1`): it becomes part of the KMS
/// endpoint's host name, so nothing else is accepted from the parent.
pub fn check_region(region: &str) -> Result<(), String> {
    if !region.is_empty() && region.len() <= 32 && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Ok(())
    } else {
        Err(format!("{region:?} is not a region name (lowercase letters, digits and -)"))
    }
}

/// The root origin documents must chain to: the configured one, else the
/// development root for a simulated NSM, else AWS's.
fn origin_verifier(nsm: &dyn Nsm, config: &config::EnclaveConfig) -> anyhow::Result<nekms_attestation::Verifier> {
    let pem = match &config.trust.attestation_root {
        Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("attestation-root {}: {e}", path.display()))?,
        None if nsm.is_simulated() => sim::dev_root_pem(config)?,
        None => return Ok(nekms_attestation::Verifier::aws()),
    };
    nekms_attestation::Verifier::from_pem(&pem).map_err(|e| anyhow::anyhow!("the attestation root: {e}"))
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    fn config(table: &str, endpoint: &str) -> config::EnclaveConfig {
        let file =
            config::EnclaveArgs::from_toml(&format!("privval-anchor-table = {table:?}\nprivval-anchor-endpoint = {endpoint:?}\n")).unwrap();
        config::EnclaveArgs { privval_anchor_proxy: Some("unix:///tmp/anchor.sock".into()), ..Default::default() }.resolve(file)
    }

    #[test]
    fn on_hardware_the_anchor_is_a_table_arn_over_https() {
        let arn = "arn:aws:dynamodb:eu-west-1:111122223333:table/nekms-privval-anchor";
        assert!(anchor(&config(arn, "https://dynamodb.eu-west-1.amazonaws.com"), &None, false).unwrap().is_some());
        let e = anchor(&config("nekms-privval-anchor", "https://dynamodb.eu-west-1.amazonaws.com"), &None, false).err().unwrap();
        assert!(e.to_string().contains("ARN"), "{e}");
        let e = anchor(&config(arn, "http://127.0.0.1:5000"), &None, false).err().unwrap();
        assert!(e.to_string().contains("HTTPS only"), "{e}");
        // A simulated enclave may use moto: a bare name over HTTP.
        assert!(anchor(&config("nekms-privval-anchor", "http://127.0.0.1:5000"), &None, true).unwrap().is_some());
        assert!(anchor(&config::EnclaveArgs::default().resolve(Default::default()), &None, false).unwrap().is_none());
    }
}
