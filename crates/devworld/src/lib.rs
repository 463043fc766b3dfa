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
//! | `config.toml` | region, account, simulated instance id, local KMS addresses | 0644 |
//! | `principals.toml` | the account's principals: access keys and identity policies | 0600 |
//! | `aws/credentials`, `aws/config` | an AWS shared credentials/config pair with a profile per principal | 0600, 0644 |
//! | `tls-ca.pem`, `tls-ca.key` | CA for the development TLS servers (separate from the attestation root) | 0644, 0600 |
//! | `kms-tls.pem`, `kms-tls.key` | the local KMS's HTTPS certificate (localhost, 127.0.0.1, ::1) | 0644, 0600 |
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io { path: path.to_owned(), source }
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
    /// Where `nekms dev kms` listens for HTTP by default.
    #[serde(default = "default_kms_http")]
    pub kms_http: String,
    /// Where `nekms dev kms` listens for HTTPS by default.
    #[serde(default = "default_kms_https")]
    pub kms_https: String,
}

fn default_kms_http() -> String {
    "127.0.0.1:7700".into()
}

fn default_kms_https() -> String {
    "127.0.0.1:7701".into()
}

/// One principal of the development account, as `principals.toml` holds it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct DevPrincipal {
    /// The profile name (`root`, `admin`, `instance`).
    pub name: String,
    /// The caller ARN requests signed with this key act as.
    pub arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Present for temporary credentials (the instance role's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Identity (IAM) policies attached to the principal, as JSON documents.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Principal tags (`aws:PrincipalTag/<key>` in policies).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// `aws:userid`; derived from the ARN when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl fmt::Debug for DevPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPrincipal")
            .field("name", &self.name)
            .field("arn", &self.arn)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Drop for DevPrincipal {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret_access_key.zeroize();
        if let Some(t) = self.session_token.as_mut() {
            t.zeroize();
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PrincipalsFile {
    #[serde(rename = "principal")]
    principals: Vec<DevPrincipal>,
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string<const N: usize>(alphabet: &[u8]) -> String {
    random::<N>().iter().map(|b| alphabet[*b as usize % alphabet.len()] as char).collect()
}

fn fresh_principals(config: &DevConfig) -> Vec<DevPrincipal> {
    let account = &config.account_id;
    let key = |prefix: &str| format!("{prefix}{}", random_string::<16>(BASE32));
    let admin_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "KeyAdministration", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}]
    });
    let instance_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "UseKeys",
            "Effect": "Allow",
            "Action": [
                "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:GenerateRandom",
                "kms:DeriveSharedSecret", "kms:Sign", "kms:Verify", "kms:GetPublicKey", "kms:DescribeKey",
                "kms:ListKeys", "kms:ListAliases"
            ],
            "Resource": "*"
        }]
    });
    vec![
        DevPrincipal {
            name: "root".into(),
            arn: format!("arn:aws:iam::{account}:root"),
            access_key_id: key("AKIA"),
            secret_access_key: random_string::<40>(SECRET_CHARS),
            session_token: None,
            policies: vec![],
            tags: Default::default(),
            user_id: None,
        },
        DevPrincipal {
            name: "admin".into(),
            arn: format!("arn:aws:iam::{account}:role/nekms-key-admin"),
            access_key_id: key("AKIA"),
            secret_access_key: random_string::<40>(SECRET_CHARS),
            session_token: None,
            policies: vec![serde_json::to_string_pretty(&admin_policy).expect("JSON")],
            tags: Default::default(),
            user_id: None,
        },
        DevPrincipal {
            name: "instance".into(),
            arn: format!("arn:aws:sts::{account}:assumed-role/nekms-instance/{}", config.instance_id),
            access_key_id: key("ASIA"),
            secret_access_key: random_string::<40>(SECRET_CHARS),
            session_token: Some(format!("IQoJb3JpZ2luX2VjE{}", random_string::<64>(SECRET_CHARS))),
            policies: vec![serde_json::to_string_pretty(&instance_policy).expect("JSON")],
            tags: Default::default(),
            user_id: None,
        },
    ]
}

impl DevConfig {
    fn fresh() -> DevConfig {
        DevConfig {
            version: 1,
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            instance_id: format!("i-0{}", &hex::encode(random::<9>())[..16]),
            kms_http: default_kms_http(),
            kms_https: default_kms_https(),
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
            let inter =
                pki::generate_intermediate(&root, now).map_err(|source| DevError::Pki { path: self.file("intermediate.pem"), source })?;
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
        let config = self.config()?;
        if self.file("principals.toml").exists() {
            self.principals()?;
            report.kept.push("principals.toml");
        } else {
            let file = PrincipalsFile { principals: fresh_principals(&config) };
            let text = format!(
                "# Principals of the development account {}: the local KMS accepts these access keys.\n\
                 # `policies` are identity (IAM) policies; a key policy that names the account root delegates to them.\n{}",
                config.account_id,
                Zeroizing::new(toml::to_string(&file).expect("principals serialise")).as_str()
            );
            write_atomic(&self.file("principals.toml"), Zeroizing::new(text).as_bytes(), 0o600)?;
            report.created.push("principals.toml (root, admin, instance)");
        }
        fs::create_dir_all(self.file("aws")).map_err(io_error(&self.file("aws")))?;
        if self.file("aws/credentials").exists() && self.file("aws/config").exists() {
            report.kept.push("aws/credentials, aws/config");
        } else {
            let (credentials, aws_config) = aws_files(&self.principals()?, &config);
            write_atomic(&self.file("aws/credentials"), credentials.as_bytes(), 0o600)?;
            write_atomic(&self.file("aws/config"), aws_config.as_bytes(), 0o644)?;
            report.created.push("aws/credentials, aws/config (profiles root, admin, instance)");
        }
        let tls_ca_exists = self.file("tls-ca.pem").exists() && self.file("tls-ca.key").exists();
        let tls_ca = if tls_ca_exists {
            report.kept.push("tls-ca.pem, tls-ca.key");
            self.load_ca("tls-ca")?
        } else {
            let ca = pki::generate_tls_ca(now).map_err(|source| DevError::Pki { path: self.file("tls-ca.pem"), source })?;
            self.write_ca("tls-ca", &ca)?;
            report.created.push("tls-ca.pem, tls-ca.key (development TLS CA)");
            ca
        };
        if tls_ca_exists && self.file("kms-tls.pem").exists() && self.file("kms-tls.key").exists() {
            report.kept.push("kms-tls.pem, kms-tls.key");
        } else {
            let server = pki::generate_tls_server(&tls_ca, &["localhost", "127.0.0.1", "::1"], now)
                .map_err(|source| DevError::Pki { path: self.file("kms-tls.pem"), source })?;
            self.write_ca("kms-tls", &server)?;
            report.created.push("kms-tls.pem, kms-tls.key (local KMS HTTPS certificate)");
        }
        if self.file("image-signer.pem").exists() && self.file("image-signer.key").exists() {
            report.kept.push("image-signer.pem, image-signer.key");
        } else {
            let signer = pki::generate_image_signer(&config.account_id, now)
                .map_err(|source| DevError::Pki { path: self.file("image-signer.pem"), source })?;
            self.write_ca("image-signer", &signer)?;
            report.created.push("image-signer.pem, image-signer.key (development image-signing key, P-384: PCR8)");
        }
        Ok(report)
    }

    /// The development image-signing certificate (PEM) and key: images it
    /// signs report its PCR8, which the world's custody key trusts.
    pub fn image_signer(&self) -> Result<CaMaterial, DevError> {
        self.load_ca("image-signer")
    }

    pub fn image_signer_paths(&self) -> (PathBuf, PathBuf) {
        (self.file("image-signer.key"), self.file("image-signer.pem"))
    }

    /// The world's custody key record (`custody.toml`, written by
    /// `nekms dev init`/`dev up`).
    pub fn custody_path(&self) -> PathBuf {
        self.file("custody.toml")
    }

    /// Where the local KMS keeps its keys for this world.
    pub fn kms_data(&self) -> PathBuf {
        self.file("kms")
    }

    /// The account's principals from `principals.toml` (which must be 0600).
    pub fn principals(&self) -> Result<Vec<DevPrincipal>, DevError> {
        let path = self.file("principals.toml");
        let text = Zeroizing::new(self.read("principals.toml")?);
        let mode = fs::metadata(&path).map_err(io_error(&path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(DevError::KeyPermissions { path, mode: mode & 0o777 });
        }
        let file: PrincipalsFile = toml::from_str(&text).map_err(|source| DevError::Config { path, source })?;
        Ok(file.principals)
    }

    /// The AWS shared credentials file with a profile per principal.
    pub fn aws_credentials_path(&self) -> PathBuf {
        self.file("aws/credentials")
    }

    /// The AWS config file (region and local KMS endpoint per profile).
    pub fn aws_config_path(&self) -> PathBuf {
        self.file("aws/config")
    }

    /// The development TLS CA certificate (trust it to reach the local KMS over HTTPS).
    pub fn tls_ca_path(&self) -> PathBuf {
        self.file("tls-ca.pem")
    }

    /// The local KMS's TLS certificate and key, PEM.
    pub fn kms_tls(&self) -> Result<CaMaterial, DevError> {
        self.load_ca("kms-tls")
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

    /// A CA for one boot of a guest VM, issued now by the development root
    /// ([`pki::generate_boot_ca`]): the VM launcher hands it to the guest.
    pub fn boot_ca(&self, label: &str) -> Result<CaMaterial, DevError> {
        let root = self.load_ca("root")?;
        pki::generate_boot_ca(&root, label, OffsetDateTime::now_utc())
            .map_err(|source| DevError::Pki { path: self.file("root.key"), source })
    }

    /// A signer for simulated attestation documents (new leaf key each call).
    pub fn document_signer(&self) -> Result<DocumentSigner, DevError> {
        let inter = self.load_ca("intermediate")?;
        let root = self.root_pem()?;
        DocumentSigner::new(&root, &inter).map_err(|source| DevError::Pki { path: self.file("intermediate.key"), source })
    }
}

/// The shared credentials and config files for `principals`.
fn aws_files(principals: &[DevPrincipal], config: &DevConfig) -> (Zeroizing<String>, String) {
    let mut credentials =
        Zeroizing::new(String::from("# Credentials of the nekms development account (they work only against the local KMS).\n"));
    let mut aws_config = String::from("# Profiles of the nekms development account. The kms endpoint is the local KMS.\n");
    for p in principals {
        credentials.push_str(&format!(
            "\n[{}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            p.name, p.access_key_id, p.secret_access_key
        ));
        if let Some(t) = &p.session_token {
            credentials.push_str(&format!("aws_session_token = {t}\n"));
        }
        aws_config.push_str(&format!("\n[profile {}]\nregion = {}\nservices = nekms-local\n", p.name, config.region));
    }
    aws_config.push_str(&format!("\n[services nekms-local]\nkms =\n  endpoint_url = http://{}\n", config.kms_http));
    (credentials, aws_config)
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
