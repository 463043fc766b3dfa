//! `nekms pcr ...`: measurements.

use std::path::PathBuf;

use anyhow::Context;
use nekms_nsm::measure::Measurement;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the PCR0/1/2 a simulated enclave running FILE would report,
    /// in nitro-cli's measurement JSON; with --sign-key, sign that PCR0 (for
    /// nekms-enclave --sim-signature) and print PCR8 too
    Sim {
        /// The enclave binary
        file: PathBuf,
        /// The enclave's configuration file, measured with the binary
        #[arg(long)]
        config: Option<PathBuf>,
        /// A P-384 PKCS#8 PEM key to sign the measurement with, as nitro-cli signs an image
        #[arg(long, value_name = "PEM", requires_all = ["sign_cert", "signature"])]
        sign_key: Option<PathBuf>,
        /// The key's certificate (PEM): PCR8 is its measurement
        #[arg(long, value_name = "PEM", requires = "sign_key")]
        sign_cert: Option<PathBuf>,
        /// Where to write the signature section
        #[arg(long, value_name = "FILE", requires = "sign_key")]
        signature: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Sim { file, config, sign_key, sign_cert, signature } => {
            let m = Measurement::of_files(&file, config.as_deref()).with_context(|| file.display().to_string())?;
            let mut json: serde_json::Value = serde_json::from_str(&m.to_nitro_cli_json())?;
            if let (Some(key), Some(cert), Some(out)) = (sign_key, sign_cert, signature) {
                let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| p.display().to_string());
                let key_pem = zeroize::Zeroizing::new(read(&key)?);
                let section = nekms_attestation::image_signature::sign_pem(&m.pcr0, &key_pem, &read(&cert)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
                let signed = nekms_attestation::image_signature::verify_now(&section, &m.pcr0).map_err(anyhow::Error::msg)?;
                std::fs::write(&out, section).with_context(|| out.display().to_string())?;
                json["Measurements"]["PCR8"] = signed.pcr8.to_hex().into();
            }
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(())
        }
    }
}
