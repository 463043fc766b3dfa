//! The benchmarks behind `nekms bench`: each measures nekms against a
//! reference measured in the same run, on this machine, and prints a table
//! as it goes (the ratios against the reference are the figures to read).
//!
//! - [`kms`]: the local KMS against moto's KMS;
//! - [`kmstool`]: kmstool Decrypt through enclave, proxy and local KMS, and
//!   the proxy against a direct connection;
//! - [`sign`]: signatures in process, through the enclave's RPC and through
//!   the agent, and a cold signature's latency;
//! - [`p11`]: PKCS#11 C_Sign through p11-kit against SoftHSM2, and nginx's
//!   TLS handshakes;
//! - [`privval`]: the validator signer against tmkms;
//! - [`vm`]: the enclave in a guest VM against the enclave as a process.
//!
//! Each `run` is async (the caller gives it a multi-threaded runtime), but
//! [`vm`]'s, which starts `dev up` worlds with runtimes of their own.

pub mod kms;
pub mod kms_api;
pub mod kmstool;
mod measure;
pub mod p11;
pub mod privval;
pub mod sign;
pub mod vm;
