//! Who may call the agent, and with which keys.
//!
//! - Over TCP (loopback only) every request but `/healthz`, `/metrics` and
//!   `/openapi.json` carries `Authorization: Bearer <token>`, and the `Host`
//!   header must name a loopback host, so a web page on the instance cannot
//!   reach the agent by DNS rebinding.
//! - Over a Unix socket (mode 0600 unless told otherwise) the kernel says who
//!   connected (SO_PEERCRED): a uid listed in the access file, or the agent's
//!   own uid, is a caller without a token; anyone else needs one.
//! - The access file ([`Access::from_file`]; `nekms agent --access`; TOML,
//!   not writable by group or others) names each caller: its token file or
//!   uid, the key names it may use (globs), and whether it may create or
//!   import keys. Without one, a single token ([`Access::single_token`];
//!   `--token-file`; made 0600 if missing) grants everything.
//!
//! None of this stops root on the instance, who can read any token and
//! speak to the enclave directly: the enclave's own rules are what hold
//! against root. This is for the other local users and processes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};

/// One caller as the access file describes it.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ClientEntry {
    name: String,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    manage: bool,
    /// May schedule and cancel the deletion of its keys (the KMS API).
    #[serde(default)]
    delete: bool,
    /// May decrypt with its keys made to decrypt (the KMS API's Decrypt).
    #[serde(default)]
    decrypt: bool,
    /// The KMS API: the access key id this caller signs its requests with (SigV4) ...
    #[serde(default)]
    kms_access_key_id: Option<String>,
    /// ... and the file holding its secret access key (mode 0600).
    #[serde(default)]
    kms_secret_file: Option<PathBuf>,
    /// What the names of keys it makes with the KMS API's CreateKey begin with (then a UUID).
    #[serde(default)]
    kms_key_prefix: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    /// Key-name globs (`*`, `?`) this caller may see and use.
    keys: Vec<String>,
    /// May create and import keys (named within `keys`).
    pub manage: bool,
    /// The KMS API's CreateKey names keys PREFIX + a UUID.
    pub key_prefix: String,
    /// May schedule and cancel the deletion of keys (within `keys`).
    pub delete: bool,
    /// May decrypt with keys made to decrypt (within `keys`).
    pub decrypt: bool,
}

impl Caller {
    fn everything(name: &str) -> Caller {
        Caller { name: name.to_owned(), keys: vec!["*".into()], manage: true, key_prefix: String::new(), delete: false, decrypt: false }
    }

    /// Whether this caller may use (or, with `manage`, create) key `name`
    /// (a valid key name: at most 128 characters).
    pub fn may_use(&self, name: &str) -> bool {
        nekms_keys::record::check_key_id(name).is_ok() && self.keys.iter().any(|g| glob(g.as_bytes(), name.as_bytes()))
    }
}

/// `*` and `?` wildcards, in linear time (the last `*` is the only one
/// ever backtracked to), so no pattern or name makes a caller slow.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// The callers, by token digest and by uid.
#[derive(Debug, Default)]
pub struct Access {
    tokens: Vec<([u8; 32], Caller)>,
    uids: Vec<(u32, Caller)>,
    /// The KMS API's callers: access key id, secret access key.
    kms_keys: Vec<(String, Secret, Caller)>,
    /// The agent's own uid: a full caller over the Unix socket when no
    /// access file says who the callers are.
    owner: Option<u32>,
}

/// A secret file must not be readable (or writable) by group or others.
fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!("{what} {} is mode {:o}; make it 0600 (readable by its owner only)", path.display(), meta.mode() & 0o777);
    }
    Ok(())
}

fn token_digest(token: &str) -> [u8; 32] {
    digest(&SHA256, token.trim().as_bytes()).as_ref().try_into().expect("SHA-256")
}

fn read_token(path: &Path) -> anyhow::Result<[u8; 32]> {
    check_private(path, "token file")?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| path.display().to_string())?);
    if text.trim().len() < 16 {
        bail!("token file {} holds fewer than 16 characters", path.display());
    }
    Ok(token_digest(&text))
}

/// A secret access key: zeroized when dropped, never in `Debug`.
#[derive(Clone)]
struct Secret(zeroize::Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An access key id as AWS makes them: 16-128 letters and digits.
fn check_access_key_id(id: &str) -> anyhow::Result<()> {
    if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("kms-access-key-id {id:?} is not 16-128 letters and digits");
    }
    Ok(())
}

/// A secret access key from its file (0600), at least 16 characters.
fn read_secret(path: &Path) -> anyhow::Result<Secret> {
    check_private(path, "kms-secret-file")?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| path.display().to_string())?);
    let secret = zeroize::Zeroizing::new(text.trim().to_owned());
    if secret.len() < 16 {
        bail!("kms-secret-file {} holds fewer than 16 characters", path.display());
    }
    Ok(Secret(secret))
}

impl Access {
    /// The KMS API's caller with this access key id, and its secret (to check the request's signature).
    pub fn by_access_key(&self, id: &str) -> Option<(Caller, zeroize::Zeroizing<String>)> {
        self.kms_keys.iter().find(|(k, _, _)| k == id).map(|(_, secret, caller)| (caller.clone(), secret.0.clone()))
    }

    /// From an access file.
    pub fn from_file(path: &Path) -> anyhow::Result<Access> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).with_context(|| format!("access file {}", path.display()))?;
        if meta.mode() & 0o022 != 0 {
            bail!("access file {} is writable by group or others (mode {:o})", path.display(), meta.mode() & 0o777);
        }
        let file: AccessFile =
            toml::from_str(&std::fs::read_to_string(path)?).with_context(|| format!("access file {}", path.display()))?;
        let mut access = Access::default();
        for c in file.client {
            let caller = Caller {
                name: c.name.clone(),
                keys: c.keys.clone(),
                manage: c.manage,
                key_prefix: c.kms_key_prefix.clone().unwrap_or_default(),
                delete: c.delete,
                decrypt: c.decrypt,
            };
            match (&c.kms_access_key_id, &c.kms_secret_file) {
                (Some(id), Some(file)) => {
                    check_access_key_id(id).with_context(|| format!("access file {}: client {:?}", path.display(), c.name))?;
                    if access.kms_keys.iter().any(|(other, _, _)| other == id) {
                        bail!("access file {}: access key id {id} is given twice", path.display());
                    }
                    access.kms_keys.push((id.clone(), read_secret(file)?, caller.clone()));
                }
                (None, None) => {}
                _ => bail!("access file {}: client {:?}: give kms-access-key-id and kms-secret-file together", path.display(), c.name),
            }
            match (&c.token_file, c.uid) {
                (None, None) if c.kms_access_key_id.is_some() => {}
                (None, None) => bail!("access file {}: client {:?} has no token-file, uid or kms-access-key-id", path.display(), c.name),
                (token, uid) => {
                    if let Some(t) = token {
                        access.tokens.push((read_token(t)?, caller.clone()));
                    }
                    if let Some(u) = uid {
                        access.uids.push((u, caller));
                    }
                }
            }
        }
        Ok(access)
    }

    /// One token granting everything: read from `path`, or made there (0600).
    pub fn single_token(path: &Path) -> anyhow::Result<Access> {
        if !path.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(&mut *bytes).map_err(|_| anyhow::anyhow!("the random generator failed"))?;
            let token = zeroize::Zeroizing::new(hex::encode(*bytes));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| path.display().to_string())?;
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
        }
        let digest = read_token(path)?;
        Ok(Access { tokens: vec![(digest, Caller::everything("token"))], owner: Some(nix::unistd::getuid().as_raw()), ..Access::default() })
    }

    /// The caller a bearer token names.
    pub fn by_token(&self, token: &str) -> Option<Caller> {
        let d = token_digest(token);
        // Every entry is compared, in constant time each.
        let mut found = None;
        for (digest, caller) in &self.tokens {
            if verify_slices_are_equal(digest, &d).is_ok() && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// The caller a Unix peer's uid names.
    pub fn by_uid(&self, uid: u32) -> Option<Caller> {
        self.uids
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|(_, c)| c.clone())
            .or_else(|| (Some(uid) == self.owner).then(|| Caller::everything("owner")))
    }
}

/// Whether a `Host` header names a loopback host (with any port).
pub fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host })
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_headers_pass() {
        for ok in ["127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:8080", "127.0.0.1"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1.evil.example", "localhost.evil", "10.0.0.1:8080", "", "[::2]:80"] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn globs_limit_a_caller_to_its_keys() {
        let c = Caller {
            name: "w".into(),
            keys: vec!["wallet-*".into(), "k?".into()],
            manage: false,
            key_prefix: String::new(),
            delete: false,
            decrypt: false,
        };
        assert!(c.may_use("wallet-1") && c.may_use("k1"));
        assert!(!c.may_use("validator") && !c.may_use("k10") && !c.may_use("wallet"));
        let star = Caller {
            name: "s".into(),
            keys: vec!["a*b*c*d*e*f*g*h*z".into(), "*x*".into()],
            manage: false,
            key_prefix: String::new(),
            delete: false,
            decrypt: false,
        };
        let long = "a".repeat(128);
        let started = std::time::Instant::now();
        assert!(!star.may_use(&long) && star.may_use("axe"));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "no exponential backtracking");
        assert!(!Caller::everything("all").may_use(&"a".repeat(129)), "not a key name");
        for (p, t, want) in
            [("*", "", true), ("a*", "a", true), ("*a", "ba", true), ("a?c", "abc", true), ("a?c", "ac", false), ("**b", "ab", true)]
        {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn an_access_file_names_callers_by_token_or_uid_and_nobody_else() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("w.token");
        std::fs::write(&token, "a-token-for-the-wallet-0000\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.path().join("access.toml");
        std::fs::write(&file, format!("[[client]]\nname = \"w\"\nuid = 1001\nkeys = [\"w-*\"]\n\n[[client]]\nname = \"t\"\ntoken-file = {token:?}\nkeys = [\"t\"]\nmanage = true\n")).unwrap();
        let access = Access::from_file(&file).unwrap();
        let w = access.by_uid(1001).unwrap();
        assert!(w.may_use("w-1") && !w.may_use("v") && !w.manage);
        assert!(access.by_uid(1002).is_none());
        assert!(access.by_uid(nix::unistd::getuid().as_raw()).is_none(), "with an access file the owner is a caller only if listed");
        let t = access.by_token("a-token-for-the-wallet-0000").unwrap();
        assert!(t.manage && t.may_use("t") && !t.may_use("w-1"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Access::from_file(&file).is_err(), "an access file others can write is refused");
    }

    #[test]
    fn tokens_are_made_private_and_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t/agent.token");
        let access = Access::single_token(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        assert!(access.by_token(&token).is_some());
        assert!(access.by_token("not the token at all").is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Access::single_token(&path).unwrap_err().to_string().contains("0600"));
    }
}
