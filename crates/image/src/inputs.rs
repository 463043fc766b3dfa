//! The inputs of an image, each checked before anything is written: the
//! blobs (kernel, command line, init, nsm.ko), the enclave binary, its
//! measured configuration and any extra files. Every refusal names the
//! file it is about.

use std::path::{Path, PathBuf};

use crate::cpio::Entry;
use crate::elf::{self, Arch};
use crate::ImageError;

/// The default blobs directory of the aws-nitro-enclaves-cli package.
pub const DEFAULT_BLOBS: &str = "/usr/share/nitro_enclaves/blobs";

/// Where the image keeps the enclave's binary and configuration.
pub const ENCLAVE_PATH: &str = "/usr/bin/nekms-enclave";
pub const CONFIG_PATH: &str = "/etc/nekms/enclave.toml";

/// The largest file nekms puts in a ramdisk (a cpio entry's size field is
/// 32 bits).
const MAX_FILE: u64 = u32::MAX as u64;

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| ImageError::file(path, e))?;
    if !meta.is_file() {
        return Err(ImageError::input(path, "not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(ImageError::input(path, "larger than 4 GiB"));
    }
    std::fs::read(path).map_err(|e| ImageError::file(path, e))
}

/// nitro-cli's blobs for one architecture.
pub struct Blobs {
    pub arch: Arch,
    pub kernel: PathBuf,
    /// The kernel command line, trimmed as nitro-cli trims it.
    pub cmdline: String,
    pub init: Vec<u8>,
    pub nsm_ko: Vec<u8>,
    /// The kernel's version string, for the metadata.
    pub kernel_version: String,
    /// nekms's extension for kernels that need modules before the NSM's
    /// (Debian's, in the tests): `modules/*.ko` and `modules/order`, put in
    /// the bootstrap ramdisk under `modules/` for nekms-init to load. AWS's
    /// blobs have no such directory.
    pub modules: Vec<(String, Vec<u8>)>,
}

impl Blobs {
    /// Open and check `dir`'s kernel (`bzImage` or `Image`), `cmdline`,
    /// `init` and `nsm.ko`.
    pub fn open(dir: &Path, arch: Arch) -> Result<Blobs, ImageError> {
        if !dir.is_dir() {
            return Err(ImageError::input(dir, "no such blobs directory (give --blobs DIR, or install aws-nitro-enclaves-cli)"));
        }
        let kernel = dir.join(arch.kernel_name());
        let kernel_bytes = read(&kernel)?;
        let kernel_version = kernel_check(&kernel_bytes, arch).map_err(|m| ImageError::input(&kernel, m))?;
        let cmdline_path = dir.join("cmdline");
        let cmdline =
            String::from_utf8(read(&cmdline_path)?).map_err(|_| ImageError::input(&cmdline_path, "not UTF-8 text"))?.trim().to_string();
        if cmdline.contains('\0') {
            return Err(ImageError::input(&cmdline_path, "holds a NUL byte"));
        }
        let init_path = dir.join("init");
        let init = read(&init_path)?;
        let e = elf::probe(&init).map_err(|m| ImageError::input(&init_path, m))?;
        if e.arch != arch {
            return Err(ImageError::input(&init_path, format!("built for {}, the image is {}", e.arch.name(), arch.name())));
        }
        if let Some(loader) = e.interpreter {
            return Err(ImageError::input(&init_path, format!("dynamically linked (asks for {loader}); an init must be static")));
        }
        let nsm_ko = read(&dir.join("nsm.ko"))?;
        let mut modules = Vec::new();
        let module_dir = dir.join("modules");
        if module_dir.is_dir() {
            let listing = std::fs::read_dir(&module_dir).map_err(|e| ImageError::file(&module_dir, e))?;
            for entry in listing {
                let entry = entry.map_err(|e| ImageError::file(&module_dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name != "order" && !name.ends_with(".ko") {
                    return Err(ImageError::input(&entry.path(), "modules/ holds only .ko files and an order file"));
                }
                modules.push((name, read(&entry.path())?));
            }
            modules.sort();
        }
        Ok(Blobs { arch, kernel, cmdline, init, nsm_ko, kernel_version, modules })
    }

    /// The bootstrap ramdisk nitro-cli writes: `dev`, `init`, `nsm.ko`
    /// (and `modules/` when the blobs have it).
    pub fn bootstrap_entries(&self) -> Vec<Entry> {
        let mut e = vec![
            Entry::dir("dev", 0o755),
            Entry::file("init", 0o755, self.init.clone()),
            Entry::file("nsm.ko", 0o755, self.nsm_ko.clone()),
        ];
        if !self.modules.is_empty() {
            e.push(Entry::dir("modules", 0o755));
            e.extend(self.modules.iter().map(|(name, data)| Entry::file(&format!("modules/{name}"), 0o644, data.clone())));
        }
        e
    }
}

/// Check a kernel's boot header and return its version string.
fn kernel_check(k: &[u8], arch: Arch) -> Result<String, String> {
    match arch {
        Arch::X86_64 => {
            if k.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
                return Err("not an x86_64 bzImage (no \"HdrS\" boot header at 0x202)".into());
            }
            // The boot protocol's kernel_version field points 0x200 bytes
            // before a NUL-terminated version string.
            let at = k.get(0x20e..0x210).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) + 0x200);
            let version = at
                .and_then(|at| k.get(at..))
                .and_then(|s| s.split(|&b| b == 0).next())
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.split(' ').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("Unknown");
            Ok(version.to_string())
        }
        Arch::Aarch64 => {
            if k.get(0x38..0x3c) != Some(b"ARM\x64".as_slice()) {
                return Err("not an arm64 Image (no \"ARM\\x64\" magic at 0x38)".into());
            }
            Ok("Unknown".into())
        }
    }
}

/// What runs in the enclave.
pub struct Payload {
    /// `nekms-enclave`, built for an image: static, without `sim`.
    pub enclave_bin: PathBuf,
    /// The enclave's configuration, measured into PCR0 and PCR2.
    pub config: PathBuf,
    /// Further files: (source on this machine, absolute path in the image).
    pub files: Vec<(PathBuf, String)>,
    /// Arguments after `--config /etc/nekms/enclave.toml`.
    pub args: Vec<String>,
    /// `KEY=VALUE` lines of the enclave's environment.
    pub env: Vec<String>,
    /// Accept a binary built with the simulated NSM: a development image,
    /// for `nekms dev vm` only (its documents chain to the development root).
    pub development: bool,
}

/// What nekms-enclave says in a binary built for an image, and in one
/// built with the simulator (see nekms-enclave's `sim` module).
const IMAGE_BINARY_MARK: &[u8] = b"this nekms-enclave is built for an enclave image, without the simulated NSM";
const DEVELOPMENT_BINARY_MARK: &[u8] = b"this nekms-enclave is built with the simulated NSM, for development only";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Payload {
    /// Check everything and return the customer ramdisk's entries and the
    /// binary's architecture.
    pub fn entries(&self) -> Result<(Vec<Entry>, Arch), ImageError> {
        let bin = read(&self.enclave_bin)?;
        let e = elf::probe(&bin).map_err(|m| ImageError::input(&self.enclave_bin, m))?;
        if let Some(loader) = &e.interpreter {
            return Err(ImageError::input(
                &self.enclave_bin,
                format!(
                    "dynamically linked (asks for {loader}); the image holds no libraries: build it static, e.g. \
                     RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p nekms-enclave --target {}-unknown-linux-gnu",
                    e.arch.name()
                ),
            ));
        }
        let development = contains(&bin, DEVELOPMENT_BINARY_MARK);
        if development && !self.development {
            return Err(ImageError::input(
                &self.enclave_bin,
                "holds the simulated NSM (built with feature `sim`, as the workspace's development build is): build it alone, \
                 cargo build --release -p nekms-enclave (or pass --development for an image only nekms dev vm boots)",
            ));
        }
        if !development && !contains(&bin, IMAGE_BINARY_MARK) {
            return Err(ImageError::input(&self.enclave_bin, "not an nekms-enclave binary built for an image"));
        }
        if self.development && !development {
            return Err(ImageError::input(&self.enclave_bin, "--development, but the binary has no simulated NSM"));
        }
        let config = read(&self.config)?;
        check_config(&self.config, &config, &self.files)?;
        self.check_args()?;

        let mut entries = vec![
            Entry::file("cmd", 0o644, self.cmd().into_bytes()),
            Entry::file("env", 0o644, self.env_file()?.into_bytes()),
            Entry::file(&format!("rootfs{ENCLAVE_PATH}"), 0o755, bin),
            Entry::file(&format!("rootfs{CONFIG_PATH}"), 0o644, config),
        ];
        for (src, dest) in &self.files {
            if !dest.starts_with('/') || dest.split('/').any(|c| c == ".." || c == ".") || dest.ends_with('/') || dest.contains("//") {
                return Err(ImageError::input(src, format!("its path in the image, {dest:?}, is not a plain absolute file path")));
            }
            if dest == ENCLAVE_PATH || dest == CONFIG_PATH {
                return Err(ImageError::input(src, format!("{dest} is where the image keeps nekms's own file")));
            }
            // An executable stays one (p11-kit's server and its loader): 0755, else 0644.
            let executable =
                std::fs::metadata(src).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0).unwrap_or(false);
            entries.push(Entry::file(&format!("rootfs{dest}"), if executable { 0o755 } else { 0o644 }, read(src)?));
        }
        // Every directory the files need, and those AWS's init mounts on.
        let mut dirs: Vec<String> =
            ["rootfs", "rootfs/dev", "rootfs/proc", "rootfs/run", "rootfs/sys", "rootfs/tmp", "rootfs/var"].map(String::from).to_vec();
        for e in &entries {
            let mut p = e.path();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.push(parent.to_string());
                p = parent;
            }
        }
        dirs.sort();
        dirs.dedup();
        entries.extend(dirs.iter().map(|d| Entry::dir(d, 0o755)));
        let entries = crate::cpio::sorted(entries).map_err(|m| ImageError::input(&self.config, m))?;
        Ok((entries, e.arch))
    }

    /// AWS's init reads the command from `cmd`, one argument per line: an
    /// argument may hold no newline, and none may be empty.
    fn check_args(&self) -> Result<(), ImageError> {
        for a in &self.args {
            if a.is_empty() || a.contains('\n') || a.contains('\0') {
                return Err(ImageError::Usage(format!("--enclave-arg {a:?}: an argument is one non-empty line")));
            }
        }
        Ok(())
    }

    fn cmd(&self) -> String {
        let mut lines = vec![ENCLAVE_PATH.to_string(), "--config".into(), CONFIG_PATH.into()];
        lines.extend(self.args.iter().cloned());
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn env_file(&self) -> Result<String, ImageError> {
        for line in &self.env {
            let ok = line.split_once('=').is_some_and(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace));
            if !ok || line.contains('\n') {
                return Err(ImageError::Usage(format!("--env {line:?}: give KEY=VALUE on one line")));
            }
        }
        Ok(self.env.iter().map(|l| format!("{l}\n")).collect())
    }
}

/// The configuration must be one the enclave accepts, pin what it trusts,
/// hold nothing of the development world, and name only files the image
/// holds.
fn check_config(path: &Path, text: &[u8], files: &[(PathBuf, String)]) -> Result<(), ImageError> {
    let text = std::str::from_utf8(text).map_err(|_| ImageError::input(path, "not UTF-8 text"))?;
    for (i, line) in text.lines().enumerate() {
        if line.len() != line.trim_end_matches('\r').len() {
            return Err(ImageError::input(path, format!("line {}: a carriage return; the file is measured byte for byte", i + 1)));
        }
    }
    let args = nekms_enclave::config::EnclaveArgs::from_toml(text)
        .map_err(|e| ImageError::input(path, format!("not an enclave configuration: {e}")))?;
    if args.sim
        || args.debug_mode
        || args.dev_dir.is_some()
        || args.image.is_some()
        || args.sim_from.is_some()
        || args.sim_signature.is_some()
    {
        return Err(ImageError::input(
            path,
            "sets sim, debug-mode, dev-dir, image, sim-from or sim-signature: settings of the simulator, which an image's binary does not have",
        ));
    }
    if args.custody_kms_keys.is_empty() && args.parent_decrypt_keys.is_empty() {
        return Err(ImageError::input(
            path,
            "pins no KMS key: set custody-kms-keys (or, for a decrypt-only enclave, parent-decrypt-keys), or the image would use any key the parent names",
        ));
    }
    let held: Vec<&str> = files.iter().map(|(_, d)| d.as_str()).collect();
    if let Some(program) = args.p11_kit_server.first() {
        if !held.contains(&program.as_str()) {
            return Err(ImageError::input(
                path,
                format!("p11-kit-server runs {program}, which the image does not hold: add --file SOURCE:{program}"),
            ));
        }
        if args.p11.is_none() {
            return Err(ImageError::input(path, "p11-kit-server without p11 (the module's socket in the enclave)"));
        }
    }
    for (setting, file) in [("kms-ca", &args.kms_ca), ("attestation-root", &args.attestation_root)] {
        if let Some(f) = file {
            let f = f.to_string_lossy();
            if !held.contains(&f.as_ref()) {
                return Err(ImageError::input(path, format!("{setting} names {f}, which the image does not hold: add --file SOURCE:{f}")));
            }
        }
    }
    Ok(())
}
