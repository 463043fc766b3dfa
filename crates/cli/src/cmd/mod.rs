pub mod agent;
pub mod attest;
pub mod audit;
#[cfg(feature = "dev")]
pub mod bench;
pub mod cms;
mod collect;
#[cfg(feature = "dev")]
pub mod demo;
#[cfg(feature = "dev")]
pub mod dev;
pub mod enclave;
pub mod image;
pub mod key;
mod key_delete;
pub mod kmstool;
pub mod logs;
pub mod migrate;
pub mod p11;
pub mod pcr;
pub mod policy;
pub mod privval;
pub mod proxy;
#[cfg(feature = "dev")]
pub mod up;
#[cfg(feature = "dev")]
pub mod vm;

/// Parse hex given on the command line, naming the option on error.
pub fn hex_arg(option: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(s.trim()).map_err(|e| anyhow::anyhow!("{option}: not hex ({e})"))
}
