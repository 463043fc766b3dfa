//! `nekms-dev`: nekms's development world and its measurements, for
//! development and measurement only: it is never in a release artifact. The
//! `nekms` CLI links it only with its default `dev` feature; a production
//! build (`cargo build --release -p nekms --no-default-features`) links
//! neither this crate nor the local KMS, the simulated NSM or the
//! in-process enclave it brings.
//!
//! What it holds (the CLI parses the flags and calls these):
//! - [`kms`]: the local KMS served in this process, and a small SigV4 KMS
//!   client over keep-alive HTTP/1.1;
//! - [`custody`]: keys set up as an operator sets them up on AWS (a custody
//!   key in two steps and its check, a key only one image may decrypt with);
//! - [`world`]: an enclave, its proxy and the validator signer's state store
//!   in this process over Unix sockets, and a benchmark's whole world;
//! - [`image`]: which image a simulated enclave measures, and such an
//!   enclave's documents (`nekms attest sim`);
//! - [`demo`]: `nekms demo`, the main flows end to end;
//! - [`up`]: `nekms dev up`'s supervisor of the local KMS, the proxy, the
//!   simulated enclave and their companions;
//! - [`vm`]: `nekms dev vm`, an enclave image booted in a guest VM over real
//!   vsock, measured by the launcher;
//! - [`audit`]: reading the local KMS's audit log (`nekms dev kms audit`);
//! - [`bench`](mod@bench): `nekms bench`'s measurements.
//!
//! The demo and the benchmarks report on standard output as they go. What
//! it does not do: parse a command line (that is the CLI's), or serve
//! anything a production parent or enclave runs.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! // A development world in a temporary directory: the local KMS, a custody
//! // key set up in two steps, and a simulated NSM measured with it.
//! let world = nekms_dev::world::BenchWorld::new("example").await?;
//! let enclave =
//!     nekms_dev::world::EnclavePath::start_with(&world.dev, &world.local, world.nsm.clone(), world.tmp.path(), None, &world.config)
//!         .await?;
//! enclave.supply_instance_credentials(&world.dev)?;
//! let client = nekms_rpc::Client::connect(&enclave.rpc, "example").await?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)] // one exception: `child`'s pre-exec hook

pub mod audit;
pub mod bench;
pub mod child;
pub mod custody;
pub mod demo;
pub mod image;
pub mod kms;
pub mod up;
pub mod vm;
pub mod world;
pub mod world_custody;
use nekms_parent::{key_policy, kmstool as kmstool_client};
