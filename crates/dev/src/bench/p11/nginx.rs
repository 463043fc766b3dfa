//! `nekms bench p11`'s last table: nginx TLS 1.2 handshakes per second
//! with `openssl s_time -new`, against three nginx servers configured alike
//! (two workers, session cache and tickets off): a key file, the nekms
//! token and the SoftHSM2 token, both tokens through libp11's engine and
//! p11-kit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{run_tool, stop, Kit, P11KIT_CLIENT, PIN, SOFTHSM};

/// nginx TLS 1.2 handshakes per second (`openssl s_time -new`, session
/// cache and tickets off): a key file, the nekms token and SoftHSM2, both
/// tokens through libp11's engine and p11-kit, same nginx configuration.
pub(super) struct Tls {
    pub(super) dir: PathBuf,
    pub(super) seconds: u32,
    pub(super) hsm_env: Vec<(&'static str, String)>,
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

    pub(super) fn run(&self, nekms_keys: &[(u8, String)], nekms_kit: &Kit, hsm_kit: &Kit) -> anyhow::Result<()> {
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
