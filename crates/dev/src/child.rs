//! Children of the development tools stop when their parent dies, however
//! it dies (SIGKILL included), so a `dev up` or `dev vm` that is gone leaves
//! no local KMS, proxy, enclave or guest VM holding ports.

use std::process::Command;

/// Ask the kernel to send the child SIGTERM when this process dies
/// (`PR_SET_PDEATHSIG`), and have it not start at all if this process died
/// while it was being forked. Call it on the thread that stays for the
/// children's lifetime (the death signal follows the forking thread).
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl(2) and getppid(2), both async-signal-safe; it allocates nothing
    // (the error is built from an errno).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM)).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}
