//! The enclave's settings: flags, over a TOML file (`--config`), over defaults.

use std::path::PathBuf;

/// Settings as given: every one optional, so a flag can override the file.
#[derive(Clone, Debug, Default, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EnclaveArgs {
    /// Use the simulated NSM (development); without it /dev/nsm is required
    #[arg(long)]
    #[serde(default)]
    pub sim: bool,
    /// Simulated NSM: report zero PCRs 0-8, like an enclave run with --debug-mode
    #[arg(long)]
    #[serde(default)]
    pub debug_mode: bool,
    /// Simulated NSM: the development world whose intermediate signs documents
    #[arg(long, value_name = "DIR")]
    pub dev_dir: Option<PathBuf>,
    /// Simulated NSM: the image to measure for PCR0-2 [default: this executable]
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Simulated NSM in a guest VM: the PCRs and the document-signing CA the launcher handed over (fw_cfg:
    /// /sys/firmware/qemu_fw_cfg/by_name/opt/nekms/nsm/raw), instead of measuring --image
    #[arg(long, value_name = "FILE")]
    pub sim_from: Option<PathBuf>,
    /// Simulated NSM: a signature section over the measured PCR0 (`nekms pcr sim --sign-key`), checked as nitro-cli
    /// checks an image's; its certificate becomes PCR8
    #[arg(long, value_name = "FILE")]
    pub sim_signature: Option<PathBuf>,
    /// Where the native RPC is served [default: vsock://any:5000]
    #[arg(long, value_name = "ADDR")]
    pub rpc: Option<String>,
    /// Where kmstool's protocol is served [default: vsock://any:3000]
    #[arg(long, value_name = "ADDR")]
    pub kmstool: Option<String>,
    /// Where the PKCS#11 module inside the enclave reaches the enclave (the
    /// native RPC again, on an in-enclave Unix socket such as
    /// unix:///run/nekms/p11.sock) [default: not served]
    #[arg(long, value_name = "ADDR")]
    pub p11: Option<String>,
    /// Where the parent's `nekms privval proxy` connects validators to the
    /// signer [default: not served]
    #[arg(long, value_name = "ADDR")]
    pub privval: Option<String>,
    /// The parent's state store (`nekms privval persist`), as the enclave
    /// dials it, e.g. vsock://parent:5101 [default: none]
    #[arg(long, value_name = "ADDR")]
    pub privval_state: Option<String>,
    /// The parent's audit collector (`nekms audit collect`), as the enclave
    /// dials it, e.g. vsock://parent:5102 [default: none: lines wait in a
    /// bounded queue and the oldest are dropped, said in the trail]
    #[arg(long, value_name = "ADDR")]
    pub audit: Option<String>,
    /// The parent's log collector (`nekms logs collect`), as the enclave
    /// dials it, e.g. vsock://parent:5103: every log line goes there as
    /// well as to stderr (a production enclave has no console) [default:
    /// none]
    #[arg(long, value_name = "ADDR")]
    pub logs: Option<String>,
    /// Log lines as text or JSON objects; levels come from RUST_LOG
    /// (the image's environment) [default: text, and info]
    #[arg(long, value_enum, value_name = "FORMAT", env = "NEKMS_LOG_FORMAT")]
    pub log_format: Option<nekms_log::Format>,
    /// The parent's KMS proxy, as the enclave dials it [default: vsock://parent:8000]
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<String>,
    /// KMS endpoint URL [default: https://kms.REGION.amazonaws.com]; the local KMS is https://localhost:PORT
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// CA certificates (PEM) for the KMS endpoint [default: the bundled web PKI roots]
    #[arg(long, value_name = "PEM")]
    pub kms_ca: Option<PathBuf>,
    /// Region to use whatever the parent says (kmstool: the enclave's region wins)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Largest kmstool message in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub max_message: Option<usize>,
    /// Opened keys kept in memory for warm signing; 0 opens the record every time [default: 1024]
    #[arg(long, value_name = "N")]
    pub key_cache: Option<usize>,
    /// Seconds an opened key stays cached [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub key_cache_ttl: Option<u64>,
    // What the enclave trusts ([`TrustArgs`]): in the configuration file
    // only, which is measured into PCR0 with the image (a flag would not be).
    #[arg(skip)]
    #[serde(default)]
    pub custody_kms_keys: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub origin_pcr0: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub origin_pcr8: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub custody_trust: Option<String>,
    #[arg(skip)]
    #[serde(default)]
    pub migration_approvers: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub migration_threshold: Option<usize>,
    #[arg(skip)]
    #[serde(default)]
    pub parent_decrypt: Option<bool>,
    #[arg(skip)]
    #[serde(default)]
    pub parent_decrypt_keys: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub allow_import: bool,
    #[arg(skip)]
    #[serde(default)]
    pub attestation_root: Option<PathBuf>,
    #[arg(skip)]
    #[serde(default)]
    pub rpc_any_vsock_peer: bool,
    #[arg(skip)]
    #[serde(default)]
    pub privval_max_height_jump: Option<i64>,
    /// p11-kit's server for the PKCS#11 module, which the enclave starts
    /// (and restarts) beside itself: its command line, e.g.
    /// ["/usr/libexec/p11-kit/p11-kit-server", "-f", "-n", "vsock:port=9999",
    /// "--provider", "/usr/lib/nekms/libnekms_p11.so", "pkcs11:"]. In the
    /// measured file only; it needs `p11`.
    #[arg(skip)]
    #[serde(default)]
    pub p11_kit_server: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub privval_anchor_table: Option<String>,
    #[arg(skip)]
    #[serde(default)]
    pub privval_anchor_endpoint: Option<String>,
    #[arg(skip)]
    #[serde(default)]
    pub privval_anchor_region: Option<String>,
    /// The parent's proxy to the anchor's DynamoDB endpoint, as the enclave
    /// dials it [default: vsock://parent:8001 when an anchor is configured]
    #[arg(long, value_name = "ADDR")]
    pub privval_anchor_proxy: Option<String>,
}

/// The trust settings ([`crate::trust`]), read from the measured
/// configuration file only.
#[derive(Clone, Debug, Default)]
pub struct TrustArgs {
    /// The KMS keys (full ARNs) custody may seal under and open from. Their
    /// region is the enclave's region. Empty: no custody at all.
    pub custody_kms_keys: Vec<String>,
    /// Other enclave images (PCR0, hex) whose origin documents this enclave
    /// accepts on records, besides its own (the two-enclave flow).
    pub origin_pcr0: Vec<String>,
    /// Image signers (PCR8, hex) whose images' origin documents this
    /// enclave accepts: every image their keys sign.
    pub origin_pcr8: Vec<String>,
    /// `"pcr0"` [default]: this image trusts records its own build made;
    /// `"pcr8"`: also those any image of its own signer made (so a rebuilt,
    /// signed image keeps its keys; the custody key's policy trusts PCR8).
    pub custody_trust: Option<String>,
    /// Who may approve moving custody to another KMS key (base64 SPKI DER,
    /// Ed25519 or P-256) and how many of them must ([`crate::migrate`]).
    /// None: migration is off.
    pub migration_approvers: Vec<String>,
    pub migration_threshold: Option<usize>,
    /// Whether Decrypt/GenerateDataKey for the parent (kmstool's service,
    /// the RPC's generic calls, the cli verbs) are offered [default: only
    /// when no custody key is pinned].
    pub parent_decrypt: Option<bool>,
    /// If not empty, the only KMS keys (ARNs) parent decryption may use.
    pub parent_decrypt_keys: Vec<String>,
    /// Whether ImportKey is offered and imported records are opened
    /// [default: false]: an imported key is as secret as its administrator
    /// kept it, and the administrator may import at will.
    pub allow_import: bool,
    /// PEM root(s) that origin documents must chain to [default: the AWS
    /// Nitro Enclaves root, or the development root for a simulated NSM].
    pub attestation_root: Option<PathBuf>,
    /// Serve the native RPC to vsock peers on any port [default: false:
    /// only peers on a port below 1024, which only root can bind].
    pub rpc_any_vsock_peer: bool,
    /// The most heights above the last signed one the validator signer
    /// signs in one request [default: 1,000,000]; a pushed chain may only
    /// lower it.
    pub privval_max_height_jump: Option<i64>,
    /// The validator signer's freshness anchor: a DynamoDB table (its name,
    /// endpoint URL and region) the enclave writes each new state to with a
    /// conditional write, under credentials only it holds. Absent: local
    /// mode, no freshness.
    pub privval_anchor_table: Option<String>,
    pub privval_anchor_endpoint: Option<String>,
    pub privval_anchor_region: Option<String>,
}

/// Settings in force.
#[derive(Clone, Debug)]
pub struct EnclaveConfig {
    pub sim: bool,
    pub debug_mode: bool,
    pub dev_dir: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub sim_from: Option<PathBuf>,
    pub sim_signature: Option<PathBuf>,
    pub rpc: String,
    pub kmstool: String,
    pub p11: Option<String>,
    pub p11_kit_server: Vec<String>,
    pub privval: Option<String>,
    pub privval_state: Option<String>,
    pub privval_anchor_proxy: Option<String>,
    pub audit: Option<String>,
    pub logs: Option<String>,
    pub log_format: nekms_log::Format,
    pub proxy: String,
    pub kms_endpoint: Option<String>,
    pub kms_ca: Option<PathBuf>,
    pub region: Option<String>,
    pub max_message: usize,
    pub key_cache: usize,
    pub key_cache_ttl: u64,
    pub trust: TrustArgs,
    /// The configuration file, measured with the image by a simulated NSM.
    pub config_file: Option<PathBuf>,
}

impl EnclaveArgs {
    /// Read a TOML file of the same settings (`kms-endpoint = "..."`).
    pub fn from_toml(text: &str) -> Result<EnclaveArgs, toml::de::Error> {
        toml::from_str(text)
    }

    /// Flags win over the file; defaults fill the rest.
    pub fn resolve(self, file: EnclaveArgs) -> EnclaveConfig {
        EnclaveConfig {
            sim: self.sim || file.sim,
            debug_mode: self.debug_mode || file.debug_mode,
            dev_dir: self.dev_dir.or(file.dev_dir),
            image: self.image.or(file.image),
            sim_from: self.sim_from.or(file.sim_from),
            sim_signature: self.sim_signature.or(file.sim_signature),
            rpc: self.rpc.or(file.rpc).unwrap_or_else(|| "vsock://any:5000".into()),
            kmstool: self.kmstool.or(file.kmstool).unwrap_or_else(|| "vsock://any:3000".into()),
            p11: self.p11.or(file.p11),
            p11_kit_server: file.p11_kit_server,
            privval: self.privval.or(file.privval),
            privval_state: self.privval_state.or(file.privval_state),
            audit: self.audit.or(file.audit),
            logs: self.logs.or(file.logs),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            privval_anchor_proxy: self.privval_anchor_proxy.or(file.privval_anchor_proxy),
            proxy: self.proxy.or(file.proxy).unwrap_or_else(|| "vsock://parent:8000".into()),
            kms_endpoint: self.kms_endpoint.or(file.kms_endpoint),
            kms_ca: self.kms_ca.or(file.kms_ca),
            region: self.region.or(file.region),
            max_message: self.max_message.or(file.max_message).unwrap_or(64 * 1024),
            key_cache: self.key_cache.or(file.key_cache).unwrap_or(1024),
            key_cache_ttl: self.key_cache_ttl.or(file.key_cache_ttl).unwrap_or(300),
            trust: TrustArgs {
                custody_kms_keys: file.custody_kms_keys,
                origin_pcr0: file.origin_pcr0,
                origin_pcr8: file.origin_pcr8,
                custody_trust: file.custody_trust,
                migration_approvers: file.migration_approvers,
                migration_threshold: file.migration_threshold,
                parent_decrypt: file.parent_decrypt,
                parent_decrypt_keys: file.parent_decrypt_keys,
                allow_import: file.allow_import,
                attestation_root: file.attestation_root,
                rpc_any_vsock_peer: file.rpc_any_vsock_peer,
                privval_max_height_jump: file.privval_max_height_jump,
                privval_anchor_table: file.privval_anchor_table,
                privval_anchor_endpoint: file.privval_anchor_endpoint,
                privval_anchor_region: file.privval_anchor_region,
            },
            config_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = EnclaveArgs::from_toml("sim = true\nproxy = \"unix:///run/p.sock\"\nregion = \"eu-west-1\"\n").unwrap();
        let flags = EnclaveArgs { region: Some("us-west-2".into()), ..Default::default() };
        let c = flags.resolve(file);
        assert!(c.sim);
        assert_eq!(c.proxy, "unix:///run/p.sock");
        assert_eq!(c.region.as_deref(), Some("us-west-2"));
        assert_eq!(c.kmstool, "vsock://any:3000");
        assert_eq!(c.rpc, "vsock://any:5000");
        assert!(EnclaveArgs::from_toml("unknown = 1").is_err());
        assert!(c.trust.custody_kms_keys.is_empty());
    }

    #[test]
    fn trust_comes_from_the_file() {
        let file =
            EnclaveArgs::from_toml("custody-kms-keys = [\"arn:aws:kms:us-east-1:111122223333:key/k\"]\nparent-decrypt = false\n").unwrap();
        let c = EnclaveArgs::default().resolve(file);
        assert_eq!(c.trust.custody_kms_keys.len(), 1);
        assert_eq!(c.trust.parent_decrypt, Some(false));
    }
}
