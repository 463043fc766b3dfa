//! A signature as the enclave returns it.

use serde::{Deserialize, Serialize};

use crate::scheme::{serde_bytes_compat, Scheme};

/// A signature and, for transactions, what to broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub scheme: Scheme,
    #[serde(with = "serde_bytes_compat")]
    pub signature: Vec<u8>,
    /// The hash that was signed, where the scheme signs a hash.
    #[serde(with = "serde_bytes_compat")]
    pub digest: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub raw_transaction: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub transaction_hash: Option<Vec<u8>>,
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct W(#[serde(with = "crate::scheme::serde_bytes_compat")] Vec<u8>);

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|b| W(b.clone())).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}
