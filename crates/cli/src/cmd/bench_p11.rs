//! `nekms bench p11`: C_Sign per second through p11-kit's server and client,
//! nekms's module against SoftHSM2 behind the identical p11-kit path, in one
//! run: RSA-2048 (`CKM_SHA256_RSA_PKCS`) and P-256 (`CKM_ECDSA` over a
//! SHA-256 digest), with one and two client connections; the same with each
//! module loaded direct, which gives p11-kit's cost per operation; and the
//! first signature (C_Initialize, C_Login, the first C_Sign) through p11-kit.
//!
//! Each client is a process of its own (`nekms bench p11-worker`, hidden):
//! p11-kit's client module reads its server address from the environment.
//! The enclave (with the local KMS) runs in this process; the clients, the
//! p11-kit servers and the module processes they fork are separate.
//!
//! Then nginx: TLS 1.2 handshakes per second with `openssl s_time -new`
//! against three nginx servers configured alike (two workers, session cache
//! and tickets off): a key file, the nekms token and the SoftHSM2 token,
//! both tokens through libp11's engine and p11-kit (`--no-nginx` leaves it out).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nekms_keys::KeySpec;
use nekms_rpc::{Client, Entropy, GenerateKey, P11Key, P11Request, P11Token, Request, SecretString};

use crate::enclave_path::EnclavePath;

const PIN: &str = "bench-pin-1234";
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// libnekms_p11.so [default: beside this executable]
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// Leave out the nginx TLS handshake measurement
    #[arg(long)]
    no_nginx: bool,
}

/// One client process's loop.
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    module: PathBuf,
    #[arg(long)]
    label: String,
    /// CKA_ID, hex
    #[arg(long)]
    id: String,
    /// rsa or ecdsa
    #[arg(long)]
    mech: String,
    #[arg(long)]
    seconds: f64,
}

/// What a worker prints: signatures, the seconds they took, and the first
/// signature's time from C_Initialize.
#[derive(serde::Serialize, serde::Deserialize)]
struct WorkerResult {
    signatures: u64,
    seconds: f64,
    first_ms: f64,
}

pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    use cryptoki::context::{CInitializeArgs, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let start = Instant::now();
    // SoftHSM2's file store answers CKR_GENERAL_ERROR or "token not
    // initialized" now and then when processes open it at once: the setup
    // (not timed) is tried again, the same way for every module.
    let setup = || -> anyhow::Result<_> {
        let p11 = Pkcs11::new(&a.module).with_context(|| a.module.display().to_string())?;
        p11.initialize(CInitializeArgs::OsThreads)?;
        let slot = p11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| p11.get_token_info(*s).map(|t| t.label().trim() == a.label).unwrap_or(false))
            .with_context(|| format!("no token labelled {}", a.label))?;
        let session = p11.open_ro_session(slot)?;
        session.login(UserType::User, Some(&AuthPin::new(PIN.into())))?;
        let key = *session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(hex::decode(&a.id)?)])?
            .first()
            .context("no such key")?;
        Ok((p11, session, key))
    };
    let mut attempt = 0;
    let (_p11, session, key) = loop {
        match setup() {
            Ok(ready) => break ready,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("setup failed ({e:#}); trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    let (mechanism, data): (Mechanism, Vec<u8>) = match a.mech.as_str() {
        "rsa" => (Mechanism::Sha256RsaPkcs, b"nekms bench p11: TLS handshake transcript".to_vec()),
        "ecdsa" => (Mechanism::Ecdsa, vec![0x5a; 32]),
        m => bail!("unknown mechanism {m}"),
    };
    session.sign(&mechanism, key, &data)?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    let begin = Instant::now();
    let mut n = 0u64;
    // At least one timed signature, however short the cell.
    loop {
        session.sign(&mechanism, key, &data)?;
        n += 1;
        if begin.elapsed().as_secs_f64() >= a.seconds {
            break;
        }
    }
    let out = WorkerResult { signatures: n, seconds: begin.elapsed().as_secs_f64(), first_ms };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| what.to_owned())?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A p11-kit server loading `module`, stopped when dropped.
struct Kit {
    child: std::process::Child,
    address: String,
}

impl Kit {
    fn start(module: &Path, socket: &Path, env: &[(&str, String)]) -> anyhow::Result<Kit> {
        let mut cmd = Command::new("p11-kit");
        cmd.args(["server", "-f", "-p"]).arg(module).arg("-n").arg(socket).arg("pkcs11:").stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("p11-kit server (apt install p11-kit p11-kit-modules)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            anyhow::ensure!(Instant::now() < deadline, "p11-kit server did not listen on {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Kit { child, address: format!("unix:path={}", socket.display()) })
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM to the child's process group (each is started as a group
/// leader), so a server takes its children with it: nginx's workers,
/// p11-kit's server behind its front end. SIGKILL after 5 s.
fn stop(child: &mut std::process::Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let group = Pid::from_raw(-(child.id() as i32));
    let _ = kill(group, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(group, Signal::SIGKILL);
    let _ = child.wait();
}

/// Run `clients` worker processes at once; total signatures per second, and the first signature's time.
fn measure(module: &Path, env: &[(&str, String)], id: &str, mech: &str, clients: usize, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..clients {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "p11-worker", "--label", "bench", "--id", id, "--mech", mech, "--seconds", &seconds.to_string(), "--module"])
            .arg(module);
        for (k, v) in env {
            cmd.env(k, v);
        }
        children.push(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    }
    let (mut total, mut first) = (0.0, 0.0f64);
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!("worker ({}): {}", module.display(), String::from_utf8_lossy(&out.stderr));
        }
        let r: WorkerResult = serde_json::from_slice(&out.stdout)?;
        total += r.signatures as f64 / r.seconds;
        first = first.max(r.first_ms);
    }
    Ok((total, first))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let module = match a.module {
        Some(m) => m,
        None => std::env::current_exe()?.parent().context("the executable's directory")?.join("libnekms_p11.so"),
    };
    anyhow::ensure!(
        module.exists(),
        "{} is missing: build it with `cargo build --release -p nekms-p11` (or give --module)",
        module.display()
    );
    for (file, package) in [(SOFTHSM, "softhsm2"), (P11KIT_CLIENT, "p11-kit-modules")] {
        anyhow::ensure!(Path::new(file).exists(), "{file} is missing: apt install {package}");
    }
    let world = crate::enclave_path::BenchWorld::new("nekms bench p11").await?;
    let (tmp, dev, local, config, nsm) = (&world.tmp, &world.dev, &world.local, &world.config, world.nsm.clone());
    let enclave = EnclavePath::start_with(dev, local, nsm, &tmp.path().join("enclave"), None, config).await?;
    enclave.supply_instance_credentials(dev)?;
    let rpc = Client::connect(&enclave.rpc, "nekms bench p11").await?;
    let mut keys = Vec::new();
    let mut rpc_keys = Vec::new();
    for (spec, id) in [(KeySpec::Rsa2048, 1u8), (KeySpec::P256, 2)] {
        let record = rpc
            .generate_key(GenerateKey {
                key_id: format!("bench-{spec}"),
                spec,
                kms_key_id: None,
                entropy: Entropy::Nsm,
                encryption_context: Default::default(),
                nonce: None,
                decrypt: false,
                privval: false,
            })
            .await?;
        rpc_keys.push((id, record.public_key.clone()));
        keys.push(P11Key { id: vec![id], label: record.key_id.clone(), record, certificates: vec![], decrypt: false });
    }
    let token = P11Token {
        label: "bench".into(),
        pin: Some(SecretString(zeroize::Zeroizing::new(PIN.into()))),
        pin_verifier: None,
        keys,
        writable: false,
    };
    rpc.call(&Request::P11(P11Request::AddToken { token, replace: false })).await?;

    // SoftHSM2 with the same two keys' kinds, in a directory of its own.
    let hsm_dir = tmp.path().join("softhsm");
    std::fs::create_dir_all(hsm_dir.join("tokens"))?;
    let hsm_conf = hsm_dir.join("softhsm2.conf");
    std::fs::write(&hsm_conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", hsm_dir.join("tokens").display()))?;
    let hsm_env = [("SOFTHSM2_CONF", hsm_conf.display().to_string())];
    run_tool(
        Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "bench", "--pin", PIN, "--so-pin", "12345678"])
            .env(hsm_env[0].0, &hsm_env[0].1),
        "softhsm2-util --init-token",
    )?;
    for (kind, id) in [("rsa:2048", "01"), ("EC:prime256v1", "02")] {
        run_tool(
            Command::new("pkcs11-tool")
                .args(["--module", SOFTHSM, "--login", "--pin", PIN, "--keypairgen", "--key-type", kind, "--id", id])
                .env(hsm_env[0].0, &hsm_env[0].1),
            "pkcs11-tool --keypairgen (apt install opensc)",
        )?;
    }

    let nekms_env = [("NEKMS_P11_RPC", enclave.rpc.to_string())];
    let nekms_kit = Kit::start(&module, &tmp.path().join("nekms-kit.sock"), &nekms_env)?;
    let hsm_kit = Kit::start(Path::new(SOFTHSM), &tmp.path().join("softhsm-kit.sock"), &hsm_env)?;
    let through = |kit: &Kit, extra: &[(&'static str, String)]| {
        let mut env = vec![("P11_KIT_SERVER_ADDRESS", kit.address.clone())];
        env.extend(extra.iter().cloned());
        env
    };
    let nekms_through = through(&nekms_kit, &[]);
    let hsm_through = through(&hsm_kit, &hsm_env);
    let client = Path::new(P11KIT_CLIENT);

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nekms bench p11: {} s per cell, {cores} cores; each client is a process; SoftHSM2 behind the identical p11-kit path",
        a.seconds
    );
    println!("  {:<34} {:>7} {:>10} {:>10} {:>7}", "path", "clients", "nekms/s", "softhsm/s", "ratio");
    for (name, id, mech) in [("RSA-2048 SHA256-RSA-PKCS", "01", "rsa"), ("P-256 ECDSA", "02", "ecdsa")] {
        println!("{name}:");
        let (mut one, mut hsm_one) = (0.0, 0.0);
        for clients in [1, 2] {
            let (n, _) = measure(client, &nekms_through, id, mech, clients, a.seconds)?;
            let (h, _) = measure(client, &hsm_through, id, mech, clients, a.seconds)?;
            println!("  {:<34} {clients:>7} {n:>10.0} {h:>10.0} {:>7.2}", "through p11-kit", n / h);
            if clients == 1 {
                (one, hsm_one) = (n, h);
            } else {
                println!("  {:<34} {:>7} {:>10.2}", "two connections / one", "", n / one);
            }
        }
        let (nd, _) = measure(&module, &nekms_env, id, mech, 1, a.seconds)?;
        let (hd, _) = measure(Path::new(SOFTHSM), &hsm_env, id, mech, 1, a.seconds)?;
        println!("  {:<34} {:>7} {nd:>10.0} {hd:>10.0} {:>7.2}", "direct (no p11-kit)", 1, nd / hd);
        println!(
            "  {:<34} {:>7} {:>10.0} {:>10.0}  (us per signature)",
            "p11-kit's cost",
            "",
            1e6 / one - 1e6 / nd,
            1e6 / hsm_one - 1e6 / hd
        );
        let (_, first) = measure(client, &nekms_through, id, mech, 1, 0.001)?;
        println!("  {:<34} {:>7} {first:>9.1}ms", "first signature through p11-kit", "");
    }
    if a.no_nginx {
        return Ok(());
    }
    let tls = Tls { dir: tmp.path().join("nginx"), seconds: a.seconds.ceil().max(1.0) as u32, hsm_env: hsm_env.to_vec() };
    match tls.run(&enclave_keys_pem(&rpc_keys)?, &nekms_kit, &hsm_kit) {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with("skipped:") => {
            println!("nginx TLS handshakes: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The token keys' public keys, PEM, by CKA_ID.
fn enclave_keys_pem(keys: &[(u8, Vec<u8>)]) -> anyhow::Result<Vec<(u8, String)>> {
    use base64::Engine;
    Ok(keys
        .iter()
        .map(|(id, spki)| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
            let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
            (*id, format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n")))
        })
        .collect())
}

/// nginx TLS 1.2 handshakes per second (`openssl s_time -new`, session
/// cache and tickets off): a key file, the nekms token and SoftHSM2, both
/// tokens through libp11's engine and p11-kit, same nginx configuration.
struct Tls {
    dir: PathBuf,
    seconds: u32,
    hsm_env: Vec<(&'static str, String)>,
}

/// An nginx master, stopped when dropped.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

impl Tls {
    fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        run_tool(Command::new("openssl").args(args).current_dir(&self.dir), &format!("openssl {}", args.join(" ")))
    }

    /// A certificate for the public key in `pub_pem`.
    fn cert_for(&self, name: &str, pub_pem: &Path) -> anyhow::Result<PathBuf> {
        let out = self.dir.join(format!("{name}.crt"));
        self.openssl(&[
            "x509",
            "-new",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-key",
            "ca.key",
            "-force_pubkey",
            &pub_pem.display().to_string(),
            "-out",
            &out.display().to_string(),
        ])?;
        Ok(out)
    }

    fn start(&self, name: &str, cert: &Path, key: &str, env: &[(&str, String)]) -> anyhow::Result<(Nginx, u16)> {
        let prefix = self.dir.join(name);
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let port = free_port()?;
        let p = prefix.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             env P11_KIT_SERVER_ADDRESS;\nenv OPENSSL_CONF;\n{engine}events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n\
             client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp; uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
             ssl_session_cache off; ssl_session_tickets off; ssl_protocols TLSv1.2 TLSv1.3;\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key \"{key}\"; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
            engine = if key.starts_with("engine:") { "ssl_engine pkcs11;\n" } else { "" },
            cert = cert.display(),
        );
        std::fs::write(prefix.join("nginx.conf"), conf)?;
        let mut cmd = Command::new(which("nginx").context("nginx")?);
        cmd.arg("-c").arg(prefix.join("nginx.conf")).arg("-p").arg(&prefix).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut nginx = Nginx(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.0.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                nginx.0.stderr.take().map(|mut e| e.read_to_string(&mut err));
                bail!("nginx ({name}) exited with {status}: {err}");
            }
            anyhow::ensure!(Instant::now() < deadline, "nginx ({name}) did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((nginx, port))
    }

    /// Handshakes per second with `clients` s_time processes at once.
    fn handshakes(&self, port: u16, clients: usize) -> anyhow::Result<f64> {
        let children = (0..clients)
            .map(|_| {
                Command::new("openssl")
                    .args(["s_time", "-connect", &format!("127.0.0.1:{port}"), "-new", "-tls1_2", "-time", &self.seconds.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut total = 0.0;
        for c in children {
            let out = String::from_utf8_lossy(&c.wait_with_output()?.stdout).into_owned();
            // "N connections in T real seconds, B bytes read per connection"
            let line = out.lines().find(|l| l.contains("real seconds")).with_context(|| format!("s_time said: {out}"))?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let (n, t): (f64, f64) = (words[0].parse()?, words[3].parse()?);
            total += n / t.max(1.0);
        }
        Ok(total)
    }

    fn run(&self, nekms_keys: &[(u8, String)], nekms_kit: &Kit, hsm_kit: &Kit) -> anyhow::Result<()> {
        let engine = Path::new("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so");
        if which("nginx").is_none() || !engine.exists() {
            bail!("skipped: needs nginx and libp11's engine (apt install nginx-light libengine-pkcs11-openssl)");
        }
        std::fs::create_dir_all(&self.dir)?;
        self.openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"])?;
        let cnf = self.dir.join("openssl.cnf");
        std::fs::write(
            &cnf,
            format!(
                "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\n\
                 engine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {P11KIT_CLIENT}\ninit = 1\n",
                engine.display()
            ),
        )?;
        let pin = self.dir.join("pin");
        std::fs::write(&pin, PIN)?;
        println!("nginx TLS 1.2 handshakes/s (openssl s_time -new, {} s; 2 workers; session cache and tickets off):", self.seconds);
        println!("  {:<34} {:>7} {:>10} {:>10} {:>10} {:>8} {:>8}", "key", "clients", "key file", "nekms", "softhsm", "nekms/f", "hsm/f");
        for (id, name, genpkey) in [
            (1u8, "RSA-2048", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
            (2, "P-256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
        ] {
            let key_file = self.dir.join(format!("file-{id}.key"));
            let mut args = vec!["genpkey"];
            args.extend_from_slice(genpkey);
            let key_path = key_file.display().to_string();
            args.extend_from_slice(&["-out", &key_path]);
            self.openssl(&args)?;
            let file_pub = self.dir.join(format!("file-{id}.pub"));
            self.openssl(&["pkey", "-in", &key_path, "-pubout", "-out", &file_pub.display().to_string()])?;
            let file_cert = self.cert_for(&format!("file-{id}"), &file_pub)?;
            let nekms_pub = self.dir.join(format!("nekms-{id}.pub"));
            std::fs::write(&nekms_pub, &nekms_keys.iter().find(|(k, _)| *k == id).context("no such nekms key")?.1)?;
            let nekms_cert = self.cert_for(&format!("nekms-{id}"), &nekms_pub)?;
            let hsm_der = self.dir.join(format!("hsm-{id}.der"));
            let mut read = Command::new("pkcs11-tool");
            read.args(["--module", SOFTHSM, "--read-object", "--type", "pubkey", "--id", &format!("{id:02x}"), "-o"]).arg(&hsm_der);
            for (k, v) in &self.hsm_env {
                read.env(k, v);
            }
            run_tool(&mut read, "pkcs11-tool --read-object (SoftHSM2 public key)")?;
            let hsm_pub = self.dir.join(format!("hsm-{id}.pub"));
            self.openssl(&[
                "pkey",
                "-pubin",
                "-inform",
                "DER",
                "-in",
                &hsm_der.display().to_string(),
                "-out",
                &hsm_pub.display().to_string(),
            ])?;
            let hsm_cert = self.cert_for(&format!("hsm-{id}"), &hsm_pub)?;
            let uri = format!("engine:pkcs11:pkcs11:token=bench;id=%{id:02x};type=private?pin-source=file:{}", pin.display());
            let cnf_env = ("OPENSSL_CONF", cnf.display().to_string());
            let (_file, file_port) = self.start(&format!("file-{id}"), &file_cert, &key_path, &[])?;
            let (_nekms, nekms_port) = self.start(
                &format!("nekms-{id}"),
                &nekms_cert,
                &uri,
                &[("P11_KIT_SERVER_ADDRESS", nekms_kit.address.clone()), cnf_env.clone()],
            )?;
            let mut hsm_env = vec![("P11_KIT_SERVER_ADDRESS", hsm_kit.address.clone()), cnf_env];
            hsm_env.extend(self.hsm_env.iter().cloned());
            let (_hsm, hsm_port) = self.start(&format!("hsm-{id}"), &hsm_cert, &uri, &hsm_env)?;
            for clients in [1, 2] {
                let f = self.handshakes(file_port, clients)?;
                let n = self.handshakes(nekms_port, clients)?;
                let h = self.handshakes(hsm_port, clients)?;
                println!("  {name:<34} {clients:>7} {f:>10.0} {n:>10.0} {h:>10.0} {:>8.2} {:>8.2}", n / f, h / f);
            }
        }
        Ok(())
    }
}
