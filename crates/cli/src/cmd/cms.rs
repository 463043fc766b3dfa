//! `nekms cms inspect|decrypt`: look inside CiphertextForRecipient.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use nekms_cms::{EnvelopedData, RecipientKey};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the structure of a CMS EnvelopedData (e.g. a KMS CiphertextForRecipient)
    Inspect {
        /// The message, raw BER/DER
        file: PathBuf,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Decrypt a CMS EnvelopedData with the recipient's RSA private key
    Decrypt {
        /// Recipient private key: PKCS#8 PEM ("PRIVATE KEY") or DER
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// The message, raw BER/DER
        file: PathBuf,
        /// Write the plaintext here instead of standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Inspect { file, json } => {
            let bytes = read(&file)?;
            let e = EnvelopedData::parse(&bytes).with_context(|| format!("{} is not a usable EnvelopedData", file.display()))?;
            let r = &e.recipient;
            if json {
                let v = serde_json::json!({
                    "size": bytes.len(),
                    "ber_indefinite_lengths": e.indefinite_lengths,
                    "version": e.version,
                    "recipient": {
                        "version": r.version,
                        "subject_key_identifier": hex::encode(&r.subject_key_identifier),
                        "key_encryption": r.key_encryption,
                        "oaep_hash": r.oaep_hash,
                        "oaep_mgf1_hash": r.oaep_mgf1_hash,
                        "encrypted_key_len": r.encrypted_key.len(),
                    },
                    "content_type": e.content_type,
                    "content_encryption": e.content_encryption,
                    "iv": hex::encode(&e.iv),
                    "encrypted_content_len": e.encrypted_content.len(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "ContentInfo: envelopedData, {} bytes, {}",
                    bytes.len(),
                    if e.indefinite_lengths { "BER indefinite lengths" } else { "definite lengths" }
                );
                println!("EnvelopedData version {}", e.version);
                println!("recipient: KeyTransRecipientInfo version {}", r.version);
                println!("  subjectKeyIdentifier {} ({} bytes)", hex::encode(&r.subject_key_identifier), r.subject_key_identifier.len());
                println!("  key encryption       {}", r.key_encryption);
                println!("    OAEP hash          {}", r.oaep_hash.as_deref().unwrap_or("(absent: SHA-1 default)"));
                println!("    MGF1 hash          {}", r.oaep_mgf1_hash.as_deref().unwrap_or("(absent: SHA-1 default)"));
                println!("  encrypted key        {} bytes (RSA-{})", r.encrypted_key.len(), r.encrypted_key.len() * 8);
                println!("content: {}", e.content_type);
                println!("  encryption           {}", e.content_encryption);
                println!("  IV                   {}", hex::encode(&e.iv));
                println!("  encrypted content    {} bytes", e.encrypted_content.len());
            }
            Ok(())
        }
        Command::Decrypt { key, file, output } => {
            let recipient = RecipientKey::from_pem_or_der(&read(&key)?).with_context(|| format!("{}", key.display()))?;
            let plaintext = recipient.open(&read(&file)?).with_context(|| format!("cannot decrypt {}", file.display()))?;
            match output {
                Some(p) => std::fs::write(&p, &plaintext[..]).with_context(|| format!("cannot write {}", p.display()))?,
                None => std::io::stdout().write_all(&plaintext)?,
            }
            Ok(())
        }
    }
}
