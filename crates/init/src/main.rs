//! `nekms-init`: process 1 of nekms's test images, booted in a guest VM by
//! `nekms dev vm`. Production images keep AWS's init; this one does what
//! that one does, in the same order, and copes with a kernel that needs
//! modules (Debian's, which stands in for AWS's in the tests):
//!
//! 1. mount devtmpfs on /dev;
//! 2. load `/modules/*.ko` in the order `/modules/order` gives (nekms's
//!    extension of the bootstrap ramdisk), then `/nsm.ko`: a module that
//!    does not load is reported, not fatal (AWS's init dies on it);
//! 3. tell the parent the enclave is up: one byte 0xB7 to vsock CID 3 port
//!    9000, answered by the same byte (nitro-cli's heartbeat), best effort
//!    (a guest VM's host is CID 2: `nekms.parent_cid=2` on the kernel
//!    command line says so);
//! 4. read and delete `/cmd` (one argument per line) and `/env` (`KEY=VALUE`
//!    lines);
//! 5. make `/rootfs` the root (bind it, move it onto `/`, chroot), then mount
//!    proc, sysfs, devtmpfs, and tmpfs on /tmp and /run;
//! 6. run the command, reap every orphan, and power off when it exits.
//!
//! Every step is printed on the console.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, chroot, Pid};

const HEARTBEAT: u8 = 0xB7;
const PARENT_CID: u32 = 3;
const HEARTBEAT_PORT: u32 = 9000;

fn say(what: &str) {
    println!("nekms-init: {what}");
}

fn main() {
    if let Err(e) = run() {
        say(&format!("failed: {e}"));
    }
    // Process 1 must not return: power the machine off.
    let _ = std::io::stdout().flush();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, None::<&str>).map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn run() -> Result<(), String> {
    mount_fs("dev", "/dev", "devtmpfs", MsFlags::MS_NOSUID)?;
    mount_fs("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)?;
    load_modules();
    heartbeat(parent_cid());
    let cmd = take_lines("/cmd")?;
    let env = take_lines("/env")?;
    if cmd.is_empty() {
        return Err("/cmd is empty".into());
    }
    mount(Some("/rootfs"), "/rootfs", None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind /rootfs: {e}"))?;
    chdir("/rootfs").map_err(|e| format!("chdir /rootfs: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("move /rootfs onto /: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nodev | MsFlags::MS_NOEXEC)?;
    mount_fs("sys", "/sys", "sysfs", nodev | MsFlags::MS_NOEXEC)?;
    mount_fs("dev", "/dev", "devtmpfs", MsFlags::MS_NOSUID)?;
    mount_fs("tmp", "/tmp", "tmpfs", nodev)?;
    mount_fs("run", "/run", "tmpfs", nodev)?;
    say(&format!("running {}", cmd.join(" ")));
    let child = spawn(&cmd, &env)?;
    // Reap every process; stop when the command itself exits.
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::empty())) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                say(&format!("{} exited with status {code}; powering off", cmd[0]));
                return Ok(());
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                say(&format!("{} was killed by {sig}; powering off", cmd[0]));
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

fn load_modules() {
    let mut names: Vec<String> = match std::fs::read_to_string("/modules/order") {
        Ok(order) => order.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect(),
        Err(_) => {
            let mut found: Vec<String> = std::fs::read_dir("/modules")
                .map(|d| {
                    d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".ko")).collect()
                })
                .unwrap_or_default();
            found.sort();
            found
        }
    };
    names = names.into_iter().map(|n| format!("/modules/{n}")).collect();
    names.push("/nsm.ko".into());
    for path in names {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                say(&format!("{path}: {e}"));
                continue;
            }
        };
        match finit_module(&file, &CString::default(), ModuleInitFlags::empty()) {
            Ok(()) => say(&format!("loaded {path}")),
            Err(e) => say(&format!("{path} did not load ({e}); going on without it")),
        }
    }
}

/// The parent's CID: 3 on Nitro; a guest VM's host is 2, which the kernel
/// command line (measured into PCR1) says with `nekms.parent_cid=2`.
fn parent_cid() -> u32 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("nekms.parent_cid=")).and_then(|v| v.parse().ok()).unwrap_or(PARENT_CID)
}

/// nitro-cli's heartbeat: the launcher learns the enclave booted.
fn heartbeat(cid: u32) {
    let attempt = || -> Result<(), String> {
        let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| e.to_string())?;
        let timeout = TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout).map_err(|e| e.to_string())?;
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SendTimeout, &timeout).map_err(|e| e.to_string())?;
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, HEARTBEAT_PORT)).map_err(|e| e.to_string())?;
        let mut stream = File::from(fd);
        stream.write_all(&[HEARTBEAT]).map_err(|e| e.to_string())?;
        let mut answer = [0u8];
        stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
        if answer[0] != HEARTBEAT {
            return Err(format!("answered {:#04x}", answer[0]));
        }
        Ok(())
    };
    match attempt() {
        Ok(()) => say("heartbeat answered"),
        Err(e) => say(&format!("no heartbeat answer from the parent ({e}); going on")),
    }
}

/// The lines of `path`, which is then removed.
fn take_lines(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let _ = std::fs::remove_file(path);
    Ok(text.lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

fn spawn(cmd: &[String], env: &[String]) -> Result<Pid, String> {
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]).env_clear();
    for line in env {
        match line.split_once('=') {
            Some((k, v)) => c.env(k, v),
            None => return Err(format!("/env: {line:?} is not KEY=VALUE")),
        };
    }
    // Reaped by the waitpid loop, not by Child::wait.
    let child = c.spawn().map_err(|e| format!("exec {}: {e}", cmd[0]))?;
    Ok(Pid::from_raw(child.id() as i32))
}
