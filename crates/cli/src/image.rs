//! Which file a simulated enclave's measurement is taken from.

use std::path::PathBuf;

use anyhow::Context;

/// The enclave image to measure: `explicit`, else `nekms-enclave` next to
/// this executable, else this executable itself (labelled as a stand-in).
pub fn enclave_image(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, &'static str)> {
    if let Some(p) = explicit {
        return Ok((p, "given image"));
    }
    let me = std::env::current_exe().context("cannot locate the running executable")?;
    let sibling = me.with_file_name("nekms-enclave");
    if sibling.is_file() {
        return Ok((sibling, "nekms-enclave beside this binary"));
    }
    Ok((me, "this nekms binary, standing in for nekms-enclave (not built yet)"))
}
