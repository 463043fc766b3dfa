//! AWS KMS's JSON 1.1 protocol, the parts every nekms server of it shares:
//! the local KMS (`nekms-kms`, development) and the agent's KMS API for
//! custody keys (shipped). Nothing here holds keys or state.
//!
//! - [`sigv4`]: Signature Version 4, checked as AWS checks it, and signed;
//! - [`request`]: a request body's fields, with KMS's limits and messages;
//! - [`error`]: KMS's exceptions, their HTTP status and JSON body.

pub mod error;
pub mod request;
pub mod sigv4;
