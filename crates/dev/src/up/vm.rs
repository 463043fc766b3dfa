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
pub fn guest_toml(region: &str, https_port: u16, anchor: bool) -> String {
    let mut t = format!("region = {region:?}\nkms-endpoint = \"https://localhost:{https_port}\"\nkms-ca = \"/etc/nekms/kms-ca.pem\"\n");
    t.push_str(&format!("proxy = \"vsock://{HOST_CID}:{PROXY_PORT}\"\n"));
    t.push_str(&format!("privval = \"vsock://any:{PRIVVAL_PORT}\"\nprivval-state = \"vsock://{HOST_CID}:{STATE_PORT}\"\n"));
    if anchor {
        t.push_str(&format!("privval-anchor-proxy = \"vsock://{HOST_CID}:{ANCHOR_PORT}\"\n"));
    }
    t
}

/// Build the development image with `config` and return its measurement.
pub fn build_image(spec: &VmSpec, config: &Path, tls_ca: &Path, out: &Path) -> anyhow::Result<Measurement> {
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
