//! Who holds a TCP port or a previous run's children, so `dev up` can say
//! which process stands in its way instead of "Address already in use".

use std::net::SocketAddr;
use std::path::Path;

/// A process, as `/proc` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

/// The command line of a live process, or `None` if there is none.
pub fn process(pid: u32) -> Option<Holder> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a zombie, or a kernel thread
    }
    let command = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
    Some(Holder { pid, command })
}

/// The inode of the listening TCP socket on `addr`, from `/proc/net/tcp{,6}`.
fn listening_inode(addr: &SocketAddr) -> Option<u64> {
    let table = if addr.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    let text = std::fs::read_to_string(table).ok()?;
    let port = format!("{:04X}", addr.port());
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is the tenth field.
        let (_, p) = f.get(1)?.split_once(':')?;
        (p == port && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok()).flatten()
    })
}

/// The process holding a listening socket on `addr`'s port, if this user may see it.
pub fn port_holder(addr: &SocketAddr) -> Option<Holder> {
    let inode = listening_inode(addr)?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())) {
            return process(pid);
        }
    }
    None
}

/// Refuse to start when `addr` is taken, naming who holds it.
pub fn check_free(addr: &str, flag: &str) -> anyhow::Result<()> {
    let Ok(sa) = addr.parse::<SocketAddr>() else { return Ok(()) }; // the child reports a bad address itself
    if sa.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(sa) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match port_holder(&sa) {
            Some(h) => anyhow::bail!(
                "{addr} is already in use by {h}; if that is a previous nekms dev up's child, stop it (kill {}), or give {flag} another address",
                h.pid
            ),
            None => anyhow::bail!("{addr} is already in use by another process; give {flag} another address"),
        },
        Err(e) => anyhow::bail!("{flag} {addr}: {e}"),
    }
}

/// The children a previous run in this run directory recorded in `pids.json`
/// that still run (the same pid with the same command).
pub fn survivors(pids_file: &Path) -> Vec<(String, Holder)> {
    let Ok(bytes) = std::fs::read(pids_file) else { return Vec::new() };
    let Ok(recorded) = serde_json::from_slice::<Vec<(String, u32, String)>>(&bytes) else { return Vec::new() };
    recorded
        .into_iter()
        .filter_map(|(name, pid, command)| process(pid).filter(|h| h.command == command).map(|h| (name, h)))
        .filter(|(_, h)| h.pid != std::process::id())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_names_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = port_holder(&addr).expect("this process holds it");
        assert_eq!(h.pid, std::process::id());
        let e = check_free(&addr.to_string(), "--kms-http").unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("--kms-http"), "{e}");
        drop(l);
        check_free(&addr.to_string(), "--kms-http").unwrap();
    }

    #[test]
    fn survivors_are_live_pids_with_the_recorded_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids.json");
        let me = process(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // Until it has exec'd, the child shows this process's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let sleeper = loop {
            match process(child.id()) {
                Some(h) if h.command == "sleep 30" => break h,
                _ if std::time::Instant::now() > deadline => panic!("sleep never showed its command line"),
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        };
        let recorded = vec![
            ("sleeper".to_string(), sleeper.pid, sleeper.command.clone()),
            ("reused pid".to_string(), sleeper.pid, "something else".to_string()),
            ("gone".to_string(), u32::MAX - 1, "x".to_string()),
            ("this process".to_string(), me.pid, me.command),
        ];
        std::fs::write(&file, serde_json::to_vec(&recorded).unwrap()).unwrap();
        let found = survivors(&file);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "sleeper");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(survivors(&file).is_empty());
    }
}
