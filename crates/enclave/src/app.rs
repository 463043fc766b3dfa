//! The program: serve, or run one kmstool-enclave-cli verb and exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_kms_client::DataKeySpec;
use nekms_nsm::Nsm;
use zeroize::Zeroizing;

use crate::config::{EnclaveArgs, EnclaveConfig};
use crate::Enclave;

/// Everything `nekms-enclave` takes.
#[derive(clap::Args)]
pub struct Cli {
    /// Settings file (TOML; the same names as the flags, e.g. kms-endpoint = "https://localhost:7701")
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub args: EnclaveArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// One KMS call and exit, with kmstool-enclave-cli's options and output
    #[command(subcommand)]
    Cli(Verb),
}

/// kmstool-enclave-cli's verbs.
#[derive(clap::Subcommand)]
pub enum Verb {
    /// Decrypt a KMS ciphertext; prints `PLAINTEXT: <base64>`
    Decrypt {
        #[command(flatten)]
        common: VerbArgs,
        /// The ciphertext, base64
        #[arg(long)]
        ciphertext: String,
        /// The key the ciphertext must be under (ARN, id or alias)
        #[arg(long)]
        key_id: Option<String>,
        /// Only SYMMETRIC_DEFAULT is supported
        #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
        encryption_algorithm: String,
        /// Encryption context pair (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        encryption_context: Vec<String>,
    },
    /// Make a data key; prints `CIPHERTEXT: <base64>` and `PLAINTEXT: <base64>`
    Genkey {
        #[command(flatten)]
        common: VerbArgs,
        /// The KMS key (ARN, id or alias)
        #[arg(long)]
        key_id: String,
        /// AES-256 or AES-128
        #[arg(long, value_parser = ["AES-256", "AES-128"])]
        key_spec: String,
    },
    /// Random bytes from KMS; prints `PLAINTEXT: <base64>`
    Genrandom {
        #[command(flatten)]
        common: VerbArgs,
        /// How many bytes (1-1024)
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        length: u16,
    },
}

impl Verb {
    fn common(&self) -> &VerbArgs {
        match self {
            Verb::Decrypt { common, .. } | Verb::Genkey { common, .. } | Verb::Genrandom { common, .. } => common,
        }
    }
}

/// The options every kmstool-enclave-cli verb takes.
#[derive(clap::Args)]
pub struct VerbArgs {
    /// The KMS region
    #[arg(long)]
    region: String,
    /// The parent's vsock-proxy port (`--proxy ADDR` overrides, e.g. a Unix socket in development)
    #[arg(long, default_value_t = 8000)]
    proxy_port: u32,
    #[arg(long)]
    aws_access_key_id: String,
    #[arg(long)]
    aws_secret_access_key: String,
    #[arg(long)]
    aws_session_token: Option<String>,
}

/// Open `/dev/nsm`, or boot the simulator when configured so.
pub fn open_nsm(c: &EnclaveConfig) -> anyhow::Result<Arc<dyn Nsm>> {
    if !c.sim && c.sim_from.is_none() {
        let nsm = nekms_nsm::DeviceNsm::open().context("opening /dev/nsm (use --sim outside an enclave)")?;
        return Ok(Arc::new(nsm));
    }
    crate::sim::open_simulated(c)
}

/// Run what the command line asks for.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(p) => EnclaveArgs::from_toml(&std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
            .with_context(|| p.display().to_string())?,
        None => Default::default(),
    };
    let proxy_given = cli.args.proxy.is_some() || file.proxy.is_some();
    let mut config = cli.args.resolve(file);
    config.config_file = cli.config.clone();
    match cli.command {
        None => {
            let logs = match &config.logs {
                Some(addr) => {
                    let address: nekms_transport::Address = addr.parse().with_context(|| format!("logs {addr}"))?;
                    Some((nekms_log::Stream::init(PROGRAM, config.log_format), address))
                }
                None => {
                    nekms_log::init(PROGRAM, config.log_format);
                    None
                }
            };
            serve(config, logs)
        }
        Some(Command::Cli(verb)) => {
            if !proxy_given {
                config.proxy = format!("vsock://parent:{}", verb.common().proxy_port);
            }
            nekms_log::init(PROGRAM, config.log_format);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(one_shot(&config, verb))
        }
    }
}

/// `KEY=VALUE` arguments as an encryption context ([`nekms_keys::context::parse_pairs`]).
pub fn encryption_context(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    nekms_keys::context::parse_pairs(items).map_err(anyhow::Error::msg)
}

async fn one_shot(config: &EnclaveConfig, verb: Verb) -> anyhow::Result<()> {
    let nsm = open_nsm(config)?;
    let enclave = Enclave::new(nsm, config)?;
    let common = verb.common();
    enclave.set_credentials(
        common.aws_access_key_id.clone(),
        Zeroizing::new(common.aws_secret_access_key.clone()),
        common.aws_session_token.clone().map(Zeroizing::new),
        Some(common.region.clone()),
        None,
    );
    match verb {
        Verb::Decrypt { ciphertext, key_id, encryption_algorithm, encryption_context, .. } => {
            if encryption_algorithm != "SYMMETRIC_DEFAULT" {
                bail!("--encryption-algorithm {encryption_algorithm}: only SYMMETRIC_DEFAULT is supported");
            }
            let blob = B64.decode(ciphertext.trim()).context("--ciphertext is not valid base64")?;
            let plaintext = enclave.parent_decrypt(&blob, &crate::app::encryption_context(&encryption_context)?, key_id.as_deref()).await?;
            println!("PLAINTEXT: {}", Zeroizing::new(B64.encode(&plaintext[..])).as_str());
        }
        Verb::Genkey { key_id, key_spec, .. } => {
            let spec = if key_spec == "AES-128" { DataKeySpec::Aes128 } else { DataKeySpec::Aes256 };
            let key = enclave.parent_data_key(&key_id, Some(spec), None, &BTreeMap::new()).await?;
            println!("CIPHERTEXT: {}", B64.encode(&key.ciphertext_blob));
            println!("PLAINTEXT: {}", Zeroizing::new(B64.encode(&key.plaintext[..])).as_str());
        }
        Verb::Genrandom { length, .. } => {
            let bytes = enclave.kms.generate_random(i32::from(length)).await?;
            println!("PLAINTEXT: {}", Zeroizing::new(B64.encode(&bytes[..])).as_str());
        }
    }
    Ok(())
}

/// The name log lines carry.
pub const PROGRAM: &str = "nekms-enclave";

/// An error already logged (and sent to the parent's collector, if any).
#[derive(Debug)]
pub struct Reported(String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

/// Serve the RPC and kmstool's protocol until SIGINT or SIGTERM; with
/// `logs`, the log lines also go to the parent's collector at that address.
pub fn serve(config: EnclaveConfig, logs: Option<(Arc<nekms_log::Stream>, nekms_transport::Address)>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sending = logs.as_ref().map(|(stream, address)| {
        let (stream, address) = (stream.clone(), address.clone());
        rt.spawn(async move { stream.send_to(address).await })
    });
    let result = serve_on(&rt, config);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    if let Some((stream, _)) = &logs {
        rt.block_on(stream.flush(std::time::Duration::from_secs(1)));
    }
    if let Some(s) = sending {
        s.abort();
    }
    result.map_err(|e| Reported(format!("{e:#}")).into())
}

fn serve_on(rt: &tokio::runtime::Runtime, config: EnclaveConfig) -> anyhow::Result<()> {
    let nsm = open_nsm(&config)?;
    let pcrs: Vec<String> = (0..3).map(|i| nsm.describe_pcr(i).map(|p| p.value.to_hex()).unwrap_or_default()).collect();
    let enclave = Arc::new(Enclave::new(nsm.clone(), &config)?);
    rt.block_on(async move {
        let rpc = nekms_transport::Listener::bind(&config.rpc.parse()?).await.with_context(|| format!("listening on {}", config.rpc))?;
        let kmstool =
            nekms_transport::Listener::bind(&config.kmstool.parse()?).await.with_context(|| format!("listening on {}", config.kmstool))?;
        tracing::info!(
            "{} NSM; PCR0 {} PCR1 {} PCR2 {}",
            if nsm.is_simulated() { "simulated" } else { "hardware" },
            pcrs[0],
            pcrs[1],
            pcrs[2]
        );
        tracing::info!("RPC on {}; kmstool protocol on {}; KMS through {}", rpc.local_address(), kmstool.local_address(), config.proxy);
        let options = nekms_rpc::ServerOptions {
            agent: format!("nekms-enclave {}", env!("CARGO_PKG_VERSION")),
            reserved_vsock_ports_only: !config.trust.rpc_any_vsock_peer,
            ..Default::default()
        };
        let serving_p11 = match &config.p11 {
            Some(addr) => {
                let listener = nekms_transport::Listener::bind(&addr.parse()?).await.with_context(|| format!("listening on {addr}"))?;
                tracing::info!("PKCS#11 module socket on {}", listener.local_address());
                {
                    // A handler per connection: each module process's handles are counted apart.
                    let enclave = enclave.clone();
                    Some(tokio::spawn(nekms_rpc::serve_each(
                        listener,
                        move || Arc::new(crate::rpc::P11Only::new(enclave.clone())),
                        options.clone(),
                    )))
                }
            }
            None => None,
        };
        // p11-kit's server beside the enclave, as the image's configuration says.
        let p11_kit = match (&config.p11, config.p11_kit_server.is_empty()) {
            (Some(addr), false) => Some(tokio::spawn(crate::companion::p11_kit_server(config.p11_kit_server.clone(), addr.clone()))),
            (None, false) => anyhow::bail!("p11-kit-server is configured without p11 (the module's socket)"),
            (_, true) => None,
        };
        let serving_privval = match &config.privval {
            Some(addr) => {
                let listener = nekms_transport::Listener::bind(&addr.parse()?).await.with_context(|| format!("listening on {addr}"))?;
                tracing::info!(
                    "validator signer on {}; state store {}",
                    listener.local_address(),
                    config.privval_state.as_deref().unwrap_or("(none: chains cannot be served)")
                );
                Some(tokio::spawn(crate::privval::serve(listener, enclave.clone(), !config.trust.rpc_any_vsock_peer)))
            }
            None => None,
        };
        let streaming_audit = match &config.audit {
            Some(addr) => {
                let address: nekms_transport::Address = addr.parse().with_context(|| format!("audit {addr}"))?;
                tracing::info!("audit trail to {addr}");
                let enclave = enclave.clone();
                Some(tokio::spawn(async move { enclave.audit.stream(address).await }))
            }
            None => None,
        };
        let serving_rpc = tokio::spawn(nekms_rpc::serve(rpc, enclave.clone(), options));
        let serving_kmstool = tokio::spawn(crate::kmstool::serve(kmstool, enclave.clone(), config.max_message));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        serving_rpc.abort();
        serving_kmstool.abort();
        if streaming_audit.is_some() {
            enclave.audit.flush().await;
        }
        for p in [serving_p11, serving_privval, p11_kit, streaming_audit].into_iter().flatten() {
            p.abort();
        }
        anyhow::Ok(())
    })
}
