//! An enclave inside this process, shared by `nekms demo` and the
//! benchmarks: the parent's proxy to the local KMS's HTTPS port, and an
//! enclave serving the native RPC, kmstool's protocol and the validator
//! signer (with its state store), wired over Unix sockets; and a
//! benchmark's whole world in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nekms_devworld::DevDir;
use nekms_nsm::Nsm;
use nekms_transport::{Address, Listener};

use crate::custody::{custody_key, trust_toml};
use crate::kms::InProcessKms;

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
        idle_timeout: Duration::from_secs(300),
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
