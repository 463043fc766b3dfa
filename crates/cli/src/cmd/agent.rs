//! `nekms agent`: the HTTP JSON API for applications on the parent. The
//! agent is the `nekms-agent` crate; this parses its flags into an
//! [`AgentConfig`] and runs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nekms_agent::{Access, AgentConfig, CredentialsRelay, Listen, LoopbackAddr};

use super::enclave::EnclaveArg;
use super::key::StoreArg;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen: IP:PORT on loopback, or unix:///PATH
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The callers: TOML with [[client]] name, token-file or uid, keys (globs), manage [default: one token, --token-file]
    #[arg(long, value_name = "FILE")]
    access: Option<PathBuf>,
    /// Without --access: the bearer token granting everything, made (0600) if missing
    /// [default: $XDG_RUNTIME_DIR/nekms/agent.token, else ~/.local/share/nekms/agent.token]
    #[arg(long, value_name = "FILE", conflicts_with = "access")]
    token_file: Option<PathBuf>,
    /// Permissions of the Unix socket (octal)
    #[arg(long, default_value = "600", value_name = "MODE")]
    socket_mode: String,
    #[command(flatten)]
    enclave: EnclaveArg,
    #[command(flatten)]
    store: StoreArg,
    /// Do not push the instance's credentials to the enclave (something else does)
    #[arg(long)]
    no_credentials: bool,
    /// AWS profile for the credentials relayed to the enclave
    #[arg(long)]
    profile: Option<String>,
    /// Seconds between credential pushes (also pushed 5 minutes before expiry)
    #[arg(long, default_value_t = 300)]
    credentials_interval: u64,
    /// Secrets Manager endpoint (moto) instead of the SDK's
    #[arg(long, env = "NEKMS_SECRETS_ENDPOINT", value_name = "URL")]
    secrets_endpoint_url: Option<String>,
    /// Write {"url": ...} here once listening
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Seconds a connection has to send a request's headers
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a request's body has to arrive once its headers are in
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    body_timeout: u64,
    /// Connections open at once; the next gets a retryable 503
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_connections: usize,
    /// Requests in progress at once per caller (the public routes count as one); the next gets a retryable 429
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_per_caller: usize,
    /// Seconds a call to the enclave may take before the request gets a retryable 503
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    enclave_deadline: u64,
    /// Also serve AWS KMS's API for the same keys here: IP:PORT on loopback, or unix:///PATH (docs/kms-api.md)
    #[arg(long, value_name = "ADDR")]
    kms_api: Option<String>,
    /// The region KMS API requests are signed for and its ARNs name
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    kms_region: String,
    /// The 12-digit account its ARNs name
    #[arg(long, value_name = "ACCOUNT", default_value = "000000000000")]
    kms_account: String,
}

/// `IP:PORT` on loopback, or `unix:///PATH`.
fn listen_arg(flag: &str, value: &str) -> anyhow::Result<Listen> {
    Ok(match value.strip_prefix("unix://") {
        Some(path) => Listen::Unix(PathBuf::from(path)),
        None => Listen::Tcp(LoopbackAddr::new(value.parse().with_context(|| format!("{flag} {value}: IP:PORT or unix:///PATH"))?)?),
    })
}

fn default_token_file() -> anyhow::Result<PathBuf> {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok(PathBuf::from(run).join("nekms/agent.token"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_RUNTIME_DIR nor HOME is set; give --token-file")?;
    Ok(PathBuf::from(home).join(".local/share/nekms/agent.token"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let listen = listen_arg("--listen", &a.listen)?;
    if a.kms_account.len() != 12 || !a.kms_account.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("--kms-account {}: 12 digits", a.kms_account);
    }
    let kms_api = match &a.kms_api {
        Some(v) => {
            Some(nekms_agent::KmsApi { listen: listen_arg("--kms-api", v)?, region: a.kms_region.clone(), account: a.kms_account.clone() })
        }
        None => None,
    };
    let access = match (&a.access, &a.token_file) {
        (Some(file), _) => {
            tracing::info!("agent: callers and their token files as {} names them", file.display());
            Access::from_file(file)?
        }
        (None, given) => {
            let path = match given {
                Some(t) => t.clone(),
                None => default_token_file()?,
            };
            let access = Access::single_token(&path)?;
            tracing::info!("agent: the bearer token is in {} (send Authorization: Bearer <its contents>)", path.display());
            access
        }
    };
    let socket_mode =
        u32::from_str_radix(&a.socket_mode, 8).with_context(|| format!("--socket-mode {}: octal, e.g. 600", a.socket_mode))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let store = a.store.open().await?;
        let config = AgentConfig {
            listen,
            socket_mode,
            enclave: a.enclave.address()?,
            store,
            access,
            credentials: (!a.no_credentials)
                .then(|| CredentialsRelay { profile: a.profile, interval: Duration::from_secs(a.credentials_interval) }),
            secrets_endpoint: a.secrets_endpoint_url,
            ready_file: a.ready_file,
            store_name: a.store.url()?.to_string(),
            enclave_name: a.enclave.enclave,
            limits: nekms_agent::Limits {
                header_timeout: Duration::from_secs(a.header_timeout.max(1)),
                body_timeout: Duration::from_secs(a.body_timeout.max(1)),
                max_connections: a.max_connections.max(1),
                max_per_caller: a.max_per_caller.max(1),
                enclave_deadline: Duration::from_secs(a.enclave_deadline.max(1)),
            },
            kms_api,
        };
        nekms_agent::serve(config).await
    })
}
