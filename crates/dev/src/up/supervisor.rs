//! The children of `dev up`: each leads its own process group, is waited
//! for until its socket (or file) appears, and is stopped (SIGTERM to the
//! group, SIGKILL after 5 s) in reverse order however `dev up` ends.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
pub(super) struct Group(Vec<Supervised>);

impl Group {
    pub(super) fn new() -> Group {
        Group(Vec::new())
    }

    pub(super) fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        cmd.stdin(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting the {name}: {cmd:?}"))?;
        let pid = child.id();
        self.0.push(Supervised { name, child });
        Ok(pid)
    }

    /// A child that has exited, if any.
    pub(super) fn exited(&mut self) -> Option<(&'static str, u32, ExitStatus)> {
        self.0.iter_mut().find_map(|s| s.child.try_wait().ok().flatten().map(|st| (s.name, s.child.id(), st)))
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            Some((name, pid, status)) => bail!("the {name} (pid {pid}) exited during start-up with {status}"),
            None => Ok(()),
        }
    }

    /// Wait up to 30 s for `ready`, failing as soon as a child exits.
    pub(super) fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            self.check()?;
            if Instant::now() > deadline {
                bail!("the {what} did not come up within 30 s");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for s in self.0.iter_mut().rev() {
            s.stop();
        }
    }
}

/// Why supervision ended.
#[derive(Debug)]
pub enum Stopped {
    /// SIGINT or SIGTERM (Ctrl-C).
    Signal,
    /// A child exited on its own: its name, pid and status.
    Died { name: &'static str, pid: u32, status: ExitStatus },
    /// The guest VM (QEMU or its vsock device) stopped: why.
    GuestStopped(String),
}

/// Wait for a signal, or for any child of `group` (or the guest VM) to die.
pub(super) async fn supervise(group: &mut Group, mut vm: Option<&mut crate::vm::Vm>) -> anyhow::Result<Stopped> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = int.recv() => return Ok(Stopped::Signal),
            _ = term.recv() => return Ok(Stopped::Signal),
            _ = tick.tick() => {
                if let Some(Err(e)) = vm.as_deref_mut().map(crate::vm::Vm::check) {
                    return Ok(Stopped::GuestStopped(format!("{e:#}")));
                }
                if let Some((name, pid, status)) = group.exited() {
                    // Ctrl-C in a terminal reaches the children too; one that stopped for it is not a death.
                    if tokio::time::timeout(Duration::from_millis(300), int.recv()).await.is_ok() {
                        return Ok(Stopped::Signal);
                    }
                    return Ok(Stopped::Died { name, pid, status });
                }
            }
        }
    }
}
