//! RSA decryption paddings, as requests name them.

/// RSA decryption padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RsaPadding {
    Pkcs1,
    Oaep(OaepHash),
    /// None: the raw private operation (PKCS#11's `CKM_RSA_X_509`).
    Raw,
}

/// OAEP's hash (MGF1 uses the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OaepHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}
