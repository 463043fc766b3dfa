//! An enclave inside this process, shared by `nekms demo` and the
//! benchmarks: keys only one enclave image may use, the parent's proxy to
//! the local KMS's HTTPS port, and an enclave serving the native RPC and
//! kmstool's protocol, wired over Unix sockets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_devworld::DevDir;
use nekms_nsm::Nsm;
use nekms_transport::{Address, Listener};
use serde_json::json;

use crate::kms_client::{Conn, InProcessKms};

/// Key administrators manage the key and never use it.
fn administrators(account: &str) -> serde_json::Value {
    json!({"Sid": "Key administrators manage, never use", "Effect": "Allow",
           "Principal": {"AWS": format!("arn:aws:iam::{account}:role/nekms-key-admin")},
           "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Disable*",
                      "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
           "Resource": "*"})
}

/// A key policy without a root statement: the instance role may encrypt, and
/// decrypt only from an enclave whose PCR0 is `pcr0_hex`; administrators
/// manage the key and never decrypt.
pub fn enclave_only_policy(account: &str, pcr0_hex: &str) -> serde_json::Value {
    let instance = format!("arn:aws:iam::{account}:role/nekms-instance");
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Decrypt only inside the enclave image", "Effect": "Allow",
             "Principal": {"AWS": instance}, "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}}},
            {"Sid": "Encrypt from the instance", "Effect": "Allow",
             "Principal": {"AWS": instance}, "Action": "kms:Encrypt", "Resource": "*"},
            administrators(account)
        ]
    })
}

/// The admin creates a key with [`enclave_only_policy`] and the instance
/// encrypts `plaintext` under it: (key ARN, base64 ciphertext blob).
pub async fn enclave_only_secret(dev: &DevDir, local: &InProcessKms, pcr0_hex: &str, description: &str, plaintext: &[u8]) -> anyhow::Result<(String, String)> {
    let mut instance = Conn::open(&local.target(dev, "instance")?).await?;
    let policy = enclave_only_policy(&dev.config()?.account_id, pcr0_hex);
    let arn = create_key(dev, local, description, &policy).await?;
    let ct = instance.call("Encrypt", &json!({"KeyId": arn, "Plaintext": B64.encode(plaintext)})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    Ok((arn, blob))
}

/// A key policy for key custody: the enclave image `pcr0_hex` (and only
/// it) may generate data keys, decrypt them and ask for random bytes;
/// administrators manage the key and never use it.
pub fn custody_policy(account: &str, pcr0_hex: &str) -> serde_json::Value {
    let instance = format!("arn:aws:iam::{account}:role/nekms-instance");
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Only inside the enclave image", "Effect": "Allow", "Principal": {"AWS": instance},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}}},
            {"Sid": "Encrypt from the instance (key import)", "Effect": "Allow",
             "Principal": {"AWS": instance}, "Action": "kms:Encrypt", "Resource": "*"},
            administrators(account)
        ]
    })
}

/// The admin creates a key with `policy`: its ARN.
pub async fn create_key(dev: &DevDir, local: &InProcessKms, description: &str, policy: &serde_json::Value) -> anyhow::Result<String> {
    let mut admin = Conn::open(&local.target(dev, "admin")?).await?;
    let key = admin.call("CreateKey", &json!({"Description": description, "Policy": policy.to_string()})).await?;
    Ok(key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned())
}

/// A forwarder from `listen` to 127.0.0.1:`port`, allowing nothing else.
pub async fn proxy_to(listen: Address, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let allowlist = nekms_proxy::Allowlist::parse(&format!("allowlist: [{{address: 127.0.0.1, port: {port}}}]"), "the in-process allowlist")?;
    let config = nekms_proxy::ProxyConfig {
        listen,
        remote_host: "127.0.0.1".into(),
        remote_port: port,
        ip_version: nekms_proxy::IpVersion::V4,
        max_connections: 1024,
        connect_timeout: Duration::from_secs(5),
    };
    Ok(tokio::spawn(nekms_proxy::Proxy::bind(config, &allowlist).await?.run()))
}

/// A proxy and an enclave serving the native RPC and kmstool's protocol,
/// in this process; all stop when dropped.
pub struct EnclavePath {
    /// Where the enclave reaches the proxy.
    pub proxy: Address,
    /// Where kmstool clients reach the enclave.
    pub kmstool: Address,
    /// Where the native RPC is served.
    pub rpc: Address,
    pub enclave: Arc<nekms_enclave::Enclave>,
    /// The KMS endpoint the enclave uses (`https://localhost:PORT`).
    pub endpoint: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EnclavePath {
    /// Give the enclave the development instance role's credentials, as
    /// `nekms enclave credentials` would.
    pub fn supply_instance_credentials(&self, dev: &DevDir) -> anyhow::Result<()> {
        let p = dev.principals()?.into_iter().find(|p| p.name == "instance").context("no instance principal")?;
        self.enclave.set_credentials(
            p.access_key_id.clone(),
            zeroize::Zeroizing::new(p.secret_access_key.clone()),
            p.session_token.clone().map(zeroize::Zeroizing::new),
            Some("us-east-1".into()),
            None,
        );
        Ok(())
    }

    /// Sockets go in `run_dir`; the enclave trusts the development TLS CA.
    pub async fn start(dev: &DevDir, local: &InProcessKms, nsm: Arc<dyn Nsm>, run_dir: &Path) -> anyhow::Result<EnclavePath> {
        EnclavePath::start_with(dev, local, nsm, run_dir, None).await
    }

    /// As [`EnclavePath::start`], with `key_cache` opened keys at most (0: none).
    pub async fn start_with(dev: &DevDir, local: &InProcessKms, nsm: Arc<dyn Nsm>, run_dir: &Path, key_cache: Option<usize>) -> anyhow::Result<EnclavePath> {
        std::fs::create_dir_all(run_dir)?;
        let sock = |name: &str| -> anyhow::Result<Address> {
            let path = run_dir.join(name);
            let _ = std::fs::remove_file(&path);
            Ok(format!("unix://{}", path.display()).parse()?)
        };
        let (proxy, kmstool, rpc) = (sock("proxy.sock")?, sock("kmstool.sock")?, sock("rpc.sock")?);
        let port = local.https_addr.port();
        let endpoint = format!("https://localhost:{port}");
        let forwarding = proxy_to(proxy.clone(), port).await?;
        let args = nekms_enclave::config::EnclaveArgs {
            sim: true,
            proxy: Some(proxy.to_string()),
            kmstool: Some(kmstool.to_string()),
            kms_endpoint: Some(endpoint.clone()),
            kms_ca: Some(dev.tls_ca_path()),
            key_cache,
            ..Default::default()
        };
        let enclave = Arc::new(nekms_enclave::Enclave::new(nsm, &args.resolve(Default::default()))?);
        let serving = tokio::spawn(nekms_enclave::kmstool::serve(Listener::bind(&kmstool).await?, enclave.clone(), 64 * 1024));
        let rpc_task = tokio::spawn(nekms_rpc::serve(Listener::bind(&rpc).await?, enclave.clone(), Default::default()));
        Ok(EnclavePath { proxy, kmstool, rpc, enclave, endpoint, tasks: vec![forwarding, serving, rpc_task] })
    }
}

impl Drop for EnclavePath {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
