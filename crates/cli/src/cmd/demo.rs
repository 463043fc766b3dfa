//! `nekms demo`: the main flows end to end on the development world
//! (`nekms_dev::demo` runs and narrates them).

use std::path::PathBuf;

use crate::DirArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// The enclave image to measure [default: nekms-enclave beside this binary]
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    nekms_dev::demo::run(a.dir.dir.as_deref(), a.image)
}
