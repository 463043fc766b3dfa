//! tmkms.toml, as much of it as a softsign deployment uses, read with
//! tmkms's strictness (unknown keys are refused, as tmkms refuses them) and
//! nekms's refusals: no key in the clear on the parent, no signer but the
//! enclave's.
//!
//! Fields nekms does not follow are still accepted, so a stock file reads;
//! [`crate::push`] says what becomes of them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::proxy::parse_validator_addr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmkmsConfig {
    #[serde(default)]
    pub chain: Vec<ChainConfig>,
    #[serde(default)]
    pub providers: Providers,
    #[serde(default)]
    pub validator: Vec<ValidatorConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub id: String,
    /// Accepted so a stock file reads.
    #[serde(default)]
    pub key_format: Option<toml::Value>,
    /// Accepted; `false` is not followed (a note says so).
    #[serde(default)]
    pub sign_extensions: Option<bool>,
    /// tmkms's state file: the state lives in the enclave's store here;
    /// import this file once with `nekms privval state import`.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Refused when the chain is pushed: nekms runs no command on the parent.
    #[serde(default)]
    pub state_hook: Option<toml::Value>,
    /// PR 229: the vsock port of the parent's state process.
    #[serde(default)]
    pub state_vsock_port: Option<u32>,
    /// nekms: at most this many heights above the last signed one.
    #[serde(default)]
    pub max_height_jump: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    #[serde(default)]
    pub softsign: Vec<SoftsignConfig>,
    #[serde(default)]
    pub yubihsm: Option<toml::Value>,
    #[serde(default)]
    pub ledgertm: Option<toml::Value>,
    #[serde(default)]
    pub fortanixdsm: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftsignConfig {
    pub chain_ids: Vec<String>,
    #[serde(default)]
    pub key_type: Option<String>,
    /// Accepted so a stock file reads.
    #[serde(default)]
    pub key_format: Option<String>,
    /// tmkms: the key file, in the clear. Refused: nekms keeps no consensus key on the parent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PR 229: the key as a KMS ciphertext (made with `nekms key encrypt-for-import --privval`).
    #[serde(default)]
    pub encrypted_key_b64: Option<String>,
    /// PR 229; accepted so its files read.
    #[serde(default)]
    pub aws_region: Option<String>,
    /// nekms: the consensus key's custody record name.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    pub chain_id: String,
    pub addr: String,
    #[serde(default)]
    pub protocol_version: Option<String>,
    #[serde(default = "yes")]
    pub reconnect: bool,
    /// Accepted so a stock file reads.
    #[serde(default)]
    pub timeout: Option<u16>,
    /// tmkms: the SecretConnection identity file. Refused: give `identity`.
    #[serde(default)]
    pub secret_key: Option<PathBuf>,
    /// nekms: the SecretConnection identity's custody record name (Ed25519).
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub max_height: Option<toml::Value>,
}

fn yes() -> bool {
    true
}

impl ValidatorConfig {
    /// A validator entry for the relay alone (the bench).
    pub fn for_relay(chain_id: &str, addr: &str) -> ValidatorConfig {
        ValidatorConfig {
            chain_id: chain_id.into(),
            addr: addr.into(),
            protocol_version: None,
            reconnect: false,
            timeout: None,
            secret_key: None,
            identity: None,
            max_height: None,
        }
    }
}

impl TmkmsConfig {
    /// Read and check the file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<TmkmsConfig> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        TmkmsConfig::parse(&text, path)
    }

    /// Check `text`, the contents of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<TmkmsConfig> {
        let config: TmkmsConfig = toml::from_str(text).with_context(|| format!("{}: not a tmkms.toml nekms reads", path.display()))?;
        for (name, present) in [
            ("yubihsm", config.providers.yubihsm.is_some()),
            ("ledgertm", config.providers.ledgertm.is_some()),
            ("fortanixdsm", config.providers.fortanixdsm.is_some()),
        ] {
            if present {
                bail!("[[providers.{name}]]: nekms signs with keys in its enclave; only [[providers.softsign]] entries (with key = or encrypted_key_b64 =) are read");
            }
        }
        for v in &config.validator {
            if !config.chain.iter().any(|c| c.id == v.chain_id) {
                bail!("[[validator]] {}: chain {:?} has no [[chain]]", v.addr, v.chain_id);
            }
            if v.secret_key.is_some() {
                bail!(
                    "[[validator]] {}: secret_key is a SecretConnection key in the clear on the parent; nekms keeps it in custody: nekms key create --spec ed25519 --name NAME, then identity = \"NAME\"",
                    v.addr
                );
            }
            parse_validator_addr(&v.addr)?;
        }
        Ok(config)
    }
}

/// A `max_height`: tmkms takes an integer or a string of one.
pub(crate) fn toml_height(v: &toml::Value) -> anyhow::Result<i64> {
    match v {
        toml::Value::Integer(i) => Ok(*i),
        toml::Value::String(s) => s.parse().with_context(|| format!("max_height {s:?}")),
        other => bail!("max_height {other}: a height"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<TmkmsConfig> {
        TmkmsConfig::parse(text, Path::new("tmkms.toml"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("refused"))
    }

    const STOCK: &str = r#"
[[chain]]
id = "cosmoshub-4"
key_format = { type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }
state_file = "/var/lib/tmkms/state/cosmoshub-4-consensus.json"
sign_extensions = true

[[providers.softsign]]
chain_ids = ["cosmoshub-4"]
key_type = "consensus"
key = "validator-1"

[[validator]]
chain_id = "cosmoshub-4"
addr = "tcp://0123456789abcdef0123456789abcdef01234567@127.0.0.1:26658"
identity = "node-identity"
protocol_version = "v0.38"
reconnect = true
max_height = "1000000"
"#;

    #[test]
    fn a_stock_softsign_file_with_a_custody_key_reads() {
        let c = parse(STOCK).unwrap();
        assert_eq!(c.chain[0].id, "cosmoshub-4");
        assert_eq!(c.providers.softsign[0].key.as_deref(), Some("validator-1"));
        assert_eq!(c.validator[0].identity.as_deref(), Some("node-identity"));
        assert!(c.validator[0].reconnect);
    }

    #[test]
    fn reconnect_is_on_unless_turned_off() {
        let c = parse("[[chain]]\nid = \"c\"\n[[validator]]\nchain_id = \"c\"\naddr = \"unix:///tmp/v.sock\"\n").unwrap();
        assert!(c.validator[0].reconnect);
    }

    #[test]
    fn an_unknown_key_is_refused_as_tmkms_refuses_it() {
        let e = error("[[chain]]\nid = \"c\"\ncolour = \"blue\"\n");
        assert!(e.starts_with("tmkms.toml: not a tmkms.toml nekms reads: "), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn hardware_providers_are_refused() {
        for name in ["yubihsm", "ledgertm", "fortanixdsm"] {
            let e = error(&format!("[[providers.{name}]]\nchain_ids = [\"c\"]\n"));
            assert_eq!(e, format!("[[providers.{name}]]: nekms signs with keys in its enclave; only [[providers.softsign]] entries (with key = or encrypted_key_b64 =) are read"));
        }
    }

    #[test]
    fn a_validator_of_a_chain_not_configured_is_refused() {
        let e = error("[[validator]]\nchain_id = \"c\"\naddr = \"unix:///tmp/v.sock\"\n");
        assert_eq!(e, "[[validator]] unix:///tmp/v.sock: chain \"c\" has no [[chain]]");
    }

    #[test]
    fn a_secret_connection_key_file_is_refused() {
        let e =
            error("[[chain]]\nid = \"c\"\n[[validator]]\nchain_id = \"c\"\naddr = \"tcp://127.0.0.1:26658\"\nsecret_key = \"/k.json\"\n");
        assert!(
            e.starts_with("[[validator]] tcp://127.0.0.1:26658: secret_key is a SecretConnection key in the clear on the parent"),
            "{e}"
        );
    }

    #[test]
    fn a_validator_address_that_does_not_parse_is_refused_when_read() {
        let e = error("[[chain]]\nid = \"c\"\n[[validator]]\nchain_id = \"c\"\naddr = \"http://127.0.0.1:1\"\n");
        assert_eq!(e, "validator address \"http://127.0.0.1:1\": unix://PATH or tcp://NODE_ID@HOST:PORT");
    }

    #[test]
    fn max_height_is_an_integer_or_a_string_of_one() {
        assert_eq!(toml_height(&toml::Value::Integer(7)).unwrap(), 7);
        assert_eq!(toml_height(&toml::Value::String("8".into())).unwrap(), 8);
        assert!(format!("{:#}", toml_height(&toml::Value::String("x".into())).unwrap_err()).starts_with("max_height \"x\": "));
        assert_eq!(toml_height(&toml::Value::Boolean(true)).unwrap_err().to_string(), "max_height true: a height");
    }
}
