//! `nekms dev ...`: the development world.

use crate::DirArg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create the development root, intermediate and config (idempotent)
    Init {
        #[command(flatten)]
        dir: DirArg,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init { dir } => {
            let dir = dir.resolve()?;
            print!("{}", dir.init()?);
            println!("root certificate: {}", dir.root_cert_path().display());
            Ok(())
        }
    }
}
