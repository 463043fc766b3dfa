pub mod agent;
pub mod attest;
pub mod bench;
pub mod bench_kmstool;
pub mod bench_loop;
pub mod bench_p11;
pub mod bench_privval;
pub mod bench_sign;
pub mod cms;
pub mod demo;
pub mod demo_keys;
pub mod dev;
pub mod enclave;
pub mod key;
pub mod kmstool;
pub mod p11;
pub mod pcr;
pub mod policy;
pub mod privval;
pub mod proxy;
pub mod up;

/// Parse hex given on the command line, naming the option on error.
pub fn hex_arg(option: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(s.trim()).map_err(|e| anyhow::anyhow!("{option}: not hex ({e})"))
}
