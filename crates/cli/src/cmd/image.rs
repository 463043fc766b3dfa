//! `nekms image build|describe|measure|pcr8`: the enclave image (EIF).
//! Building and describing use AWS's EIF crate, which links OpenSSL, and so
//! need the `image` feature; measuring an image and a certificate does not.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build an EIF from nekms-enclave, its enclave.toml and nitro-cli's blobs (no Docker), and print its measurements
    Build(Box<BuildArgs>),
    /// What `nitro-cli describe-eif` says of an EIF: version, measurements, signature, CRC, metadata
    Describe {
        /// The EIF
        file: PathBuf,
    },
    /// PCR0, PCR1, PCR2 (and PCR8 when signed) of an EIF, computed by nekms's own reader
    Measure {
        /// The EIF
        file: PathBuf,
        /// Refuse a signed image whose ES384 signature over PCR0 does not verify under its certificate (as run-enclave does)
        #[arg(long)]
        check_signature: bool,
    },
    /// PCR8 of images signed with a certificate (like `nitro-cli pcr --signing-certificate`)
    Pcr8 {
        /// The signing certificate, PEM or DER
        #[arg(long = "cert", value_name = "FILE")]
        cert: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The nekms-enclave binary: static, built without `sim` (cargo build --release -p nekms-enclave with +crt-static)
    #[arg(long, value_name = "FILE")]
    enclave_bin: PathBuf,
    /// The enclave's configuration, measured into PCR0 and PCR2; it must pin a KMS key
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// nitro-cli's blobs: bzImage (or Image), cmdline, init, nsm.ko [default: $NITRO_CLI_BLOBS, else /usr/share/nitro_enclaves/blobs]
    #[arg(long, value_name = "DIR", env = "NITRO_CLI_BLOBS")]
    blobs: Option<PathBuf>,
    /// A further file for the image, SOURCE:/ABSOLUTE/PATH/IN/IMAGE (repeatable; e.g. a CA named by kms-ca)
    #[arg(long = "file", value_name = "SRC:DEST")]
    files: Vec<String>,
    /// A further argument for nekms-enclave after --config (repeatable)
    #[arg(long = "enclave-arg", value_name = "ARG", allow_hyphen_values = true)]
    enclave_args: Vec<String>,
    /// KEY=VALUE for the enclave's environment (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Sign with this key: a PEM private key file (P-384, P-256 or P-521) or a KMS key ARN (ECC_NIST_P384 etc.)
    #[arg(long, value_name = "FILE|ARN", requires = "sign_cert")]
    sign_key: Option<String>,
    /// The signing certificate (PEM) holding --sign-key's public key; its hash is PCR8
    #[arg(long, value_name = "PEM", requires = "sign_key")]
    sign_cert: Option<PathBuf>,
    /// The image's name in its metadata
    #[arg(long, default_value = "nekms-enclave")]
    name: String,
    /// The image's version in its metadata [default: this nekms's version]
    #[arg(long = "image-version", value_name = "VERSION")]
    image_version: Option<String>,
    /// The build time in the metadata, RFC 3339 (not measured) [default: $SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z, so builds are byte-identical]
    #[arg(long, value_name = "TIME")]
    build_time: Option<String>,
    /// Accept a nekms-enclave built with the simulated NSM: a development image that only `nekms dev vm` boots
    #[arg(long)]
    development: bool,
    /// Where to write the EIF
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Measure { file, check_signature } => {
            let m = nekms_image::measure_file(&file)?;
            if check_signature {
                let signed = nekms_image::check_signature_file(&file, m.pcr(0).unwrap_or_default())
                    .map_err(|e| crate::exit::verification(e.into()))?;
                anyhow::ensure!(
                    signed.map(|s| s.pcr8.to_hex()).as_deref() == m.pcr(8),
                    "{}: the measured PCR8 is not the signer's",
                    file.display()
                );
            }
            println!("{}", m.to_nitro_cli_json());
            Ok(())
        }
        Command::Pcr8 { cert } => {
            let bytes = std::fs::read(&cert).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            let pcr8 = nekms_image::pcr8_of_certificate(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "PCR8": pcr8 }))?);
            Ok(())
        }
        Command::Build(a) => build(*a),
        Command::Describe { file } => describe(file),
    }
}

#[cfg(feature = "image")]
fn build(a: BuildArgs) -> anyhow::Result<()> {
    use nekms_image::{Arch, Blobs, Metadata, Payload, Signing};

    let mut files = Vec::new();
    for f in &a.files {
        let (src, dest) = f.split_once(':').ok_or_else(|| anyhow::anyhow!("--file {f}: give SOURCE:/PATH/IN/IMAGE"))?;
        files.push((PathBuf::from(src), dest.to_string()));
    }
    let payload =
        Payload { enclave_bin: a.enclave_bin, config: a.config, files, args: a.enclave_args, env: a.env, development: a.development };
    // The blobs are for the binary's architecture.
    let bin = std::fs::read(&payload.enclave_bin).map_err(|e| nekms_image::ImageError::file(&payload.enclave_bin, e))?;
    let arch: Arch = nekms_image::elf::probe(&bin).map_err(|e| anyhow::anyhow!("{}: {e}", payload.enclave_bin.display()))?.arch;
    drop(bin);
    let blobs_dir = a.blobs.unwrap_or_else(|| PathBuf::from(nekms_image::DEFAULT_BLOBS));
    for other in [Arch::X86_64, Arch::Aarch64] {
        let kernel = blobs_dir.join(other.kernel_name());
        if other != arch && kernel.exists() && !blobs_dir.join(arch.kernel_name()).exists() {
            anyhow::bail!(
                "{}: the blobs hold {}, a kernel for {}, but the enclave binary {} is for {}",
                blobs_dir.display(),
                other.kernel_name(),
                other.name(),
                payload.enclave_bin.display(),
                arch.name()
            );
        }
    }
    let blobs = Blobs::open(&blobs_dir, arch)?;
    let signing = a.sign_key.map(|key| Signing { key, certificate: a.sign_cert.expect("clap requires --sign-cert with --sign-key") });
    let build_time = match (a.build_time, std::env::var("SOURCE_DATE_EPOCH").ok()) {
        (Some(t), _) => {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| anyhow::anyhow!("--build-time {t}: not RFC 3339: {e}"))?;
            t
        }
        (None, Some(epoch)) => {
            let secs: i64 = epoch.trim().parse().map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={epoch}: not a number of seconds"))?;
            let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| anyhow::anyhow!("SOURCE_DATE_EPOCH={epoch}: {e}"))?;
            t.format(&time::format_description::well_known::Rfc3339)?
        }
        (None, None) => "1970-01-01T00:00:00Z".to_string(),
    };
    let meta = Metadata { name: a.name, version: a.image_version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()), build_time };
    let m = nekms_image::build(&blobs, &payload, signing.as_ref(), &meta, &a.output)?;
    println!("{}", m.to_nitro_cli_json());
    eprintln!("nekms image: wrote {}", a.output.display());
    Ok(())
}

#[cfg(feature = "image")]
fn describe(file: PathBuf) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&nekms_image::describe(&file)?)?);
    Ok(())
}

#[cfg(not(feature = "image"))]
const WITHOUT: &str = "this nekms is built without the `image` feature (AWS's EIF crate, which links OpenSSL): \
                       cargo build --release -p nekms --features image (needs libssl-dev and pkg-config); \
                       `nekms image measure` and `pcr8` work in every build";

#[cfg(not(feature = "image"))]
fn build(_: BuildArgs) -> anyhow::Result<()> {
    anyhow::bail!("nekms image build: {WITHOUT}")
}

#[cfg(not(feature = "image"))]
fn describe(_: PathBuf) -> anyhow::Result<()> {
    anyhow::bail!("nekms image describe: {WITHOUT}")
}
