//! `nekms privval`: the validator signer's parent side, its flags turned
//! into calls of `nekms-privval-parent`.
//!
//! - `push-config`: read a tmkms.toml and push its chains to the enclave,
//!   each with its consensus key as a custody record (never a key file);
//! - `proxy`: dial each validator's `priv_validator_laddr` and relay it to
//!   the enclave's privval socket, reconnecting;
//! - `persist`: the state store the enclave commits each new state to,
//!   acknowledging only once the record is durable;
//! - `state init|import|show`, `anchor` and `status`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nekms_keys::KeyRecord;
use nekms_privval_parent::config::TmkmsConfig;
use nekms_privval_parent::state::Start;
use nekms_privval_parent::status::Report;
use nekms_privval_parent::{anchor, proxy, push, state, status, store};

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

pub fn run(cmd: Command) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            Command::PushConfig { enclave, store, config } => push_config(&enclave, &store, &config).await,
            Command::Proxy { privval, config } => {
                let config = TmkmsConfig::read(&config)?;
                proxy::run(privval.parse()?, config.validator).await
            }
            Command::Persist { listen, dir, no_fsync } => store::persist(&listen, &dir, !no_fsync).await,
            Command::State(StateCommand::Init { enclave, store, key, chain_id, height }) => {
                init(&enclave, &store, &key, &chain_id, Start::Height(height)).await
            }
            Command::State(StateCommand::Import { enclave, store, key, chain_id, file }) => {
                let json = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
                init(&enclave, &store, &key, &chain_id, Start::Import(json)).await
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
                let client = nekms_parent::import::admin_kms(endpoint_url.as_deref(), profile.as_deref()).await;
                let sent = client
                    .encrypt()
                    .key_id(&kms_key)
                    .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.as_slice()))
                    .encryption_context(nekms_keys::context::PURPOSE, nekms_keys::context::PURPOSE_ANCHOR_CREDENTIALS)
                    .encryption_context(nekms_keys::context::ANCHOR_TABLE, &table)
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
                let raw = std::fs::read(&ciphertext_file).with_context(|| ciphertext_file.display().to_string())?;
                let access_key_id = anchor::set_credentials(&enclave.connect().await?, anchor::ciphertext_from_file(raw)).await?;
                println!("the anchor's credentials ({access_key_id}) are set in the enclave");
                Ok(())
            }
            Command::Status { enclave, json } => {
                let chains = status::status(&enclave.connect().await?).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&chains)?);
                } else if chains.is_empty() {
                    println!("no chain is served");
                }
                if !json {
                    for c in &chains {
                        print!("{}", Report(c));
                    }
                }
                Ok(())
            }
        }
    })
}

async fn push_config(enclave: &EnclaveArg, store: &StoreArg, path: &Path) -> anyhow::Result<()> {
    let config = TmkmsConfig::read(path)?;
    let store = store.open().await?;
    let client = enclave.connect().await?;
    let keep = async |imported: &KeyRecord| super::key::keep(&store, imported, false).await;
    push::push_config(&config, &store, &client, keep, |status| print!("configured {}", Report(status))).await
}

async fn init(enclave: &EnclaveArg, store: &StoreArg, key: &str, chain_id: &str, start: Start) -> anyhow::Result<()> {
    let record = record(&store.open_existing().await?, key).await?;
    let state = state::init(&enclave.connect().await?, record, chain_id, start).await?;
    if state.step == 0 {
        println!("state of {key} on {chain_id}: starts at height {}; no height below it is ever signed", state.height);
    } else {
        println!(
            "state of {key} on {chain_id}: last signed height {} round {} step {}; nothing before it is ever signed, nor anything else at it",
            state.height, state.round, state.step
        );
    }
    Ok(())
}

fn show(dir: &Path, json: bool) -> anyhow::Result<()> {
    let rows = store::records(dir)?;
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
