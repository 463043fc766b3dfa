//! `nekms-agent`: the HTTP JSON API that applications on the parent use to
//! reach the keys in the enclave (`nekms agent`).
//!
//! It listens on loopback TCP or a Unix socket only, and every caller
//! (except on `/healthz`, `/metrics` and `/openapi.json`) is authenticated
//! by a bearer token or a Unix peer's uid, and limited to its keys
//! ([`access`]). It holds no secret: it reads sealed records from the
//! store, hands them to the enclave with the payload, and returns what the
//! enclave signed; tokens are kept as digests. It also relays the instance's
//! AWS credentials to the enclave (and keeps them fresh) and Secrets Manager
//! ciphertexts for import, which is the lock-out document's relay.
//!
//! - [`config`]: [`AgentConfig`], what the command line fills in;
//! - [`access`]: who may call, with which keys;
//! - the routes, one file per family (keys, signing, attestation, health),
//!   errors as `{"error": {"code", "message", "retryable"}}`, `/metrics` as
//!   Prometheus text, and the OpenAPI document ([`openapi()`]);
//! - [`serve`] until SIGINT or SIGTERM, or [`spawn`] in a task (the
//!   benchmark's agent).
//!
//! It does not open records, hold keys or decide what may be signed: the
//! enclave does, and its rules are what hold against the parent.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use nekms_agent::{Access, AgentConfig, CredentialsRelay, Listen, LoopbackAddr};
//!
//! # async fn start() -> anyhow::Result<()> {
//! let store: nekms_store::StoreUrl = "sqlite:/var/lib/nekms/keys.db".parse().map_err(anyhow::Error::msg)?;
//! let config = AgentConfig {
//!     listen: Listen::Tcp(LoopbackAddr::new("127.0.0.1:8080".parse()?)?),
//!     socket_mode: 0o600,
//!     enclave: "vsock://16:5000".parse()?,
//!     store: nekms_store::Store::open(&store, None).await?,
//!     access: Access::single_token("/run/nekms/agent.token".as_ref())?,
//!     credentials: Some(CredentialsRelay { profile: None, interval: Duration::from_secs(300) }),
//!     secrets_endpoint: None,
//!     ready_file: None,
//!     store_name: store.to_string(),
//!     enclave_name: "vsock://16:5000".into(),
//!     limits: nekms_agent::Limits::default(),
//!     kms_api: None,
//! };
//! nekms_agent::serve(config).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
mod enclave;
mod errors;
mod kms_api;
mod listen;
mod metrics;
mod openapi;
mod routes;
mod server;
mod state;

pub use access::{Access, Caller};
pub use config::{AgentConfig, CredentialsRelay, Listen, LoopbackAddr, NotLoopback};
pub use kms_api::parse as kms_api_parse;
pub use kms_api::KmsApi;
pub use listen::Limits;
pub use openapi::openapi;
pub use server::{serve, spawn, spawn_kms_api};
