//! `nekms dev up`: the local KMS (HTTPS), the proxy and a simulated enclave,
//! each its own process, under one supervisor.
//!
//! The children are this executable's own commands (`dev kms`, `proxy`,
//! `privval persist|push-config|proxy`, `dev enclave` when `nekms-enclave`
//! is not built beside it), `nekms-enclave` and `p11-kit server`. Before the
//! enclave starts, its custody key is set up the way an operator does on
//! AWS; once all is up, the environment goes to `RUN_DIR/env`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use nekms_devworld::DevDir;
use nekms_nsm::measure::Measurement;
use nekms_rpc::{CredentialsUpdate, SecretString};

use crate::key_policy::Roles;
use crate::kms::{Conn, Target};

mod config;
mod held;
mod supervisor;
pub mod vm;

use supervisor::Group;
pub use supervisor::Stopped;

/// How to start (the flags of `nekms dev up`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where sockets, logs and the env file go [default: DIR/up].
    pub run_dir: Option<PathBuf>,
    /// The local KMS's plain HTTP listener [default: the dev config's].
    pub kms_http: Option<String>,
    /// The local KMS's HTTPS listener, the enclave's endpoint [default: the dev config's].
    pub kms_https: Option<String>,
    /// Simulate an enclave started with --debug-mode (PCRs all zero).
    pub debug_mode: bool,
    /// The image the simulated enclave measures [default: the enclave program].
    pub image: Option<PathBuf>,
    /// Do not push the instance role's credentials to the enclave.
    pub no_credentials: bool,
    /// Reuse this custody key (ARN) after checking its policy.
    pub custody_kms_key: Option<String>,
    /// Trust by image (PCR0): a new custody key each run, as before signer
    /// trust; the default is the world's custody key trusting its signer.
    pub trust_by_image: bool,
    /// `parent-decrypt = false` in the enclave's configuration.
    pub no_parent_decrypt: bool,
    /// `allow-import = false` in the enclave's configuration.
    pub no_import: bool,
    /// A tmkms.toml to push, and whose validators to proxy.
    pub privval_config: Option<PathBuf>,
    /// `privval-max-height-jump` in the enclave's configuration.
    pub privval_max_height_jump: Option<i64>,
    /// The freshness anchor's DynamoDB table.
    pub privval_anchor_table: Option<String>,
    /// The anchor's DynamoDB endpoint, which the enclave reaches through a proxy.
    pub privval_anchor_endpoint: Option<String>,
    /// Run the enclave as an image in a guest VM instead of a process here.
    pub vm: Option<vm::VmSpec>,
    /// `migration-approvers` (base64 SPKI) and `migration-threshold` in the enclave's configuration.
    pub migration_approvers: Vec<String>,
    pub migration_threshold: Option<usize>,
}

impl Options {
    /// Whether the world's custody key and image signer are used (signer
    /// trust, PCR8): unless asked for image trust, or in debug mode (whose
    /// PCR8 reads zero, as every PCR does).
    pub fn by_signer(&self) -> bool {
        !self.trust_by_image && !self.debug_mode
    }
}

/// p11-kit's server with libnekms_p11.so, serving the enclave's tokens.
pub struct P11Kit {
    /// What p11-kit's client module takes (`P11_KIT_SERVER_ADDRESS`).
    pub address: String,
    pub pid: u32,
    pub module: PathBuf,
}

/// Everything `dev up` started and where it is; the children stop when it is dropped.
pub struct Up {
    /// The local KMS for the parent (`http://...`) and for the enclave (`https://...`).
    pub kms_http: String,
    pub kms_https: String,
    pub kms_pid: u32,
    /// The proxy (`unix://...`) and the KMS port it allows.
    pub proxy: String,
    pub https_port: u16,
    pub proxy_pid: u32,
    /// Whether the enclave says its NSM is simulated.
    pub simulated: bool,
    /// The image measured into PCR0-2.
    pub image: PathBuf,
    pub enclave_pid: u32,
    /// The enclave's native RPC, kmstool port and PKCS#11 RPC (`unix://...`).
    pub rpc: String,
    pub kmstool: String,
    pub p11_rpc: String,
    /// p11-kit's server, or why PKCS#11 is not served.
    pub p11: Result<P11Kit, &'static str>,
    /// The validator signer, its state store and its records.
    pub privval: String,
    pub privval_state: String,
    pub privval_state_dir: PathBuf,
    pub privval_anchor_proxy: String,
    pub privval_anchor_table: Option<String>,
    pub persist_pid: u32,
    /// The privval proxy, when a tmkms.toml was given.
    pub privval_proxy_pid: Option<u32>,
    /// PCR0, PCR1 and PCR2 as the enclave reports them (hex).
    pub pcrs: [String; 3],
    /// PCR8 as the enclave reports it (zeros: unsigned).
    pub pcr8: String,
    /// The simulated image's signature (`--sim-signature`), when signed.
    pub sim_signature: Option<PathBuf>,
    pub custody_key: String,
    /// The measured configuration that pins the custody key.
    pub enclave_config: PathBuf,
    /// The access key id pushed to the enclave, if any.
    pub credentials: Option<String>,
    /// The environment for the parent's tools, and the file it was written to.
    pub env: Vec<(&'static str, String)>,
    pub env_file: PathBuf,
    /// The enclave's audit trail, appended across runs (`nekms audit verify` checks it).
    pub audit_file: PathBuf,
    /// The guest VM the enclave runs in, with `--vm-blobs` (stopped first).
    pub vm: Option<crate::vm::Vm>,
    /// The children, stopped when this is dropped; then the files they used are removed.
    group: Group,
    cleanup: Cleanup,
}

/// Files a run creates for its children and its users (sockets, the env
/// file, ready files), removed when it ends however it ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn unix(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// Set up the development world in `dev`, start everything and push the
/// credentials; the environment is written to `RUN_DIR/env`.
pub fn start(dev: &DevDir, o: &Options) -> anyhow::Result<Up> {
    dev.init()?;
    let config = dev.config()?;
    let run_dir = o.run_dir.clone().unwrap_or_else(|| dev.path().join("up"));
    std::fs::create_dir_all(&run_dir).with_context(|| run_dir.display().to_string())?;
    let [kms_ready, proxy_sock, rpc_sock, kmstool_sock, allowlist, p11_sock, p11kit_sock, privval_sock, state_sock] = [
        "kms.ready.json",
        "proxy.sock",
        "rpc.sock",
        "kmstool.sock",
        "allowlist.yaml",
        "p11.sock",
        "p11-kit.sock",
        "privval.sock",
        "privval-state.sock",
    ]
    .map(|n| run_dir.join(n));
    let state_dir = dev.path().join("privval-state");
    // In a guest VM the enclave reaches the proxy and the state store over
    // vsock: its connections out to port P arrive at RUN_DIR/vm/vsock_P.
    let (proxy_sock, state_sock) = match &o.vm {
        Some(_) => {
            std::fs::create_dir_all(run_dir.join("vm"))?;
            (vm::outbound(&run_dir, vm::PROXY_PORT), vm::outbound(&run_dir, vm::STATE_PORT))
        }
        None => (proxy_sock, state_sock),
    };
    let anchor_sock = match &o.vm {
        Some(_) => vm::outbound(&run_dir, vm::ANCHOR_PORT),
        None => run_dir.join("privval-anchor-proxy.sock"),
    };
    let env_file = run_dir.join("env");
    // The audit trail: the enclave streams it to a collector here, which appends it to RUN/audit.jsonl (kept across runs).
    let audit_sock = match &o.vm {
        Some(_) => vm::outbound(&run_dir, vm::AUDIT_PORT),
        None => run_dir.join("audit.sock"),
    };
    let audit_file = run_dir.join("audit.jsonl");
    // The enclave's log stream, as the parent's collector gets it: RUN/logs/enclave-stream.log
    // (its stderr is RUN/logs/enclave.log already, so the collector does not echo it again).
    let logs_sock = match &o.vm {
        Some(_) => vm::outbound(&run_dir, vm::LOGS_PORT),
        None => run_dir.join("logs.sock"),
    };
    // Declared before the group, so dropped after it: the children stop, then their files go. Filled only once the group
    // exists, so a start refused for a previous run's children leaves that run's files alone.
    let mut cleanup = Cleanup(Vec::new());
    let mut group = Group::new(&run_dir)?;
    cleanup.0 = [
        &kms_ready,
        &proxy_sock,
        &rpc_sock,
        &kmstool_sock,
        &p11_sock,
        &p11kit_sock,
        &privval_sock,
        &state_sock,
        &anchor_sock,
        &env_file,
        &audit_sock,
        &logs_sock,
    ]
    .map(|p| p.to_path_buf())
    .to_vec();
    for stale in &cleanup.0 {
        let _ = std::fs::remove_file(stale);
    }
    let me = std::env::current_exe()?;
    let dir = dev.path().to_path_buf();

    // 1. The local KMS, HTTP for the parent and HTTPS for the enclave.
    let http = o.kms_http.clone().unwrap_or_else(|| config.kms_http.to_string());
    let https = o.kms_https.clone().unwrap_or_else(|| config.kms_https.to_string());
    held::check_free(&http, "--kms-http")?;
    held::check_free(&https, "--kms-https")?;
    let mut kms = Command::new(&me);
    kms.args(["dev", "kms", "--dir"]).arg(&dir).args(["--http", &http, "--https", &https, "--ready-file"]).arg(&kms_ready);
    let kms_pid = group.spawn("kms", kms)?;
    group.wait_for("local KMS", || kms_ready.exists())?;
    let ready: serde_json::Value = serde_json::from_slice(&std::fs::read(&kms_ready)?)?;
    let url = |k: &str| ready[k].as_str().map(str::to_owned).with_context(|| format!("the KMS ready file lacks {k}"));
    let (kms_http_url, kms_https_url) = (url("http")?, url("https")?);
    let https_port: u16 =
        kms_https_url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).context("the KMS's HTTPS port")?;

    // 2. The proxy, allowing exactly that endpoint.
    std::fs::write(&allowlist, format!("allowlist:\n  - {{address: localhost, port: {https_port}}}\n"))?;
    let mut proxy = Command::new(&me);
    proxy.arg("proxy").arg(unix(&proxy_sock)).args(["localhost", &https_port.to_string(), "--config"]).arg(&allowlist);
    let proxy_pid = group.spawn("proxy", proxy)?;
    group.wait_for("proxy", || proxy_sock.exists())?;

    // 3. The custody key. By default the world's own (DEV/custody.toml),
    //    trusting the world's image signer (PCR8): created once with its
    //    final policy, kept across runs and rebuilds. With --trust pcr0 (or
    //    in debug mode), in the two steps the ordering needs: the admin
    //    creates it with the bootstrap policy; the enclave's configuration
    //    pins its ARN and is measured with the image; the admin puts the
    //    final policy naming that PCR0, locking itself out.
    let (program, prefix) = config::enclave_program()?;
    let image = o.image.clone().unwrap_or_else(|| program.clone());
    let enclave_config = run_dir.join("enclave.toml");
    let sim_signature = run_dir.join("enclave.sig");
    let _ = std::fs::remove_file(&sim_signature);
    let http_addr: std::net::SocketAddr =
        kms_http_url.trim_start_matches("http://").trim_end_matches('/').parse().context("the KMS's HTTP address")?;
    let admin = Target::principal(dev, http_addr, "admin")?;
    let vm_image = run_dir.join("image.eif");
    let vm_p11 = vm::p11_parts();
    let signer = if o.by_signer() { Some(dev.image_signer_paths()) } else { None };
    let configure = |arn: &str| -> anyhow::Result<Measurement> {
        let mut text = config::enclave_toml(arn, o, &config.region);
        if let Some(spec) = &o.vm {
            text.push_str(&vm::guest_toml(&config.region, https_port, o.privval_anchor_endpoint.is_some(), vm_p11.is_ok()));
            std::fs::write(&enclave_config, text)?;
            return vm::build_image(spec, &enclave_config, &dev.tls_ca_path(), vm_p11.as_ref().ok(), signer.as_ref(), &vm_image);
        }
        std::fs::write(&enclave_config, text)?;
        let m = Measurement::of_files(&image, Some(&enclave_config))?;
        if signer.is_some() {
            // Signed as nitro-cli signs an image: the simulator checks it over the PCR0 it measures.
            let s = dev.image_signer()?;
            let section = nekms_attestation::image_signature::sign_pem(&m.pcr0, &s.key_pem, &s.cert_pem).map_err(anyhow::Error::msg)?;
            std::fs::write(&sim_signature, section)?;
        }
        Ok(m)
    };
    // A debug-mode enclave reports zeros: the policy must name them (and so admits every debug image).
    let final_policy = |roles: &Roles, m: &Measurement| {
        let pcr0 = if o.debug_mode { nekms_attestation::Pcr48::ZERO } else { m.pcr0 };
        crate::key_policy::custody(roles, &[pcr0.to_hex()])
    };
    let (custody_key, measurement) = match (&o.custody_kms_key, o.by_signer()) {
        (Some(arn), by_signer) => {
            // Reuse only a key whose policy in force is exactly the custody policy for this image (or signer).
            let m = configure(arn)?;
            let policy = match by_signer {
                true => crate::world_custody::policy(dev, &crate::world_custody::signer_pcr8(dev)?)?,
                false => final_policy(&Roles::standard(&config.account_id), &m),
            };
            group
                .rt
                .block_on(async {
                    let mut conn = Conn::open(&admin).await?;
                    crate::custody::check_custody_key(&mut conn, arn, &policy).await
                })
                .with_context(|| format!("--custody-kms-key {arn}"))?;
            (arn.clone(), m)
        }
        (None, true) => {
            let world = group.rt.block_on(crate::world_custody::ensure(dev, &admin, false))?;
            if world.created {
                println!(
                    "nekms dev up: created the development world's custody key {} (trusting image signer PCR8 {})",
                    world.arn, world.pcr8
                );
            }
            let m = configure(&world.arn)?;
            (world.arn, m)
        }
        (None, false) => group.rt.block_on(crate::custody::custody_key(dev, &admin, "nekms dev up: custody", configure, final_policy))?,
    };

    // The anchor's proxy, allowing exactly its endpoint.
    if let Some(endpoint) = &o.privval_anchor_endpoint {
        let (host, port) = config::anchor_host_port(endpoint).map_err(|e| anyhow::anyhow!("--privval-anchor-endpoint {endpoint}: {e}"))?;
        let allow = run_dir.join("anchor-allowlist.yaml");
        std::fs::write(&allow, format!("allowlist:\n  - {{address: {host}, port: {port}}}\n"))?;
        let mut p = Command::new(&me);
        p.arg("proxy").arg(unix(&anchor_sock)).args([host.as_str(), &port.to_string(), "--config"]).arg(&allow);
        group.spawn("anchor-proxy", p)?;
        group.wait_for("anchor proxy", || anchor_sock.exists())?;
    }
    // 4. The validator signer's state store, then the simulated enclave.
    let mut persist = Command::new(&me);
    persist.args(["privval", "persist", "--listen", &unix(&state_sock), "--dir"]).arg(&state_dir);
    let persist_pid = group.spawn("privval-persist", persist)?;
    group.wait_for("privval persist", || state_sock.exists())?;
    let mut collect = Command::new(&me);
    collect.args(["audit", "collect", "--listen", &unix(&audit_sock), "-o"]).arg(&audit_file);
    group.spawn("audit", collect)?;
    group.wait_for("audit collector", || audit_sock.exists())?;
    let mut logs = Command::new(&me);
    logs.args(["logs", "collect", "--no-echo", "--listen", &unix(&logs_sock), "-o"]).arg(run_dir.join("logs").join("enclave-stream.log"));
    group.spawn("logs", logs)?;
    group.wait_for("log collector", || logs_sock.exists())?;
    let mut guest = None;
    let mut enclave = Command::new(&program);
    enclave
        .args(&prefix)
        .arg("--config")
        .arg(&enclave_config)
        .args(["--sim", "--dev-dir"])
        .arg(&dir)
        .args(["--rpc", &unix(&rpc_sock), "--kmstool", &unix(&kmstool_sock), "--proxy", &unix(&proxy_sock), "--p11", &unix(&p11_sock)])
        .args(["--privval", &unix(&privval_sock), "--privval-state", &unix(&state_sock), "--privval-anchor-proxy", &unix(&anchor_sock)])
        .args(["--audit", &unix(&audit_sock), "--logs", &unix(&logs_sock)])
        .args(["--kms-endpoint", &format!("https://localhost:{https_port}"), "--kms-ca"])
        .arg(dev.tls_ca_path());
    if o.debug_mode {
        enclave.arg("--debug-mode");
    }
    if sim_signature.exists() {
        enclave.arg("--sim-signature").arg(&sim_signature);
    }
    enclave.arg("--image").arg(&image);
    let enclave_pid = match &o.vm {
        Some(spec) => {
            let mut forwards =
                vec![(vm::RPC_PORT, rpc_sock.clone()), (vm::KMSTOOL_PORT, kmstool_sock.clone()), (vm::PRIVVAL_PORT, privval_sock.clone())];
            if vm_p11.is_ok() {
                forwards.push((vm::P11_KIT_PORT, p11kit_sock.clone()));
            }
            let started = vm::boot(dev, spec, &vm_image, &run_dir, forwards)?;
            for (name, pid) in started.pids() {
                group.list(name, pid);
            }
            let pid = started.qemu_pid;
            guest = Some(started);
            pid
        }
        None => {
            let pid = group.spawn("enclave", enclave)?;
            group.wait_for("enclave", || rpc_sock.exists() && kmstool_sock.exists() && p11_sock.exists() && privval_sock.exists())?;
            pid
        }
    };

    // PKCS#11: p11-kit's server loading libnekms_p11.so, as in the enclave image.
    let p11 = match (config::p11_module(), config::which("p11-kit")) {
        // In a guest VM, p11-kit's server runs inside, beside nekms-enclave, on vsock port 9999.
        _ if o.vm.is_some() => match &vm_p11 {
            Ok((_, module)) => {
                Ok(P11Kit { address: format!("unix:path={}", p11kit_sock.display()), pid: enclave_pid, module: module.clone() })
            }
            Err(why) => Err(*why),
        },
        (Some(module), Some(kit)) => {
            let mut server = Command::new(kit);
            server
                .args(["server", "-f", "-p"])
                .arg(&module)
                .arg("-n")
                .arg(&p11kit_sock)
                .arg("pkcs11:")
                .env("NEKMS_P11_RPC", unix(&p11_sock));
            let pid = group.spawn("p11-kit-server", server)?;
            group.wait_for("p11-kit server", || p11kit_sock.exists())?;
            Ok(P11Kit { address: format!("unix:path={}", p11kit_sock.display()), pid, module })
        }
        (None, _) => Err("libnekms_p11.so is not built beside nekms (cargo build -p nekms-p11, or set NEKMS_P11_MODULE)"),
        (_, None) => Err("p11-kit is not installed (apt install p11-kit p11-kit-modules)"),
    };

    // 5. Credentials and a description, over the RPC.
    let rpc_address = unix(&rpc_sock);
    let description = group.rt.block_on(async {
        let client = nekms_rpc::Client::connect(&rpc_address.parse()?, concat!("nekms ", env!("CARGO_PKG_VERSION"))).await?;
        if !o.no_credentials {
            let instance =
                dev.principals()?.into_iter().find(|p| p.name == "instance").context("principals.toml has no instance principal")?;
            client
                .set_credentials(CredentialsUpdate {
                    access_key_id: instance.access_key_id.clone(),
                    secret_access_key: SecretString::new(instance.secret_access_key.as_str()),
                    session_token: instance.session_token.as_deref().map(SecretString::new),
                    region: Some(config.region.clone()),
                    expiration: None,
                })
                .await?;
        }
        anyhow::Ok(client.describe().await?)
    })?;
    let pcr = |i: u16| description.pcrs.iter().find(|p| p.index == i).map(|p| hex::encode(&p.value)).unwrap_or_default();
    if !o.debug_mode && pcr(0) != measurement.pcr0.to_hex() {
        bail!("the enclave reports PCR0 {}, but its image and configuration measure {}", pcr(0), measurement.pcr0);
    }
    if o.by_signer() {
        let want = crate::world_custody::signer_pcr8(dev)?;
        if pcr(8) != want.to_hex() {
            bail!("the enclave reports PCR8 {}, but the image was signed by the development signer (PCR8 {want})", pcr(8));
        }
    }

    let env = [
        ("NEKMS_ENCLAVE", rpc_address.clone()),
        ("NEKMS_DEV_DIR", dir.display().to_string()),
        ("AWS_CONFIG_FILE", dev.aws_config_path().display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", dev.aws_credentials_path().display().to_string()),
        ("AWS_PROFILE", "instance".to_string()),
        ("AWS_ENDPOINT_URL_KMS", kms_http_url.clone()),
        ("AWS_REGION", config.region.clone()),
        ("NEKMS_CUSTODY_KMS_KEY", custody_key.clone()),
        // In a guest VM the module's socket is inside; provisioning goes over the RPC.
        ("NEKMS_P11_RPC", if o.vm.is_some() { rpc_address.clone() } else { unix(&p11_sock) }),
        ("NEKMS_PRIVVAL", unix(&privval_sock)),
    ];
    let mut env = env.to_vec();
    if let Ok(kit) = &p11 {
        env.push(("P11_KIT_SERVER_ADDRESS", kit.address.clone()));
    }
    // The validator signer for a chain, when asked.
    let privval_proxy_pid = match &o.privval_config {
        Some(toml) => {
            let mut push = Command::new(&me);
            push.args(["privval", "push-config", "-c"]).arg(toml).env("NEKMS_ENCLAVE", &rpc_address);
            let out = push.output()?;
            if !out.status.success() {
                bail!("nekms privval push-config -c {}: {}", toml.display(), String::from_utf8_lossy(&out.stderr));
            }
            // What push-config says is part of dev up's output.
            print!("{}", String::from_utf8_lossy(&out.stdout));
            let mut proxy = Command::new(&me);
            proxy.args(["privval", "proxy", "--privval", &unix(&privval_sock), "-c"]).arg(toml);
            Some(group.spawn("privval-proxy", proxy)?)
        }
        None => None,
    };
    let up = Up {
        kms_http: kms_http_url,
        kms_https: kms_https_url,
        kms_pid,
        proxy: unix(&proxy_sock),
        https_port,
        proxy_pid,
        simulated: description.simulated,
        image: if o.vm.is_some() { vm_image } else { image },
        enclave_pid,
        p11_rpc: if o.vm.is_some() { rpc_address.clone() } else { unix(&p11_sock) },
        rpc: rpc_address,
        kmstool: unix(&kmstool_sock),
        p11,
        privval: unix(&privval_sock),
        privval_state: unix(&state_sock),
        privval_state_dir: state_dir,
        privval_anchor_proxy: unix(&anchor_sock),
        privval_anchor_table: o.privval_anchor_table.clone(),
        persist_pid,
        privval_proxy_pid,
        pcrs: [pcr(0), pcr(1), pcr(2)],
        pcr8: pcr(8),
        sim_signature: sim_signature.exists().then_some(sim_signature),
        custody_key,
        enclave_config,
        credentials: description.credentials.as_ref().map(|c| c.access_key_id.clone()),
        env,
        env_file,
        audit_file,
        vm: guest,
        group,
        cleanup,
    };
    std::fs::write(&up.env_file, up.env_text())?;
    Ok(up)
}

impl Up {
    /// The env file's text: one `export KEY=VALUE` line per variable.
    pub fn env_text(&self) -> String {
        self.env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect()
    }

    /// Write the addresses, PCRs, pids and environment as JSON to `path`
    /// (through a temporary file, so a reader sees all of it or nothing).
    pub fn write_ready_file(&mut self, path: &Path) -> anyhow::Result<()> {
        self.cleanup.0.push(path.to_path_buf());
        let v = serde_json::json!({
            "kms_http": self.kms_http, "kms_https": self.kms_https, "proxy": self.proxy,
            "rpc": self.rpc, "kmstool": self.kmstool, "p11": self.p11_rpc,
            "privval": self.privval, "privval_state": self.privval_state, "privval_anchor_proxy": self.privval_anchor_proxy,
            "privval_anchor_table": self.privval_anchor_table, "privval_state_dir": self.privval_state_dir.display().to_string(),
            "p11_kit": self.p11.as_ref().ok().map(|kit| kit.address.clone()),
            "pcr0": self.pcrs[0], "pcr1": self.pcrs[1], "pcr2": self.pcrs[2],
            "custody_kms_key": self.custody_key, "enclave_config": self.enclave_config.display().to_string(),
            "pcr8": self.pcr8, "sim_signature": self.sim_signature.as_ref().map(|p| p.display().to_string()),
            "audit": self.audit_file.display().to_string(),
            "pids": {"kms": self.kms_pid, "proxy": self.proxy_pid, "enclave": self.enclave_pid, "privval_persist": self.persist_pid,
                     "privval_proxy": self.privval_proxy_pid, "supervisor": std::process::id()},
            "children": self.group.pids().into_iter().map(|(name, pid)| serde_json::json!({"name": name, "pid": pid})).collect::<Vec<_>>(),
            "env": self.env.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "vm": self.vm.as_ref().map(|vm| serde_json::json!({
                "image": self.image.display().to_string(),
                "accel": vm.accel, "qemu_pid": vm.qemu_pid, "serial_log": vm.serial_log.display().to_string(),
                "uds": vm.uds.display().to_string(), "ready_ms": vm.ready_after.as_millis() as u64,
                "heartbeat_ms": vm.heartbeat_after.map(|d| d.as_millis() as u64), "qemu_rss_kib": vm.qemu_rss_kib(),
                "measurements": vm.measurements.0,
            })),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Supervise: return on SIGHUP, SIGINT or SIGTERM, or when any child
    /// dies. The children keep running until this is dropped.
    pub fn supervise(&mut self) -> anyhow::Result<Stopped> {
        supervisor::supervise(&mut self.group, self.vm.as_mut())
    }
}
