//! `nekms kmstool decrypt`: kmstool-instance's job, with its options.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use aws_credential_types::provider::ProvideCredentials;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_transport::{Address, Stream};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

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

/// A connection speaking kmstool's protocol: JSON objects, each followed by a zero byte.
pub struct KmstoolClient {
    stream: Stream,
    buf: Zeroizing<Vec<u8>>,
}

impl KmstoolClient {
    pub async fn connect(address: &Address) -> anyhow::Result<KmstoolClient> {
        let stream =
            nekms_transport::connect(address).await.with_context(|| format!("connecting to the enclave's kmstool port at {address}"))?;
        Ok(KmstoolClient { stream, buf: Zeroizing::new(Vec::new()) })
    }

    /// Send one command, read its reply; an `Error` status is an error carrying its message.
    pub async fn command(&mut self, command: &Value) -> anyhow::Result<Option<String>> {
        let mut out = Zeroizing::new(serde_json::to_vec(command)?);
        out.push(0);
        self.stream.write_all(&out).await?;
        let reply = loop {
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let reply: Zeroizing<Vec<u8>> = Zeroizing::new(self.buf.drain(..=end).take(end).collect());
                break reply;
            }
            if self.buf.len() > 1 << 20 {
                bail!("the enclave's reply exceeds 1 MiB without a zero byte");
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the enclave closed the connection without replying");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let v: Value = serde_json::from_slice(&reply).context("the enclave's reply is not JSON")?;
        let message = v.get("Message").and_then(Value::as_str).map(str::to_owned);
        match v.get("Status").and_then(Value::as_str) {
            Some("Ok") => Ok(message),
            Some("Error") => bail!("the enclave answered Error: {}", message.unwrap_or_default()),
            _ => bail!("the enclave's reply has no Status"),
        }
    }

    pub async fn set_client(&mut self, access_key_id: &str, secret: &str, token: Option<&str>, region: Option<&str>) -> anyhow::Result<()> {
        let mut cmd = json!({"Operation": "SetClient", "AwsAccessKeyId": access_key_id, "AwsSecretAccessKey": secret});
        if let Some(t) = token {
            cmd["AwsSessionToken"] = t.into();
        }
        if let Some(r) = region {
            cmd["AwsRegion"] = r.into();
        }
        let outcome = self.command(&cmd).await;
        zeroize_json(cmd);
        outcome.map(|_| ())
    }

    pub async fn decrypt(&mut self, ciphertext_b64: &str, context: &BTreeMap<String, String>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mut cmd = json!({"Operation": "Decrypt", "Ciphertext": ciphertext_b64});
        if !context.is_empty() {
            cmd["EncryptionContext"] = json!(context);
        }
        let message = Zeroizing::new(self.command(&cmd).await?.context("the enclave's Decrypt reply has no Message")?);
        Ok(Zeroizing::new(B64.decode(message.trim()).context("the enclave's plaintext is not base64")?))
    }
}

/// Wipe the strings of a command that held credentials.
fn zeroize_json(v: Value) {
    if let Value::Object(map) = v {
        for (_, val) in map {
            if let Value::String(s) = val {
                drop(Zeroizing::new(s));
            }
        }
    }
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
