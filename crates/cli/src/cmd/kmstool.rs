//! `nekms kmstool decrypt`: kmstool-instance's job, with its options.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use aws_credential_types::provider::ProvideCredentials;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_transport::Address;
use zeroize::Zeroizing;

use nekms_parent::kmstool::KmstoolClient;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Send credentials and a ciphertext to the enclave's kmstool port; print the plaintext
    Decrypt(DecryptArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["cid", "address"])))]
pub struct DecryptArgs {
    /// The enclave's CID (vsock)
    #[arg(long)]
    cid: Option<u32>,
    /// The enclave's address instead: an IP or host for TCP with --port, or unix:///path
    #[arg(long)]
    address: Option<String>,
    /// The kmstool port
    #[arg(long, default_value_t = 3000)]
    port: u32,
    /// The KMS region sent to the enclave (the enclave's own setting wins; us-east-1 if neither)
    #[arg(long)]
    region: Option<String>,
    /// AWS profile for the default credential chain
    #[arg(long)]
    profile: Option<String>,
    /// Credentials to send instead of the default chain's
    #[arg(long, requires = "aws_secret_access_key")]
    aws_access_key_id: Option<String>,
    #[arg(long, requires = "aws_access_key_id")]
    aws_secret_access_key: Option<String>,
    #[arg(long, requires = "aws_access_key_id")]
    aws_session_token: Option<String>,
    /// Encryption context pair the ciphertext was made with (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    encryption_context: Vec<String>,
    /// Print the plaintext in base64 rather than as raw bytes
    #[arg(long)]
    base64: bool,
    /// The ciphertext, base64 (as `aws kms encrypt` prints it)
    ciphertext: String,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Decrypt(a) = cmd;
    let address: Address = match (&a.cid, &a.address) {
        (Some(cid), _) => format!("vsock://{cid}:{}", a.port).parse()?,
        (None, Some(addr)) if addr.contains("://") => addr.parse()?,
        (None, Some(host)) => {
            let ip: std::net::IpAddr = host.parse().with_context(|| format!("--address {host}: not an IP address or unix:///path"))?;
            Address::Tcp(std::net::SocketAddr::new(ip, u16::try_from(a.port).context("--port must fit TCP")?))
        }
        (None, None) => unreachable!("clap requires --cid or --address"),
    };
    let context = nekms_keys::context::parse_pairs(&a.encryption_context).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let plaintext = rt.block_on(async {
        let mut client = KmstoolClient::connect(&address).await?;
        match (&a.aws_access_key_id, &a.aws_secret_access_key) {
            (Some(id), Some(secret)) => client.set_client(id, secret, a.aws_session_token.as_deref(), a.region.as_deref()).await?,
            _ => {
                let (provider, chain_region) = nekms_parent::credentials::default_chain(a.profile.as_deref(), a.region.as_deref()).await?;
                let c = provider.provide_credentials().await.context("getting credentials from the default chain")?;
                let region = a.region.clone().or(chain_region);
                client.set_client(c.access_key_id(), c.secret_access_key(), c.session_token(), region.as_deref()).await?;
            }
        }
        client.decrypt(a.ciphertext.trim(), &context).await
    })?;
    let mut out = std::io::stdout().lock();
    if a.base64 {
        writeln!(out, "{}", Zeroizing::new(B64.encode(&plaintext[..])).as_str())?;
    } else {
        out.write_all(&plaintext)?;
        if out.is_terminal() {
            writeln!(out)?;
        }
    }
    Ok(())
}
