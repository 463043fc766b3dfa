//! Running the local KMS: settings from the development world, listeners,
//! readiness, and shutdown. Shared by `nekms-kms` and `nekms dev kms`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nekms_attestation::pki::pem_certificate_der;
use nekms_attestation::{Verifier, AWS_NITRO_ROOT_G1_PEM};
use nekms_devworld::DevDir;

use crate::audit::AuditLog;
use crate::policy::Policy;
use crate::recipient::RecipientPolicy;
use crate::server::{self, Listen, Server};
use crate::service::{Kms, KmsConfig, Principal};

/// Options of `nekms-kms` / `nekms dev kms`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The development world (default: $NEKMS_DEV_DIR, else ~/.local/share/nekms/dev). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where keys are kept (default: DIR/kms).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// HTTP address (default from config.toml, 127.0.0.1:7700); `off` to disable.
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<String>,
    /// HTTPS address with the development TLS certificate (default 127.0.0.1:7701); `off` to disable.
    #[arg(long, value_name = "IP:PORT")]
    pub https: Option<String>,
    /// Also serve HTTP on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Also accept Recipient documents signed by the real AWS Nitro root.
    #[arg(long)]
    pub trust_aws_root: bool,
    /// Refuse Recipient documents older than this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub max_document_age: u64,
    /// Audit log (default: DATA/audit.log); `off` to disable.
    #[arg(long, value_name = "PATH")]
    pub audit: Option<String>,
    /// Write the listening URLs as JSON to this file once ready.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Stop by itself after this many seconds (a safety net for tests).
    #[arg(long, value_name = "SECONDS")]
    pub exit_after: Option<u64>,
}

/// Build the KMS configuration from a development world.
pub fn config_from_dev(dev: &DevDir, trust_aws_root: bool, max_age: Duration) -> Result<KmsConfig, String> {
    let config = dev.config().map_err(|e| e.to_string())?;
    let mut principals = HashMap::new();
    for p in dev.principals().map_err(|e| e.to_string())? {
        let policies = p
            .policies
            .iter()
            .map(|text| Policy::parse(text, false).map_err(|e| format!("principals.toml: identity policy of {}: {e}", p.name)))
            .collect::<Result<Vec<_>, _>>()?;
        principals.insert(
            p.access_key_id.clone(),
            Principal {
                credential: crate::dev_credential(&p),
                identity_policies: policies,
                tags: p.tags.clone(),
                user_id: p.user_id.clone(),
            },
        );
    }
    let mut roots = vec![pem_certificate_der(&dev.root_pem().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?];
    if trust_aws_root {
        roots.push(pem_certificate_der(AWS_NITRO_ROOT_G1_PEM).map_err(|e| e.to_string())?);
    }
    let verifier = Verifier::from_der(roots).map_err(|e| format!("attestation roots: {e}"))?;
    Ok(KmsConfig { region: config.region, account: config.account_id, principals, recipient: RecipientPolicy { verifier, max_age } })
}

fn parse_addr(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    let a: SocketAddr = v.parse().map_err(|_| format!("--{flag} {v}: expected IP:PORT or off"))?;
    if !a.ip().is_loopback() {
        tracing::warn!("--{flag} {a} is not a loopback address; the local KMS is for development");
    }
    Ok(Some(a))
}

/// Run until SIGINT/SIGTERM (or `--exit-after`).
pub fn run(args: ServeArgs) -> Result<(), String> {
    let dev = DevDir::resolve(args.dir.as_deref()).map_err(|e| e.to_string())?;
    let report = dev.init().map_err(|e| e.to_string())?;
    if !report.created.is_empty() {
        eprint!("{report}");
    }
    let dev_config = dev.config().map_err(|e| e.to_string())?;
    let config = config_from_dev(&dev, args.trust_aws_root, Duration::from_secs(args.max_document_age))?;
    let data = args.data.clone().unwrap_or_else(|| dev.path().join("kms"));
    let kms = Kms::open(&data, config).map_err(|e| format!("{}: {e}", data.display()))?;
    let audit = match args.audit.as_deref() {
        Some("off") => None,
        Some(p) => Some(open_audit(Path::new(p))?),
        None => Some(open_audit(&data.join("audit.log"))?),
    };
    let mut listen = Vec::new();
    if let Some(a) = parse_addr("http", args.http.as_deref().unwrap_or(&dev_config.kms_http))? {
        listen.push(Listen::Http(a));
    }
    if let Some(a) = parse_addr("https", args.https.as_deref().unwrap_or(&dev_config.kms_https))? {
        listen.push(Listen::Https(a));
    }
    if let Some(p) = &args.unix {
        listen.push(Listen::Unix(p.clone()));
    }
    if listen.is_empty() {
        return Err("nothing to listen on: give --http, --https or --unix".into());
    }
    let tls = dev.kms_tls().map_err(|e| e.to_string())?;
    let acceptor = server::tls_acceptor(&tls.cert_pem, &tls.key_pem)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let bound = server::bind(&listen, Some(acceptor)).await?;
        let urls: Vec<String> = bound.iter().map(server::Bound::url).collect();
        let server = Arc::new(Server::new(kms, audit));
        for url in &urls {
            tracing::info!("listening on {url}");
        }
        tracing::info!("state in {}", data.display());
        if let Some(a) = &server.audit {
            tracing::info!("audit log {}", a.path().display());
        }
        tracing::info!(
            "try  AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE={} aws --profile admin --endpoint-url {} kms list-keys",
            dev.aws_credentials_path().display(),
            dev.aws_config_path().display(),
            urls.first().map(String::as_str).unwrap_or("")
        );
        if let Some(path) = &args.ready_file {
            let ready = serde_json::json!({
                "endpoints": urls,
                "http": urls.iter().find(|u| u.starts_with("http://")),
                "https": urls.iter().find(|u| u.starts_with("https://")),
                "unix": urls.iter().find(|u| u.starts_with("unix://")),
                "ca": dev.tls_ca_path(),
                "pid": std::process::id(),
            });
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&ready).expect("JSON")).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let unix_paths: Vec<PathBuf> = listen.iter().filter_map(|l| if let Listen::Unix(p) = l { Some(p.clone()) } else { None }).collect();
        let tasks: Vec<_> = bound.into_iter().map(|b| tokio::spawn(server::serve(server.clone(), b))).collect();
        let exit_after = async {
            match args.exit_after {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = term.recv() => tracing::info!("terminated; stopping"),
            _ = exit_after => tracing::info!("--exit-after elapsed; stopping"),
        }
        for t in tasks {
            t.abort();
        }
        for p in unix_paths {
            let _ = std::fs::remove_file(p);
        }
        Ok::<(), String>(())
    })
}

fn open_audit(path: &Path) -> Result<AuditLog, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    AuditLog::open(path).map_err(|e| format!("audit log {}: {e}", path.display()))
}
