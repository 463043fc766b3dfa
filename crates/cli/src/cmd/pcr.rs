//! `nekms pcr ...`: measurements.

use std::path::PathBuf;

use nekms_nsm::measure::Measurement;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the PCR0/1/2 a simulated enclave running FILE would report,
    /// in nitro-cli's measurement JSON
    Sim {
        /// The enclave binary
        file: PathBuf,
        /// The enclave's configuration file, measured with the binary
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Sim { file, config } => {
            let m = Measurement::of_files(&file, config.as_deref())?;
            println!("{}", m.to_nitro_cli_json());
            Ok(())
        }
    }
}
