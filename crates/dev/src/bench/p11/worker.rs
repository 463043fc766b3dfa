//! One client process of `nekms bench p11` (`nekms bench p11-worker`,
//! hidden): it loads a PKCS#11 module, logs in to the bench token and signs
//! in a loop, then prints what it did as one JSON line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::PIN;

/// One client process's loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The PKCS#11 module to load.
    pub module: PathBuf,
    /// The token's label.
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// rsa or ecdsa.
    pub mech: String,
    pub seconds: f64,
}

/// What a worker prints: signatures, the seconds they took, and the first
/// signature's time from C_Initialize.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct WorkerResult {
    pub(super) signatures: u64,
    pub(super) seconds: f64,
    pub(super) first_ms: f64,
}

/// Sign in a loop for `seconds`, then print a `WorkerResult` as JSON on
/// standard output (what [`super::run`] reads).
pub fn worker(a: &WorkerOptions) -> anyhow::Result<()> {
    use cryptoki::context::{CInitializeArgs, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let start = Instant::now();
    // SoftHSM2's file store answers CKR_GENERAL_ERROR or "token not
    // initialized" now and then when processes open it at once: the setup
    // (not timed) is tried again, the same way for every module.
    let setup = || -> anyhow::Result<_> {
        let p11 = Pkcs11::new(&a.module).with_context(|| a.module.display().to_string())?;
        p11.initialize(CInitializeArgs::OsThreads)?;
        let slot = p11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| p11.get_token_info(*s).map(|t| t.label().trim() == a.label).unwrap_or(false))
            .with_context(|| format!("no token labelled {}", a.label))?;
        let session = p11.open_ro_session(slot)?;
        session.login(UserType::User, Some(&AuthPin::new(PIN.into())))?;
        let key = *session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(hex::decode(&a.id)?)])?
            .first()
            .context("no such key")?;
        Ok((p11, session, key))
    };
    let mut attempt = 0;
    let (_p11, session, key) = loop {
        match setup() {
            Ok(ready) => break ready,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("setup failed ({e:#}); trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    let (mechanism, data): (Mechanism, Vec<u8>) = match a.mech.as_str() {
        "rsa" => (Mechanism::Sha256RsaPkcs, b"nekms bench p11: TLS handshake transcript".to_vec()),
        "ecdsa" => (Mechanism::Ecdsa, vec![0x5a; 32]),
        m => bail!("unknown mechanism {m}"),
    };
    session.sign(&mechanism, key, &data)?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    let begin = Instant::now();
    let mut n = 0u64;
    // At least one timed signature, however short the cell.
    loop {
        session.sign(&mechanism, key, &data)?;
        n += 1;
        if begin.elapsed().as_secs_f64() >= a.seconds {
            break;
        }
    }
    let out = WorkerResult { signatures: n, seconds: begin.elapsed().as_secs_f64(), first_ms };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
