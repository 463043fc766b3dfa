//! The development world's directory.
//!
//! Everything the development world needs that production gets from AWS lives
//! in one directory: the development root and intermediate that stand in for
//! the AWS Nitro PKI, and `config.toml`. Every `nekms` command that needs it
//! takes `--dir DIR`, or `NEKMS_DEV_DIR`, or uses the default
//! `$XDG_DATA_HOME/nekms/dev` (`~/.local/share/nekms/dev`).
//!
//! | file | what | mode |
//! |---|---|---|
//! | `root.pem` | development root certificate (P-384, 30 years) | 0644 |
//! | `root.key` | its private key, PKCS#8 PEM | 0600 |
//! | `intermediate.pem` | intermediate certificate (P-384, pathlen 0) | 0644 |
//! | `intermediate.key` | its private key | 0600 |
//! | `config.toml` | region, account, simulated instance id | 0644 |
//!
//! [`DevDir::init`] is idempotent: it creates what is missing and keeps what
//! is there. Files are written to a temporary name and renamed, so a crash
//! never leaves half a key.
//!
//! ```no_run
//! use nekms_devworld::DevDir;
//! let dir = DevDir::resolve(None)?;
//! let report = dir.init()?;
//! println!("{}", report);
//! let signer = dir.document_signer()?;
//! # Ok::<(), nekms_devworld::DevError>(())
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nekms_attestation::pki::{self, CaMaterial, DocumentSigner, PkiError};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Environment variable naming the development directory.
pub const DEV_DIR_ENV: &str = "NEKMS_DEV_DIR";

/// What went wrong with the development directory.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot find a home for the development world: set {DEV_DIR_ENV} or pass --dir")]
    NoHome,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is missing: run `nekms dev init --dir {dir}` first")]
    NotInitialised { path: PathBuf, dir: PathBuf },
    #[error("{path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Pki { path: PathBuf, source: PkiError },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: toml::de::Error },
}

/// `config.toml`: settings of the development world.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevConfig {
    pub version: u32,
    /// Region the local services answer for.
    pub region: String,
    /// The simulated AWS account.
    pub account_id: String,
    /// The simulated parent instance (PCR4 and the module id prefix).
    pub instance_id: String,
}

impl DevConfig {
    fn fresh() -> DevConfig {
        DevConfig {
            version: 1,
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            instance_id: format!("i-0{}", &hex::encode(random::<9>())[..16]),
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).expect("system RNG");
    b
}

/// A development directory (which may not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevDir {
    path: PathBuf,
}

/// What [`DevDir::init`] did with each file.
#[derive(Clone, Debug, Default)]
pub struct InitReport {
    pub dir: PathBuf,
    pub created: Vec<&'static str>,
    pub kept: Vec<&'static str>,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "development world: {}", self.dir.display())?;
        for c in &self.created {
            writeln!(f, "  created {c}")?;
        }
        for k in &self.kept {
            writeln!(f, "  kept    {k} (already there)")?;
        }
        Ok(())
    }
}

impl DevDir {
    pub fn new(path: impl Into<PathBuf>) -> DevDir {
        DevDir { path: path.into() }
    }

    /// `explicit`, else `$NEKMS_DEV_DIR`, else `$XDG_DATA_HOME/nekms/dev`, else
    /// `$HOME/.local/share/nekms/dev`.
    pub fn resolve(explicit: Option<&Path>) -> Result<DevDir, DevError> {
        if let Some(p) = explicit {
            return Ok(DevDir::new(p));
        }
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(p) = var(DEV_DIR_ENV) {
            return Ok(DevDir::new(p));
        }
        if let Some(p) = var("XDG_DATA_HOME") {
            return Ok(DevDir::new(p.join("nekms/dev")));
        }
        var("HOME").map(|h| DevDir::new(h.join(".local/share/nekms/dev"))).ok_or(DevError::NoHome)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root_cert_path(&self) -> PathBuf {
        self.path.join("root.pem")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Create whatever is missing: root, intermediate, config. A new root
    /// always gets a new intermediate, so the chain stays consistent.
    pub fn init(&self) -> Result<InitReport, DevError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DevError::Io { path, source }
        };
        fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700)).map_err(io(&self.path))?;
        let mut report = InitReport { dir: self.path.clone(), ..Default::default() };
        let now = OffsetDateTime::now_utc();

        let root_exists = self.file("root.pem").exists() && self.file("root.key").exists();
        let root = if root_exists {
            report.kept.push("root.pem, root.key");
            self.load_ca("root")?
        } else {
            let root = pki::generate_root(now).map_err(|source| DevError::Pki { path: self.file("root.pem"), source })?;
            self.write_ca("root", &root)?;
            report.created.push("root.pem, root.key (development root CA, P-384)");
            root
        };
        if root_exists && self.file("intermediate.pem").exists() && self.file("intermediate.key").exists() {
            report.kept.push("intermediate.pem, intermediate.key");
        } else {
            let inter = pki::generate_intermediate(&root, now)
                .map_err(|source| DevError::Pki { path: self.file("intermediate.pem"), source })?;
            self.write_ca("intermediate", &inter)?;
            report.created.push("intermediate.pem, intermediate.key (development intermediate CA, P-384)");
        }
        if self.file("config.toml").exists() {
            self.config()?;
            report.kept.push("config.toml");
        } else {
            let text = format!(
                "# nekms development world. Edit freely; `nekms dev init` never overwrites it.\n{}",
                toml::to_string(&DevConfig::fresh()).expect("config serialises")
            );
            write_atomic(&self.file("config.toml"), text.as_bytes(), 0o644)?;
            report.created.push("config.toml");
        }
        Ok(report)
    }

    fn write_ca(&self, name: &str, ca: &CaMaterial) -> Result<(), DevError> {
        write_atomic(&self.file(&format!("{name}.key")), ca.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.file(&format!("{name}.pem")), ca.cert_pem.as_bytes(), 0o644)
    }

    fn read(&self, name: &str) -> Result<String, DevError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DevError::NotInitialised { path: path.clone(), dir: self.path.clone() },
            _ => DevError::Io { path: path.clone(), source },
        })
    }

    fn load_ca(&self, name: &str) -> Result<CaMaterial, DevError> {
        let key_path = self.file(&format!("{name}.key"));
        let key_pem = Zeroizing::new(self.read(&format!("{name}.key"))?);
        let mode = fs::metadata(&key_path).map_err(|source| DevError::Io { path: key_path.clone(), source })?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(DevError::KeyPermissions { path: key_path, mode: mode & 0o777 });
        }
        Ok(CaMaterial { cert_pem: self.read(&format!("{name}.pem"))?, key_pem })
    }

    /// The development root certificate, PEM.
    pub fn root_pem(&self) -> Result<String, DevError> {
        self.read("root.pem")
    }

    /// `config.toml`.
    pub fn config(&self) -> Result<DevConfig, DevError> {
        let path = self.file("config.toml");
        toml::from_str(&self.read("config.toml")?).map_err(|source| DevError::Config { path, source })
    }

    /// A signer for simulated attestation documents (new leaf key each call).
    pub fn document_signer(&self) -> Result<DocumentSigner, DevError> {
        let inter = self.load_ca("intermediate")?;
        let root = self.root_pem()?;
        DocumentSigner::new(&root, &inter).map_err(|source| DevError::Pki { path: self.file("intermediate.key"), source })
    }
}

/// Write `bytes` to a temporary file with `mode`, sync it, then rename over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DevError> {
    let err = |source| DevError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
