//! `nekms dev vm`: boot an enclave image in a guest VM (`nekms_dev::vm`) and
//! serve its ports on Unix sockets here until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use crate::DirArg;

#[derive(clap::Args)]
pub struct Args {
    /// The enclave image (EIF); its nekms-enclave must be a development build (`nekms image build --development`)
    eif: PathBuf,
    #[command(flatten)]
    dir: DirArg,
    /// Where the kernel, ramdisk, handover, sockets and console log go [default: DIR/vm-CID]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The guest's CID
    #[arg(long, default_value_t = 16)]
    cid: u32,
    /// The guest's memory
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    memory: u32,
    /// The guest's vCPUs
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Serve a guest port on a Unix socket here, PORT=PATH (repeatable) [default: 5000=RUN/rpc.sock and 3000=RUN/kmstool.sock];
    /// the first is the readiness probe
    #[arg(long = "forward", value_name = "PORT=PATH")]
    forwards: Vec<String>,
    /// Carry the guest's connections out to PORT to the Unix socket PATH here (repeatable), e.g. 8000=the KMS proxy's socket
    #[arg(long = "link", value_name = "PORT=PATH")]
    links: Vec<String>,
    /// kvm, tcg, or auto (KVM where the host has VMX or SVM, else TCG)
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Seconds the guest has to answer on the first forwarded port
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    boot_timeout: u64,
    /// Write the measurements, sockets and timings as JSON here once the guest answers
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

fn pairs(flag: &str, given: &[String]) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    given
        .iter()
        .map(|g| {
            let (port, path) = g.split_once('=').ok_or_else(|| anyhow::anyhow!("--{flag} {g}: give PORT=PATH"))?;
            Ok((port.parse().map_err(|_| anyhow::anyhow!("--{flag} {g}: {port} is not a port"))?, PathBuf::from(path)))
        })
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = a.dir.resolve()?;
    let run_dir = a.run_dir.unwrap_or_else(|| dev.path().join(format!("vm-{}", a.cid)));
    std::fs::create_dir_all(&run_dir)?;
    let mut o = nekms_dev::vm::Options::new(a.eif, run_dir.clone());
    o.cid = a.cid;
    o.memory_mib = a.memory;
    o.cpus = a.cpus;
    o.accel = a.accel;
    o.boot_timeout = Duration::from_secs(a.boot_timeout);
    o.forwards = pairs("forward", &a.forwards)?;
    if o.forwards.is_empty() {
        o.forwards = vec![(5000, run_dir.join("rpc.sock")), (3000, run_dir.join("kmstool.sock"))];
    }
    o.links = pairs("link", &a.links)?;
    let mut vm = nekms_dev::vm::Vm::start(&dev, &o)?;
    println!("{}", vm.measurements.to_nitro_cli_json());
    println!(
        "nekms dev vm: guest CID {} up under {} in {:.1} s; console {}",
        o.cid,
        vm.accel,
        vm.ready_after.as_secs_f64(),
        vm.serial_log.display()
    );
    for (port, path) in &o.forwards {
        println!("  guest port {port}: unix://{}", path.display());
    }
    println!("  the guest's connections out to port P arrive at {}_P", vm.uds.display());
    if let Some(path) = &a.ready_file {
        let v = serde_json::json!({
            "measurements": vm.measurements.0,
            "forwards": o.forwards.iter().map(|(p, s)| (p.to_string(), serde_json::Value::String(s.display().to_string()))).collect::<serde_json::Map<_, _>>(),
            "uds": vm.uds.display().to_string(),
            "serial_log": vm.serial_log.display().to_string(),
            "accel": vm.accel,
            "heartbeat_ms": vm.heartbeat_after.map(|d| d.as_millis() as u64),
            "ready_ms": vm.ready_after.as_millis() as u64,
            "qemu_pid": vm.qemu_pid,
            "qemu_rss_kib": vm.qemu_rss_kib(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
        std::fs::rename(&tmp, path)?;
    }
    let why = vm.wait()?;
    tracing::info!("dev vm: {why}; stopping the guest");
    Ok(())
}
