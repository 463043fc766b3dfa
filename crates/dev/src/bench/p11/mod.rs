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
use nekms_rpc::{Client, GenerateKey, P11Key, P11Request, P11Token, Request, SecretString};

use crate::world::{BenchWorld, EnclavePath};

mod nginx;
mod worker;

pub use worker::{worker, WorkerOptions};

const PIN: &str = "bench-pin-1234";
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds per measurement.
    pub seconds: f64,
    /// libnekms_p11.so [default: beside this executable].
    pub module: Option<PathBuf>,
    /// Leave out the nginx TLS handshake measurement.
    pub no_nginx: bool,
}

pub(super) fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| what.to_owned())?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A p11-kit server loading `module`, stopped when dropped.
pub(super) struct Kit {
    child: std::process::Child,
    pub(super) address: String,
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
pub(super) fn stop(child: &mut std::process::Child) {
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
        let r: worker::WorkerResult = serde_json::from_slice(&out.stdout)?;
        total += r.signatures as f64 / r.seconds;
        first = first.max(r.first_ms);
    }
    Ok((total, first))
}

/// Measure, printing a table per mechanism (and nginx's, unless `no_nginx`).
pub async fn run(a: &Options) -> anyhow::Result<()> {
    let module = match &a.module {
        Some(m) => m.clone(),
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
    let world = BenchWorld::new("nekms bench p11").await?;
    let (tmp, dev, local, config, nsm) = (&world.tmp, &world.dev, &world.local, &world.config, world.nsm.clone());
    let enclave = EnclavePath::start_with(dev, local, nsm, &tmp.path().join("enclave"), None, config).await?;
    enclave.supply_instance_credentials(dev)?;
    let rpc = Client::connect(&enclave.rpc, "nekms bench p11").await?;
    let mut keys = Vec::new();
    let mut rpc_keys = Vec::new();
    for (spec, id) in [(KeySpec::Rsa2048, 1u8), (KeySpec::P256, 2)] {
        let record = rpc.generate_key(GenerateKey::new(format!("bench-{spec}"), spec)).await?;
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
    let tls = nginx::Tls { dir: tmp.path().join("nginx"), seconds: a.seconds.ceil().max(1.0) as u32, hsm_env: hsm_env.to_vec() };
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
