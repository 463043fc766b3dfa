//! `nekms dev up`: the local KMS (HTTPS), the proxy and a simulated enclave,
//! each its own process, under one supervisor.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nekms_rpc::{CredentialsUpdate, SecretString};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::DirArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// Where sockets, logs and the ready file go [default: DIR/up]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The local KMS's plain HTTP listener, for the parent's aws CLI [default: the dev config's, 127.0.0.1:7700]
    #[arg(long, value_name = "IP:PORT")]
    kms_http: Option<String>,
    /// The local KMS's HTTPS listener, the enclave's endpoint [default: the dev config's, 127.0.0.1:7701]
    #[arg(long, value_name = "IP:PORT")]
    kms_https: Option<String>,
    /// Simulate an enclave started with --debug-mode (PCRs all zero)
    #[arg(long)]
    debug_mode: bool,
    /// The image the simulated enclave measures for PCR0-2 [default: the nekms-enclave executable]
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Do not push the instance role's credentials to the enclave
    #[arg(long)]
    no_credentials: bool,
    /// Write the addresses as JSON here once everything is up
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Reuse this custody KMS key (ARN) from an earlier run instead of setting up a new one
    /// (its final policy already names the image measured with the same configuration)
    #[arg(long, value_name = "ARN")]
    custody_kms_key: Option<String>,
    /// Turn off decryption for the parent (kmstool's service, RPC Decrypt/GenerateDataKey) in the enclave's configuration
    /// (dev up turns it on for kmstool's flow; an enclave with custody keys has it off unless its configuration says otherwise)
    #[arg(long)]
    no_parent_decrypt: bool,
    /// Do not allow imports (allow-import) in the enclave's configuration
    #[arg(long)]
    no_import: bool,
    /// Run a validator signer: push this tmkms.toml (its keys as custody records, states initialised or
    /// imported beforehand) and proxy its [[validator]] entries
    #[arg(long, value_name = "TMKMS_TOML")]
    privval_config: Option<PathBuf>,
    /// The validator signer's limit on one height jump, in the enclave's measured configuration [default: the enclave's, 1000000]
    #[arg(long, value_name = "HEIGHTS")]
    privval_max_height_jump: Option<i64>,
    /// The validator signer's freshness anchor: this DynamoDB table (in the measured configuration)
    #[arg(long, value_name = "TABLE", requires = "privval_anchor_endpoint")]
    privval_anchor_table: Option<String>,
    /// The anchor's DynamoDB endpoint (http://127.0.0.1:PORT for moto); dev up proxies the enclave to it
    #[arg(long, value_name = "URL")]
    privval_anchor_endpoint: Option<String>,
}

struct Supervised {
    name: &'static str,
    child: Child,
}

impl Supervised {
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // Each child leads its own process group: the signal reaches what it
        // started too (p11-kit's front end runs the server as a child).
        let group = Pid::from_raw(-(self.child.id() as i32));
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The children, stopped in reverse order however `up` ends.
struct Group(Vec<Supervised>);

impl Group {
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        cmd.stdin(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting the {name}: {cmd:?}"))?;
        let pid = child.id();
        self.0.push(Supervised { name, child });
        Ok(pid)
    }

    /// A child that has exited, if any.
    fn exited(&mut self) -> Option<(&'static str, u32, ExitStatus)> {
        self.0.iter_mut().find_map(|s| s.child.try_wait().ok().flatten().map(|st| (s.name, s.child.id(), st)))
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            Some((name, pid, status)) => bail!("the {name} (pid {pid}) exited during start-up with {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for s in self.0.iter_mut().rev() {
            s.stop();
        }
    }
}

/// The enclave program: `nekms-enclave` beside this executable, else this executable's `dev enclave`.
fn enclave_program() -> anyhow::Result<(PathBuf, Vec<String>)> {
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("nekms-enclave");
    if beside.is_file() {
        return Ok((beside, Vec::new()));
    }
    Ok((me, vec!["dev".into(), "enclave".into()]))
}

fn wait_for(what: &str, group: &mut Group, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        group.check()?;
        if Instant::now() > deadline {
            bail!("the {what} did not come up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

fn unix(path: &Path) -> String {
    format!("unix://{}", path.display())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = a.dir.resolve()?;
    dev.init()?;
    let config = dev.config()?;
    let run_dir = a.run_dir.clone().unwrap_or_else(|| dev.path().join("up"));
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
    for stale in [&kms_ready, &proxy_sock, &rpc_sock, &kmstool_sock, &p11_sock, &p11kit_sock, &privval_sock, &state_sock] {
        let _ = std::fs::remove_file(stale);
    }
    let me = std::env::current_exe()?;
    let dir = dev.path().to_path_buf();
    let mut group = Group(Vec::new());

    // 1. The local KMS, HTTP for the parent and HTTPS for the enclave.
    let http = a.kms_http.clone().unwrap_or_else(|| config.kms_http.to_string());
    let https = a.kms_https.clone().unwrap_or_else(|| config.kms_https.to_string());
    let mut kms = Command::new(&me);
    kms.args(["dev", "kms", "--dir"]).arg(&dir).args(["--http", &http, "--https", &https, "--ready-file"]).arg(&kms_ready);
    let kms_pid = group.spawn("local KMS", kms)?;
    wait_for("local KMS", &mut group, || kms_ready.exists())?;
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
    wait_for("proxy", &mut group, || proxy_sock.exists())?;

    // 3. The custody key, in the two steps the ordering needs: the admin
    //    creates it with the bootstrap policy; the enclave's configuration
    //    pins its ARN and is measured with the image; the admin puts the
    //    final policy naming that PCR0, locking itself out.
    let (program, prefix) = enclave_program()?;
    let image = a.image.clone().unwrap_or_else(|| program.clone());
    let enclave_config = run_dir.join("enclave.toml");
    let http_addr: std::net::SocketAddr =
        kms_http_url.trim_start_matches("http://").trim_end_matches('/').parse().context("the KMS's HTTP address")?;
    let admin = crate::kms_client::Target::principal(&dev, http_addr, "admin")?;
    let configure = |arn: &str| -> anyhow::Result<nekms_nsm::measure::Measurement> {
        let mut text = String::from("# nekms-enclave's measured configuration, written by nekms dev up: PCR0 covers it.\n");
        text.push_str(&crate::enclave_path::trust_toml(&[arn], &[]));
        text.push_str(&format!("parent-decrypt = {}\n", !a.no_parent_decrypt));
        text.push_str(&format!("allow-import = {}\n", !a.no_import));
        if let (Some(t), Some(e)) = (&a.privval_anchor_table, &a.privval_anchor_endpoint) {
            text.push_str(&format!(
                "privval-anchor-table = {t:?}\nprivval-anchor-endpoint = {e:?}\nprivval-anchor-region = {:?}\n",
                config.region
            ));
        }
        if let Some(j) = a.privval_max_height_jump {
            text.push_str(&format!("privval-max-height-jump = {j}\n"));
        }
        std::fs::write(&enclave_config, text)?;
        Ok(nekms_nsm::measure::Measurement::of_files(&image, Some(&enclave_config))?)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // A debug-mode enclave reports zeros: the policy must name them (and so admits every debug image).
    let final_policy = |roles: &crate::key_policy::Roles, m: &nekms_nsm::measure::Measurement| {
        let pcr0 = if a.debug_mode { nekms_attestation::Pcr48::ZERO } else { m.pcr0 };
        crate::key_policy::custody(roles, &[pcr0.to_hex()])
    };
    let (custody_key, measurement) = match &a.custody_kms_key {
        Some(arn) => {
            // Reuse only a key whose policy in force is exactly the custody policy for this image.
            let m = configure(arn)?;
            let policy = final_policy(&crate::key_policy::Roles::standard(&config.account_id), &m);
            rt.block_on(async {
                let mut conn = crate::kms_client::Conn::open(&admin).await?;
                crate::enclave_path::check_custody_key(&mut conn, arn, &policy).await
            })
            .with_context(|| format!("--custody-kms-key {arn}"))?;
            (arn.clone(), m)
        }
        None => rt.block_on(crate::enclave_path::custody_key(&dev, &admin, "nekms dev up: custody", configure, final_policy))?,
    };

    // The anchor's proxy, allowing exactly its endpoint.
    let anchor_sock = run_dir.join("privval-anchor-proxy.sock");
    let _ = std::fs::remove_file(&anchor_sock);
    if let Some(endpoint) = &a.privval_anchor_endpoint {
        let (host, port) = anchor_host_port(endpoint).map_err(|e| anyhow::anyhow!("--privval-anchor-endpoint {endpoint}: {e}"))?;
        let allow = run_dir.join("anchor-allowlist.yaml");
        std::fs::write(&allow, format!("allowlist:\n  - {{address: {host}, port: {port}}}\n"))?;
        let mut p = Command::new(&me);
        p.arg("proxy").arg(unix(&anchor_sock)).args([host.as_str(), &port.to_string(), "--config"]).arg(&allow);
        group.spawn("anchor proxy", p)?;
        wait_for("anchor proxy", &mut group, || anchor_sock.exists())?;
    }
    // 4. The validator signer's state store, then the simulated enclave.
    let mut persist = Command::new(&me);
    persist.args(["privval", "persist", "--listen", &unix(&state_sock), "--dir"]).arg(&state_dir);
    let persist_pid = group.spawn("privval persist", persist)?;
    wait_for("privval persist", &mut group, || state_sock.exists())?;
    let mut enclave = Command::new(&program);
    enclave
        .args(&prefix)
        .arg("--config")
        .arg(&enclave_config)
        .args(["--sim", "--dev-dir"])
        .arg(&dir)
        .args(["--rpc", &unix(&rpc_sock), "--kmstool", &unix(&kmstool_sock), "--proxy", &unix(&proxy_sock), "--p11", &unix(&p11_sock)])
        .args(["--privval", &unix(&privval_sock), "--privval-state", &unix(&state_sock), "--privval-anchor-proxy", &unix(&anchor_sock)])
        .args(["--kms-endpoint", &format!("https://localhost:{https_port}"), "--kms-ca"])
        .arg(dev.tls_ca_path());
    if a.debug_mode {
        enclave.arg("--debug-mode");
    }
    enclave.arg("--image").arg(&image);
    let enclave_pid = group.spawn("enclave", enclave)?;
    wait_for("enclave", &mut group, || rpc_sock.exists() && kmstool_sock.exists() && p11_sock.exists() && privval_sock.exists())?;

    // PKCS#11: p11-kit's server loading libnekms_p11.so, as in the enclave image.
    let p11_module = std::env::var_os("NEKMS_P11_MODULE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("libnekms_p11.so"))))
        .filter(|m| m.exists());
    let p11kit = which("p11-kit");
    let p11 = match (&p11_module, &p11kit) {
        (Some(module), Some(kit)) => {
            let mut server = Command::new(kit);
            server
                .args(["server", "-f", "-p"])
                .arg(module)
                .arg("-n")
                .arg(&p11kit_sock)
                .arg("pkcs11:")
                .env("NEKMS_P11_RPC", unix(&p11_sock));
            let pid = group.spawn("p11-kit server", server)?;
            wait_for("p11-kit server", &mut group, || p11kit_sock.exists())?;
            Ok((format!("unix:path={}", p11kit_sock.display()), pid))
        }
        (None, _) => Err("libnekms_p11.so is not built beside nekms (cargo build -p nekms-p11, or set NEKMS_P11_MODULE)"),
        (_, None) => Err("p11-kit is not installed (apt install p11-kit p11-kit-modules)"),
    };

    // 5. Credentials and a description, over the RPC.
    let rpc_address = unix(&rpc_sock);
    let description = rt.block_on(async {
        let client = nekms_rpc::Client::connect(&rpc_address.parse()?, concat!("nekms ", env!("CARGO_PKG_VERSION"))).await?;
        if !a.no_credentials {
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
    if !a.debug_mode && pcr(0) != measurement.pcr0.to_hex() {
        bail!("the enclave reports PCR0 {}, but its image and configuration measure {}", pcr(0), measurement.pcr0);
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
        ("NEKMS_P11_RPC", unix(&p11_sock)),
        ("NEKMS_PRIVVAL", unix(&privval_sock)),
    ];
    let mut env = env.to_vec();
    if let Ok((address, _)) = &p11 {
        env.push(("P11_KIT_SERVER_ADDRESS", address.clone()));
    }
    // The validator signer for a chain, when asked.
    let privval_proxy = match &a.privval_config {
        Some(toml) => {
            let mut push = Command::new(&me);
            push.args(["privval", "push-config", "-c"]).arg(toml).env("NEKMS_ENCLAVE", &rpc_address);
            let out = push.output()?;
            if !out.status.success() {
                bail!("nekms privval push-config -c {}: {}", toml.display(), String::from_utf8_lossy(&out.stderr));
            }
            print!("{}", String::from_utf8_lossy(&out.stdout));
            let mut proxy = Command::new(&me);
            proxy.args(["privval", "proxy", "--privval", &unix(&privval_sock), "-c"]).arg(toml);
            Some(group.spawn("privval proxy", proxy)?)
        }
        None => None,
    };
    let env_text: String = env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect();
    std::fs::write(run_dir.join("env"), &env_text)?;
    println!("nekms dev up: running; Ctrl-C stops everything");
    println!("  local KMS   {kms_http_url} (parent) and {kms_https_url} (enclave), pid {kms_pid}");
    println!("  proxy       {} -> localhost:{https_port}, pid {proxy_pid}", unix(&proxy_sock));
    println!(
        "  enclave     {} (image {}), pid {enclave_pid}",
        if description.simulated { "simulated" } else { "hardware" },
        image.display()
    );
    println!("              RPC {rpc_address}");
    println!("              kmstool {}", unix(&kmstool_sock));
    match &p11 {
        Ok((address, pid)) => println!(
            "  PKCS#11     p11-kit server {address} (module {}), pid {pid}; add tokens with nekms p11 token add",
            p11_module.as_ref().map(|m| m.display().to_string()).unwrap_or_default()
        ),
        Err(why) => println!("  PKCS#11     not served: {why}"),
    }
    println!(
        "  validator signer {} (state store {}, pid {persist_pid}, records in {})",
        unix(&privval_sock),
        unix(&state_sock),
        state_dir.display()
    );
    if let Some(pid) = privval_proxy {
        println!("              privval proxy pid {pid}; nekms privval status shows the chains");
    }
    for i in [0, 1, 2] {
        println!("  PCR{i}        {}", pcr(i));
    }
    println!("  custody key {custody_key}");
    println!(
        "              pinned in {} (measured into PCR0); its final policy names this PCR0 and locks the administrator out",
        enclave_config.display()
    );
    if a.debug_mode {
        println!("  WARNING     debug mode: PCRs are all zero, so a policy naming them admits every debug-mode image");
    }
    match &description.credentials {
        Some(c) => println!("  credentials {} (the instance role) pushed to the enclave", c.access_key_id),
        None => println!("  credentials none (push them with: nekms enclave credentials)"),
    }
    println!("environment (also in {}):", run_dir.join("env").display());
    print!("{}", env_text.lines().map(|l| format!("  {l}\n")).collect::<String>());
    println!("then try: nekms enclave describe; nekms kmstool decrypt --address {} CIPHERTEXT", unix(&kmstool_sock));
    if let Some(path) = &a.ready_file {
        let v = serde_json::json!({
            "kms_http": kms_http_url, "kms_https": kms_https_url, "proxy": unix(&proxy_sock),
            "rpc": rpc_address, "kmstool": unix(&kmstool_sock), "p11": unix(&p11_sock),
            "privval": unix(&privval_sock), "privval_state": unix(&state_sock), "privval_anchor_proxy": unix(&anchor_sock), "privval_anchor_table": a.privval_anchor_table, "privval_state_dir": state_dir.display().to_string(),
            "p11_kit": p11.as_ref().ok().map(|(a, _)| a.clone()),
            "pcr0": pcr(0), "pcr1": pcr(1), "pcr2": pcr(2),
            "custody_kms_key": custody_key, "enclave_config": enclave_config.display().to_string(),
            "pids": {"kms": kms_pid, "proxy": proxy_pid, "enclave": enclave_pid, "privval_persist": persist_pid, "privval_proxy": privval_proxy, "supervisor": std::process::id()},
            "env": env.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
        std::fs::rename(&tmp, path)?;
    }

    // 5. Supervise: stop on a signal, or when any child dies.
    let stop = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = int.recv() => return anyhow::Ok(None),
                _ = term.recv() => return Ok(None),
                _ = tick.tick() => {
                    if let Some(dead) = group.exited() {
                        // Ctrl-C in a terminal reaches the children too; one that stopped for it is not a death.
                        if tokio::time::timeout(Duration::from_millis(300), int.recv()).await.is_ok() {
                            return Ok(None);
                        }
                        return Ok(Some(dead));
                    }
                }
            }
        }
    })?;
    match stop {
        None => {
            println!("nekms dev up: stopping the enclave, the proxy and the local KMS");
            drop(group);
            Ok(())
        }
        Some((name, pid, status)) => {
            eprintln!("nekms dev up: the {name} (pid {pid}) exited with {status}; stopping the others");
            drop(group);
            bail!("the {name} died")
        }
    }
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// The host and port of the anchor's endpoint (http or https), for its proxy.
fn anchor_host_port(endpoint: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {}: http or https", url.scheme()));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    Ok((host.to_owned(), url.port_or_known_default().ok_or("no port")?))
}
