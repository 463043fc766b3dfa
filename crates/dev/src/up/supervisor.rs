//! The children of `dev up`: each leads its own process group and dies with
//! `dev up` (`PR_SET_PDEATHSIG`), is waited for until its socket (or file)
//! appears, and is stopped (SIGTERM to the group, SIGKILL after 5 s) in
//! reverse order however `dev up` ends: SIGHUP, SIGINT or SIGTERM (from the
//! first child on), a child's death, or an error. Each child's output goes
//! to `RUN/logs/NAME.log` and, prefixed with `[NAME]`, to `dev up`'s
//! stderr; `RUN/pids.json` lists the children while they run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::held;

struct Supervised {
    name: &'static str,
    child: Child,
    /// Its command line as `/proc/PID/cmdline` shows it once it runs.
    command: String,
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

/// SIGHUP, SIGINT and SIGTERM, caught from the moment the group exists.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// The first of them to arrive.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.hup.recv() => "SIGHUP",
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The children, stopped in reverse order however `up` ends, with the
/// runtime `dev up` uses and the signals it answers.
pub(super) struct Group {
    children: Vec<Supervised>,
    /// Processes started elsewhere (the guest VM's), listed but not stopped here.
    others: Vec<(&'static str, u32)>,
    logs: PathBuf,
    pids_file: PathBuf,
    signals: Signals,
    pub(super) rt: tokio::runtime::Runtime,
}

impl Group {
    /// A group for `run_dir`, refusing while a previous run's children there still run.
    pub(super) fn new(run_dir: &Path) -> anyhow::Result<Group> {
        let pids_file = run_dir.join("pids.json");
        let survivors = held::survivors(&pids_file);
        if !survivors.is_empty() {
            let list: Vec<String> = survivors.iter().map(|(name, h)| format!("the {name}, {h}")).collect();
            let pids: Vec<String> = survivors.iter().map(|(_, h)| h.pid.to_string()).collect();
            bail!(
                "a previous nekms dev up in {} still has children running: {}; stop them (kill {}) and start again",
                run_dir.display(),
                list.join("; "),
                pids.join(" ")
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let signals = {
            let _entered = rt.enter();
            Signals { hup: signal(SignalKind::hangup())?, int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? }
        };
        let logs = run_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
        Ok(Group { children: Vec::new(), others: Vec::new(), logs, pids_file, signals, rt })
    }

    /// Start `cmd` as child `name` (also its log's name).
    pub(super) fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        crate::child::die_with_parent(&mut cmd);
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = cmd.spawn().with_context(|| format!("starting the {name}: {cmd:?}"))?;
        let pid = child.id();
        let file = std::sync::Arc::new(std::sync::Mutex::new(file));
        if let Some(out) = child.stdout.take() {
            pump(name, out, file.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(name, err, file);
        }
        self.children.push(Supervised { name, child, command });
        self.write_pids();
        Ok(pid)
    }

    /// List a process started elsewhere (the guest VM's) in `pids.json` and the ready file.
    pub(super) fn list(&mut self, name: &'static str, pid: u32) {
        self.others.push((name, pid));
        self.write_pids();
    }

    /// Every child's name and pid, in start order.
    pub(super) fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children.iter().map(|s| (s.name, s.child.id())).chain(self.others.iter().copied()).collect()
    }

    fn write_pids(&self) {
        // A child just forked may not have exec'd yet: its command is the one it was given.
        let entries: Vec<(String, u32, String)> = self
            .children
            .iter()
            .map(|s| (s.name.to_string(), s.child.id(), s.command.clone()))
            .chain(self.others.iter().filter_map(|(name, pid)| held::process(*pid).map(|h| (name.to_string(), *pid, h.command))))
            .collect();
        // Through a temporary file, so a reader sees the whole list or the one before.
        let tmp = self.pids_file.with_extension("tmp");
        if serde_json::to_vec_pretty(&entries).is_ok_and(|bytes| std::fs::write(&tmp, bytes).is_ok()) {
            let _ = std::fs::rename(&tmp, &self.pids_file);
        }
    }

    /// A child that has exited, if any.
    pub(super) fn exited(&mut self) -> Option<(&'static str, u32, ExitStatus)> {
        self.children.iter_mut().find_map(|s| s.child.try_wait().ok().flatten().map(|st| (s.name, s.child.id(), st)))
    }

    /// Wait up to 30 s for `ready`, failing as soon as a child exits or a signal arrives.
    pub(super) fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some((name, pid, status)) = self.exited() {
                let log = self.logs.join(format!("{name}.log"));
                bail!("the {name} (pid {pid}) exited during start-up with {status}; its output:\n{}", tail(&log));
            }
            if Instant::now() > deadline {
                bail!("the {what} did not come up within 30 s");
            }
            let Group { rt, signals, .. } = self;
            if let Ok(sig) = rt.block_on(async { tokio::time::timeout(Duration::from_millis(25), signals.next()).await }) {
                bail!("{sig} during start-up: stopping what started");
            }
        }
        Ok(())
    }

    /// Stop every child, last started first.
    pub(super) fn stop(&mut self) {
        for s in self.children.iter_mut().rev() {
            s.stop();
        }
        self.children.clear();
        let _ = std::fs::remove_file(&self.pids_file);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copy a child's output, line by line, to its log and (prefixed) to stderr.
fn pump(name: &'static str, from: impl std::io::Read + Send + 'static, log: std::sync::Arc<std::sync::Mutex<std::fs::File>>) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).split(b'\n').map_while(Result::ok) {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&line);
                let _ = f.write_all(b"\n");
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "[{name}] ");
            let _ = err.write_all(&line);
            let _ = err.write_all(b"\n");
        }
    });
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].iter().map(|l| format!("  {l}\n")).collect()
}

/// Why supervision ended.
#[derive(Debug)]
pub enum Stopped {
    /// SIGHUP, SIGINT or SIGTERM (Ctrl-C, a closed terminal): its name.
    Signal(&'static str),
    /// A child exited on its own: its name, pid and status.
    Died { name: &'static str, pid: u32, status: ExitStatus },
    /// The guest VM (QEMU or its vsock device) stopped: why.
    GuestStopped(String),
}

/// Wait for a signal, or for any child of `group` (or the guest VM) to die.
pub(super) fn supervise(group: &mut Group, mut vm: Option<&mut crate::vm::Vm>) -> anyhow::Result<Stopped> {
    loop {
        let Group { rt, signals, .. } = group;
        if let Ok(sig) = rt.block_on(async { tokio::time::timeout(Duration::from_millis(200), signals.next()).await }) {
            return Ok(Stopped::Signal(sig));
        }
        if let Some(Err(e)) = vm.as_deref_mut().map(crate::vm::Vm::check) {
            return Ok(Stopped::GuestStopped(format!("{e:#}")));
        }
        if let Some((name, pid, status)) = group.exited() {
            // A signal to the whole terminal reaches a child too; one that stopped for it is not a death.
            let Group { rt, signals, .. } = group;
            if let Ok(sig) = rt.block_on(async { tokio::time::timeout(Duration::from_millis(300), signals.next()).await }) {
                return Ok(Stopped::Signal(sig));
            }
            return Ok(Stopped::Died { name, pid, status });
        }
    }
}
