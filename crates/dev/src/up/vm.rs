//! `dev up --vm-blobs`: the enclave as an image in a guest VM. dev up builds
//! the image around the custody key it makes (`nekms image build
//! --development`, which this nekms runs as a child: building an image needs
//! the CLI's `image` feature), measures it and boots it with
//! [`crate::vm::Vm`]. The guest reaches the proxy and the state store over
//! vsock, so they listen where its connections out arrive.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use nekms_devworld::DevDir;
use nekms_nsm::handover::GUEST_PATH;
use nekms_nsm::measure::Measurement;

/// The guest's ports: served by it, and dialled by it on the host (CID 2).
pub const RPC_PORT: u32 = 5000;
pub const KMSTOOL_PORT: u32 = 3000;
pub const PRIVVAL_PORT: u32 = 5100;
pub const PROXY_PORT: u32 = 8000;
pub const ANCHOR_PORT: u32 = 8001;
pub const STATE_PORT: u32 = 5101;
pub const AUDIT_PORT: u32 = 5102;
pub const LOGS_PORT: u32 = 5103;
pub const P11_KIT_PORT: u32 = 9999;
/// Where the image keeps p11-kit's server and the module, and the module's socket.
const P11_KIT_SERVER: &str = "/usr/libexec/p11-kit/p11-kit-server";
/// What the server runs for each connection, with the module loaded.
const P11_KIT_REMOTE: &str = "/usr/libexec/p11-kit/p11-kit-remote";
const P11_MODULE: &str = "/usr/lib/nekms/libnekms_p11.so";
const P11_SOCKET: &str = "unix:///run/nekms-p11.sock";
/// The host's CID as a guest sees it (a Nitro enclave's parent is CID 3).
pub const HOST_CID: u32 = 2;

/// What the guest is built from and booted with (dev up's `--vm-*` flags).
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// A blobs directory: bzImage, cmdline, init, nsm.ko (and modules/).
    pub blobs: PathBuf,
    /// nekms-enclave built statically with the simulator.
    pub enclave_bin: PathBuf,
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// Where the guest's connections out to `port` arrive.
pub fn outbound(run_dir: &Path, port: u32) -> PathBuf {
    run_dir.join("vm").join(format!("vsock_{port}"))
}

/// The guest's part of the measured configuration: its KMS endpoint and CA,
/// and the host's CID for every connection out.
pub fn guest_toml(region: &str, https_port: u16, anchor: bool, p11: bool) -> String {
    let mut t = format!("region = {region:?}\nkms-endpoint = \"https://localhost:{https_port}\"\nkms-ca = \"/etc/nekms/kms-ca.pem\"\n");
    t.push_str(&format!("proxy = \"vsock://{HOST_CID}:{PROXY_PORT}\"\n"));
    t.push_str(&format!("privval = \"vsock://any:{PRIVVAL_PORT}\"\nprivval-state = \"vsock://{HOST_CID}:{STATE_PORT}\"\n"));
    t.push_str(&format!("audit = \"vsock://{HOST_CID}:{AUDIT_PORT}\"\nlogs = \"vsock://{HOST_CID}:{LOGS_PORT}\"\n"));
    if anchor {
        t.push_str(&format!("privval-anchor-proxy = \"vsock://{HOST_CID}:{ANCHOR_PORT}\"\n"));
    }
    if p11 {
        t.push_str(&format!("p11 = {P11_SOCKET:?}\n"));
        t.push_str(&format!(
            "p11-kit-server = [{P11_KIT_SERVER:?}, \"-f\", \"-n\", \"vsock:port={P11_KIT_PORT}\", \"--provider\", {P11_MODULE:?}, \"pkcs11:\"]\n"
        ));
    }
    t
}

/// p11-kit's server and libnekms_p11.so on this machine, if both are here:
/// the guest runs them (ACM for Nitro Enclaves' layout).
pub fn p11_parts() -> Result<(PathBuf, PathBuf), &'static str> {
    let module = super::config::p11_module().ok_or("libnekms_p11.so is not built beside nekms (or set NEKMS_P11_MODULE)")?;
    let server = PathBuf::from(P11_KIT_SERVER);
    if !server.is_file() || !Path::new(P11_KIT_REMOTE).is_file() {
        return Err("p11-kit's server is not installed (apt install p11-kit)");
    }
    Ok((server, module))
}

/// The shared libraries `binaries` load (and their loader), as ldd lists
/// them: the image holds no libraries of its own.
fn shared_libraries(binaries: &[&Path]) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = std::collections::BTreeSet::new();
    for b in binaries {
        let out = Command::new("ldd").arg(b).output().context("running ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    Ok(libs.into_iter().collect())
}

/// Build the development image with `config` and return its measurement.
pub fn build_image(
    spec: &VmSpec,
    config: &Path,
    tls_ca: &Path,
    p11: Option<&(PathBuf, PathBuf)>,
    signer: Option<&(PathBuf, PathBuf)>,
    out: &Path,
) -> anyhow::Result<Measurement> {
    let me = std::env::current_exe()?;
    let mut build = Command::new(&me);
    build
        .args(["image", "build", "--development", "--enclave-bin"])
        .arg(&spec.enclave_bin)
        .arg("--config")
        .arg(config)
        .arg("--blobs")
        .arg(&spec.blobs)
        .arg("--file")
        .arg(format!("{}:/etc/nekms/kms-ca.pem", tls_ca.display()))
        .args(["--enclave-arg", "--sim-from", "--enclave-arg", GUEST_PATH, "-o"])
        .arg(out);
    if let Some((key, cert)) = signer {
        build.arg("--sign-key").arg(key).arg("--sign-cert").arg(cert);
    }
    if let Some((server, module)) = p11 {
        let remote = server.with_file_name("p11-kit-remote");
        build.arg("--file").arg(format!("{}:{P11_KIT_SERVER}", server.display()));
        build.arg("--file").arg(format!("{}:{P11_KIT_REMOTE}", remote.display()));
        build.arg("--file").arg(format!("{}:{P11_MODULE}", module.display()));
        for lib in shared_libraries(&[server, &remote, module])? {
            build.arg("--file").arg(format!("{}:{}", lib.display(), lib.display()));
        }
    }
    // How the image was built, beside it: `nekms <args>` builds it again.
    let args: Vec<String> = build.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    std::fs::write(out.with_extension("build.json"), serde_json::to_vec_pretty(&args)?)?;
    let result = build.output().with_context(|| format!("running {}", me.display()))?;
    if !result.status.success() {
        bail!("building the guest's image: {}", String::from_utf8_lossy(&result.stderr).trim());
    }
    let m = nekms_image::measure_file(out)?;
    let pcr = |i: u8| -> anyhow::Result<nekms_attestation::Pcr48> {
        m.pcr(i).context("a measurement without PCR0-2")?.parse().map_err(|e| anyhow::anyhow!("PCR{i}: {e}"))
    };
    Ok(Measurement { pcr0: pcr(0)?, pcr1: pcr(1)?, pcr2: pcr(2)? })
}

/// Boot `eif` with the guest's ports served at `forwards` (RPC first).
pub fn boot(dev: &DevDir, spec: &VmSpec, eif: &Path, run_dir: &Path, forwards: Vec<(u32, PathBuf)>) -> anyhow::Result<crate::vm::Vm> {
    let mut o = crate::vm::Options::new(eif.to_path_buf(), run_dir.to_path_buf());
    o.accel = spec.accel.clone();
    o.memory_mib = spec.memory_mib;
    o.cpus = spec.cpus;
    o.forwards = forwards;
    crate::vm::Vm::start(dev, &o)
}
