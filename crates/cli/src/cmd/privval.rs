//! `nekms privval`: the validator signer's parent side.
//!
//! - `push-config`: read a tmkms.toml and push its chains to the enclave,
//!   each with its consensus key as a custody record (never a key file);
//! - `proxy`: dial each validator's `priv_validator_laddr` and relay it to
//!   the enclave's privval socket, reconnecting;
//! - `persist`: the state store the enclave commits each new state to,
//!   acknowledging only once the record is durable;
//! - `state init|import|show` and `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nekms_privval::store::{StoreReply, StoreRequest};
use nekms_rpc::{PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus};
use nekms_store::KeyStore;
use nekms_transport::frame::{self, read_frame, write_frame};
use nekms_transport::Address;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::enclave::EnclaveArg;
use super::key::{record, runtime, StoreArg};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Push tmkms.toml's chains to the enclave (consensus keys as custody records)
    PushConfig {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        /// tmkms.toml (stock, or with PR 229's nitro fields)
        #[arg(short = 'c', long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Relay each [[validator]] of tmkms.toml to the enclave's validator signer
    Proxy {
        /// The enclave's privval socket (unix:// in development, vsock://CID:PORT)
        #[arg(long, env = "NEKMS_PRIVVAL", value_name = "ADDR")]
        privval: String,
        #[arg(short = 'c', long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Keep the enclave's state records on disk (two slots per chain, written in place and fdatasynced before each acknowledgement)
    Persist {
        /// Where the enclave dials it (vsock://any:PORT, unix:///run/nekms/privval-state.sock)
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// The directory of state records
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Do not fsync (measurement only: an acknowledged state can then be lost in a crash)
        #[arg(long)]
        no_fsync: bool,
    },
    /// A chain's first state
    #[command(subcommand)]
    State(StateCommand),
    /// The freshness anchor's credentials
    #[command(subcommand)]
    Anchor(AnchorCommand),
    /// Every served chain: last signed height/round/step, counters, signatures, refusals
    Status {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum AnchorCommand {
    /// As the administrator: KMS-encrypt the anchor's DynamoDB credentials so only the enclave opens them
    EncryptCredentials {
        /// The custody KMS key (ARN) the enclave pins
        #[arg(long, value_name = "ARN")]
        kms_key: String,
        /// The anchor table exactly as the enclave's measured configuration names it (privval-anchor-table)
        #[arg(long)]
        table: String,
        /// The IAM identity allowed GetItem, PutItem and UpdateItem on the anchor table, and nothing else
        #[arg(long)]
        access_key_id: String,
        /// A file holding its secret access key
        #[arg(long, value_name = "FILE")]
        secret_access_key_file: PathBuf,
        /// Write the ciphertext here (binary) instead of printing base64
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long, env = "AWS_ENDPOINT_URL_KMS", value_name = "URL")]
        endpoint_url: Option<String>,
        #[arg(long)]
        profile: Option<String>,
    },
    /// Give the enclave the anchor's credentials (the ciphertext encrypt-credentials made)
    Credentials {
        #[command(flatten)]
        enclave: EnclaveArg,
        /// The ciphertext: a file (binary or base64)
        #[arg(long, value_name = "FILE")]
        ciphertext_file: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum StateCommand {
    /// Start a chain's state at a height: the first the signer may sign (nothing below it, ever). Give the
    /// height after the last one any earlier signer signed, or import that signer's state file
    Init {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        /// The consensus key's record name
        #[arg(long)]
        key: String,
        #[arg(long)]
        chain_id: String,
        #[arg(long)]
        height: i64,
    },
    /// Start a chain's state from tmkms's state file or CometBFT's priv_validator_state.json
    Import {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        key: String,
        #[arg(long)]
        chain_id: String,
        file: PathBuf,
    },
    /// The records in a state directory as the parent sees them (their tags only the enclave can check)
    Show {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

// tmkms.toml, as much of it as a softsign deployment uses. Unknown keys are
// refused, as tmkms refuses them.

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
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
    pub key_format: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
    pub sign_extensions: Option<bool>,
    /// tmkms's state file: the state lives in the enclave's store here;
    /// import this file once with `nekms privval state import`.
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
    pub state_file: Option<PathBuf>,
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
    pub state_hook: Option<toml::Value>,
    /// PR 229: the vsock port of the parent's state process.
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
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
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
    pub key_format: Option<String>,
    /// tmkms: the key file, in the clear. Refused: nekms keeps no consensus key on the parent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PR 229: the key as a KMS ciphertext (made with `nekms key encrypt-for-import --privval`).
    #[serde(default)]
    pub encrypted_key_b64: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
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
    #[serde(default)]
    #[allow(dead_code)] // accepted so a stock file reads; see push_config's notes
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
    pub(crate) fn for_relay(chain_id: &str, addr: &str) -> ValidatorConfig {
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
    pub fn read(path: &Path) -> anyhow::Result<TmkmsConfig> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let config: TmkmsConfig = toml::from_str(&text).with_context(|| format!("{}: not a tmkms.toml nekms reads", path.display()))?;
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

/// A validator's address: `unix://PATH`, or `tcp://[NODE_ID@]HOST:PORT`.
pub fn parse_validator_addr(addr: &str) -> anyhow::Result<(Address, Option<String>)> {
    if let Some(path) = addr.strip_prefix("unix://") {
        return Ok((format!("unix://{path}").parse()?, None));
    }
    let Some(rest) = addr.strip_prefix("tcp://") else {
        bail!("validator address {addr:?}: unix://PATH or tcp://NODE_ID@HOST:PORT");
    };
    let (id, host) = match rest.split_once('@') {
        Some((id, host)) => {
            if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("validator address {addr:?}: a node id is 40 hex digits");
            }
            (Some(id.to_ascii_lowercase()), host)
        }
        None => (None, rest),
    };
    let sa: std::net::SocketAddr = match host.parse() {
        Ok(sa) => sa,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(host)
            .with_context(|| format!("validator address {addr:?}"))?
            .next()
            .context("no address")?,
    };
    Ok((Address::Tcp(sa), id))
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            Command::PushConfig { enclave, store, config } => push_config(&enclave, &store, &config).await,
            Command::Proxy { privval, config } => {
                let config = TmkmsConfig::read(&config)?;
                proxy(privval.parse()?, config.validator).await
            }
            Command::Persist { listen, dir, no_fsync } => persist(&listen, &dir, !no_fsync).await,
            Command::State(StateCommand::Init { enclave, store, key, chain_id, height }) => {
                init(&enclave, &store, &key, &chain_id, Some(height), None).await
            }
            Command::State(StateCommand::Import { enclave, store, key, chain_id, file }) => {
                let json = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
                init(&enclave, &store, &key, &chain_id, None, Some(json)).await
            }
            Command::State(StateCommand::Show { dir, json }) => show(&dir, json),
            Command::Anchor(AnchorCommand::EncryptCredentials {
                kms_key,
                table,
                access_key_id,
                secret_access_key_file,
                out,
                endpoint_url,
                profile,
            }) => {
                use base64::Engine;
                let secret = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&secret_access_key_file).with_context(|| secret_access_key_file.display().to_string())?,
                );
                let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(
                    &serde_json::json!({"access_key_id": access_key_id, "secret_access_key": secret.trim()}),
                )?);
                let client = super::key::admin_kms(endpoint_url.as_deref(), profile.as_deref()).await;
                let sent = client
                    .encrypt()
                    .key_id(&kms_key)
                    .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.as_slice()))
                    .encryption_context(nekms_keys::context::PURPOSE, nekms_enclave::privval_anchor::PURPOSE_ANCHOR_CREDENTIALS)
                    .encryption_context(nekms_enclave::privval_anchor::ANCHOR_TABLE, &table)
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("KMS Encrypt under {kms_key}: {}", aws_sdk_kms::error::DisplayErrorContext(&e)))?;
                let blob = sent.ciphertext_blob().context("KMS Encrypt gave no CiphertextBlob")?.as_ref().to_vec();
                match out {
                    Some(path) => std::fs::write(&path, &blob).with_context(|| path.display().to_string())?,
                    None => println!("{}", base64::engine::general_purpose::STANDARD.encode(&blob)),
                }
                Ok(())
            }
            Command::Anchor(AnchorCommand::Credentials { enclave, ciphertext_file }) => {
                use base64::Engine;
                let raw = std::fs::read(&ciphertext_file).with_context(|| ciphertext_file.display().to_string())?;
                let text = String::from_utf8_lossy(&raw);
                let blob = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or(raw);
                match enclave.connect().await?.privval(PrivvalRequest::SetAnchorCredentials { ciphertext: blob }).await? {
                    PrivvalResponse::AnchorCredentialsSet { access_key_id } => {
                        println!("the anchor's credentials ({access_key_id}) are set in the enclave");
                        Ok(())
                    }
                    _ => bail!("the enclave answered SetAnchorCredentials with something else"),
                }
            }
            Command::Status { enclave, json } => {
                let PrivvalResponse::Status(chains) = enclave.connect().await?.privval(PrivvalRequest::Status).await? else {
                    bail!("the enclave answered Status with something else");
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&chains)?);
                } else if chains.is_empty() {
                    println!("no chain is served");
                }
                if !json {
                    for c in &chains {
                        print_status(c);
                    }
                }
                Ok(())
            }
        }
    })
}

fn print_status(c: &PrivvalStatus) {
    println!(
        "{}: key {} ({}, {}), {}; last signed height {} round {} step {}; state record {} (acknowledged {}); freshness {}",
        c.chain_id,
        c.key_id,
        c.key_type,
        hex::encode(&c.public_key),
        c.protocol_version,
        c.height,
        c.round,
        c.step,
        c.counter,
        c.committed,
        if c.freshness == "local" { "local (none across enclave restarts: see the README)" } else { &c.freshness }
    );
    let refusals: Vec<String> = c.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "  {} signatures ({} extensions), refusals: {}; {} connection(s) now, {} in all",
        c.signatures,
        c.extension_signatures,
        if refusals.is_empty() { "none".into() } else { refusals.join(", ") },
        c.connections,
        c.connections_total
    );
}

async fn push_config(enclave: &EnclaveArg, store: &StoreArg, path: &Path) -> anyhow::Result<()> {
    let config = TmkmsConfig::read(path)?;
    let store = store.open().await?;
    let client = enclave.connect().await?;
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for s in &config.providers.softsign {
        if let Some(t) = &s.key_type {
            if t != "consensus" {
                bail!("[[providers.softsign]] key_type = {t:?}: nekms signs consensus messages only (key_type = \"consensus\")");
            }
        }
        if let Some(path) = &s.path {
            bail!(
                "[[providers.softsign]] path = {path:?}: a softsign file is the consensus key in the clear on the parent; nekms keeps it in custody. As the administrator: nekms key encrypt-for-import --privval --name NAME --spec ed25519 --kms-key ARN FILE; then nekms key import --privval --name NAME ..., and key = \"NAME\" here"
            );
        }
        let name = s.key.clone().context("[[providers.softsign]]: give key = \"NAME\" (the consensus key's custody record)")?;
        if s.encrypted_key_b64.is_some() && store.get(&name).await?.is_none() {
            use base64::Engine;
            let blob = base64::engine::general_purpose::STANDARD
                .decode(s.encrypted_key_b64.as_deref().expect("present").trim())
                .context("encrypted_key_b64 is not base64")?;
            let spec = nekms_keys::KeySpec::Ed25519;
            let request = nekms_rpc::ImportKey {
                key_id: name.clone(),
                spec: Some(spec),
                kms_key_id: None,
                ciphertext: blob,
                ciphertext_context: Default::default(),
                ciphertext_key_id: None,
                encryption_context: Default::default(),
                nonce: None,
                decrypt: false,
                privval: true,
            };
            let r = client.import_key(request).await.with_context(|| format!("importing {name} from encrypted_key_b64"))?;
            super::key::keep(&store, &r, false).await?;
        }
        for c in &s.chain_ids {
            if keys.insert(c.clone(), name.clone()).is_some() {
                bail!("chain {c:?} has two consensus keys in [[providers.softsign]]");
            }
        }
    }
    for chain in &config.chain {
        if let Some(f) = &chain.state_file {
            eprintln!("note: chain {:?}: state_file {} is not used; the enclave keeps the state (import it once: nekms privval state import --key NAME --chain-id {} {})", chain.id, f.display(), chain.id, f.display());
        }
        if chain.sign_extensions == Some(false) {
            eprintln!("note: chain {:?}: sign_extensions = false is not followed; on v0.38+ every non-nil precommit's extension is signed, as CometBFT requires once extensions are enabled", chain.id);
        }
        if chain.state_hook.is_some() {
            bail!("chain {:?}: state_hook runs a command on the parent to bootstrap the state; nekms starts only from an imported or initialised state", chain.id);
        }
        let key_name = keys.get(&chain.id).with_context(|| format!("chain {:?} has no [[providers.softsign]] key", chain.id))?;
        let key = record(&store, key_name).await?;
        let validators: Vec<&ValidatorConfig> = config.validator.iter().filter(|v| v.chain_id == chain.id).collect();
        let versions: std::collections::BTreeSet<String> =
            validators.iter().map(|v| v.protocol_version.clone().unwrap_or_else(|| "v0.34".into())).collect();
        if versions.len() > 1 {
            bail!("chain {:?}: its validators give different protocol_version values ({versions:?})", chain.id);
        }
        let identities: std::collections::BTreeSet<&String> = validators.iter().filter_map(|v| v.identity.as_ref()).collect();
        if identities.len() > 1 {
            bail!("chain {:?}: one SecretConnection identity per chain", chain.id);
        }
        let identity = match identities.into_iter().next() {
            Some(n) => Some(record(&store, n).await?),
            None => None,
        };
        let max_height = validators
            .iter()
            .filter_map(|v| v.max_height.as_ref())
            .map(toml_height)
            .collect::<anyhow::Result<Vec<i64>>>()?
            .into_iter()
            .min();
        let request = PrivvalChain {
            chain_id: chain.id.clone(),
            key,
            protocol_version: versions.into_iter().next().unwrap_or_else(|| "v0.34".into()),
            max_height,
            max_height_jump: chain.max_height_jump,
            identity,
        };
        match client.privval(PrivvalRequest::Configure(Box::new(request))).await.with_context(|| format!("chain {:?}", chain.id))? {
            PrivvalResponse::Configured(status) => {
                print!("configured ");
                print_status(&status);
            }
            _ => bail!("the enclave answered Configure with something else"),
        }
    }
    Ok(())
}

fn toml_height(v: &toml::Value) -> anyhow::Result<i64> {
    match v {
        toml::Value::Integer(i) => Ok(*i),
        toml::Value::String(s) => s.parse().with_context(|| format!("max_height {s:?}")),
        other => bail!("max_height {other}: a height"),
    }
}

async fn init(
    enclave: &EnclaveArg,
    store: &StoreArg,
    key: &str,
    chain_id: &str,
    height: Option<i64>,
    import: Option<String>,
) -> anyhow::Result<()> {
    let record = record(&store.open().await?, key).await?;
    let request = PrivvalRequest::InitState { key: Box::new(record), chain_id: chain_id.into(), height, import };
    match enclave.connect().await?.privval(request).await? {
        PrivvalResponse::StateInitialized { height, round, step } => {
            if step == 0 {
                println!("state of {key} on {chain_id}: starts at height {height}; no height below it is ever signed");
            } else {
                println!("state of {key} on {chain_id}: last signed height {height} round {round} step {step}; nothing before it is ever signed, nor anything else at it");
            }
            Ok(())
        }
        _ => bail!("the enclave answered InitState with something else"),
    }
}

// The state store.

/// A name's two slot files: `<chain id, escaped>@<fingerprint>.state.0` and `.1`.
fn file_names(name: &str) -> anyhow::Result<[String; 2]> {
    let (fp, chain) = nekms_privval::store::check_name(name).map_err(anyhow::Error::msg)?;
    let mut escaped = String::new();
    for b in chain.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    Ok([0, 1].map(|i| format!("{escaped}@{fp}.state.{i}")))
}

/// A slot file: a 4-byte length, the record, zeros to a fixed size, so an
/// overwrite changes no metadata and one fdatasync makes it durable.
const SLOT: usize = 4096;

fn read_slot(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let n = frame::body_len(&bytes, usize::MAX).ok().flatten().unwrap_or(0);
    // A torn or emptied slot reads as whatever bytes it holds; the enclave's tag check decides.
    Ok(Some(bytes.get(4..4 + n).map(<[u8]>::to_vec).unwrap_or_else(|| bytes.clone())))
}

fn write_slot(dir: &Path, file: &str, record: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let path = dir.join(file);
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
    let mut block = frame::encode(record, u32::MAX as usize).map_err(std::io::Error::other)?;
    block.resize(block.len().max(SLOT), 0);
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(&block)?;
    if sync {
        if new {
            f.sync_all()?;
            std::fs::File::open(dir)?.sync_all()?;
        } else {
            f.sync_data()?;
        }
    }
    Ok(())
}

fn answer(dir: &Path, sync: bool, body: &[u8]) -> StoreReply {
    let request = match StoreRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return StoreReply::Failed(e.to_string()),
    };
    let files = match &request {
        StoreRequest::Get { name } | StoreRequest::Put { name, .. } => file_names(name),
    };
    let files = match files {
        Ok(f) => f,
        Err(e) => return StoreReply::Failed(e.to_string()),
    };
    match request {
        StoreRequest::Get { .. } => {
            let mut slots = Vec::new();
            for f in &files {
                match read_slot(&dir.join(f)) {
                    Ok(Some(b)) if !b.is_empty() => slots.push(b),
                    Ok(_) => {}
                    Err(e) => return StoreReply::Failed(format!("{f}: {e}")),
                }
            }
            if slots.is_empty() {
                StoreReply::None
            } else {
                StoreReply::Slots(slots)
            }
        }
        StoreRequest::Put { record, .. } => {
            // The slot is the record's counter modulo 2, so the newest and
            // the one before are always both on disk.
            let Some(counter) = nekms_privval::record::peek(&record).map(|r| r.counter) else {
                return StoreReply::Failed("not a state record".into());
            };
            let file = &files[(counter % 2) as usize];
            match write_slot(dir, file, &record, sync) {
                Ok(()) => StoreReply::Stored,
                Err(e) => StoreReply::Failed(format!("{file}: {e}")),
            }
        }
    }
}

async fn persist(listen: &str, dir: &Path, sync: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let listener = nekms_transport::Listener::bind(&listen.parse()?).await.with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "nekms privval persist: state records in {} ({}); listening on {}",
        dir.display(),
        if sync { "two slots per chain, fdatasync before each acknowledgement" } else { "NO fsync" },
        listener.local_address()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = serve_store(listener, dir.to_path_buf(), sync) => r,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The state store on `listener`, records in `dir` (the demo runs it in process).
pub async fn serve_store(listener: nekms_transport::Listener, dir: PathBuf, sync: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let dir = Arc::new(dir);
    // One write at a time: the enclave sends one, and a second enclave must not interleave.
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let (dir, lock) = (dir.clone(), lock.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let body = match read_frame(&mut stream, &mut buf, nekms_privval::store::MAX_RECORD + 256).await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("nekms privval persist: {peer}: {e}");
                        return;
                    }
                };
                let reply = {
                    let _held = lock.lock().await;
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || answer(&dir, sync, &body))
                        .await
                        .unwrap_or_else(|e| StoreReply::Failed(e.to_string()))
                };
                if let StoreReply::Failed(why) = &reply {
                    eprintln!("nekms privval persist: {why}");
                }
                if write_frame(&mut stream, &reply.encode(), u32::MAX as usize).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn show(dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| dir.display().to_string())?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !(name.ends_with(".state.0") || name.ends_with(".state.1")) {
            continue;
        }
        let bytes = read_slot(&path)?.unwrap_or_default();
        rows.push(match nekms_privval::record::peek(&bytes) {
            Some(r) => serde_json::json!({
                "file": name, "chain_id": r.chain_id, "key_fingerprint": r.key_id,
                "counter": r.counter, "height": r.last.height, "round": r.last.round, "step": r.last.step.map_or(0, |s| s as u8),
                "sign_bytes": r.last.sign_bytes.as_deref().map(hex::encode), "verified": false,
            }),
            None => serde_json::json!({"file": name, "error": "not a nekms privval state record"}),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("(as the parent reads them, two slots per chain, the newest valid one counts: only the enclave can check their tags; `nekms privval status` shows what it holds)");
        for r in rows {
            println!("{r}");
        }
    }
    Ok(())
}

// The proxy.

#[derive(serde::Serialize)]
struct Hello<'a> {
    chain_id: &'a str,
    validator: &'a str,
    node_id: Option<&'a str>,
}

async fn proxy(enclave: Address, validators: Vec<ValidatorConfig>) -> anyhow::Result<()> {
    if validators.is_empty() {
        bail!("the configuration has no [[validator]]");
    }
    let mut tasks = Vec::new();
    for v in validators {
        let enclave = enclave.clone();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match relay_once(&enclave, &v).await {
                    Ok(()) => {
                        eprintln!("nekms privval proxy: {} ({}): connection closed", v.addr, v.chain_id);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => eprintln!("nekms privval proxy: {} ({}): {e:#}", v.addr, v.chain_id),
                }
                if !v.reconnect {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = futures_all(tasks) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Dial the validator, open the enclave's signer for its chain, and relay until either side closes.
pub(crate) async fn relay_once(enclave: &Address, v: &ValidatorConfig) -> anyhow::Result<()> {
    let (addr, node_id) = parse_validator_addr(&v.addr)?;
    // The signer first: the validator sees a connection only once the
    // enclave serves its chain.
    let mut signer = nekms_transport::connect(enclave).await?;
    let hello = serde_json::to_vec(&Hello { chain_id: &v.chain_id, validator: &v.addr, node_id: node_id.as_deref() })?;
    write_frame(&mut signer, &hello, u32::MAX as usize).await?;
    let mut buf = Vec::new();
    let answer = read_frame(&mut signer, &mut buf, 4096).await?.context("the enclave closed the connection")?;
    if answer != b"ok" {
        bail!("the enclave: {}", String::from_utf8_lossy(&answer));
    }
    let mut validator = nekms_transport::connect(&addr).await?;
    eprintln!("nekms privval proxy: {} ({}): connected", v.addr, v.chain_id);
    // What the enclave sent after its answer (the start of a SecretConnection
    // handshake) was read with it: the validator gets it first.
    if !buf.is_empty() {
        validator.write_all(&buf).await?;
    }
    // Either side closing ends the relay: a validator must not wait on a
    // signer that went away (it reconnects), nor the reverse.
    let (mut vr, mut vw) = tokio::io::split(validator);
    let (mut sr, mut sw) = tokio::io::split(signer);
    tokio::select! {
        r = tokio::io::copy(&mut vr, &mut sw) => { r?; }
        r = tokio::io::copy(&mut sr, &mut vw) => { r?; }
    }
    Ok(())
}
