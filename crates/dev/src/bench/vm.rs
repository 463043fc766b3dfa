//! `nekms bench vm`: the enclave as an image in a guest VM against the same
//! enclave as a process on the parent (the reference), both under `dev up`
//! in this run: the time to come up, the memory held, and a warm
//! signature's latency and rate through each one's RPC (one client, one
//! call at a time, so the figure is the round trip through guest vsock
//! against a Unix socket). Under TCG the guest's CPU is emulated: the
//! ratio is an upper bound on what vsock and the guest cost under KVM.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nekms_devworld::DevDir;
use nekms_keys::{KeySpec, Payload, Scheme};
use nekms_rpc::{Client, GenerateKey};

use super::measure::measure;
use crate::up::{self, vm::VmSpec, Up};
use crate::vm::rss_kib;

/// What to measure with.
#[derive(Clone, Debug)]
pub struct Options {
    pub blobs: PathBuf,
    pub enclave_bin: PathBuf,
    pub accel: String,
    pub memory_mib: u32,
    /// Seconds per cell.
    pub seconds: f64,
}

/// Measure, printing as it goes. Not inside a runtime: dev up runs its own.
pub fn run(o: &Options) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("nekms-bench-vm.").tempdir()?;
    let world = |name: &str, vm: Option<VmSpec>| -> anyhow::Result<(Up, Duration)> {
        let dev = DevDir::resolve(Some(&tmp.path().join(name).join("dev")))?;
        let options = up::Options {
            run_dir: Some(tmp.path().join(name).join("up")),
            kms_http: Some("127.0.0.1:0".into()),
            kms_https: Some("127.0.0.1:0".into()),
            vm,
            ..Default::default()
        };
        let t = Instant::now();
        let up = up::start(&dev, &options)?;
        Ok((up, t.elapsed()))
    };
    let spec =
        VmSpec { blobs: o.blobs.clone(), enclave_bin: o.enclave_bin.clone(), accel: o.accel.clone(), memory_mib: o.memory_mib, cpus: 2 };
    let (process, process_up) = world("process", None)?;
    let (guest, guest_up) = world("vm", Some(spec))?;
    let vm = guest.vm.as_ref().expect("a guest world has a VM");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nekms bench vm: the enclave in a guest VM ({}, {} MiB, 2 vCPUs) against a process on the parent (ref); {cores} cores",
        vm.accel, o.memory_mib
    );
    println!(
        "  dev up, whole:        process {:>6.2} s   guest {:>6.2} s (building the image, the custody key, the boot)",
        process_up.as_secs_f64(),
        guest_up.as_secs_f64()
    );
    println!(
        "  guest boot:           heartbeat {} ms after QEMU started, RPC answering after {} ms",
        vm.heartbeat_after.map(|d| d.as_millis().to_string()).unwrap_or_else(|| "-".into()),
        vm.ready_after.as_millis()
    );
    let image_mib = std::fs::metadata(&guest.image).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0);
    println!(
        "  memory (RSS):         process {:>6} KiB   guest's QEMU {:>7} KiB (guest RAM {} MiB, image {image_mib:.1} MiB)",
        rss_kib(process.enclave_pid).unwrap_or(0),
        vm.qemu_rss_kib().unwrap_or(0),
        o.memory_mib
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        println!("  {:<34} {:>10} {:>11} {:>7}", "warm signature, one client", "sig/s", "p50", "ratio");
        for spec in [KeySpec::Secp256k1, KeySpec::P256, KeySpec::Ed25519] {
            let mut cells = Vec::new();
            for (label, up) in [("process", &process), ("guest", &guest)] {
                let client = Client::connect(&up.rpc.parse()?, "nekms bench vm").await?;
                let record = client.generate_key(GenerateKey::new(format!("bench-vm-{spec}"), spec)).await?;
                let scheme = Scheme::default_for(spec);
                let payload = Payload::Message(b"nekms bench vm: a 32-byte message".to_vec());
                // Opened once: the measured signatures are warm.
                client.sign(record.clone(), Some(scheme), payload.clone()).await?;
                let cell = measure(1, o.seconds, |_| {
                    let (client, record, payload) = (client.clone(), record.clone(), payload.clone());
                    move || {
                        let (client, record, payload) = (client.clone(), record.clone(), payload.clone());
                        async move {
                            client.sign(record, Some(scheme), payload).await?;
                            anyhow::Ok(())
                        }
                    }
                })
                .await?;
                cells.push((label, cell));
            }
            let reference = cells[0].1.per_second;
            for (label, cell) in &cells {
                let ratio = if *label == "process" { "ref".to_string() } else { format!("{:.2}", cell.per_second / reference) };
                println!(
                    "  {:<34} {:>10.0} {:>9.3}ms {ratio:>7}",
                    format!("{spec} {label}"),
                    cell.per_second,
                    cell.p50.as_secs_f64() * 1000.0
                );
            }
        }
        anyhow::Ok(())
    })?;
    drop(guest);
    drop(process);
    Ok(())
}
