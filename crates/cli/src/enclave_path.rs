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

use crate::key_policy::{self, Roles};
use crate::kms_client::{Conn, InProcessKms};

/// A key policy without a root statement for kmstool's flow: the instance
/// role may encrypt, and decrypt only from an enclave whose PCR0 is
/// `pcr0_hex`; the administrator manages the key, never decrypts, and cannot
/// reopen it; nobody mints ciphertexts in nekms's reserved context.
pub fn enclave_only_policy(account: &str, pcr0_hex: &str) -> serde_json::Value {
    let roles = Roles::standard(account);
    let mut policy = key_policy::custody(&roles, &[pcr0_hex.to_owned()]);
    let statements = policy["Statement"].as_array_mut().expect("statements");
    statements[0] = json!({"Sid": "Decrypt only inside the enclave image", "Effect": "Allow",
             "Principal": {"AWS": roles.instance}, "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}}});
    statements.insert(
        1,
        json!({"Sid": "Encrypt from the instance", "Effect": "Allow",
             "Principal": {"AWS": roles.instance}, "Action": "kms:Encrypt", "Resource": "*"}),
    );
    policy
}

/// The admin creates a key with [`enclave_only_policy`] and the instance
/// encrypts `plaintext` under it: (key ARN, base64 ciphertext blob).
pub async fn enclave_only_secret(
    dev: &DevDir,
    local: &InProcessKms,
    pcr0_hex: &str,
    description: &str,
    plaintext: &[u8],
) -> anyhow::Result<(String, String)> {
    let mut instance = Conn::open(&local.target(dev, "instance")?).await?;
    let policy = enclave_only_policy(&dev.config()?.account_id, pcr0_hex);
    let arn = create_key(dev, local, description, &policy).await?;
    let ct = instance.call("Encrypt", &json!({"KeyId": arn, "Plaintext": B64.encode(plaintext)})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    Ok((arn, blob))
}

/// The admin creates a key with a final `policy` (one that locks the
/// administrator out, hence the bypass): its ARN.
pub async fn create_key(dev: &DevDir, local: &InProcessKms, description: &str, policy: &serde_json::Value) -> anyhow::Result<String> {
    let mut admin = Conn::open(&local.target(dev, "admin")?).await?;
    let key = admin
        .call("CreateKey", &json!({"Description": description, "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}))
        .await?;
    Ok(key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned())
}

/// A custody key set up in the two steps of [`key_policy`]: the admin
/// creates it with the bootstrap policy, `configure` turns its ARN into the
/// enclave configuration(s) and their measurements, and the admin then puts
/// the final policy `finish` makes from those, locking itself out.
pub async fn custody_key<T>(
    dev: &DevDir,
    target: &crate::kms_client::Target,
    description: &str,
    configure: impl FnOnce(&str) -> anyhow::Result<T>,
    finish: impl FnOnce(&Roles, &T) -> serde_json::Value,
) -> anyhow::Result<(String, T)> {
    let roles = Roles::standard(&dev.config()?.account_id);
    let mut admin = Conn::open(target).await?;
    let key = admin.call("CreateKey", &json!({"Description": description, "Policy": key_policy::bootstrap(&roles).to_string()})).await?;
    let arn = key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned();
    let configured = configure(&arn)?;
    let policy = finish(&roles, &configured);
    admin
        .call(
            "PutKeyPolicy",
            &json!({"KeyId": arn, "PolicyName": "default", "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}),
        )
        .await?;
    check_custody_key(&mut admin, &arn, &policy).await?;
    Ok((arn, configured))
}

/// What the bootstrap window could have left behind is not there: the
/// policy in force is `policy`, the key is a single-Region AWS_KMS symmetric
/// key in no custom key store, and it has no grants.
pub async fn check_custody_key(admin: &mut Conn, arn: &str, policy: &serde_json::Value) -> anyhow::Result<()> {
    let got = admin.call("GetKeyPolicy", &json!({"KeyId": arn, "PolicyName": "default"})).await?;
    let in_force: serde_json::Value = serde_json::from_str(got["Policy"].as_str().context("GetKeyPolicy gave no Policy")?)?;
    anyhow::ensure!(&in_force == policy, "{arn}: the key policy in force is not the custody policy nekms wrote");
    let meta = &admin.call("DescribeKey", &json!({"KeyId": arn})).await?["KeyMetadata"];
    let field = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        field("KeySpec") == "SYMMETRIC_DEFAULT" && field("Origin") == "AWS_KMS",
        "{arn}: not an AWS_KMS symmetric key ({} {})",
        field("KeySpec"),
        field("Origin")
    );
    anyhow::ensure!(
        meta["MultiRegion"].as_bool() != Some(true) && meta.get("CustomKeyStoreId").is_none_or(|v| v.is_null()),
        "{arn}: a multi-Region key or one in a custom key store"
    );
    let grants = admin.call("ListGrants", &json!({"KeyId": arn, "Limit": 100})).await?;
    anyhow::ensure!(
        grants["Grants"].as_array().is_some_and(|g| g.is_empty()),
        "{arn} has grants, which someone made while the key was open; revoke them and check again: {}",
        grants["Grants"]
    );
    Ok(())
}

/// The trust part of an enclave configuration (TOML): the custody keys and
/// the other images whose records it accepts.
pub fn trust_toml(custody: &[&str], origin_pcr0: &[String]) -> String {
    let list = |v: Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("custody-kms-keys = [{}]\n", list(custody.iter().map(|s| s.to_string()).collect()));
    if !origin_pcr0.is_empty() {
        out.push_str(&format!("origin-pcr0 = [{}]\n", list(origin_pcr0.to_vec())));
    }
    out
}

/// A forwarder from `listen` to 127.0.0.1:`port`, allowing nothing else.
pub async fn proxy_to(listen: Address, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let allowlist =
        nekms_proxy::Allowlist::parse(&format!("allowlist: [{{address: 127.0.0.1, port: {port}}}]"), "the in-process allowlist")?;
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
    /// Where the validator signer is served (its state store beside it).
    pub privval: Address,
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
        EnclavePath::start_with(dev, local, nsm, run_dir, None, "").await
    }

    /// As [`EnclavePath::start`], with `key_cache` opened keys at most (0:
    /// none) and the trust settings of `config` (TOML; the caller measured
    /// it into the NSM's PCRs, as a real image would be).
    pub async fn start_with(
        dev: &DevDir,
        local: &InProcessKms,
        nsm: Arc<dyn Nsm>,
        run_dir: &Path,
        key_cache: Option<usize>,
        config: &str,
    ) -> anyhow::Result<EnclavePath> {
        EnclavePath::start_full(dev, local, nsm, run_dir, key_cache, config, true).await
    }

    /// As [`EnclavePath::start_with`]; `store_sync` false runs the signer's
    /// state store without fsync (`nekms privval persist --no-fsync`).
    pub async fn start_full(
        dev: &DevDir,
        local: &InProcessKms,
        nsm: Arc<dyn Nsm>,
        run_dir: &Path,
        key_cache: Option<usize>,
        config: &str,
        store_sync: bool,
    ) -> anyhow::Result<EnclavePath> {
        std::fs::create_dir_all(run_dir)?;
        let sock = |name: &str| -> anyhow::Result<Address> {
            let path = run_dir.join(name);
            let _ = std::fs::remove_file(&path);
            Ok(format!("unix://{}", path.display()).parse()?)
        };
        let (proxy, kmstool, rpc) = (sock("proxy.sock")?, sock("kmstool.sock")?, sock("rpc.sock")?);
        let (privval, state) = (sock("privval.sock")?, sock("privval-state.sock")?);
        let port = local.https_addr.port();
        let endpoint = format!("https://localhost:{port}");
        let forwarding = proxy_to(proxy.clone(), port).await?;
        let file = nekms_enclave::config::EnclaveArgs::from_toml(config)?;
        let args = nekms_enclave::config::EnclaveArgs {
            sim: true,
            dev_dir: Some(dev.path().to_path_buf()),
            proxy: Some(proxy.to_string()),
            kmstool: Some(kmstool.to_string()),
            kms_endpoint: Some(endpoint.clone()),
            kms_ca: Some(dev.tls_ca_path()),
            key_cache,
            privval_state: Some(state.to_string()),
            ..Default::default()
        };
        let enclave = Arc::new(nekms_enclave::Enclave::new(nsm, &args.resolve(file))?);
        let serving = tokio::spawn(nekms_enclave::kmstool::serve(Listener::bind(&kmstool).await?, enclave.clone(), 64 * 1024));
        let rpc_task = tokio::spawn(nekms_rpc::serve(Listener::bind(&rpc).await?, enclave.clone(), Default::default()));
        // The validator signer and its state store (records in run_dir/privval-state).
        let store = Listener::bind(&state).await?;
        // This enclave lives as long as the caller (the demo, a bench): its signer's states go with it.
        let store_dir = run_dir.join("privval-state");
        let _ = std::fs::remove_dir_all(&store_dir);
        let store_task = tokio::spawn(async move {
            let _ = nekms_privval_parent::store::serve_store(store, store_dir, store_sync).await;
        });
        let privval_task = tokio::spawn(nekms_enclave::privval::serve(Listener::bind(&privval).await?, enclave.clone(), true));
        Ok(EnclavePath {
            proxy,
            kmstool,
            rpc,
            privval,
            enclave,
            endpoint,
            tasks: vec![forwarding, serving, rpc_task, store_task, privval_task],
        })
    }
}

impl Drop for EnclavePath {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A benchmark's world, in a temporary directory: the development PKI, the
/// local KMS in this process, a custody key set up in two steps and a
/// simulated NSM measured from `label`'s image with the configuration that
/// pins the key (the configuration is returned to start enclaves with).
pub struct BenchWorld {
    pub tmp: tempfile::TempDir,
    pub dev: DevDir,
    pub local: InProcessKms,
    pub config: String,
    pub nsm: Arc<dyn Nsm>,
    pub custody_key: String,
}

impl BenchWorld {
    pub async fn new(label: &str) -> anyhow::Result<BenchWorld> {
        let tmp = tempfile::tempdir()?;
        let dev = DevDir::new(tmp.path().join("dev"));
        dev.init()?;
        let local = InProcessKms::start(&dev, &tmp.path().join("kms"), false).await?;
        let image = format!("{label} enclave");
        let (custody_key, (config, measurement)) = custody_key(
            &dev,
            &local.target(&dev, "admin")?,
            label,
            |arn| {
                let config = trust_toml(&[arn], &[]);
                let m = nekms_nsm::measure::Measurement::of_image(image.as_bytes(), Some(config.as_bytes()));
                Ok((config, m))
            },
            |roles, (_, m)| crate::key_policy::custody(roles, &[m.pcr0.to_hex()]),
        )
        .await?;
        let nsm: Arc<dyn Nsm> = Arc::new(nekms_nsm::SimulatedNsm::boot(nekms_nsm::SimConfig::new(measurement), dev.document_signer()?));
        Ok(BenchWorld { tmp, dev, local, config, nsm, custody_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack the check after setup exists for: an administrator who turns
    /// bad during the bootstrap window opens the policy, encrypts a secret of
    /// its choosing, grants the instance role Decrypt and lets the setup
    /// finish. The check finds the grant, and the final policy's Deny already
    /// keeps the grant from opening anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_left_in_the_bootstrap_window_is_found_and_opens_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = DevDir::new(tmp.path().join("dev"));
        dev.init().unwrap();
        let local = InProcessKms::start(&dev, &tmp.path().join("kms"), false).await.unwrap();
        let roles = Roles::standard(&dev.config().unwrap().account_id);
        let mut admin = Conn::open(&local.target(&dev, "admin").unwrap()).await.unwrap();
        let mut instance = Conn::open(&local.target(&dev, "instance").unwrap()).await.unwrap();
        let key = admin.call("CreateKey", &json!({"Policy": key_policy::bootstrap(&roles).to_string()})).await.unwrap();
        let arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        let grant = json!({"KeyId": arn, "GranteePrincipal": roles.instance, "Operations": ["Decrypt"]});
        let (status, err) = admin.call_raw("CreateGrant", &grant).await.unwrap();
        assert_eq!((status, err["__type"].as_str()), (400, Some("AccessDeniedException")), "the bootstrap policy allows no grant: {err}");

        let open = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": [roles.admin, roles.instance]}, "Action": "kms:*", "Resource": "*"}]});
        admin.call("PutKeyPolicy", &json!({"KeyId": arn, "PolicyName": "default", "Policy": open.to_string()})).await.unwrap();
        let blob =
            instance.call("Encrypt", &json!({"KeyId": arn, "Plaintext": B64.encode(b"planted")})).await.unwrap()["CiphertextBlob"].clone();
        admin.call("CreateGrant", &grant).await.unwrap();

        let policy = key_policy::custody(&roles, &["ab".repeat(48)]);
        let put = json!({"KeyId": arn, "PolicyName": "default", "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true});
        admin.call("PutKeyPolicy", &put).await.unwrap();
        let err = check_custody_key(&mut admin, &arn, &policy).await.unwrap_err().to_string();
        assert!(err.contains("has grants"), "{err}");
        let (status, err) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob})).await.unwrap();
        assert_eq!(status, 400);
        assert!(err["message"].as_str().unwrap().contains("explicit deny in a resource-based policy"), "{err}");
    }
}
