//! `nekms enclave ...`: talk to a running enclave over the native RPC.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_rpc::{Client, CredentialsInfo};
use nekms_transport::Address;
use zeroize::Zeroizing;

/// Which enclave: `--enclave 16` (a CID; port 5000) or an address.
#[derive(clap::Args, Clone, Debug)]
pub struct EnclaveArg {
    /// The enclave's RPC: a CID (port 5000, `nitro-cli describe-enclaves` shows it) or an address (unix:///run/nekms/rpc.sock)
    #[arg(long, env = "NEKMS_ENCLAVE", value_name = "CID|ADDR")]
    pub enclave: String,
}

impl EnclaveArg {
    pub fn address(&self) -> anyhow::Result<Address> {
        nekms_parent::enclave::address_or_cid(&self.enclave, nekms_parent::enclave::RPC_PORT)
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.address()?, concat!("nekms ", env!("CARGO_PKG_VERSION"))).await?)
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Versions, NSM, PCRs, whether simulated, credentials in force
    Describe {
        #[command(flatten)]
        enclave: EnclaveArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Get an attestation document (check it with `nekms attest verify`)
    Attest {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        fields: super::attest::DocumentFields,
        /// Write the document (CBOR/COSE) here instead of printing it in base64
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// KMS Decrypt inside the enclave (with attestation); prints the plaintext in base64
    Decrypt {
        #[command(flatten)]
        enclave: EnclaveArg,
        /// Encryption context pair (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        encryption_context: Vec<String>,
        /// The key the ciphertext must be under
        #[arg(long)]
        key_id: Option<String>,
        /// The ciphertext, base64
        ciphertext: String,
    },
    /// KMS GenerateDataKey inside the enclave; prints CIPHERTEXT and PLAINTEXT lines in base64
    DataKey {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[arg(long)]
        key_id: String,
        /// AES_256 or AES_128
        #[arg(long, default_value = "AES_256")]
        key_spec: String,
        /// Encryption context pair (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        encryption_context: Vec<String>,
    },
    /// KMS GenerateRandom inside the enclave; prints the bytes in base64
    Random {
        #[command(flatten)]
        enclave: EnclaveArg,
        /// How many bytes (1-1024)
        #[arg(long, default_value_t = 32)]
        length: u32,
    },
    /// Push AWS credentials from the default chain (environment, profile, IMDS) to the enclave
    Credentials {
        #[command(flatten)]
        enclave: EnclaveArg,
        /// AWS profile [default: the chain's choice, e.g. $AWS_PROFILE]
        #[arg(long)]
        profile: Option<String>,
        /// Region to tell the enclave [default: the profile's or environment's]
        #[arg(long)]
        region: Option<String>,
        /// Keep the enclave supplied: push again before expiry and every --interval
        #[arg(long)]
        watch: bool,
        /// Seconds between pushes with --watch (an enclave that restarted gets credentials again)
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        interval: u64,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match cmd {
            Command::Describe { enclave, json } => describe(&enclave, json).await,
            Command::Attest { enclave, fields, out } => {
                let r = fields.request()?;
                let document = enclave.connect().await?.attest(r.nonce, r.user_data, r.public_key).await?;
                match out {
                    Some(path) => {
                        std::fs::write(&path, &document).with_context(|| path.display().to_string())?;
                        eprintln!("wrote {} bytes to {}", document.len(), path.display());
                    }
                    None => println!("{}", B64.encode(&document)),
                }
                Ok(())
            }
            Command::Decrypt { enclave, encryption_context, key_id, ciphertext } => {
                let blob = B64.decode(ciphertext.trim()).context("the ciphertext is not base64")?;
                let context = nekms_keys::context::parse_pairs(&encryption_context).map_err(anyhow::Error::msg)?;
                let plaintext = enclave.connect().await?.decrypt(blob, context, key_id).await?;
                println!("{}", Zeroizing::new(B64.encode(plaintext.expose())).as_str());
                Ok(())
            }
            Command::DataKey { enclave, key_id, key_spec, encryption_context } => {
                let context = nekms_keys::context::parse_pairs(&encryption_context).map_err(anyhow::Error::msg)?;
                let (key_id, blob, plaintext) = enclave.connect().await?.generate_data_key(key_id, Some(key_spec), None, context).await?;
                println!("KEY: {key_id}");
                println!("CIPHERTEXT: {}", B64.encode(&blob));
                println!("PLAINTEXT: {}", Zeroizing::new(B64.encode(plaintext.expose())).as_str());
                Ok(())
            }
            Command::Random { enclave, length } => {
                let bytes = enclave.connect().await?.generate_random(length).await?;
                println!("{}", Zeroizing::new(B64.encode(bytes.expose())).as_str());
                Ok(())
            }
            Command::Credentials { enclave, profile, region, watch, interval } => {
                let pushed =
                    |info: &CredentialsInfo| println!("credentials set in the enclave: {}", nekms_parent::credentials::describe(info));
                nekms_parent::credentials::push(&enclave.address()?, profile, region, watch, Duration::from_secs(interval.max(1)), pushed)
                    .await
            }
        }
    })
}

async fn describe(enclave: &EnclaveArg, json: bool) -> anyhow::Result<()> {
    let client = enclave.connect().await?;
    let d = client.describe().await?;
    if json {
        let v = serde_json::json!({
            "protocol_version": d.protocol_version,
            "agent": d.agent,
            "simulated": d.simulated,
            "nsm": {
                "module_id": d.nsm.module_id,
                "version": d.nsm.version,
                "max_pcrs": d.nsm.max_pcrs,
                "locked_pcrs": d.nsm.locked_pcrs,
                "digest": d.nsm.digest,
            },
            "pcrs": d.pcrs.iter().map(|p| (format!("PCR{}", p.index), serde_json::Value::String(hex::encode(&p.value)))).collect::<serde_json::Map<_, _>>(),
            "kms_endpoint": d.kms_endpoint,
            "proxy": d.proxy,
            "region": d.region,
            "kmstool": d.kmstool,
            "credentials": d.credentials.as_ref().map(|c| serde_json::json!({
                "access_key_id": c.access_key_id, "region": c.region, "temporary": c.temporary,
                "expiration": c.expiration.map(nekms_parent::credentials::time_text),
            })),
            "recipient_key_sha256": hex::encode(&d.recipient_key_sha256),
            "trust": d.trust,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("enclave:     {} (protocol {}){}", d.agent, d.protocol_version, if d.simulated { ", SIMULATED NSM" } else { "" });
    println!("NSM:         {} version {} digest {}, {} PCRs", d.nsm.module_id, d.nsm.version, d.nsm.digest, d.nsm.max_pcrs);
    for p in &d.pcrs {
        let locked = if d.nsm.locked_pcrs.contains(&p.index) || p.locked { " (locked)" } else { "" };
        println!("PCR{:<2}        {}{locked}", p.index, hex::encode(&p.value));
    }
    println!("KMS:         {} through {}", d.kms_endpoint, d.proxy);
    if let Some(r) = &d.region {
        println!("region:      {r} (fixed by the enclave)");
    }
    if let Some(k) = &d.kmstool {
        println!("kmstool:     {k}");
    }
    match &d.credentials {
        Some(c) => println!("credentials: {}", nekms_parent::credentials::describe(c)),
        None => println!("credentials: none yet (nekms enclave credentials)"),
    }
    println!("recipient:   RSA-2048, SPKI SHA-256 {}", hex::encode(&d.recipient_key_sha256));
    if let Some(t) = &d.trust {
        if t.custody_kms_keys.is_empty() {
            println!("custody:     off (no custody-kms-keys in the measured configuration)");
        }
        for k in &t.custody_kms_keys {
            println!("custody:     {k}");
        }
        println!("origins:     records made by PCR0 {}", t.origin_pcr0.join(", "));
        if !t.origin_pcr8.is_empty() {
            println!("             or by any image signed by PCR8 {}", t.origin_pcr8.join(", "));
        }
        let keys = if t.parent_decrypt_keys.is_empty() { "any non-custody key".to_owned() } else { t.parent_decrypt_keys.join(", ") };
        println!("parent:      decryption for the parent {}", if t.parent_decrypt { format!("on ({keys})") } else { "off".into() });
        if t.origin_pcr0.first().is_some_and(|p| p.bytes().all(|b| b == b'0')) {
            println!("WARNING:     PCR0 is all zero (debug mode): a key policy naming it admits every debug-mode image");
        }
    }
    Ok(())
}
