//! The PKCS#11 module's calls and the parent's token provisioning.

use serde::{Deserialize, Serialize};

use super::{Secret, SecretString};
use crate::{KeyRecord, KeySpec, Payload, Scheme};

/// PKCS#11 calls. A token's keys are custody records; the enclave keeps
/// the tokens, the PIN checks and their failure counters, and each module
/// process's login state, so every process p11-kit's server forks shares them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum P11Request {
    /// Add (or, with `replace`, update) a token. A new token takes `pin`;
    /// one restored from the parent's token database takes the
    /// `pin_verifier` the enclave gave when it was added.
    AddToken {
        token: P11Token,
        #[serde(default)]
        replace: bool,
    },
    RemoveToken {
        label: String,
    },
    /// Every token's public description, without certificates (so 1024
    /// tokens fit one frame); `Slot` gives one token with them.
    Slots,
    Slot {
        slot: u64,
    },
    /// A module process opens its own handle on a slot; login state lives there.
    Open {
        slot: u64,
    },
    Close {
        handle: Secret,
    },
    Login {
        handle: Secret,
        pin: SecretString,
    },
    Logout {
        handle: Secret,
    },
    /// Sign with the key whose CKA_ID is `id`, on a handle that is logged in.
    Sign {
        handle: Secret,
        #[serde(with = "serde_bytes")]
        id: Vec<u8>,
        scheme: Scheme,
        payload: Payload,
    },
    /// Random bytes from the NSM (C_GenerateRandom).
    Random {
        length: u32,
    },
    /// A key pair made in the enclave as a custody record (with its origin
    /// document) and added to the handle's token, which must be writable.
    GenerateKeyPair {
        handle: Secret,
        spec: KeySpec,
        #[serde(with = "serde_bytes")]
        id: Vec<u8>,
        label: String,
    },
    /// A token's keys with their records, for the parent's store and token
    /// database (records are sealed: public).
    Keys {
        label: String,
    },
    /// RSA decryption with the key whose CKA_ID is `id`, on a logged-in handle.
    Decrypt {
        handle: Secret,
        #[serde(with = "serde_bytes")]
        id: Vec<u8>,
        padding: crate::RsaPadding,
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        #[serde(default, with = "serde_bytes")]
        label: Option<Vec<u8>>,
    },
    /// The module's public operations, done by the enclave's verifier so that
    /// the module carries no cryptography of its own. Each uses only the
    /// SubjectPublicKeyInfo it is given, never a key the enclave holds, and
    /// needs no session: what it returns, anyone with the public key computes.
    ///
    /// C_Verify: `Done`, or CKR_SIGNATURE_INVALID.
    Verify {
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        scheme: Scheme,
        payload: Payload,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// RSA's public operation (`input^e mod n`), for CKM_RSA_X_509 and
    /// CKM_RSA_PKCS verification: `Output`, or CKR_SIGNATURE_INVALID.
    RsaPublic {
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// C_Encrypt with an RSA public key: `Output` (the ciphertext), or
    /// CKR_DATA_LEN_RANGE for a plaintext the padding cannot take.
    Encrypt {
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        padding: crate::RsaPadding,
        plaintext: Secret,
        #[serde(default, with = "serde_bytes")]
        label: Option<Vec<u8>>,
    },
}

/// A token as provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P11Token {
    pub label: String,
    #[serde(default)]
    pub pin: Option<SecretString>,
    #[serde(default)]
    pub pin_verifier: Option<PinVerifier>,
    pub keys: Vec<P11Key>,
    /// Read-write sessions may generate key pairs on it.
    #[serde(default)]
    pub writable: bool,
}

/// A token key: a custody record, its CKA_ID and CKA_LABEL, and the
/// certificate chain (DER, leaf first) whose leaf is for its public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P11Key {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    pub label: String,
    pub record: KeyRecord,
    #[serde(default)]
    pub certificates: Vec<serde_bytes::ByteBuf>,
    /// The key may decrypt (RSA, C_Decrypt) as well as sign.
    #[serde(default)]
    pub decrypt: bool,
}

/// PBKDF2-HMAC-SHA256 of the PIN: what the parent's token database keeps
/// instead of the PIN (made and checked by nekms-keys' `PinVerifierExt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinVerifier {
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

impl PinVerifier {
    /// The iterations new verifiers get.
    pub const ITERATIONS: u32 = 100_000;
    /// The most a verifier may ask for (a bound on one login's work).
    pub const MAX_ITERATIONS: u32 = 10_000_000;

    /// Whether its iterations are in range.
    pub fn iterations_in_range(&self) -> bool {
        (1..=Self::MAX_ITERATIONS).contains(&self.iterations)
    }
}

/// A token's public description, as a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P11Slot {
    pub slot: u64,
    pub label: String,
    /// Too many wrong PINs: no login until the token is provisioned again.
    pub locked: bool,
    /// Wrong PINs since the last good one.
    pub failures: u32,
    #[serde(default)]
    pub writable: bool,
    pub keys: Vec<P11PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P11PublicKey {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    pub label: String,
    pub spec: KeySpec,
    /// SubjectPublicKeyInfo, DER.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// Empty in `Slots`, whose answer counts them in `certificate_count`.
    pub certificates: Vec<serde_bytes::ByteBuf>,
    #[serde(default)]
    pub certificate_count: u32,
    #[serde(default)]
    pub decrypt: bool,
}

/// PKCS#11 answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum P11Response {
    TokenAdded {
        slot: u64,
        pin_verifier: PinVerifier,
    },
    Slots(Vec<P11Slot>),
    Slot(P11Slot),
    Opened {
        handle: Secret,
    },
    Done,
    Signature(#[serde(with = "serde_bytes")] Vec<u8>),
    Random(Secret),
    Plaintext(Secret),
    KeyPair {
        public_key: serde_bytes::ByteBuf,
    },
    Keys(Vec<P11Key>),
    /// What a public operation computed (`RsaPublic`, `Encrypt`).
    Output(#[serde(with = "serde_bytes")] Vec<u8>),
}
