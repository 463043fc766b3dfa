//! `nekms attest verify|sim`.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use nekms_attestation::{Pcr48, Verified, Verifier, VerifyOptions, AWS_NITRO_ROOT_G1_PEM};
use nekms_nsm::AttestationRequest;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::hex_arg;
#[cfg(feature = "dev")]
use crate::DirArg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify an attestation document and print what it says
    Verify(VerifyArgs),
    /// Produce a simulated attestation document signed by the development PKI
    #[cfg(feature = "dev")]
    Sim(SimArgs),
}

/// Which root a document must chain to.
#[derive(clap::Args, Clone, Debug)]
pub struct RootArgs {
    /// Trust this root certificate (PEM) instead of the built-in AWS Nitro Enclaves Root-G1
    #[cfg_attr(feature = "dev", arg(long, value_name = "PEM", conflicts_with = "dev_root"))]
    #[cfg_attr(not(feature = "dev"), arg(long, value_name = "PEM"))]
    root: Option<PathBuf>,
    /// Trust the development root of --dir (simulated enclaves)
    #[cfg(feature = "dev")]
    #[arg(long)]
    dev_root: bool,
    #[cfg(feature = "dev")]
    #[command(flatten)]
    dir: DirArg,
}

impl RootArgs {
    /// The verifier, and the root's name for messages.
    pub fn verifier(&self) -> anyhow::Result<(Verifier, String)> {
        Ok(if let Some(root) = &self.root {
            let pem = std::fs::read_to_string(root).with_context(|| format!("cannot read {}", root.display()))?;
            (Verifier::from_pem(&pem).with_context(|| format!("{} is not a usable root", root.display()))?, root.display().to_string())
        } else if let Some(dev) = self.dev_root()? {
            dev
        } else {
            (Verifier::from_pem(AWS_NITRO_ROOT_G1_PEM)?, "AWS Nitro Enclaves Root-G1 (built in)".to_owned())
        })
    }
}

impl RootArgs {
    /// The development root, when `--dev-root` asked for it.
    #[cfg(feature = "dev")]
    fn dev_root(&self) -> anyhow::Result<Option<(Verifier, String)>> {
        if !self.dev_root {
            return Ok(None);
        }
        let dir = self.dir.resolve()?;
        Ok(Some((Verifier::from_pem(&dir.root_pem()?)?, format!("development root {}", dir.root_cert_path().display()))))
    }

    #[cfg(not(feature = "dev"))]
    fn dev_root(&self) -> anyhow::Result<Option<(Verifier, String)>> {
        Ok(None)
    }
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The document (raw COSE_Sign1 bytes)
    file: PathBuf,
    #[command(flatten)]
    root: RootArgs,
    /// Verification time (RFC 3339), or "document" for the document's own timestamp [default: now]
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Expected PCR value, as N=HEX (repeatable)
    #[arg(long = "pcr", value_name = "N=HEX")]
    pcrs: Vec<String>,
    /// Expected nonce, hex
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// The fields a caller puts in a document (for `attest sim` and `enclave attest`).
#[derive(clap::Args)]
pub struct DocumentFields {
    /// Nonce to include, hex (up to 512 bytes)
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// User data to include, hex (up to 512 bytes; an enclave puts it behind "nekms-caller:v1:", so 496)
    #[arg(long, value_name = "HEX")]
    user_data: Option<String>,
    /// Public key for the public_key field, a file, DER or PEM (attest sim only: an enclave refuses a caller's key, rule attest-own-keys)
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

impl DocumentFields {
    pub fn request(&self) -> anyhow::Result<AttestationRequest> {
        let public_key = match &self.public_key {
            None => None,
            Some(p) => {
                let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                Some(if bytes.starts_with(b"-----BEGIN") {
                    let text = String::from_utf8_lossy(&bytes);
                    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(body.trim())
                        .with_context(|| format!("{}: PEM body is not base64", p.display()))?
                } else {
                    bytes
                })
            }
        };
        Ok(AttestationRequest {
            user_data: self.user_data.as_deref().map(|h| hex_arg("--user-data", h)).transpose()?,
            nonce: self.nonce.as_deref().map(|h| hex_arg("--nonce", h)).transpose()?,
            public_key,
        })
    }
}

#[cfg(feature = "dev")]
#[derive(clap::Args)]
pub struct SimArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    fields: DocumentFields,
    /// Report all-zero PCRs 0-8, like an enclave started with --debug-mode
    #[arg(long)]
    debug_mode: bool,
    /// The enclave image to measure [default: nekms-enclave beside this binary]
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// The image's configuration file, measured with it
    #[arg(long, value_name = "FILE")]
    image_config: Option<PathBuf>,
    /// Where to write the document
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Verify(a) => verify(a),
        #[cfg(feature = "dev")]
        Command::Sim(a) => sim(a),
    }
}

/// Parse `N=HEX`.
pub fn parse_pcr(s: &str) -> anyhow::Result<(u8, Pcr48)> {
    let (n, hex) = s.split_once('=').with_context(|| format!("--pcr {s:?}: expected N=HEX"))?;
    let n: u8 = n.trim().parse().ok().filter(|n| *n < 32).with_context(|| format!("--pcr {s:?}: index must be 0..31"))?;
    let value = hex.parse::<Pcr48>().with_context(|| format!("--pcr {s:?}"))?;
    Ok((n, value))
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let (verifier, root_name) = a.root.verifier()?;
    let mut opts = match a.at.as_deref() {
        None => VerifyOptions::now(),
        Some("document") => {
            VerifyOptions::at_document_time(&bytes).map_err(|e| crate::exit::verification(anyhow::anyhow!("verification failed: {e}")))?
        }
        Some(t) => VerifyOptions::at(OffsetDateTime::parse(t, &Rfc3339).with_context(|| format!("--at {t:?} is not RFC 3339"))?),
    };
    for p in &a.pcrs {
        let (n, v) = parse_pcr(p)?;
        opts = opts.expect_pcr(n, v);
    }
    if let Some(n) = &a.nonce {
        opts = opts.expect_nonce(hex_arg("--nonce", n)?);
    }
    let verified = verifier.verify(&bytes, &opts).map_err(|e| crate::exit::verification(anyhow::anyhow!("verification failed: {e}")))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&verified)?);
    } else {
        println!("OK: signature, certificate chain to {root_name}, validity at {}", opts.at.format(&Rfc3339)?);
        if !opts.expected_pcrs.is_empty() || opts.expected_nonce.is_some() {
            println!("OK: expected PCRs and nonce match");
        }
        print_document(&verified);
    }
    Ok(())
}

/// Who a document's user_data speaks for.
fn statement(user_data: Option<&[u8]>) -> &'static str {
    match user_data {
        Some(u) if u.starts_with(nekms_keys::record::CALLER_PREFIX) => "a caller's data (nekms-caller:v1), not a statement of the enclave",
        Some(u) if u.starts_with(nekms_keys::record::COMMITMENT_PREFIX.as_bytes()) => {
            "an origin commitment (nekms-key:v2); check it against its record with nekms key verify-origin"
        }
        Some(_) => "not in a form nekms writes",
        None => "none",
    }
}

/// Print a verified document for people.
pub fn print_document(v: &Verified) {
    let d = &v.document;
    let when = OffsetDateTime::from_unix_timestamp_nanos(d.timestamp as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    println!("module_id:  {}", d.module_id);
    println!("timestamp:  {} ({when})", d.timestamp);
    println!("digest:     {}", d.digest);
    println!("pcrs:");
    for (i, p) in &d.pcrs {
        println!("  PCR{i:<2} {p}");
    }
    for (name, field) in [("public_key", &d.public_key), ("user_data", &d.user_data), ("nonce", &d.nonce)] {
        match field {
            None => println!("{name:<11} (none)"),
            Some(b) => {
                println!("{:<11} {} bytes: {}", format!("{name}:"), b.len(), hex::encode(b));
                // nekms's key documents commit to the key in readable text.
                if let Some(text) = std::str::from_utf8(b).ok().filter(|t| t.chars().all(|c| c.is_ascii_graphic() || c == ' ')) {
                    println!("{:<11} (text: {text})", "");
                }
            }
        }
    }
    println!("user_data is {}", statement(d.user_data.as_deref()));
    println!("chain:");
    for (i, c) in v.chain.iter().enumerate() {
        let role = if i == 0 {
            "root"
        } else if i + 1 == v.chain.len() {
            "leaf"
        } else {
            "ca  "
        };
        println!("  {role} {} (until {})", c.subject, c.not_after);
    }
}

#[cfg(feature = "dev")]
fn sim(a: SimArgs) -> anyhow::Result<()> {
    let dir = a.dir.resolve()?;
    let enclave = nekms_dev::image::SimulatedEnclave::boot(&dir, a.image, a.image_config.as_deref(), a.debug_mode)?;
    let doc = enclave.attest(a.fields.request()?)?;
    std::fs::write(&a.output, &doc).with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("wrote {} ({} bytes), module {}", a.output.display(), doc.len(), enclave.module_id());
    println!("image measured: {} ({})", enclave.image.display(), enclave.label);
    println!("verify with: nekms attest verify {} --root {}", a.output.display(), dir.root_cert_path().display());
    Ok(())
}
