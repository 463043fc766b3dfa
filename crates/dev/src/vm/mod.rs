//! `nekms dev vm`: boot an enclave image (EIF) in a guest VM, as
//! `nitro-cli run-enclave` boots it on a Nitro instance.
//!
//! The launcher reads the EIF's kernel, command line and ramdisks and
//! measures it itself (PCR0, 1, 2 and, signed, 8), then boots it under QEMU
//! with a vhost-user vsock device (`vhost-device-vsock`), which maps the
//! guest's vsock to Unix sockets here: the guest has real AF_VSOCK sockets
//! in a real kernel and no other device but a serial console, and nothing
//! on the host binds vsock. As the Nitro hypervisor does, the launcher, not
//! the image, says what the image measures: it hands the PCRs and a CA for
//! this boot (under the development root) to the guest's simulated NSM
//! through QEMU's fw_cfg ([`nekms_nsm::handover`]).
//!
//! QEMU runs under KVM where the host has VMX or SVM, and under TCG (plain
//! emulation) elsewhere, as on machines whose /dev/kvm is a paravirtual
//! nested KVM that cannot run a stock kernel.

mod forward;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nekms_devworld::DevDir;
use nekms_image::eif::{self, Kind};
use nekms_image::Measurements;
use nekms_nsm::handover::{Handover, FW_CFG_NAME};

pub use forward::connect;

/// How to boot (the flags of `nekms dev vm`).
#[derive(Clone, Debug)]
pub struct Options {
    pub eif: PathBuf,
    /// Where the kernel, ramdisk, handover, sockets and serial log go.
    pub run_dir: PathBuf,
    /// The guest's CID (nitro-cli's --enclave-cid).
    pub cid: u32,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Guest ports served on host Unix sockets: (port, socket path). The
    /// first one is the readiness probe: the guest is up when it answers.
    pub forwards: Vec<(u32, PathBuf)>,
    /// The guest's connections out to a port, carried to an existing Unix
    /// socket here: (port, socket path).
    pub links: Vec<(u32, PathBuf)>,
    /// `kvm`, `tcg`, or `auto` (KVM where the host has VMX or SVM).
    pub accel: String,
    /// How long the guest has to answer on the first forwarded port.
    pub boot_timeout: Duration,
}

impl Options {
    pub fn new(eif: PathBuf, run_dir: PathBuf) -> Options {
        Options {
            eif,
            run_dir,
            cid: 16,
            memory_mib: 512,
            cpus: 2,
            forwards: Vec::new(),
            links: Vec::new(),
            accel: "auto".into(),
            boot_timeout: Duration::from_secs(120),
        }
    }
}

/// A running guest. Dropping it stops QEMU and the vsock device.
pub struct Vm {
    children: Vec<(&'static str, Child)>,
    rt: tokio::runtime::Runtime,
    /// What the launcher measured and handed to the guest.
    pub measurements: Measurements,
    /// The device's `uds-path`: the guest's connections out to port P land on `uds-path_P`.
    pub uds: PathBuf,
    pub serial_log: PathBuf,
    pub accel: &'static str,
    /// From QEMU's start to the heartbeat, and to the first forwarded port answering.
    pub heartbeat_after: Option<Duration>,
    pub ready_after: Duration,
    pub qemu_pid: u32,
}

/// The program to run: `$VAR`, else `name` on PATH.
fn program(var: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .with_context(|| format!("{name} is not installed (or set {var})"))
}

fn accel(requested: &str) -> anyhow::Result<&'static str> {
    let hardware = || {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let vt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
        vt && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists()
    };
    Ok(match requested {
        "kvm" => "kvm",
        "tcg" => "tcg",
        "auto" if hardware() => "kvm",
        "auto" => "tcg",
        other => bail!("--accel {other}: kvm, tcg or auto"),
    })
}

/// The kernel, command line and ramdisks of an EIF, and its measurements.
pub struct Image {
    pub kernel: Vec<u8>,
    pub cmdline: String,
    /// The ramdisks, concatenated (the kernel unpacks each cpio in turn).
    pub initrd: Vec<u8>,
    pub measurements: Measurements,
}

impl Image {
    pub fn read(path: &Path) -> anyhow::Result<Image> {
        // Read once: what is measured is what boots, whatever happens to the file meanwhile.
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let mut f = std::io::Cursor::new(&bytes);
        let layout = eif::walk(&mut f, bytes.len() as u64).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let measurements = nekms_image::pcr::measure(&mut f, &layout).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // As nitro-cli run-enclave: a signed image boots only if its signature
        // verifies over its PCR0; otherwise its PCR8 would be a copied one.
        let pcr0 = measurements.pcr(0).unwrap_or_default().to_string();
        let signed = nekms_image::signature::verify(&mut f, &layout, &pcr0).map_err(|e| {
            anyhow::anyhow!("{}: a signed image whose signature does not check: {e}; nitro-cli would not boot it", path.display())
        })?;
        // The PCR8 handed to the guest is the certificate whose key signed.
        if signed.map(|s| s.pcr8.to_hex()).as_deref() != measurements.pcr(8) {
            anyhow::bail!("{}: the measured PCR8 is not the signer's", path.display());
        }
        let section = |s: &eif::Section| bytes[s.offset as usize..(s.offset + s.len) as usize].to_vec();
        let mut image = Image { kernel: Vec::new(), cmdline: String::new(), initrd: Vec::new(), measurements };
        for s in &layout.sections {
            match s.kind {
                Kind::Kernel => image.kernel = section(s),
                Kind::Cmdline => image.cmdline = String::from_utf8(section(s)).context("the command line is not UTF-8")?,
                Kind::Ramdisk => image.initrd.extend_from_slice(&section(s)),
                Kind::Signature | Kind::Metadata => {}
            }
        }
        Ok(image)
    }
}

impl Vm {
    /// Boot `o.eif` and wait until the first forwarded guest port answers.
    pub fn start(dev: &DevDir, o: &Options) -> anyhow::Result<Vm> {
        let image = Image::read(&o.eif)?;
        let qemu = program("NEKMS_QEMU", "qemu-system-x86_64")?;
        let vhost = program("NEKMS_VHOST_VSOCK", "vhost-device-vsock")?;
        let accel = accel(&o.accel)?;
        // The device's sockets (vm/vsock is a gateway to every guest port,
        // whose source ports the guest cannot tell apart) are reachable only
        // through this directory: this user's alone.
        let dir = o.run_dir.join("vm");
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let [kernel, initrd, handover, serial_log, vhost_sock, uds] =
            ["kernel", "initrd", "nsm.json", "serial.log", "vhost.sock", "vsock"].map(|n| dir.join(n));
        std::fs::write(&kernel, &image.kernel)?;
        std::fs::write(&initrd, &image.initrd)?;
        // The handover holds this boot's CA key: readable by this user only.
        let m = &image.measurements;
        let ca = dev.boot_ca(&format!("cid {}", o.cid))?;
        let pcrs = (0u8..=8).filter_map(|i| m.pcr(i).map(|v| (i, v.to_string()))).collect();
        let h = Handover { pcrs, root_pem: dev.root_pem()?, ca_cert_pem: ca.cert_pem.clone(), ca_key_pem: ca.key_pem.clone() };
        let _ = std::fs::remove_file(&handover);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&handover)?;
        f.write_all(&serde_json::to_vec(&h)?)?;
        drop(f);
        // Sockets of an earlier boot (the caller owns the other vsock_P listeners).
        for stale in [vhost_sock.clone(), uds.clone(), PathBuf::from(format!("{}_9000", uds.display()))] {
            let _ = std::fs::remove_file(stale);
        }
        for (_, path) in &o.forwards {
            let _ = std::fs::remove_file(path);
        }
        for (port, _) in &o.links {
            let _ = std::fs::remove_file(format!("{}_{port}", uds.display()));
        }

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let mut vm = Vm {
            children: Vec::new(),
            rt,
            measurements: image.measurements.clone(),
            uds: uds.clone(),
            serial_log: serial_log.clone(),
            accel,
            heartbeat_after: None,
            ready_after: Duration::ZERO,
            qemu_pid: 0,
        };
        // The heartbeat's listener must be there before the guest's init runs.
        let (booted_tx, booted) = tokio::sync::watch::channel(false);
        let beat = vm.rt.block_on(async { tokio::net::UnixListener::bind(vm.outbound(9000)) })?;
        vm.rt.spawn(forward::heartbeat(beat, booted_tx));
        for (port, path) in &o.forwards {
            let listener = vm.rt.block_on(async { tokio::net::UnixListener::bind(path) }).with_context(|| path.display().to_string())?;
            // As the enclave's own sockets: this user's alone.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            vm.rt.spawn(forward::serve(listener, uds.clone(), *port));
        }
        for (port, target) in &o.links {
            let out = vm.outbound(*port);
            let listener = vm.rt.block_on(async { tokio::net::UnixListener::bind(&out) }).with_context(|| out.display().to_string())?;
            vm.rt.spawn(forward::link(listener, target.clone()));
        }

        let mut device = Command::new(&vhost);
        device.args(["--guest-cid", &o.cid.to_string(), "--socket"]).arg(&vhost_sock).arg("--uds-path").arg(&uds);
        device.stdin(Stdio::null()).stdout(Stdio::null());
        crate::child::die_with_parent(&mut device);
        vm.children.push(("vhost-device-vsock", device.spawn().with_context(|| format!("starting {}", vhost.display()))?));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vhost_sock.exists() {
            vm.check()?;
            if Instant::now() > deadline {
                bail!("vhost-device-vsock did not create {} within 10 s", vhost_sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let mem = format!("{}M", o.memory_mib);
        let mut q = Command::new(&qemu);
        // q35 rather than microvm: a guest kernel on microvm calibrates its
        // clock against the PIT alone and, under TCG on a busy host, fails to
        // and hangs; q35's HPET gives it another clock.
        q.args(["-accel", accel, "-M", "q35,memory-backend=mem", "-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-smp", &o.cpus.to_string(), "-m", &mem])
            .args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")])
            .args(["-chardev", &format!("socket,id=vsock,path={}", vhost_sock.display())])
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-serial", &format!("file:{}", serial_log.display())])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &image.cmdline])
            .args(["-fw_cfg", &format!("name={FW_CFG_NAME},file={}", handover.display())]);
        q.stdin(Stdio::null()).stdout(Stdio::null());
        crate::child::die_with_parent(&mut q);
        let started = Instant::now();
        let child = q.spawn().with_context(|| format!("starting {}", qemu.display()))?;
        vm.qemu_pid = child.id();
        vm.children.push(("QEMU", child));

        // Ready: the first forwarded port answers (the heartbeat comes first).
        let mut waiting: Vec<u32> = o.forwards.iter().take(1).map(|(p, _)| *p).collect();
        while !waiting.is_empty() {
            vm.check()?;
            if vm.heartbeat_after.is_none() && *booted.borrow() {
                vm.heartbeat_after = Some(started.elapsed());
            }
            if started.elapsed() > o.boot_timeout {
                bail!("the guest did not answer on port(s) {waiting:?} within {:?}; its console: {}", o.boot_timeout, vm.console_tail());
            }
            let port = waiting[0];
            if vm.rt.block_on(forward::connect(&uds, port)).is_ok() {
                waiting.remove(0);
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if vm.heartbeat_after.is_none() && *booted.borrow() {
            vm.heartbeat_after = Some(started.elapsed());
        }
        vm.ready_after = started.elapsed();
        Ok(vm)
    }

    /// Where the guest's connections out to `port` arrive (listen there).
    pub fn outbound(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.uds.display()))
    }

    /// Fail if QEMU or the device has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let console = self.serial_log.clone();
                bail!("{name} exited with {status}; the guest's console ({}): {}", console.display(), tail(&console));
            }
        }
        Ok(())
    }

    /// The last lines of the guest's console.
    pub fn console_tail(&self) -> String {
        tail(&self.serial_log)
    }

    /// QEMU's resident memory, in KiB.
    pub fn qemu_rss_kib(&self) -> Option<u64> {
        rss_kib(self.qemu_pid)
    }

    /// Block until QEMU or the device exits, or SIGINT/SIGTERM.
    pub fn wait(&mut self) -> anyhow::Result<String> {
        let signals = self.rt.block_on(async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            anyhow::Ok((term, int))
        });
        let (mut term, mut int) = signals?;
        loop {
            if let Err(e) = self.check() {
                return Ok(format!("{e:#}"));
            }
            let stop = self.rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => true,
                    _ = int.recv() => true,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => false,
                }
            });
            if stop {
                return Ok("stopped by a signal".into());
            }
        }
    }
}

/// A process's resident memory, in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Vm {
    /// The guest's processes here (its vsock device, QEMU) and their pids.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children.iter().map(|(name, child)| (*name, child.id())).collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
